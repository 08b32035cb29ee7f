"""Function tools made from the JSON-schema set (data/json_schemas), and the check of a returned call.

Used by the tool-calling tests and `benchmarks/bench_tool_calls.py`. A schema becomes a function when it
is an object schema with `properties`, no `$ref`, at most `max_chars` long, valid for `jsonschema` and
enforceable by xgrammar (`schema_support`); its name is `fn_` plus the schema's id in lower-case
letters, digits and underscores. Taken round-robin over the set's splits (Github_easy, Kubernetes, ...),
each in file order.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from sglang_dspark.grammar import GrammarError
from sglang_dspark.grammar.xgrammar_backend import SCHEMA_SUPPORT

SCHEMA_SET = Path(__file__).resolve().parents[2] / "data" / "json_schemas" / "jsonschemabench_subset.jsonl"


@dataclass(frozen=True)
class SchemaFunction:
    name: str
    schema: dict[str, Any]

    def tool(self) -> dict[str, Any]:
        description = f"Record one {self.name[3:]} object with these fields."
        return {
            "type": "function",
            "function": {"name": self.name, "description": description, "parameters": self.schema},
        }

    def prompt(self) -> str:
        return f"Call {self.name} with realistic example arguments."

    def required_call(self) -> dict[str, Any]:
        """Chat-completion arguments that ask for exactly one call of this function (``tool_choice`` required)."""
        messages = [{"role": "user", "content": self.prompt()}]
        return {"messages": messages, "tools": [self.tool()], "tool_choice": "required", "parallel_tool_calls": False}


def _usable(schema: Any, max_chars: int) -> bool:
    if not isinstance(schema, dict) or schema.get("type") != "object" or not schema.get("properties"):
        return False
    text = json.dumps(schema)
    if "$ref" in text or len(text) > max_chars:
        return False
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
        SCHEMA_SUPPORT.check(schema)
    except (jsonschema.SchemaError, GrammarError):
        return False
    return True


def schema_functions(count: int, max_chars: int = 800, path: Path = SCHEMA_SET) -> list[SchemaFunction]:
    by_split: dict[str, list[SchemaFunction]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if _usable(rec["schema"], max_chars):
            name = "fn_" + re.sub(r"[^a-z0-9]+", "_", rec["id"].removesuffix(".json").lower())
            by_split.setdefault(rec["split"], []).append(SchemaFunction(name, rec["schema"]))
    interleaved = [f for group in itertools.zip_longest(*by_split.values()) for f in group if f is not None]
    return interleaved[:count]


def call_problem(function: SchemaFunction, calls: list[dict[str, Any]]) -> str | None:
    """None if `calls` (OpenAI `tool_calls`, as dicts) is one call of `function` whose arguments parse and
    validate; else what is wrong."""
    if len(calls) != 1:
        return f"{len(calls)} calls"
    call = calls[0]["function"]
    if call["name"] != function.name:
        return f"called {call['name']!r}"
    try:
        arguments = json.loads(call["arguments"])
    except json.JSONDecodeError as e:
        return f"arguments are not JSON: {e}"
    try:
        jsonschema.validators.validator_for(function.schema)(function.schema).validate(arguments)
    except jsonschema.ValidationError as e:
        return f"arguments do not validate: {e.message}"
    return None
