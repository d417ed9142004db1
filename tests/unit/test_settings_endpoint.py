"""AWS's ``AWS_ENDPOINT_URL_DYNAMODB`` points both DynamoDB clients (tables and streams)."""

from __future__ import annotations

from scheduler.db.clients import client
from scheduler.settings import LOCAL_CREDENTIALS, Settings


def test_aws_endpoint_variable_is_the_dynamodb_endpoint_of_both_clients() -> None:
    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:18401"})
    assert settings.dynamodb_endpoint == "http://127.0.0.1:18401"
    # A local endpoint without credentials gets the dummy ones, as with our own variable.
    assert (settings.access_key_id, settings.secret_access_key) == LOCAL_CREDENTIALS
    assert settings.session_token is None
    for service in ("dynamodb", "dynamodbstreams"):
        assert client(service, settings).meta.endpoint_url == "http://127.0.0.1:18401"


def test_the_schedulers_own_variable_wins_over_aws() -> None:
    settings = Settings.from_env(
        {
            "SCHEDULER_DYNAMODB_ENDPOINT": "http://127.0.0.1:18402",
            "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:18401",
        }
    )
    assert settings.dynamodb_endpoint == "http://127.0.0.1:18402"


def test_neither_variable_means_aws_itself() -> None:
    settings = Settings.from_env(
        {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    )
    assert settings.dynamodb_endpoint is None
    endpoint = client("dynamodbstreams", settings).meta.endpoint_url
    assert endpoint == "https://streams.dynamodb.eu-west-1.amazonaws.com"
