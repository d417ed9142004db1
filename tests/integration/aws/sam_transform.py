"""Prints the CloudFormation that the SAM transform makes of a template (run with the SAM
CLI's own Python, .venv-sam/bin/python: samtranslator lives there). No AWS call is made."""

import json
import os
import sys

from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The transform asks IAM for managed policy ARNs only by name; the template uses none."""

    def load(self):
        return {}


def main():
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(sys.argv[1], encoding="utf-8") as handle:
        template = yaml_parse(handle.read())
    # As `sam package` leaves it: code in S3 (the transform checks the URI's shape only).
    template.get("Globals", {}).get("Function", {})["CodeUri"] = "s3://bucket/code.zip"
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"].pop("CodeUri", None)
    translator = Translator(NoManagedPolicies(), Parser())
    output = translator.translate(
        template,
        parameter_values={
            "AWS::Region": "us-east-1",
            "AWS::Partition": "aws",
            "AWS::AccountId": "123456789012",
            "AWS::StackName": "scheduler",
        },
    )
    json.dump(output, sys.stdout, default=str)


if __name__ == "__main__":
    main()
