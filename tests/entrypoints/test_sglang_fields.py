"""SGLang's request fields on every route of a real server (see conftest.py), as SGLang's own clients send them.

The field lists come from the installed `sglang` wheel: `GenerateReqInput` is read from its source
(importing `sglang.srt.managers.io_struct` pulls in torchvision, which this CPU install does not have), the
OpenAI protocol models are imported.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import sglang
from sglang.srt.entrypoints.openai import protocol

from sglang_dspark.entrypoints.sglang_fields import CHAT_FIELDS, COMPLETION_FIELDS

PROMPT = "1, 2, 3, 4,"
MESSAGES = [{"role": "user", "content": "Continue the sequence: 1, 2, 3, 4,"}]
GREEDY = {"temperature": 0, "max_tokens": 6}


def generate_req_input_defaults() -> dict[str, Any]:
    """{field: default} of the wheel's `GenerateReqInput` dataclass, from its source."""
    source = Path(sglang.__file__).parent / "srt" / "managers" / "io_struct.py"
    tree = ast.parse(source.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GenerateReqInput")
    defaults = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":  # field(default=..., ...)
            value = next(k.value for k in value.keywords if k.arg == "default")
        defaults[node.target.id] = ast.literal_eval(value)
    return defaults


def test_generate_accepts_every_generate_req_input_field_at_its_default(server_url):
    defaults = generate_req_input_defaults()
    assert {"rid", "text", "log_metrics", "return_hidden_states", "background", "no_logs", "kv_hints"} <= set(defaults)
    body = {**defaults, "text": PROMPT, "sampling_params": {"max_new_tokens": 3, "temperature": 0}}
    r = requests.post(f"{server_url}/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["text"].startswith(" 5") and r.json()["meta_info"]["completion_tokens"] == 3
    stream = requests.post(f"{server_url}/generate", json={**body, "stream": True}, timeout=300)
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(
    "extra, name",
    [
        ({"return_hidden_states": True}, "return_hidden_states"),
        ({"lora_path": "adapter"}, "lora_path"),
        ({"image_data": "http://x/cat.png"}, "image_data"),
        ({"routed_dp_rank": 1}, "routed_dp_rank"),
        ({"return_logprob": [True, False], "text": ["a", "b"]}, "return_logprob"),
        ({"not_an_sglang_field": 1}, "not_an_sglang_field"),
    ],
)
def test_generate_rejects_what_it_cannot_honour_by_name(server_url, extra, name):
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 2}, **extra}
    r = requests.post(f"{server_url}/generate", json=body, timeout=300)
    assert r.status_code == 400 and name in r.json()["error"]["message"]


