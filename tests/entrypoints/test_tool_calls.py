"""Tool calling in /v1/chat/completions: the formats' parsers, and real servers driven with the `openai` client.

The default model's chat template ignores `tools`, so its prompts carry the qwen25 format's tool prompt.
`benchmarks/bench_tool_calls.py` runs the same checks on 50 schema functions (results:
benchmarks/results/tool_calls.md); here a few keep the suite short.
"""

from __future__ import annotations

import json

import openai
import pytest

from sglang_dspark.entrypoints.tool_calls import FORMATS, ToolCallStream
from sglang_dspark.evaluation.tool_call_schemas import call_problem, schema_functions

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the get_weather tool."}]
GREEDY = {"model": "any", "temperature": 0, "max_tokens": 64}
ONE_CALL = {**GREEDY, "parallel_tool_calls": False}  # a small model given the choice calls again and again
CI_SCHEMA_CALLS = 2  # the benchmark runs 50


# ---- the formats, without a server --------------------------------------------------------------------


@pytest.mark.parametrize(
    "parser, text, content, calls",
    [
        ("qwen25", 'Hi <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', "Hi ", [("f", {"a": 1})]),
        (
            "qwen25",
            '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"name": "g", "arguments": {"b": [1]}}'
            "</tool_call>",
            "\n",
            [("f", {}), ("g", {"b": [1]})],
        ),
        ("qwen25", "<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", []),
        ("qwen25", '<tool_call>\n{"name": "f", "argu', '<tool_call>\n{"name": "f", "argu', []),
        (
            "llama3",
            '{"name": "f", "parameters": {"a": 1}};{"name": "g", "parameters": {}}',
            "",
            [("f", {"a": 1}), ("g", {})],
        ),
        ("llama3", 'Sure: {"name": "f", "arguments": {"a": 1}}', "Sure: ", [("f", {"a": 1})]),
        ("llama3", "no call here", "no call here", []),
    ],
)
def test_parse(parser, text, content, calls):
    parsed = FORMATS[parser].parse(text)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == calls


@pytest.mark.parametrize("parser", ["qwen25", "llama3"])
def test_streamed_deltas_add_up_to_the_parsed_output(parser):
    fmt = FORMATS[parser]
    text = "Let me check. " + fmt.render("f", {"a": "x"}) + fmt.separator + fmt.render("g", {"b": 2}) + " done"
    parsed = fmt.parse(text)
    stream, content, calls = ToolCallStream(fmt), "", []
    for end in range(1, len(text) + 1):  # one character at a time
        new_content, new_calls = stream.delta(text[:end], finished=end == len(text))
        content += new_content
        calls += new_calls
        assert parsed.content.startswith(content)  # nothing sent is ever taken back
    assert content == parsed.content
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in parsed.calls]


# ---- a real server --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=1200)


