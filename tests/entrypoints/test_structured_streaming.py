"""Long JSON-schema outputs streamed chunk by chunk: plain decoding, NGRAM and DSPARK (jump-forward on).

Each streamed chunk is checked as it arrives: the text so far must be a prefix of the schema's language
(an independent llguidance matcher with flexible whitespace), and the whole stream must equal the
non-streamed output of the same server, and the plain server's output (greedy fp32 is lossless).
"""

from __future__ import annotations

import json

import jsonschema
import llguidance
import llguidance.hf
import openai
import pytest

RECORDS = {
    "type": "object",
    "properties": {
        "users": {
            "type": "array",
            "minItems": 3,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string", "maxLength": 16},
                    "active": {"type": "boolean"},
                    "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
                },
                "required": ["id", "name", "active", "role"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["users"],
    "additionalProperties": False,
}
CONFIG = {
    "type": "object",
    "properties": {
        "service": {"type": "string", "maxLength": 24},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 9},
        "ports": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
        "env": {
            "type": "object",
            "properties": {"LOG_LEVEL": {"type": "string"}, "REGION": {"type": "string", "maxLength": 12}},
            "required": ["LOG_LEVEL", "REGION"],
            "additionalProperties": False,
        },
    },
    "required": ["service", "replicas", "ports", "env"],
    "additionalProperties": False,
}
SCHEMAS = {"records": RECORDS, "config": CONFIG}


class PrefixChecker:
    """Is a text a prefix of some JSON document valid under `schema`? (llguidance, any whitespace:
    independent of the server's compact-JSON grammar.)"""

    def __init__(self, tokenizer, schema: dict) -> None:
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        self.template = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)

    def __call__(self, text: str) -> bool:
        matcher = self.template.deep_copy()
        tokens = self.tokenizer.tokenize_str(text)
        return matcher.try_consume_tokens(tokens) == len(tokens)


def request(schema_name: str) -> dict:
    schema = SCHEMAS[schema_name]
    return {
        "model": "any",
        "messages": [{"role": "user", "content": f"Write a JSON document following this schema: {json.dumps(schema)}"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": schema_name, "schema": schema}},
        "temperature": 0,
        "max_tokens": 300,
    }


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=1200)


@pytest.fixture(scope="module")
def plain_outputs(server_url) -> dict[str, str]:
    client = client_of(server_url)
    return {name: client.chat.completions.create(**request(name)).choices[0].message.content for name in SCHEMAS}


@pytest.mark.parametrize("schema_name", list(SCHEMAS))
@pytest.mark.parametrize("server", ["plain", "NGRAM", "DSPARK"])
def test_streamed_schema_output_stays_in_the_language(server_urls, tokenizer, plain_outputs, server, schema_name):
    client = client_of(server_urls(server))
    schema = SCHEMAS[schema_name]
    is_prefix = PrefixChecker(tokenizer, schema)
    full = client.chat.completions.create(**request(schema_name)).choices[0]
    assert full.finish_reason == "stop"
    jsonschema.validate(json.loads(full.message.content), schema)
    assert full.message.content == plain_outputs[schema_name]  # speculation is lossless
    text, chunks = "", 0
    for chunk in client.chat.completions.create(**request(schema_name), stream=True):
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                chunks += 1
                assert is_prefix(text), text
    assert text == full.message.content
    assert chunks >= 3  # streamed in pieces (a DSPARK round with forced runs commits many tokens at once)
    assert len(full.message.content) > 100  # a long output: many chunks, speculative rounds, forced runs


@pytest.fixture
def server_urls(request):
    """server name -> URL, starting only the servers a test asks for."""
    names = {"plain": "server_url", "NGRAM": "ngram_server_url", "DSPARK": "dspark_server_url"}
    return lambda server: request.getfixturevalue(names[server])
