"""docs/openapi.yaml against the real gateway: the document itself, then schemathesis.

schemathesis generates requests for every operation of docs/openapi.yaml (the document the
gateway serves at /openapi.json: a test checks they are the same), valid and invalid ones
(``positive`` and ``negative`` modes), sends them to a live gateway -> chatsvc -> Redis (separate
processes, from conftest) and checks that no response is a 5xx and that each one is documented:
status code, content type and body schema. Bounded and deterministic: 50 examples per operation,
derandomized, no example database.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import urllib.request

import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import ROUTES, load_openapi
from gateway.settings import GatewaySettings
from tests.procs import ROOT

SPEC = ROOT / "docs" / "openapi.yaml"
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
MAX_EXAMPLES = 50


def spec() -> dict:
    return yaml.safe_load(SPEC.read_text())


# --- the document ------------------------------------------------------------------------------


def test_docs_and_the_package_hold_the_same_document():
    """docs/openapi.yaml is a link to gateway/openapi.yaml, the copy installed with the package
    (the image installs a wheel: without package data the gateway could not start)."""
    assert SPEC.resolve() == (ROOT / "gateway" / "openapi.yaml").resolve()
    assert json.loads(load_openapi()) == spec()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "openapi.yaml" in cfg["options.package_data"]["gateway"].split()


def test_gateway_serves_the_document(gateway_url):
    with urllib.request.urlopen(f"{gateway_url}/openapi.json", timeout=5) as r:
        assert r.status == 200 and r.headers.get_content_type() == "application/json"
        assert json.loads(r.read()) == spec()


def test_every_route_is_documented_and_every_documented_path_is_a_route():
    routes = {(method.lower(), path) for path, methods in ROUTES.items() for method in methods}
    documented = {(method, path) for path, ops in spec()["paths"].items() for method in ops}
    assert routes == documented


def test_every_documented_error_uses_the_error_schema():
    doc = spec()
    error_ref = "#/components/schemas/Error"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in response:
                    response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": error_ref}, (method, path, status)


def test_statuses_the_gateway_can_answer_are_documented():
    ops = spec()["paths"]
    for path in ("/api/send", "/api/pull"):
        op = ops[path]["post" if path == "/api/send" else "get"]
        assert set(op["responses"]) == {"200", "400", "401", "403", "408", "413", "502", "503", "504"}
    responses = spec()["components"]["responses"]
    assert {"NotFound", "MethodNotAllowed"} <= set(responses)


def test_auth_settings_named_in_the_document_exist():
    text = SPEC.read_text()
    envs = {f.metadata["env"] for f in dataclasses.fields(GatewaySettings)}
    for name in ("GATEWAY_AUTH", "GATEWAY_JWT_SECRET", "GATEWAY_HEADER_TIMEOUT", "GATEWAY_BODY_TIMEOUT",
                 "GATEWAY_MAX_CONNECTIONS", "GATEWAY_MAX_BODY_BYTES", "GATEWAY_CALL_TIMEOUT"):
        assert name in text and name in envs, name


# --- schemathesis against the live gateway -------------------------------------------------------


# Loaded at collection time from the file (one test per operation); the base URL comes from the
# live gateway at run time. (``schemathesis.pytest.from_fixture`` would load the served copy
# instead, but in schemathesis 4.32 it reads ``request.node._nodeid``, which pytest 9 no longer
# has; the served copy is checked against the file above.)
schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_gateway_conforms_to_its_openapi(case, gateway_url):
    case.call_and_validate(base_url=gateway_url, checks=CHECKS, timeout=10)
