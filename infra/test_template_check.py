#!/usr/bin/env python3
"""Unit tests for infra/template-check.py: each kind of finding fires on a template that has
it (the operations checks on the real template.yaml with one thing taken away), and the real
template.yaml passes.

Run: python infra/test_template_check.py   (or python -m unittest discover -s infra)
"""

from __future__ import annotations

import copy
import importlib.util
import io
import sys
import tempfile
import textwrap
import unittest
from contextlib import redirect_stdout
from pathlib import Path

INFRA = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("template_check", INFRA / "template-check.py")
assert _spec and _spec.loader
template_check = importlib.util.module_from_spec(_spec)
sys.modules["template_check"] = template_check
_spec.loader.exec_module(template_check)

# What the operations checks want of any template, so that the security tests below see
# only their own findings: every function canaried, every HTTP API throttled, data kept, the
# reconciler alarm.
GLOBALS = """\
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    AutoPublishAlias: live
    DeploymentPreference: {Type: Canary10Percent5Minutes, Alarms: [!Ref Reconciler]}
  HttpApi:
    DefaultRouteSettings: {ThrottlingBurstLimit: 20, ThrottlingRateLimit: 10}
"""
RECONCILER_ALARM = """\
  Reconciler:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Namespace: FlashSale
      MetricName: ReconcilerViolations
      Statistic: Sum
      Period: 300
      EvaluationPeriods: 1
      Threshold: 0
      ComparisonOperator: GreaterThanThreshold
"""
HEADER = 'AWSTemplateFormatVersion: "2010-09-09"\n' + GLOBALS + """\
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        DefaultAuthorizer: Jwt
        Authorizers:
          Jwt:
            IdentitySource: $request.header.Authorization
            JwtConfiguration: {issuer: https://issuer.example, audience: [api]}
  OpenApi:
    Type: AWS::Serverless::HttpApi
  Table:
    Type: AWS::DynamoDB::Table
    DeletionPolicy: Retain
    UpdateReplacePolicy: Retain
    Properties:
      PointInTimeRecoverySpecification: {PointInTimeRecoveryEnabled: true}
  Queue:
    Type: AWS::SQS::Queue
    DeletionPolicy: Retain
    UpdateReplacePolicy: Retain
""" + RECONCILER_ALARM

# Everything a finding-free function may do: scoped statements, a wildcard under one of our
# resources, a narrow SAM template and managed policy, X-Ray on "*", a route with the default
# authorizer.
GOOD_FUNCTION = """\
  Good:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Get:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Method: GET, Path: "/things/{id}"}
      Policies:
        - AWSLambdaBasicExecutionRole
        - SQSSendMessagePolicy: {QueueName: !GetAtt Queue.QueueName}
        - Version: "2012-10-17"
          Statement:
            - Effect: Allow
              Action: [dynamodb:GetItem, dynamodb:Query]
              Resource:
                - !GetAtt Table.Arn
                - !Sub "${Table.Arn}/index/*"
                - !Sub "arn:aws:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${Table}/stream/*"
                - !Join ["", [!GetAtt Table.Arn, "/index/*"]]
                - !If [Restored, !Sub "arn:aws:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${Name}", !GetAtt Table.Arn]
            - Effect: Allow
              Action: [xray:PutTraceSegments, xray:PutTelemetryRecords]
              Resource: "*"
            - Effect: Deny
              Action: "*"
              Resource: "*"
"""

def route_function(event: str, properties: str) -> str:
    """A function `Fn` whose only event is the HTTP API route `event` with `properties`."""
    return f"""\
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        {event}: {{Type: HttpApi, Properties: {properties}}}
"""


