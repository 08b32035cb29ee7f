"""OpenAI request bodies (/v1/completions, /v1/chat/completions) with SGLang's extra sampling fields."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JSON_OBJECT_SCHEMA = json.dumps({"type": "object"})


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class OpenAISamplingRequest(BaseModel):
    """Fields both endpoints share: OpenAI's sampling knobs plus SGLang's extras (top_k, min_p, regex...)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
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
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    ebnf: str | None = None
    json_schema: str | None = None
    rid: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # many clients send `"field": null` for "not set"
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(self, max_new_tokens: int) -> dict[str, Any]:
        """The `/generate` sampling_params this request stands for."""
        json_schema = self.json_schema
        rf = self.response_format
        if rf is not None and rf.type == "json_object":
            json_schema = JSON_OBJECT_SCHEMA
        elif rf is not None and rf.type == "json_schema":
            if rf.json_schema is None:
                raise ValueError("response_format of type json_schema needs a `json_schema` object")
            json_schema = json.dumps(rf.json_schema.schema_)
        return {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": self.min_tokens,
            "n": self.n,
            "stop": self.stop or [],
            "stop_token_ids": self.stop_token_ids or [],
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
            "regex": self.regex,
            "ebnf": self.ebnf,
            "json_schema": json_schema,
            "sampling_seed": self.seed,
            "logit_bias": self.logit_bias,
        }


class CompletionRequest(OpenAISamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16
    logprobs: int | None = None  # number of top alternatives per token
    echo: bool = False


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        unsupported = sorted({p.type for p in self.content if p.type != "text"})
        if unsupported:
            raise ValueError(f"message content parts of type {', '.join(unsupported)} are not supported")
        return "".join(p.text or "" for p in self.content)


class ChatCompletionRequest(OpenAISamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.tools:
            raise ValueError("tools / function calling is not supported yet")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]
