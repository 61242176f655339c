#!/usr/bin/env python3
"""Unit tests for infra/template-check.py: each kind of finding fires on a template that has
it, and the real template.yaml passes.

Run: python infra/test_template_check.py   (or python -m unittest discover -s infra)
"""

from __future__ import annotations

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

HEADER = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
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
  Queue:
    Type: AWS::SQS::Queue
"""

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
            - Effect: Allow
              Action: [xray:PutTraceSegments, xray:PutTelemetryRecords]
              Resource: "*"
            - Effect: Deny
              Action: "*"
              Resource: "*"
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
    ("Bad Policies[5] statement 7", "NotAction"),
    ("Bad Policies[5] statement 7", "NotResource"),
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
        text = HEADER + """\
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Own:
          Type: HttpApi
          Properties: {ApiId: !Ref OpenApi, Method: GET, Path: /x, Auth: {Authorizer: Jwt}}
"""
        self.assertEqual(findings_of(text), ["Fn.Events.Own: route GET /x uses authorizer Jwt, which OpenApi does not define"])

    def test_the_implicit_api_takes_its_default_authorizer_from_globals(self) -> None:
        text = """\
Transform: AWS::Serverless-2016-10-31
Globals:
  HttpApi:
    Auth:
      DefaultAuthorizer: Jwt
      Authorizers:
        Jwt: {JwtConfiguration: {issuer: https://issuer.example, audience: [api]}}
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Implicit:
          Type: HttpApi
          Properties: {Method: GET, Path: /x}
"""
        self.assertEqual(findings_of(text), [])
        self.assertEqual(
            findings_of(text.replace("DefaultAuthorizer: Jwt", "EnableIamAuthorizer: false")),
            ["Fn.Events.Implicit: route GET /x has no authorizer (no Auth.Authorizer, no DefaultAuthorizer on ServerlessHttpApi)"],
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