# One function with every kind of finding, each on a line of its own.
BAD_FUNCTION = """\
  Bad:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Open:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Method: POST, Path: /open, Auth: {Authorizer: NONE}}
        Bare:
          Type: HttpApi
          Properties: {ApiId: !Ref OpenApi, Method: GET, Path: /bare}
        Unknown:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Method: GET, Path: /unknown, Auth: {Authorizer: Missing}}
      FunctionUrlConfig:
        AuthType: NONE
      Policies:
        - AdministratorAccess
        - arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess
        - SomeUnreviewedPolicy
        - DynamoDBCrudPolicy: {TableName: !Ref Table}
        - S3FullAccessPolicy: {BucketName: b}
        - Version: "2012-10-17"
          Statement:
            - Effect: Allow
              Action: "*"
              Resource: !GetAtt Table.Arn
            - Effect: Allow
              Action: [dynamodb:*, "sqs:Get*", sqs:SendMessage]
              Resource: !GetAtt Queue.Arn
            - Effect: Allow
              Action: dynamodb:GetItem
              Resource: "*"
            - Effect: Allow
              Action: dynamodb:GetItem
              Resource: arn:aws:dynamodb:us-east-1:123456789012:table/*
            - Effect: Allow
              Action: dynamodb:GetItem
              Resource: !Sub "arn:aws:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*"
            - Effect: Allow
              Action: dynamodb:GetItem
              Resource:
                - !Sub "${Table.Arn}*"
                - !Join ["", ["arn:aws:sqs:us-east-1:", !Ref AWS::AccountId, ":*"]]
            - Effect: Allow
              Action: dynamodb:GetItem
              Resource: !If [Restored, !Sub "arn:aws:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*", !GetAtt Table.Arn]
            - Effect: Allow
              NotAction: iam:*
              NotResource: !GetAtt Table.Arn
  Role:
    Type: AWS::IAM::Role
    Properties:
      ManagedPolicyArns: [arn:aws:iam::aws:policy/PowerUserAccess]
      Policies:
        - PolicyName: inline
          PolicyDocument:
            Statement:
              - {Effect: Allow, Action: "s3:*", Resource: "*"}
  Route:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: GET /raw}
"""

EXPECTED_BAD = [
    ("Bad.Events.Open", "Authorizer: NONE"),
    ("Bad.Events.Bare", "has no authorizer"),
    ("Bad.Events.Unknown", "authorizer Missing, which Api does not define"),
    ("Bad", "function URL with AuthType: NONE"),
    ("Bad Policies[0]", "managed policy AdministratorAccess is broader than needed"),
    ("Bad Policies[1]", "managed policy AmazonDynamoDBFullAccess is broader than needed"),
    ("Bad Policies[2]", "managed policy SomeUnreviewedPolicy is not on the reviewed list"),
    ("Bad Policies[3]", "SAM policy template DynamoDBCrudPolicy is broader than needed"),
    ("Bad Policies[4]", "SAM policy template S3FullAccessPolicy is broader than needed"),
    ("Bad Policies[5] statement 1", "wildcard action '*'"),
    ("Bad Policies[5] statement 2", "wildcard action 'dynamodb:*'"),
    ("Bad Policies[5] statement 2", "wildcard action 'sqs:Get*'"),
    ("Bad Policies[5] statement 3", "wildcard resource '*'"),
    ("Bad Policies[5] statement 4", "wildcard resource 'arn:aws:dynamodb:us-east-1:123456789012:table/*'"),
    ("Bad Policies[5] statement 5", "wildcard resource !Sub"),
    ("Bad Policies[5] statement 6", "wildcard resource !Sub '${Table.Arn}*'"),
    ("Bad Policies[5] statement 6", "wildcard resource {'Fn::Join'"),
    ("Bad Policies[5] statement 7", "wildcard resource {'Fn::If'"),
    ("Bad Policies[5] statement 8", "NotAction"),
    ("Bad Policies[5] statement 8", "NotResource"),
    ("Role Policies[0] statement 1", "wildcard action 's3:*'"),
    ("Role Policies[0] statement 1", "wildcard resource '*'"),
    ("Role ManagedPolicyArns[0]", "managed policy PowerUserAccess is broader than needed"),
    ("Route", "route GET /raw has AuthorizationType NONE"),
]


