"""SGLang request fields that this server takes but does not turn into generation parameters.

SGLang clients (its router, its OpenAI layer's users) send every field of SGLang's request bodies. Each
field of SGLang 0.5.23's `GenerateReqInput` and OpenAI protocol models that our request models do not
declare is listed here as one of:

- *metadata*: accepted with any value; on a single text-only server without a reasoning parser, LoRA,
  priority scheduling or disaggregation SGLang's output does not depend on it either (routing keys,
  logging switches, trace headers, metric labels, the model name);
- *default-only*: a feature this server does not have (multimodal input, LoRA, hidden states, PD
  disaggregation, ...): accepted at SGLang's default (or null), a 400 naming the field otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# the one data-parallel rank of this server
_RANK_ZERO = (0,)


@dataclass(frozen=True)
class FieldPolicy:
    metadata: frozenset[str]
    default_only: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # name -> accepted non-null values

    def strip(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` without this policy's fields; ValueError (-> 400) naming a default-only field set to
        something else."""
        for name, accepted in self.default_only.items():
            value = body.get(name)
            if value is not None and not any(type(value) is type(a) and value == a for a in accepted):
                raise ValueError(f"`{name}` is not supported by this server (got {value!r}); omit it or send null")
        return {k: v for k, v in body.items() if k not in self.metadata and k not in self.default_only}

    def names(self) -> frozenset[str]:
        return self.metadata | frozenset(self.default_only)


def _off(*names: str) -> dict[str, tuple[Any, ...]]:
    """Fields whose SGLang default is null or False: only that is accepted."""
    return dict.fromkeys(names, (False,))


_DATA_PARALLEL = {"routed_dp_rank": _RANK_ZERO, "data_parallel_rank": _RANK_ZERO}
_DISAGGREGATION = _off("bootstrap_host", "bootstrap_port", "bootstrap_room", "disagg_prefill_dp_rank")
_UNSUPPORTED_FEATURES = _off(
    "return_hidden_states",
    "return_routed_experts",
    "lora_path",
    "session_params",
    "custom_logit_processor",
    "watermark",
    "images_config",
    "mm_processor_kwargs",
    "extra_key",
    "cache_salt",
)

GENERATE_FIELDS = FieldPolicy(
    metadata=frozenset(
        {
            "session_id",
            "log_metrics",
            "routing_key",
            "conversation_id",
            "http_worker_ipc",
            "background",
            "no_logs",
            "custom_labels",
            "external_trace_header",
            "received_time",
            "kv_hints",
            "priority",
            "model",  # not in GenerateReqInput: sglang-router's /generate body carries it
        }
    ),
    default_only={
        **_DATA_PARALLEL,
        **_DISAGGREGATION,
        **_UNSUPPORTED_FEATURES,
        **_off(
            "input_embeds",
            "image_data",
            "video_data",
            "audio_data",
            "mm_hashes",
            "mm_content_hashes",
            "use_audio_in_video",
            "video_config",
            "token_ids_logprob",
            "return_sampling_mask",
            "sampling_logprobs_mode",
            "return_flat_raw_top_logprobs",
            "return_flat_raw_output_top_logprobs",
            "return_flat_raw_top_logprobs_b64",
            "return_indexer_topk",
            "modalities",
            "lora_id",
            "positional_embed_overrides",
            "bootstrap_pair_key",
            "decode_tp_size",
            "require_reasoning",
            "max_thinking_tokens",
            "return_bytes",
            "return_entropy",
            "return_prompt_token_ids",
            "need_wait_for_mm_inputs",
            "num_items_assigned",
            "encoder_urls",
            "max_dynamic_patch",
            "min_dynamic_patch",
            "image_max_dynamic_patch",
            "video_max_dynamic_patch",
            "multi_item_delimiter_indices",
            "token_indices_to_pool",
        ),
        "routed_experts_start_len": (0,),
    },
)

_OPENAI_METADATA = frozenset({"model", "user", "session_id", "priority", "custom_labels"})
_OPENAI_DEFAULT_ONLY = {
    **_DATA_PARALLEL,
    **_DISAGGREGATION,
    **_UNSUPPORTED_FEATURES,
    **_off("return_cached_tokens_details", "return_spec_tokens_details", "return_token_ids", "custom_params"),
    "routed_experts_start_len": (0,),
}

COMPLETION_FIELDS = FieldPolicy(
    metadata=_OPENAI_METADATA,
    default_only={**_OPENAI_DEFAULT_ONLY, "best_of": (1,), **_off("suffix")},
)

CHAT_FIELDS = FieldPolicy(
    # without --reasoning-parser SGLang's separate_reasoning / stream_reasoning change nothing
    metadata=_OPENAI_METADATA | {"separate_reasoning", "stream_reasoning"},
    default_only={
        **_OPENAI_DEFAULT_ONLY,
        **_off(
            "return_prompt_token_ids",
            "return_meta_info",
            "return_input_ids_in_sglext",
            "return_output_ids_in_sglext",
            "return_sampling_mask",
            "sampling_logprobs_mode",
            "return_flat_raw_output_top_logprobs",
            "reasoning_effort",
            "thinking",
            "task",
            "max_dynamic_patch",
            "min_dynamic_patch",
            "use_audio_in_video",
            "video_config",
        ),
        "return_flat_raw_top_logprobs_b64": (True, False),  # only shapes flat logprobs, which are off
    },
)
