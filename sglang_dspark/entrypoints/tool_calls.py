"""Tool calling for /v1/chat/completions: the request's tools, the grammar that constrains the calls, the
prompt side (chat template) and the parser that turns the output back into OpenAI `tool_calls`.

Formats (`--tool-call-parser`, SGLang's names):

- `qwen25` (also `qwen`, `hermes`; Qwen2.5's and SmolLM2's): `<tool_call>\\n{"name": ..., "arguments":
  {...}}\\n</tool_call>`, one block per call;
- `llama3`: `{"name": ..., "parameters": {...}}`, calls separated by `;` (Llama 3.1's JSON tool calls).

Constraint (an xgrammar structural tag): with `tool_choice` `required` or a named function the output is
nothing but calls, each call's arguments valid under its function's JSON schema; with `auto` the text is
free until the format's opening text, from which on a call must follow the schema.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import jsonschema

from sglang_dspark.entrypoints.openai_protocol import ChatCompletionRequest, ToolChoice

NO_ARGUMENTS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's `{"type": "function", "function": {...}}` (what chat templates render)."""
        function = {"name": self.name, "parameters": self.parameters}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI returns it
    id: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


@dataclass(frozen=True)
class ParsedOutput:
    content: str  # the text that is not a call
    calls: list[ToolCall]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def functions_of(req: ChatCompletionRequest) -> list[Function]:
    """The request's tools, checked: ValueError (-> 400) naming a tool that is not a function with a
    valid JSON schema, a duplicate name, or a tool_choice naming no tool."""
    functions = []
    for i, tool in enumerate(req.tools or []):
        if tool.type != "function":
            raise ValueError(f"tools[{i}] has type {tool.type!r}; only function tools are supported")
        name, parameters = tool.function.name, tool.function.parameters
        if parameters is None:
            parameters = NO_ARGUMENTS
        if not isinstance(parameters, dict):
            raise ValueError(f"tool `{name}`: parameters must be a JSON schema object, got {type(parameters).__name__}")
        try:
            jsonschema.validators.validator_for(parameters).check_schema(parameters)
        except jsonschema.SchemaError as e:
            raise ValueError(f"tool `{name}`: parameters is not a valid JSON schema: {e.message}") from None
        functions.append(Function(name, tool.function.description, parameters))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ValueError(f"tools must have distinct names, got {names}")
    choice = req.tool_choice
    if isinstance(choice, ToolChoice) and choice.function.name not in names:
        raise ValueError(f"tool_choice names function `{choice.function.name}`, which is not in tools {names}")
    if choice == "required" and not functions:
        raise ValueError("tool_choice `required` needs at least one tool")
    return functions


class ToolCallFormat(ABC):
    """One model family's tool-call text: grammar, parser, and prompt text for templates without tools."""

    trigger: str  # the text a call starts with (where `auto` starts constraining)
    separator: str  # between two calls when only calls are allowed

    @abstractmethod
    def call_tag(self, function: Function) -> dict[str, Any]:
        """xgrammar `tag` format of one call of `function`."""

    @abstractmethod
    def render(self, name: str, arguments: Any) -> str:
        """A call as the model writes it (for history messages under templates that do not render calls)."""

    @abstractmethod
    def system_prompt(self, functions: list[Function]) -> str:
        """What the prompt says about the tools when the chat template does not render them."""

    @abstractmethod
    def parse(self, text: str) -> ParsedOutput:
        """Calls and remaining text of a model output; text that does not parse as a call stays text."""

    def structural_tag(self, functions: list[Function], only_calls: bool, parallel: bool) -> dict[str, Any]:
        """The structural tag constraining an answer: only calls (`required` / named), or free text whose
        calls follow the schemas (`auto`). Without `parallel` at most one call."""
        tags = [self.call_tag(f) for f in functions]
        if only_calls:
            fmt = {"type": "tags_with_separator", "tags": tags, "separator": self.separator}
            fmt |= {"at_least_one": True, "stop_after_first": not parallel}
        else:
            fmt = {"type": "triggered_tags", "triggers": [self.trigger], "tags": tags, "stop_after_first": not parallel}
        return {"type": "structural_tag", "format": fmt}

    @staticmethod
    def _arguments(content: dict[str, Any]) -> dict[str, Any]:
        # at most one whitespace character in a row: a small model cannot loop on whitespace
        return {"type": "json_schema", "json_schema": content, "max_whitespace_cnt": 1}


class Qwen25Format(ToolCallFormat):
    trigger = "<tool_call>"
    separator = "\n"
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

    def call_tag(self, function: Function) -> dict[str, Any]:
        begin = f'<tool_call>\n{{"name": {json.dumps(function.name)}, "arguments": '
        return {
            "type": "tag",
            "begin": begin,
            "content": self._arguments(function.parameters),
            "end": "}\n</tool_call>",
        }

    def render(self, name: str, arguments: Any) -> str:
        return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"

    def system_prompt(self, functions: list[Function]) -> str:
        listed = "\n".join(json.dumps(f.openai(), ensure_ascii=False) for f in functions)
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def parse(self, text: str) -> ParsedOutput:
        content, calls, pos = [], [], 0
        for m in self._BLOCK.finditer(text):
            call = _call_of(m.group(1), "arguments")
            content.append(text[pos : m.start()] if call else text[pos : m.end()])
            calls += [call] if call else []
            pos = m.end()
        content.append(text[pos:])
        return ParsedOutput("".join(content), calls)