def load(text: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "template.yaml"
        path.write_text(textwrap.dedent(text))
        return template_check.load_template(path)


def findings_of(text: str) -> list[str]:
    findings, _counts = template_check.check(load(text))
    return [str(f) for f in findings]


class TemplateCheckTest(unittest.TestCase):
    def test_a_scoped_function_has_no_finding(self) -> None:
        self.assertEqual(findings_of(HEADER + GOOD_FUNCTION), [])

    def test_every_kind_of_finding_fires(self) -> None:
        found = findings_of(HEADER + GOOD_FUNCTION + BAD_FUNCTION)
        for where, what in EXPECTED_BAD:
            with self.subTest(where=where, what=what):
                self.assertTrue(
                    any(f.startswith(where + ":") and what in f for f in found),
                    f"no finding {where}: ...{what}... in\n" + "\n".join(found),
                )
        # Nothing else: the good function and the narrow parts stay quiet.
        self.assertEqual(len(found), len(EXPECTED_BAD), "\n".join(found))

    def test_a_route_on_an_api_without_default_authorizer_needs_its_own(self) -> None:
        text = HEADER + route_function("Own", "{ApiId: !Ref OpenApi, Method: GET, Path: /x, Auth: {Authorizer: Jwt}}")
        self.assertEqual(findings_of(text), ["Fn.Events.Own: route GET /x uses authorizer Jwt, which OpenApi does not define"])

    def test_the_implicit_api_takes_its_default_authorizer_from_globals(self) -> None:
        text = GLOBALS + """\
    Auth:
      DefaultAuthorizer: Jwt
      Authorizers:
        Jwt: {JwtConfiguration: {issuer: https://issuer.example, audience: [api]}}
Resources:
""" + RECONCILER_ALARM + route_function("Implicit", "{Method: GET, Path: /x}")
        self.assertEqual(findings_of(text), [])
        self.assertEqual(
            findings_of(text.replace("DefaultAuthorizer: Jwt", "EnableIamAuthorizer: false")),
            ["Fn.Events.Implicit: route GET /x has no authorizer (no Auth.Authorizer, no DefaultAuthorizer on ServerlessHttpApi)"],
        )
        self.assertEqual(
            findings_of(text.replace("DefaultRouteSettings: {ThrottlingBurstLimit: 20, ThrottlingRateLimit: 10}", "")),
            ["ServerlessHttpApi: no stage throttling: DefaultRouteSettings has no ThrottlingRateLimit or ThrottlingBurstLimit"],
        )

    def test_the_real_template_passes_and_main_says_ok(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out):
            status = template_check.main([str(INFRA.parent / "template.yaml")])
        self.assertEqual(status, 0, out.getvalue())
        self.assertIn("template-check: OK", out.getvalue())

    def test_main_lists_each_finding_and_fails(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bad.yaml"
            path.write_text(HEADER + BAD_FUNCTION)
            out = io.StringIO()
            with redirect_stdout(out):
                status = template_check.main([str(path)])
        self.assertEqual(status, 1)
        lines = out.getvalue().splitlines()
        self.assertEqual(sum(l.startswith("template-check: FINDING ") for l in lines), len(EXPECTED_BAD))
        self.assertTrue(lines[-1].startswith("template-check: FAILED"), lines[-1])


REAL_TEMPLATE = INFRA.parent / "template.yaml"


def real_findings(mutate) -> list[str]:
    """The findings on the real template after `mutate` changed a copy of it."""
    template = copy.deepcopy(template_check.load_template(REAL_TEMPLATE))
    mutate(template["Resources"], template.setdefault("Globals", {}).setdefault("Function", {}))
    findings, _counts = template_check.check(template)
    return [str(f) for f in findings]


def alarm_on(resources: dict, metric: str, queue_or_function: str | None = None) -> str:
    """The logical id of the real template's alarm on `metric` (for that queue or function)."""
    for name, resource in resources.items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        for _ns, metric_name, dims in template_check.watched_metrics(resource["Properties"]):
            if metric_name == metric and (queue_or_function is None or queue_or_function in dims.values()):
                return name
    raise AssertionError(f"the real template has no alarm on {metric} {queue_or_function or ''}")


class OperationsCheckTest(unittest.TestCase):
    """Each operations check fails on the real template with one thing taken away."""

    def assert_finds(self, mutate, *expected: str) -> None:
        found = real_findings(mutate)
        for line in expected:
            self.assertIn(line, found, "\n".join(found))
        self.assertEqual(len(found), len(expected), "\n".join(found))

    def test_the_real_template_has_no_finding(self) -> None:
        self.assertEqual(real_findings(lambda resources, globals_: None), [])

    def test_every_function_needs_an_alias(self) -> None:
        functions = [n for n, r in template_check.load_template(REAL_TEMPLATE)["Resources"].items()
                     if r["Type"] == "AWS::Serverless::Function"]
        self.assertTrue(functions)
        self.assert_finds(
            lambda resources, globals_: globals_.pop("AutoPublishAlias"),
            *(f"{f}: no AutoPublishAlias: callers invoke $LATEST, so no version can be canaried or rolled back"
              for f in functions),
        )

    def test_a_function_opting_out_of_the_canary_is_found(self) -> None:
        def mutate(resources: dict, globals_: dict) -> None:
            resources["ProcessOrdersFunction"]["Properties"]["DeploymentPreference"] = {"Enabled": False}
        self.assert_finds(
            mutate, "ProcessOrdersFunction: no enabled DeploymentPreference: a new version takes all traffic at once"
        )

    def test_all_at_once_is_not_a_canary(self) -> None:
        def mutate(resources: dict, globals_: dict) -> None:
            resources["PlaceOrderFunction"]["Properties"]["DeploymentPreference"] = {"Type": "AllAtOnce"}
        self.assert_finds(mutate, "PlaceOrderFunction: DeploymentPreference Type AllAtOnce: use a Canary or Linear type")

    def test_a_canary_without_alarms_is_found(self) -> None:
        def mutate(resources: dict, globals_: dict) -> None:
            globals_["DeploymentPreference"].pop("Alarms")
        found = real_findings(mutate)
        self.assertTrue(found)
        self.assertTrue(
            all(f.endswith("DeploymentPreference has no Alarms: nothing rolls a bad version back") for f in found), found
        )

    def test_tables_and_queues_are_retained(self) -> None:
        def mutate(resources: dict, globals_: dict) -> None:
            resources["OrdersTable"]["UpdateReplacePolicy"] = "Delete"
            del resources["OrdersDeadLetterQueue"]["DeletionPolicy"]
        self.assert_finds(
            mutate,
            "OrdersTable: UpdateReplacePolicy is Delete, not Retain: the data would be lost",
            "OrdersDeadLetterQueue: DeletionPolicy is not set (Delete), not Retain: the data would be lost",
        )

    def test_a_table_needs_point_in_time_recovery(self) -> None:
        def mutate(resources: dict, globals_: dict) -> None:
            resources["OrdersTable"]["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] = False
        self.assert_finds(mutate, "OrdersTable: no point-in-time recovery (PointInTimeRecoverySpecification)")

    def test_the_dead_letter_queue_alarm_is_required_and_fires_on_the_first_message(self) -> None:
        self.assert_finds(
            lambda resources, _: resources.pop(
                alarm_on(resources, "ApproximateNumberOfMessagesVisible", "OrdersDeadLetterQueue")
            ),
            "OrdersDeadLetterQueue: no alarm on AWS/SQS ApproximateNumberOfMessagesVisible for QueueName "
            "OrdersDeadLetterQueue > 0",
        )

        def raise_threshold(resources: dict, globals_: dict) -> None:
            name = alarm_on(resources, "ApproximateNumberOfMessagesVisible", "OrdersDeadLetterQueue")
            resources[name]["Properties"]["Threshold"] = 10
        self.assert_finds(
            raise_threshold,
            "OrdersDeadLetterQueue: the alarm on AWS/SQS ApproximateNumberOfMessagesVisible for QueueName "
            "OrdersDeadLetterQueue does not fire on the first one (> 0)",
        )

    def test_the_processor_errors_alarm_is_required(self) -> None:
        self.assert_finds(
            lambda resources, _: resources.pop(alarm_on(resources, "Errors", "ProcessOrdersFunction")),
            "ProcessOrdersFunction: no alarm on AWS/Lambda Errors for FunctionName ProcessOrdersFunction > 0",
        )

    def test_the_oldest_message_age_alarm_is_required(self) -> None:
        self.assert_finds(
            lambda resources, _: resources.pop(alarm_on(resources, "ApproximateAgeOfOldestMessage", "OrdersQueue")),
            "OrdersQueue: no alarm on AWS/SQS ApproximateAgeOfOldestMessage for QueueName OrdersQueue",
        )

    def test_the_reconciler_alarm_is_required(self) -> None:
        self.assert_finds(
            lambda resources, _: resources.pop(alarm_on(resources, "ReconcilerViolations")),
            "Resources: no alarm on FlashSale ReconcilerViolations > 0",
        )

    def test_the_http_api_needs_stage_throttling(self) -> None:
        self.assert_finds(
            lambda resources, _: resources["HttpApi"]["Properties"].pop("DefaultRouteSettings"),
            "HttpApi: no stage throttling: DefaultRouteSettings has no ThrottlingRateLimit or ThrottlingBurstLimit",
        )
        self.assert_finds(
            lambda resources, _: resources["HttpApi"]["Properties"]["DefaultRouteSettings"].pop("ThrottlingBurstLimit"),
            "HttpApi: no stage throttling: DefaultRouteSettings has no ThrottlingBurstLimit",
        )


if __name__ == "__main__":
    unittest.main(verbosity=2)
