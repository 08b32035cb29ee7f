"""Fuzzing a real server: schemathesis over its OpenAPI schema (every route, every method, valid and
invalid bodies) and hypothesis strategies for hostile sampling parameters and grammar values.

What must hold: no 5xx, no request that hangs past the grammar time limit, and the server still
generates afterwards (/health_generate). The number of cases per test is FUZZ_EXAMPLES (environment
variable SGLANG_DSPARK_FUZZ_EXAMPLES; small in CI, 100 for the long run of benchmarks/results/reliability.md).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import requests

from sglang_dspark.launch_server import local_server

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("SGLANG_DSPARK_FUZZ_EXAMPLES", "10"))
COMPILE_TIMEOUT_S = 10
# a hang is a request still unanswered this long after the grammar limit
REQUEST_TIMEOUT_S = COMPILE_TIMEOUT_S + 300
# a short context bounds every valid request's generation, whatever max_new_tokens the fuzzer picks
FLAGS = [
    "--context-length", "128",
    "--max-total-tokens", "8192",
    "--max-running-requests", "16",
    "--grammar-compile-timeout", str(COMPILE_TIMEOUT_S),
    "--random-seed", "0",
    "--enable-metrics",
    "--log-level", "warning",
]  # fmt: skip

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases every CI run
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    with local_server(FLAGS, tmp_path_factory.mktemp("fuzz") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def api_operations(server_url) -> list:
    schema = schemathesis.openapi.from_url(f"{server_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def assert_still_serving(url: str) -> None:
    assert requests.get(f"{url}/health_generate", timeout=REQUEST_TIMEOUT_S).status_code == 200


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_route_answers_without_a_server_error(server_url, api_operations, mode):
    """Schemathesis cases for every operation of /openapi.json: bodies that fit the documented schema
    (positive) and bodies that break it (negative)."""
    assert {op.path for op in api_operations} >= {"/generate", "/v1/completions", "/v1/chat/completions"}
    for operation in api_operations:
        if mode == "negative" and not operation.get_request_payload_content_types():
            continue  # nothing to break in a route without parameters or body

        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @FUZZ
        def call(case) -> None:
            what = f"{case.method} {case.path} {str(case.body)[:300]}"
            try:
                response = case.call(base_url=server_url, timeout=REQUEST_TIMEOUT_S)
            except requests.Timeout:
                raise AssertionError(f"no answer within {REQUEST_TIMEOUT_S} s: {what}") from None
            assert response.status_code < 500, (what, response.text[:500])

        call()
        assert_still_serving(server_url)


SAMPLING_KEYS = [
    "max_new_tokens", "min_new_tokens", "n", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
    "presence_penalty", "repetition_penalty", "stop", "stop_token_ids", "ignore_eos", "logit_bias",
    "sampling_seed", "skip_special_tokens", "no_stop_trim", "json_schema", "regex", "ebnf", "unknown_key",
]  # fmt: skip

hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**9]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
nested = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def non_finite_json(value) -> str:
    """json.dumps that writes NaN / Infinity as Python does (a body some clients send)."""
    return json.dumps(value, allow_nan=True)


@given(
    params=st.dictionaries(st.sampled_from(SAMPLING_KEYS), nested, max_size=6),
    special=st.sampled_from([None, math.nan, math.inf, -math.inf]),
    special_key=st.sampled_from(["temperature", "top_p", "min_p", "repetition_penalty", "max_new_tokens"]),
)
@FUZZ
def test_hostile_sampling_params(server_url, params, special, special_key):
    if special is not None:
        params = {**params, special_key: special}
    body = non_finite_json({"text": "Hi", "sampling_params": params})
    r = requests.post(f"{server_url}/generate", data=body, timeout=REQUEST_TIMEOUT_S)
    assert r.status_code < 500, (params, r.status_code, r.text[:500])
    if r.status_code == 200:
        out = r.json()
        outs = out if isinstance(out, list) else [out]
        assert all(isinstance(o["text"], str) and o["meta_info"]["finish_reason"] for o in outs)


def deep_schema(depth: int) -> str:
    """An object schema nested `depth` objects deep, as text (too deep for json.dumps)."""
    return '{"type": "object", "required": ["a"], "properties": {"a": ' * depth + '{"type": "integer"}' + "}}" * depth


ADVERSARIAL_GRAMMARS = [
    ("json_schema", deep_schema(1000)),
    ("json_schema", json.dumps({"enum": [f"value-{i}" for i in range(20000)]})),
    (
        "json_schema",
        json.dumps({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}),
    ),  # noqa: E501
    ("json_schema", json.dumps({"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}})),
    ("json_schema", json.dumps({"type": "string", "pattern": "(a+)+$", "minLength": 10**9})),
    ("json_schema", json.dumps({"type": "array", "minItems": 10**12})),
    ("json_schema", "{not json"),
    ("json_schema", json.dumps([1, 2, 3])),
    ("regex", "(a+)+$"),
    ("regex", "(a|a)*b"),
    ("regex", "(x{1000}){1000}"),
    ("regex", "[^\\x00-\\x{10FFFF}]"),
    ("regex", "(" * 5000),
    ("regex", "\\p{L}{3,}[\u4e00-\u9fff]+"),
    ("ebnf", 'root ::= root "a"'),
    ("ebnf", "root ::= ("),
    ("ebnf", 'root ::= "a" | "b" ' * 2000),
]


@pytest.mark.parametrize("kind,value", ADVERSARIAL_GRAMMARS, ids=lambda v: v[:24] if isinstance(v, str) else v)
def test_adversarial_grammars(server_url, kind, value):
    body = {"text": "Answer:", "sampling_params": {"max_new_tokens": 8, "temperature": 0, kind: value}}
    r = requests.post(f"{server_url}/generate", json=body, timeout=REQUEST_TIMEOUT_S)
    assert r.status_code in (200, 400), (kind, value[:80], r.status_code, r.text[:500])
    assert_still_serving(server_url)


@given(
    kind=st.sampled_from(["json_schema", "regex", "ebnf"]),
    value=st.one_of(
        st.text(max_size=60),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["type", "properties", "items", "enum", "pattern", "$ref", "anyOf", "required"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=15,
        ).map(json.dumps),
    ),
)
@FUZZ
def test_random_grammar_values(server_url, kind, value):
    body = {"text": "Answer:", "sampling_params": {"max_new_tokens": 8, "temperature": 0, kind: value}}
    r = requests.post(f"{server_url}/generate", json=body, timeout=REQUEST_TIMEOUT_S)
    assert r.status_code in (200, 400), (kind, value[:80], r.status_code, r.text[:500])
