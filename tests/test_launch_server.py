"""The README's first command, as a user runs it: `python -m sglang_dspark.launch_server` from the
checkout root with the default model and flags, answering /generate and an OpenAI json_schema request."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import requests

from sglang_dspark.launch_server import local_server

REPO = Path(__file__).resolve().parents[1]

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_readme_server_command_from_the_checkout_root(tmp_path):
    with local_server([], tmp_path / "server.log", cwd=REPO) as url:
        out = requests.post(
            f"{url}/generate",
            json={"text": "The capital of France is", "sampling_params": {"temperature": 0, "max_new_tokens": 8}},
            timeout=300,
        )
        assert out.status_code == 200, out.text
        body = out.json()
        assert body["text"] and body["meta_info"]["completion_tokens"] > 0

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        chat = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Describe a person as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
            max_tokens=64,
            temperature=0,
        )
        person = json.loads(chat.choices[0].message.content)
        assert set(person) == {"name", "age"} and isinstance(person["age"], int)
