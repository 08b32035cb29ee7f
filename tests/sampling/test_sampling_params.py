import json

import pytest

from sglang_dspark.sampling.sampling_params import SamplingParams, SamplingParamsError


def test_defaults_match_sglang():
    p = SamplingParams.from_dict(None)
    assert p == SamplingParams.from_dict({})
    assert p.max_new_tokens == 128
    assert p.min_new_tokens == 0
    assert p.n == 1
    assert p.stop == [] and p.stop_token_ids == [] and p.stop_regex == []
    assert p.temperature == 1.0 and p.top_p == 1.0 and p.top_k == -1 and p.min_p == 0.0
    assert p.frequency_penalty == 0.0 and p.presence_penalty == 0.0 and p.repetition_penalty == 1.0
    assert p.ignore_eos is False and p.skip_special_tokens is True
    assert p.spaces_between_special_tokens is True and p.no_stop_trim is False
    assert p.regex is None and p.json_schema is None and p.ebnf is None
    assert p.sampling_seed is None and p.logit_bias is None
    assert not p.is_greedy
    p.validate(vocab_size=10)


def test_normalization_and_roundtrip():
    p = SamplingParams.from_dict(
        {
            "stop": "###",
            "stop_regex": r"\d+$",
            "stop_token_ids": [2, 3],
            "temperature": 0,
            "top_k": 5,
            "logit_bias": {"7": -5, 3: 1.5},
            "sampling_seed": 42,
            "json_schema": {"type": "object"},
        }
    )
    assert p.stop == ["###"]
    assert p.stop_regex == [r"\d+$"]
    assert p.temperature == 0.0 and isinstance(p.temperature, float)
    assert p.logit_bias == {7: -5.0, 3: 1.5}
    assert json.loads(p.json_schema) == {"type": "object"}
    assert p.is_greedy
    d = p.to_dict()
    assert set(d) == set(SamplingParams.valid_keys())
    assert SamplingParams.from_dict(d) == p
    d["stop"].append("x")  # to_dict returns copies
    assert p.stop == ["###"]
    assert SamplingParams.from_dict({"stop": None, "stop_token_ids": None}).stop == []


def test_is_greedy():
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(top_k=1).is_greedy
    assert SamplingParams(temperature=0.7, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=2).is_greedy


def test_unknown_keys_rejected_with_valid_list():
    with pytest.raises(SamplingParamsError) as ei:
        SamplingParams.from_dict({"temprature": 0.5, "max_tokens": 3})
    msg = str(ei.value)
    assert "temprature" in msg and "max_tokens" in msg
    assert "temperature" in msg and "max_new_tokens" in msg  # lists the valid keys


@pytest.mark.parametrize(
    "d, needle",
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"max_new_tokens": 1.5}, "max_new_tokens"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"stop_token_ids": ["1"]}, "stop_token_ids"),
        ({"stop_regex": [None]}, "stop_regex"),
        ({"regex": 3}, "regex"),
        ({"json_schema": 3}, "json_schema"),
        ({"sampling_seed": "7"}, "sampling_seed"),
        ({"max_json_string_length": 2.5, "json_schema": "{}"}, "max_json_string_length"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"logit_bias": {"abc": 1.0}}, "logit_bias"),
        ({"logit_bias": {"1": "big"}}, "logit_bias"),
        ({"top_p": float("nan")}, "top_p"),
    ],
)
def test_wrong_types_rejected(d, needle):
    with pytest.raises(SamplingParamsError, match=needle):
        SamplingParams.from_dict(d)


def test_sglang_semantics_null_defaults_and_stop_ids_outside_the_vocab():
    p = SamplingParams.from_dict({"top_k": None, "temperature": None, "stream_interval": 1, "beam_width": None})
    assert p.top_k == -1 and p.temperature == 1.0
    p = SamplingParams.from_dict({"stop_token_ids": [-1, 10**9]})
    p.validate(vocab_size=100)  # accepted: such ids never match
    assert p.stop_token_ids == [-1, 10**9]
    for key, value in (("beam_width", 2), ("custom_params", {"a": 1}), ("stream_interval", 4)):
        with pytest.raises(SamplingParamsError, match=key):
            SamplingParams.from_dict({key: value})
    with pytest.raises(SamplingParamsError, match="only one of"):
        SamplingParams.from_dict({"regex": "a", "structural_tag": "{}"})
    assert SamplingParams.from_dict({"structural_tag": {"type": "structural_tag"}}).has_constraint


def test_non_dict_rejected():
    with pytest.raises(SamplingParamsError, match="dict"):
        SamplingParams.from_dict([("temperature", 1.0)])


@pytest.mark.parametrize(
    "d, needle",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": -0.01}, "min_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"presence_penalty": 2.1}, "presence_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"repetition_penalty": 2.5}, "repetition_penalty"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"min_new_tokens": 10, "max_new_tokens": 5}, "min_new_tokens"),
        ({"n": 0}, "n must be"),
        ({"n": 34197746}, r"n must be in \[1, 128\]"),  # a fuzz case that queued millions of requests
        ({"regex": "a+", "json_schema": "{}"}, "only one of"),
        ({"regex": "a+", "ebnf": "root ::= 'a'"}, "only one of"),
        ({"json_schema": "{not json"}, "json_schema is not valid JSON"),
        ({"json_schema": '{"items": ' * 5000 + "{}" + "}" * 5000}, "nested too deeply"),
        ({"stop_regex": ["(unclosed"]}, "stop_regex"),
        ({"logit_bias": {"-3": 1.0}}, "logit_bias"),
        ({"max_json_string_length": 0, "json_schema": "{}"}, "max_json_string_length must be >= 1"),
        ({"max_json_array_items": 1, "regex": "a+"}, "max_json_array_items must be >= 2"),
        ({"max_json_string_length": 64}, "need one of regex, json_schema"),
    ],
)
def test_invalid_values_rejected(d, needle):
    with pytest.raises(SamplingParamsError, match=needle):
        SamplingParams.from_dict(d)


def test_boundary_values_accepted():
    SamplingParams.from_dict(
        {
            "temperature": 0,
            "top_p": 1,
            "top_k": 1,
            "min_p": 1.0,
            "frequency_penalty": -2,
            "presence_penalty": 2,
            "repetition_penalty": 2.0,
            "max_new_tokens": 0,
            "min_new_tokens": 0,
        }
    )
    SamplingParams.from_dict({"top_p": 1e-6, "min_p": 0, "repetition_penalty": 0.01, "ebnf": "root ::= 'a'"})
    bounded = SamplingParams.from_dict({"json_schema": "{}", "max_json_string_length": 1, "max_json_array_items": 2})
    assert (bounded.json_bounds.max_string_length, bounded.json_bounds.max_array_items) == (1, 2)
    assert SamplingParams.from_dict({"json_schema": "{}"}).json_bounds is None


def test_vocab_checks_only_with_vocab():
    p = SamplingParams.from_dict({"stop_token_ids": [5, 99], "logit_bias": {"100": 1.0}})
    p.validate()  # no vocab: fine
    p.validate(vocab_size=101)
    SamplingParams.from_dict({"stop_token_ids": [99]}).validate(vocab_size=50)  # accepted: never matches
    with pytest.raises(SamplingParamsError, match=r"logit_bias token ids \[100\]"):
        p.validate(vocab_size=100)


def test_multiple_errors_reported_together():
    with pytest.raises(SamplingParamsError) as ei:
        SamplingParams.from_dict({"temperature": -1, "top_p": 2})
    assert "temperature" in str(ei.value) and "top_p" in str(ei.value)
