"""OpenAI request bodies (/v1/completions, /v1/chat/completions) with SGLang's extra fields."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sglang_dspark.entrypoints.sglang_fields import CHAT_FIELDS, COMPLETION_FIELDS, FieldPolicy

JSON_OBJECT_SCHEMA = json.dumps({"type": "object"})


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class TaggedStructure(BaseModel):
    """One structure of SGLang's legacy structural-tag response format: `begin`, JSON per `schema`, `end`."""

    begin: str
    schema_: dict[str, Any] | None = Field(alias="schema", default=None)
    end: str


class ResponseFormat(BaseModel):
    """OpenAI's response_format, plus SGLang's `structural_tag` type: either xgrammar's structural tag
    (`{"type": "structural_tag", "format": {...}}`) or SGLang's legacy `structures` + `triggers` form."""

    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    format: dict[str, Any] | None = None
    structures: list[TaggedStructure] | None = None
    triggers: list[str] | None = None
    at_least_one: bool = False

    def constraint(self) -> dict[str, str]:
        """The sampling_params constraint field this format stands for ({} for text)."""
        if self.type == "json_object":
            return {"json_schema": JSON_OBJECT_SCHEMA}
        if self.type == "json_schema":
            if self.json_schema is None:
                raise ValueError("response_format of type json_schema needs a `json_schema` object")
            return {"json_schema": json.dumps(self.json_schema.schema_)}
        if self.type == "text":
            return {}
        if self.format is not None:
            return {"structural_tag": json.dumps({"type": "structural_tag", "format": self.format})}
        if self.structures is None or self.triggers is None:
            raise ValueError("response_format of type structural_tag needs `format`, or `structures` and `triggers`")
        tags = [
            {
                "type": "tag",
                "begin": st.begin,
                "content": {"type": "json_schema", "json_schema": True if st.schema_ is None else st.schema_},
                "end": st.end,
            }
            for st in self.structures
        ]
        triggered = {
            "type": "triggered_tags",
            "triggers": self.triggers,
            "tags": tags,
            "at_least_one": self.at_least_one,
        }
        return {"structural_tag": json.dumps({"type": "structural_tag", "format": triggered})}


class OpenAISamplingRequest(BaseModel):
    """Fields both endpoints share: OpenAI's sampling knobs plus SGLang's extras (top_k, min_p, regex...).

    Unknown fields are ignored, as SGLang's pydantic models do; SGLang's own fields this server does not
    use are checked against `sglang_fields` (accepted as metadata, or a 400 unless at their default)."""

    model_config = ConfigDict(extra="ignore")
    sglang_fields: ClassVar[FieldPolicy]

    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # SGLang extras
    top_k: int = -1
    min_p: float = 0.0
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    ebnf: str | None = None
    json_schema: str | None = None
    rid: str | list[str] | None = None
    # this server's extras (grammar/json_bounds.py)
    max_json_string_length: int | None = None
    max_json_array_items: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # many clients send `"field": null` for "not set"
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in cls.sglang_fields.strip(data).items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(self, max_new_tokens: int) -> dict[str, Any]:
        """The `/generate` sampling_params this request stands for."""
        constraint = {"regex": self.regex, "ebnf": self.ebnf, "json_schema": self.json_schema}
        if self.response_format is not None:
            constraint.update(self.response_format.constraint())
        return {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": self.min_tokens,
            "n": self.n,
            "stop": self.stop or [],
            "stop_token_ids": self.stop_token_ids or [],
            "stop_regex": self.stop_regex or [],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "repetition_penalty": self.repetition_penalty,
            "ignore_eos": self.ignore_eos,
            "skip_special_tokens": self.skip_special_tokens,
            "spaces_between_special_tokens": self.spaces_between_special_tokens,
            "no_stop_trim": self.no_stop_trim,
            **constraint,
            "max_json_string_length": self.max_json_string_length,
            "max_json_array_items": self.max_json_array_items,
            "sampling_seed": self.seed,
            "logit_bias": self.logit_bias,
        }


class CompletionRequest(OpenAISamplingRequest):
    sglang_fields = COMPLETION_FIELDS
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16
    logprobs: int | None = None  # number of top alternatives per token
    echo: bool = False


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict[str, Any] | None = None  # a JSON object as a string (OpenAI), or the object


class MessageToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        unsupported = sorted({p.type for p in self.content if p.type != "text"})
        if unsupported:
            raise ValueError(f"message content parts of type {', '.join(unsupported)} are not supported")
        return "".join(p.text or "" for p in self.content)


class FunctionDefinition(BaseModel):
    name: str
    description: str | None = None
    parameters: Any = None  # a JSON schema (checked in tool_calls.functions_of, to name the tool)
    strict: bool | None = None


class Tool(BaseModel):
    type: str = "function"
    function: FunctionDefinition


class ToolChoiceFunction(BaseModel):
    name: str


class ToolChoice(BaseModel):
    """A named function: `{"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class ChatCompletionRequest(OpenAISamplingRequest):
    sglang_fields = CHAT_FIELDS
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    input_ids: list[int] | None = None  # the prompt's token ids: the chat template is not applied
    tools: list[Tool] | None = None
    # SGLang's default: "auto" when tools are given, "none" otherwise
    tool_choice: Literal["auto", "required", "none"] | ToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.tool_choice is None:
            self.tool_choice = "auto" if self.tools else "none"
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self
