"""Per-request sampling parameters (the ``sampling_params`` object of SGLang's ``/generate``).

``SamplingParams.from_dict`` is the entry point for user input: as in SGLang a null value means the
default; it rejects unknown keys and wrongly typed values, normalizes ``stop`` / ``stop_regex`` to lists,
and runs ``validate()`` without a vocab size. The engine calls ``validate(vocab_size)`` again once the
tokenizer/model vocab is known, which additionally range-checks ``logit_bias`` ids. A ``stop_token_ids``
entry outside the vocabulary is accepted, as SGLang does, and never matches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from sglang_dspark.grammar.json_bounds import JsonBounds

# Temperatures below this are treated as greedy (dividing logits by ~0 is numerically meaningless).
SAMPLING_EPS = 1e-6
# Samples per prompt: OpenAI's own limit. Each sample is a request of its own, so an unbounded n in a
# few bytes of JSON could queue millions of them.
MAX_N = 128


class SamplingParamsError(ValueError):
    """Invalid sampling parameters (unknown key, wrong type or out-of-range value)."""


# SGLang sampling_params keys this server takes only at SGLang's default (null, or the value given here):
# beam search, custom logit-processor parameters and watermarking are not implemented; streamed chunks
# carry every new token (SGLang's stream_interval 1)
_DEFAULT_ONLY_KEYS = {"beam_width": None, "custom_params": None, "watermark": None, "stream_interval": 1}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
    return type(v).__name__


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    stop_regex: list[str] = field(default_factory=list)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    json_schema: str | None = None  # a JSON string (a dict is accepted and serialized)
    ebnf: str | None = None
    structural_tag: str | None = None  # an xgrammar structural tag (JSON string; a dict is serialized)
    # JSON length bounds under a constraint (grammar/json_bounds.py; None: unbounded)
    max_json_string_length: int | None = None
    max_json_array_items: int | None = None
    sampling_seed: int | None = None
    logit_bias: dict[int, float] | None = None  # keys given as str or int, normalized to int

    _FLOAT_FIELDS = (
        "temperature",
        "top_p",
        "min_p",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
    )
    CONSTRAINT_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")
    _INT_FIELDS = ("max_new_tokens", "min_new_tokens", "n", "top_k")
    _BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
    _OPT_STR_FIELDS = ("regex", "ebnf")
    _OPT_JSON_FIELDS = ("json_schema", "structural_tag")
    _OPT_INT_FIELDS = ("max_json_string_length", "max_json_array_items", "sampling_seed")

    def __post_init__(self) -> None:
        self._normalize_and_check_types()

    # ------------------------------------------------------------------ construction

    @classmethod
    def valid_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        """Build from a user-supplied dict; raises SamplingParamsError on bad keys, types or values."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise SamplingParamsError(f"sampling_params must be an object/dict, got {_type_name(d)}")
        for key, default in _DEFAULT_ONLY_KEYS.items():
            if d.get(key) not in (None, default):
                raise SamplingParamsError(f"sampling_params.{key} is not supported by this server (got {d[key]!r})")
        d = {k: v for k, v in d.items() if v is not None and k not in _DEFAULT_ONLY_KEYS}
        valid = cls.valid_keys()
        unknown = sorted(str(k) for k in d if k not in valid)
        if unknown:
            raise SamplingParamsError(
                f"unknown sampling_params key(s): {', '.join(unknown)}; valid keys are: {', '.join(valid)}"
            )
        params = cls(**d)
        params.validate()
        return params

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list | dict):
                v = type(v)(v)
            out[f.name] = v
        return out

    # ------------------------------------------------------------------ checks

    def _normalize_and_check_types(self) -> None:
        for name in self._INT_FIELDS:
            v = getattr(self, name)
            if not _is_int(v):
                raise SamplingParamsError(f"{name} must be an integer, got {_type_name(v)} {v!r}")
        for name in self._FLOAT_FIELDS:
            v = getattr(self, name)
            if not _is_number(v):
                raise SamplingParamsError(f"{name} must be a number, got {_type_name(v)} {v!r}")
            v = float(v)
            if math.isnan(v):
                raise SamplingParamsError(f"{name} must not be NaN")
            setattr(self, name, v)
        for name in self._BOOL_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise SamplingParamsError(f"{name} must be a boolean, got {_type_name(v)} {v!r}")
        for name in self._OPT_STR_FIELDS:
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise SamplingParamsError(f"{name} must be a string or null, got {_type_name(v)}")

        self.stop = self._str_list("stop", self.stop)
        self.stop_regex = self._str_list("stop_regex", self.stop_regex)

        ids = self.stop_token_ids
        if ids is None:
            ids = []
        elif _is_int(ids):
            ids = [ids]
        if not isinstance(ids, list | tuple) or not all(_is_int(t) for t in ids):
            raise SamplingParamsError(f"stop_token_ids must be a list of integers, got {ids!r}")
        self.stop_token_ids = list(ids)

        for name in self._OPT_JSON_FIELDS:
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, json.dumps(v))
            elif v is not None and not isinstance(v, str):
                raise SamplingParamsError(f"{name} must be a JSON string or null, got {_type_name(v)}")

        for name in self._OPT_INT_FIELDS:
            v = getattr(self, name)
            if v is not None and not _is_int(v):
                raise SamplingParamsError(f"{name} must be an integer or null, got {_type_name(v)}")

        if self.logit_bias is not None:
            self.logit_bias = self._normalize_logit_bias(self.logit_bias)

    @staticmethod
    def _str_list(name: str, v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        if isinstance(v, list | tuple) and all(isinstance(s, str) for s in v):
            return list(v)
        raise SamplingParamsError(f"{name} must be a string or a list of strings, got {v!r}")

    @staticmethod
    def _normalize_logit_bias(lb: Any) -> dict[int, float]:
        if not isinstance(lb, dict):
            raise SamplingParamsError(
                f"logit_bias must be an object mapping token ids to numbers, got {_type_name(lb)}"
            )
        out: dict[int, float] = {}
        for k, b in lb.items():
            if _is_int(k):
                tid = k
            elif isinstance(k, str) and re.fullmatch(r"\s*[+-]?\d+\s*", k):
                tid = int(k)
            else:
                raise SamplingParamsError(f"logit_bias keys must be integer token ids, got {k!r}")
            if not _is_number(b) or not math.isfinite(float(b)):
                raise SamplingParamsError(f"logit_bias[{k!r}] must be a finite number, got {b!r}")
            out[tid] = float(b)
        return out

    def validate(self, vocab_size: int | None = None) -> None:
        """Range checks; with ``vocab_size`` also checks token ids. Raises SamplingParamsError."""
        self._normalize_and_check_types()
        errs: list[str] = []
        if self.temperature < 0 or math.isinf(self.temperature):
            errs.append(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            errs.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            errs.append(f"top_k must be -1 (disabled) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            errs.append(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not -2.0 <= v <= 2.0:
                errs.append(f"{name} must be in [-2, 2], got {v}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            errs.append(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            errs.append(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            errs.append(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        elif self.min_new_tokens > self.max_new_tokens >= 0:
            errs.append(f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})")
        if not 1 <= self.n <= MAX_N:
            errs.append(f"n must be in [1, {MAX_N}], got {self.n}")
        constraints = [k for k in self.CONSTRAINT_FIELDS if getattr(self, k) is not None]
        if len(constraints) > 1:
            errs.append(f"only one of {', '.join(self.CONSTRAINT_FIELDS)} may be set, got {', '.join(constraints)}")
        try:
            bounds = self.json_bounds
        except ValueError as e:
            errs.append(str(e))
        else:
            if bounds and not constraints:
                fields = ", ".join(self.CONSTRAINT_FIELDS)
                errs.append(f"max_json_string_length / max_json_array_items need one of {fields}")
        for name in self._OPT_JSON_FIELDS:
            text = getattr(self, name)
            if text is None:
                continue
            try:
                json.loads(text)
            except ValueError as e:
                errs.append(f"{name} is not valid JSON: {e}")
            except RecursionError:
                errs.append(f"{name} is nested too deeply")
        for pat in self.stop_regex:
            try:
                re.compile(pat)
            except re.error as e:
                errs.append(f"stop_regex {pat!r} is not a valid regular expression: {e}")
        hi = "vocab" if vocab_size is None else str(vocab_size)

        def out_of_range(ids: Any) -> list[int]:
            return [t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)]

        if bad := out_of_range(self.logit_bias or {}):
            errs.append(f"logit_bias token ids {bad} out of range [0, {hi})")
        if errs:
            raise SamplingParamsError("invalid sampling_params: " + "; ".join(errs))

    # ------------------------------------------------------------------ properties

    @property
    def is_greedy(self) -> bool:
        """Greedy decoding: temperature 0 (below SAMPLING_EPS) or top_k == 1."""
        return self.temperature < SAMPLING_EPS or self.top_k == 1

    @property
    def json_bounds(self) -> JsonBounds | None:
        """The JSON length bounds of a constrained request (None when neither is set); ValueError if out of range."""
        bounds = JsonBounds(self.max_json_string_length, self.max_json_array_items, self.max_new_tokens)
        return bounds if bounds else None

    @property
    def has_constraint(self) -> bool:
        return any(getattr(self, k) is not None for k in self.CONSTRAINT_FIELDS)