def streamed_calls(chunks) -> tuple[str, list[dict], str]:
    """(content, tool calls, finish_reason) assembled from streamed chunks as OpenAI clients do."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": d.id, "function": {"name": "", "arguments": ""}})
                call["function"]["name"] += d.function.name or ""
                call["function"]["arguments"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_required_round_trip(client):
    first = client.chat.completions.create(messages=ASK, tools=[WEATHER, TIME], tool_choice="required", **ONE_CALL)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    assert call.function.name in ("get_weather", "get_time") and call.id.startswith("call_") and "city" in arguments
    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    answer = client.chat.completions.create(messages=history, tools=[WEATHER, TIME], **GREEDY)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens


def test_call_arguments_respect_json_bounds(client):
    """Strings in the arguments close at max_json_string_length characters (the server's
    --tool-call-max-string-length unless the request sets it), and the call still validates."""
    kwargs = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required", **ONE_CALL}
    free = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    city = json.loads(free.function.arguments)["city"]
    assert len(city) > 2
    bounded = client.chat.completions.create(**kwargs, extra_body={"max_json_string_length": 2})
    call = bounded.choices[0].message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    assert len(arguments["city"]) <= 2 and arguments["unit"] in ("celsius", "fahrenheit")


def test_auto_round_trip(client):
    # with `auto` the model decides; this 135M model writes a call only when shown one to repeat
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    repeat = f"Repeat exactly: <tool_call>\n{json.dumps(call)}\n</tool_call>"
    ask = [{"role": "user", "content": repeat}]
    first = client.chat.completions.create(messages=ask, tools=[WEATHER], tool_choice="auto", **ONE_CALL)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    history = [
        *ask,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "21 degrees, clear sky"},
    ]
    answer = client.chat.completions.create(messages=history, tools=[WEATHER], tool_choice="auto", **GREEDY)
    assert answer.choices[0].message.content
    # without a call to repeat it answers in text: auto constrains nothing before the opening tag
    text = client.chat.completions.create(messages=ASK, tools=[WEATHER], tool_choice="auto", **ONE_CALL)
    assert text.choices[0].message.content and text.choices[0].message.tool_calls is None


def test_named_none_and_parallel(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    out = client.chat.completions.create(messages=ASK, tools=[WEATHER, TIME], tool_choice=named, **GREEDY)
    assert [c.function.name for c in out.choices[0].message.tool_calls] == ["get_time"]
    none = client.chat.completions.create(messages=ASK, tools=[WEATHER, TIME], tool_choice="none", **GREEDY)
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")
    single = client.chat.completions.create(
        messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, **GREEDY
    )
    assert len(single.choices[0].message.tool_calls) == 1


def test_streaming_returns_tool_call_deltas(client):
    kwargs = {"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required", **ONE_CALL}
    full = client.chat.completions.create(**kwargs).choices[0]
    content, calls, finish = streamed_calls(client.chat.completions.create(**kwargs, stream=True))
    assert finish == full.finish_reason == "tool_calls"
    assert (content or None) == full.message.content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in full.message.tool_calls
    ]


@pytest.mark.parametrize(
    "tools, tool_choice, message",
    [
        ([{**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": "objekt"}}}], "auto", "get_weather"),
        ([{**WEATHER, "function": {**WEATHER["function"], "parameters": 5}}], "auto", "get_weather"),
        ([WEATHER], {"type": "function", "function": {"name": "send_email"}}, "send_email"),
        ([WEATHER, WEATHER], "auto", "distinct"),
        ([], "required", "required"),
    ],
)
def test_bad_tools_are_a_400_naming_them(client, tools, tool_choice, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(messages=ASK, tools=tools, tool_choice=tool_choice, **GREEDY)


def test_tools_with_another_constraint_are_a_400(client):
    with pytest.raises(openai.BadRequestError, match="regex"):
        client.chat.completions.create(
            messages=ASK, tools=[WEATHER], tool_choice="required", extra_body={"regex": "a"}, **GREEDY
        )


# ---- schema functions: every call parses and validates, plain and DSPARK, streamed or not -----------------
# The second function is one where the 135M model loops inside a free-text argument: the JSON bounds
# (--tool-call-max-string-length and the closing reserve) make it end its call within max_tokens.


def schema_calls(client: openai.OpenAI, count: int, stream: bool) -> list[list[tuple[str, str]]]:
    """Per function: its calls as (name, arguments)."""
    out = []
    for function in schema_functions(count):
        kwargs = {**GREEDY, "max_tokens": 512, **function.required_call()}
        if stream:
            _, calls, finish = streamed_calls(client.chat.completions.create(**kwargs, stream=True))
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
            calls, finish = [c.model_dump() for c in choice.message.tool_calls or []], choice.finish_reason
        assert finish == "tool_calls" and call_problem(function, calls) is None, (function.name, finish, calls)
        out.append([(c["function"]["name"], c["function"]["arguments"]) for c in calls])
    return out


@pytest.fixture(scope="module")
def plain_schema_calls(client) -> list[list[tuple[str, str]]]:
    return schema_calls(client, CI_SCHEMA_CALLS, stream=False)


def test_schema_function_calls_validate(client, plain_schema_calls):
    assert schema_calls(client, CI_SCHEMA_CALLS, stream=True) == plain_schema_calls


def test_schema_function_calls_under_dspark_are_lossless(dspark_server_url, plain_schema_calls):
    dspark = openai.OpenAI(base_url=f"{dspark_server_url}/v1", api_key="unused", max_retries=0, timeout=1200)
    assert schema_calls(dspark, CI_SCHEMA_CALLS, stream=False) == plain_schema_calls
    assert schema_calls(dspark, CI_SCHEMA_CALLS, stream=True) == plain_schema_calls