def test_generate_takes_sglang_nulls_lists_and_metadata(server_url):
    body = {
        "text": [PROMPT, PROMPT],
        "sampling_params": {"max_new_tokens": 3, "temperature": 0, "stream_interval": None, "beam_width": None},
        "return_logprob": [True, True],
        "logprob_start_len": None,
        "top_logprobs_num": None,
        "routed_dp_rank": 0,
        "priority": 5,
        "custom_labels": {"team": "a"},
        "log_metrics": False,
    }
    r = requests.post(f"{server_url}/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert [len(o["meta_info"]["output_token_logprobs"]) for o in r.json()] == [3, 3]


@pytest.fixture(scope="module")
def client(server_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=300)


@dataclass
class Result:
    text: str
    finish_reason: str
    matched_stop: Any
    completion_tokens: int


def call(client: openai.OpenAI, route: str, stream: bool, extra_body: dict, **kwargs) -> Result:
    kwargs = {**GREEDY, **kwargs, "model": "any", "extra_body": extra_body}
    if route == "chat":
        create, kwargs["messages"] = client.chat.completions.create, MESSAGES
    else:
        create, kwargs["prompt"] = client.completions.create, PROMPT
    if not stream:
        out = create(**kwargs)
        choice = out.choices[0]
        text = choice.message.content if route == "chat" else choice.text
        return Result(text, choice.finish_reason, choice.model_extra["matched_stop"], out.usage.completion_tokens)
    chunks = list(create(**kwargs, stream=True, stream_options={"include_usage": True}))
    choices = [c.choices[0] for c in chunks if c.choices]
    text = "".join((c.delta.content or "") if route == "chat" else c.text for c in choices)
    last = choices[-1]
    return Result(text, last.finish_reason, last.model_extra["matched_stop"], chunks[-1].usage.completion_tokens)


@dataclass
class Case:
    """One SGLang extra field set to a non-default value, and what the answer must then show."""

    field: str
    value: Any
    check: Any  # (result, greedy result, tokenizer) -> None
    kwargs: dict = field(default_factory=dict)  # other request fields the case needs


def _same_as_greedy(r: Result, greedy: Result, tok) -> None:
    assert r.text == greedy.text


def _digits(r: Result, greedy: Result, tok) -> None:
    assert re.fullmatch("[0-9]+", r.text)


def _yes_no(r: Result, greedy: Result, tok) -> None:
    assert json.loads(r.text) in ("yes", "no") and r.finish_reason == "stop"


def _ab(r: Result, greedy: Result, tok) -> None:
    assert r.text == "ab" and r.finish_reason == "stop"


def _ran_to_length(r: Result, greedy: Result, tok) -> None:
    assert r.finish_reason == "length" and r.text == greedy.text


def _stops_on_first_token(r: Result, greedy: Result, tok) -> None:
    first = tok.encode(greedy.text, add_special_tokens=False)[0]
    assert r.finish_reason == "stop" and r.matched_stop == first and r.completion_tokens == 1 and r.text == ""


def _min_tokens(r: Result, greedy: Result, tok) -> None:
    assert r.completion_tokens >= 3


def _stop_regex(r: Result, greedy: Result, tok) -> None:
    # SGLang: finish_reason stop, matched_stop the pattern, the matched text kept
    assert r.finish_reason == "stop" and r.matched_stop == r"\d, \d"
    assert re.search(r"\d, \d", r.text) and greedy.text.startswith(r.text)


def _no_stop_trim(r: Result, greedy: Result, tok) -> None:
    assert r.finish_reason == "stop" and r.text.endswith(",") and greedy.text.startswith(r.text)


def _answered(r: Result, greedy: Result, tok) -> None:
    assert r.completion_tokens > 0 and r.finish_reason in ("stop", "length")


def _structural_tag(r: Result, greedy: Result, tok) -> None:
    assert re.fullmatch(r"<n>[0-9]{1,3}</n>", r.text) and r.finish_reason == "stop"


STRUCTURAL_TAG = {
    "type": "structural_tag",
    "format": {"type": "tag", "begin": "<n>", "content": {"type": "regex", "pattern": "[0-9]{1,3}"}, "end": "</n>"},
}

CASES = [
    Case("top_k", 1, _same_as_greedy, {"temperature": 1.0}),
    Case("min_p", 1.0, _same_as_greedy, {"temperature": 1.0}),
    Case("min_tokens", 3, _min_tokens, {"stop": [","]}),
    Case("regex", "[0-9]+", _digits),
    Case("json_schema", json.dumps({"type": "string", "enum": ["yes", "no"]}), _yes_no, {"max_tokens": 8}),
    Case("ebnf", 'root ::= "a" "b"', _ab),
    Case("repetition_penalty", 1.3, _answered),
    Case("stop_token_ids", [10**7], _ran_to_length),  # outside the vocabulary: never matches
    Case("stop_regex", r"\d, \d", _stop_regex, {"max_tokens": 16}),
    Case("no_stop_trim", True, _no_stop_trim, {"stop": [","]}),
    Case("ignore_eos", True, _ran_to_length),
    Case("skip_special_tokens", False, _same_as_greedy),
    Case("spaces_between_special_tokens", False, _same_as_greedy),
    Case("rid", "a-request-id", _same_as_greedy),
    Case("response_format", STRUCTURAL_TAG, _structural_tag, {"max_tokens": 16}),
    # metadata (sglang_fields.py): any value, the output does not change; sent together
    Case("session_id", "s1", _same_as_greedy, {"extra": {"priority": 3, "custom_labels": {"team": "a"}, "user": "u"}}),
    Case("routed_dp_rank", 0, _same_as_greedy, {"extra": {"data_parallel_rank": 0}}),
]
CHAT_CASES = [
    Case("separate_reasoning", False, _same_as_greedy),
    Case("stream_reasoning", False, _same_as_greedy),
    Case("chat_template_kwargs", {"unused_flag": True}, _same_as_greedy),
]


@pytest.fixture(scope="module")
def greedy(client) -> dict[str, Result]:
    return {route: call(client, route, False, {}) for route in ("completions", "chat")}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("route", ["completions", "chat"])
@pytest.mark.parametrize("case", CASES + CHAT_CASES, ids=lambda c: c.field)
def test_sglang_extra_field_through_openai_extra_body(client, tokenizer, greedy, case, route, stream):
    if case in CHAT_CASES and route != "chat":
        pytest.skip("a chat field")
    kwargs = dict(case.kwargs)
    extra = {case.field: case.value, **kwargs.pop("extra", {})}
    if case.field == "stop_token_ids":
        extra["ignore_eos"] = True  # length is then the only way to finish
    result = call(client, route, stream, extra, **kwargs)
    case.check(result, greedy[route], tokenizer)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("route", ["completions", "chat"])
def test_stop_token_id_of_the_first_token_stops_at_once(client, tokenizer, greedy, route, stream):
    first = tokenizer.encode(greedy[route].text, add_special_tokens=False)[0]
    _stops_on_first_token(call(client, route, stream, {"stop_token_ids": [first]}), greedy[route], tokenizer)


def test_chat_input_ids_bypass_the_template(client, tokenizer, greedy):
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    out = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "ignored"}],
                                         extra_body={"input_ids": ids}, **GREEDY)  # fmt: skip
    assert out.choices[0].message.content == greedy["chat"].text


def sglang_extra_fields(model: type, ours: type) -> list[tuple[str, Any]]:
    """(name, SGLang default) of every field of an SGLang protocol model that is not in OpenAI's API."""
    openai_names = {"messages", "prompt", "model", "stream", "stream_options", "user"} | set(ours.model_fields)
    return [
        (n, f.get_default(call_default_factory=True)) for n, f in model.model_fields.items() if n not in openai_names
    ]


def route_fields():
    from sglang_dspark.entrypoints.openai_protocol import ChatCompletionRequest, CompletionRequest

    for route, model, ours in (
        ("completions", protocol.CompletionRequest, CompletionRequest),
        ("chat", protocol.ChatCompletionRequest, ChatCompletionRequest),
    ):
        for name, default in sglang_extra_fields(model, ours):
            yield pytest.param(route, name, default, id=f"{route}-{name}")


@pytest.mark.parametrize("route, name, default", list(route_fields()))
def test_every_other_sglang_field_is_accepted_at_its_default_or_refused_by_name(client, route, name, default):
    policy = CHAT_FIELDS if route == "chat" else COMPLETION_FIELDS
    assert name in policy.names(), f"{name} is neither honoured nor listed in sglang_fields"
    call(client, route, False, {name: default}, max_tokens=1)
    if name in policy.default_only:
        with pytest.raises(openai.BadRequestError, match=name):
            call(client, route, False, {name: "a value this server cannot honour"}, max_tokens=1)
