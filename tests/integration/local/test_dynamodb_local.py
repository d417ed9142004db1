"""The DynamoDB Local launcher: start, persist, refuse a busy port, leave no orphan JVM."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from scheduler.db.clients import client
from scheduler.local.dynamodb_local import DynamoDBLocal, DynamoDBLocalError, stack_access_key
from scheduler.settings import Settings

INSTALL_DIR = Settings.from_env({}).dynamodb_local_dir


def _gone(pid: int, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_data_directory_survives_a_restart(tmp_path: Path) -> None:
    server = DynamoDBLocal(INSTALL_DIR, data_dir=tmp_path / "db", heap_mb=256)
    with server:
        ddb = client("dynamodb", Settings().for_local(server.endpoint))
        ddb.create_table(
            TableName="kept",
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        ddb.put_item(TableName="kept", Item={"k": {"S": "v"}})
        pid = server.pid
    assert pid is not None and _gone(pid)
    with DynamoDBLocal(INSTALL_DIR, data_dir=tmp_path / "db", heap_mb=256) as again:
        ddb = client("dynamodb", Settings().for_local(again.endpoint))
        assert ddb.get_item(TableName="kept", Key={"k": {"S": "v"}})["Item"] == {"k": {"S": "v"}}


def test_busy_port_is_one_clear_error(dynamodb_local: DynamoDBLocal) -> None:
    with pytest.raises(DynamoDBLocalError, match="already in use"):
        DynamoDBLocal(INSTALL_DIR, port=dynamodb_local.port).start()


def test_missing_install_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DynamoDBLocalError, match="make setup"):
        DynamoDBLocal(tmp_path).start()


def test_heap_is_capped(dynamodb_local: DynamoDBLocal) -> None:
    assert dynamodb_local.pid is not None
    assert "-Xmx512m" in psutil.Process(dynamodb_local.pid).cmdline()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_no_orphan_jvm_when_the_owner_dies(how: signal.Signals) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from pathlib import Path
            from scheduler.local.dynamodb_local import DynamoDBLocal
            server = DynamoDBLocal(Path({str(INSTALL_DIR)!r}), heap_mb=128)
            server.start()
            print(server.pid, flush=True)
            time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    jvm_pid = int(owner.stdout.readline())
    assert psutil.pid_exists(jvm_pid)
    os.kill(owner.pid, how)
    owner.wait(10)
    assert _gone(jvm_pid), "the JVM outlived the process that started it"


def test_a_stack_key_keeps_its_tables_from_every_other_key(tmp_path: Path) -> None:
    key = stack_access_key(tmp_path / "db", "us-east-1")
    assert stack_access_key(tmp_path / "db", "us-east-1") == key  # kept: data survives
    assert oct((tmp_path / "db" / "access-key").stat().st_mode & 0o777) == "0o600"
    with DynamoDBLocal(INSTALL_DIR, data_dir=tmp_path / "db", heap_mb=256, access_key=key) as db:
        owner = Settings().for_local(db.endpoint)
        owner = dataclasses.replace(owner, access_key_id=key, secret_access_key=key)
        client("dynamodb", owner).create_table(
            TableName="private",
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        stranger = client("dynamodb", Settings().for_local(db.endpoint))  # any other key
        assert stranger.list_tables()["TableNames"] == []
        assert client("dynamodb", owner).list_tables()["TableNames"] == ["private"]