class Llama3Format(ToolCallFormat):
    trigger = '{"name": '
    separator = ";"

    def call_tag(self, function: Function) -> dict[str, Any]:
        begin = f'{{"name": {json.dumps(function.name)}, "parameters": '
        return {"type": "tag", "begin": begin, "content": self._arguments(function.parameters), "end": "}"}

    def render(self, name: str, arguments: Any) -> str:
        return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)

    def system_prompt(self, functions: list[Function]) -> str:
        listed = "\n\n".join(json.dumps(f.openai(), ensure_ascii=False) for f in functions)
        return (
            "Given the following functions, please respond with a JSON for a function call with its proper "
            "arguments that best answers the given prompt.\n\n"
            'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
            f"value}}. Do not use variables.\n\n{listed}"
        )

    def parse(self, text: str) -> ParsedOutput:
        start = text.find(self.trigger)
        if start < 0:
            return ParsedOutput(text, [])
        decoder, calls, pos = json.JSONDecoder(), [], start
        while pos < len(text):
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break
            call = _call_of(json.dumps(obj), "parameters")
            if call is None:
                break
            calls.append(call)
            pos = end + len(self.separator) if text.startswith(self.separator, end) else end
        return ParsedOutput(text[:start] + text[pos:], calls)


def _call_of(text: str, arguments_key: str) -> ToolCall | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("arguments"))
    if not isinstance(arguments, dict):
        return None
    return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False), new_call_id())


FORMATS: dict[str, ToolCallFormat] = {
    "qwen25": Qwen25Format(),
    "qwen": Qwen25Format(),
    "hermes": Qwen25Format(),
    "llama3": Llama3Format(),
}


@dataclass
class ToolPlan:
    """How one chat request uses its tools: the constraint and whether the output is parsed for calls."""

    functions: list[Function]
    structural_tag: dict[str, Any] | None  # None: no constraint from the tools
    parse: bool
    only_calls: bool = False  # the answer is nothing but calls (tool_choice required or a named function)


def plan(req: ChatCompletionRequest, fmt: ToolCallFormat) -> ToolPlan:
    functions = functions_of(req)
    choice = req.tool_choice
    if not functions or choice == "none":
        return ToolPlan([], None, parse=False)
    if isinstance(choice, ToolChoice):
        chosen = [f for f in functions if f.name == choice.function.name]
        tag = fmt.structural_tag(chosen, only_calls=True, parallel=False)
        return ToolPlan(functions, tag, parse=True, only_calls=True)
    only_calls = choice == "required"
    tag = fmt.structural_tag(functions, only_calls=only_calls, parallel=req.parallel_tool_calls)
    return ToolPlan(functions, tag, parse=True, only_calls=only_calls)


def template_messages(req: ChatCompletionRequest, fmt: ToolCallFormat, renders_tools: bool) -> list[dict[str, Any]]:
    """The messages as the chat template takes them. A template that renders tools gets OpenAI's
    `tool_calls` (arguments as objects, as HF templates expect) and `tool` messages; for one that does not,
    calls are written in the format's text and tool results become user messages."""
    out = []
    for m in req.messages:
        calls = [(c.function.name, _loads_arguments(c.function.arguments)) for c in m.tool_calls or []]
        if renders_tools:
            msg: dict[str, Any] = {"role": m.role, "content": m.text()}
            if calls:
                msg["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
            for key in ("tool_call_id", "name"):
                if getattr(m, key) is not None:
                    msg[key] = getattr(m, key)
        elif m.role == "tool":
            msg = {"role": "user", "content": f"<tool_response>\n{m.text()}\n</tool_response>"}
        else:
            text = "\n".join([m.text(), *(fmt.render(n, a) for n, a in calls)]) if calls else m.text()
            msg = {"role": m.role, "content": text.lstrip("\n")}
        out.append(msg)
    return out


def with_tool_prompt(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """`messages` with the tool prompt appended to the system message (a new first one if there is none)."""
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _loads_arguments(arguments: str | dict[str, Any] | None) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments or {}


class ToolCallStream:
    """Turns one choice's growing output text into streamed `content` and `tool_calls` deltas whose
    concatenation is the non-streamed message: text before the first call streams as it comes (less a tail
    that may begin the call format), each call is sent whole once it is complete, the rest at the end."""

    def __init__(self, fmt: ToolCallFormat) -> None:
        self.fmt = fmt
        self.sent_content = ""
        self.sent_calls = 0

    def delta(self, text: str, finished: bool) -> tuple[str, list[ToolCall]]:
        parsed = self.fmt.parse(text)
        if finished:
            content = parsed.content
        else:
            start = text.find(self.fmt.trigger)
            content = text[:start] if start >= 0 else _hold_partial(text, self.fmt.trigger)
        calls = parsed.calls  # a call parses only once its text is complete, and then no later token changes it
        new_content = content[len(self.sent_content) :] if content.startswith(self.sent_content) else ""
        self.sent_content += new_content
        new_calls = calls[self.sent_calls :]
        self.sent_calls = max(self.sent_calls, len(calls))
        return new_content, new_calls


def _hold_partial(text: str, trigger: str) -> str:
    hold = max((k for k in range(1, len(trigger)) if text.endswith(trigger[:k])), default=0)
    return text[: len(text) - hold]
