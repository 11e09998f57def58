"""Property-based fuzz of every route in herd's published OpenAPI document (schemathesis), against a real
`herd serve` with auth on: no response is a 5xx, and replies of the documented routes match their schemas. Then the
seed corpus of the nastiest bodies found by hand (tests/test_validation.py) replayed with a credential."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from herd.api.openapi import NOT_READY
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import HerdServer
from tests.test_redis_restart import PrivateRedis
from tests.test_validation import NASTY

KEY = "sk-fuzz-" + "0" * 24
AUTH = {"authorization": f"Bearer {KEY}"}
SCOPES = "models:read,inference,batch,models:admin"
EXAMPLES = 12  # per operation: about 40 operations, bounded so the whole run takes a minute or two


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    redis_server = PrivateRedis(tmp_path_factory.mktemp("redis-fuzz"))
    redis_server.start()
    env = {
        "HERD_API_KEYS": f"fuzz={hashlib.sha256(KEY.encode()).hexdigest()}:{SCOPES}",
        "HERD_MAX_TOKENS_CAP": "4",  # any max_tokens the fuzzer picks ends after 4 tokens
        "HERD_MODELS_DIR": str(tmp_path_factory.mktemp("fuzz-models")),
        "HERD_FILES_DIR": str(tmp_path_factory.mktemp("fuzz-files")),
    }
    server = HerdServer(redis_server.port, db=0, log_path=tmp_path_factory.mktemp("fuzz") / "serve.log", **env)
    yield server
    server.stop()
    redis_server.kill()


def fuzz(operation: schemathesis.APIOperation, failures: list[str], statuses: Counter[int]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def run(case: schemathesis.Case) -> None:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = case.call(headers=AUTH, timeout=120)
        statuses[response.status_code] += 1
        checks = [status_code_conformance]
        if (operation.method.upper(), operation.path) not in NOT_READY:  # /readyz?workers=N answers 503 by design
            checks.append(not_a_server_error)
        if (response.headers.get("content-type") or [""])[0].startswith("application/json"):
            checks.append(response_schema_conformance)
        try:
            case.validate_response(response, checks=checks, excluded_checks=[negative_data_rejection])
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis reports a FailureGroup
            found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            text = "; ".join(str(e)[:800] for e in found)
            failures.append(f"{operation.method.upper()} {operation.path}: {text}")

    run()


def test_no_input_is_a_server_error(fuzz_server: HerdServer) -> None:
    """Every operation of the published document, EXAMPLES generated cases each (schemathesis' strategies driven by
    hypothesis here: its pytest plugin does not run on this pytest). Failures are collected, then reported at once."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json", headers=AUTH)
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30

    for operation in operations:
        fuzz(operation, failures, statuses)
    print(f"fuzz: {sum(statuses.values())} requests, statuses {sorted(statuses.items())}")
    assert not failures, "\n\n".join(failures[:20])
    assert statuses[200] > 0 and statuses[401] == 0  # the credential was sent, and requests got through


def test_the_document_is_openapi_31_with_the_wire_types(fuzz_server: HerdServer) -> None:
    doc = httpx.get(f"{fuzz_server.base_url}/openapi.json", headers=AUTH, timeout=30).json()
    assert doc["openapi"].startswith("3.1")
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    assert "max_tokens" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]


@pytest.mark.parametrize(("path", "body", "param"), NASTY, ids=[f"{p}-{n}" for n, (p, _, _) in enumerate(NASTY)])
def test_seed_corpus_with_auth_on(fuzz_server: HerdServer, path: str, body: str, param: str | None) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    answer = httpx.post(fuzz_server.base_url + path, content=body, headers=headers, timeout=60)
    assert answer.status_code == 400, answer.text[:300]
