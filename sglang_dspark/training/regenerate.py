"""The target regenerates the responses of a prompt set through our Engine (batched, resumable).

Output: one JSONL record per prompt, `{"id", "source", "prompt_ids", "response_ids", "temperature"}` (and
`"json_schema"` when the response was generated under it), appended (and fsync-ed) after every batch; a
rerun skips the ids already present, and a torn last line from an interrupted run is reported and skipped
by `read_jsonl`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.training.data import Prompt, chat_prompt_ids, read_jsonl

logger = logging.getLogger(__name__)


@dataclass
class Sequence:
    id: str
    source: str
    prompt_ids: list[int]
    response_ids: list[int]
    json_schema: str | None = None  # the schema the response was generated under (offline eval masks with it)

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def load_sequences(path: Path | str, min_response: int = 1) -> list[Sequence]:
    if not Path(path).exists():
        return []
    return [
        Sequence(r["id"], r["source"], r["prompt_ids"], r["response_ids"], r.get("json_schema"))
        for r in read_jsonl(path)
        if len(r.get("response_ids", [])) >= min_response
    ]


@dataclass(frozen=True)
class GenerationSpec:
    """How the target regenerates responses."""

    max_new_tokens: int
    temperature: float
    batch_size: int
    max_prompt_tokens: int  # longer chat prompts are skipped
    constrain_json: bool = False  # JSON-schema tasks answer under their schema (grammar), as a server would
    samples: int = 1  # responses per prompt; ids "<prompt id>", "<prompt id>#1", ...

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples per prompt must be >= 1")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("several samples per prompt need a temperature > 0 (greedy repeats itself)")

    def params(self, prompt: Prompt) -> dict:
        params = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        if self.constrain_json and prompt.json_schema is not None:
            params["json_schema"] = prompt.json_schema
        return params


def sample_id(prompt: Prompt, k: int) -> str:
    return prompt.id if k == 0 else f"{prompt.id}#{k}"


def regenerate(engine, prompts: list[Prompt], out_path: Path | str, spec: GenerationSpec) -> list[Sequence]:
    """Generate the responses not yet in `out_path`; returns all sequences of the file. A JSON-schema task
    whose schema the grammar backend refuses is skipped (logged) when responses are constrained."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {s.id for s in load_sequences(out_path, min_response=0)}
    todo = []
    for p in prompts:
        missing = [k for k in range(spec.samples) if sample_id(p, k) not in done]
        if not missing:
            continue
        ids = chat_prompt_ids(engine.tokenizer, [{"role": "user", "content": p.text}])
        if len(ids) > spec.max_prompt_tokens or not _constraint_compiles(engine, p, spec):
            continue
        todo += [(sample_id(p, k), p, ids) for k in missing]
    total = len(prompts) * spec.samples
    with tqdm(total=total, initial=total - len(todo), desc=f"regenerate {out_path.name}") as bar:
        for start in range(0, len(todo), spec.batch_size):
            chunk = todo[start : start + spec.batch_size]
            params = [spec.params(p) for _, p, _ in chunk]
            outs = engine.generate(input_ids=[ids for _, _, ids in chunk], sampling_params=params)
            with open(out_path, "a", encoding="utf-8") as f:
                for (sid, p, ids), par, out in zip(chunk, params, outs, strict=True):
                    rec = {"id": sid, "source": p.source, "prompt_ids": ids, "response_ids": out["output_ids"]}
                    rec["temperature"] = spec.temperature
                    if "json_schema" in par:
                        rec["json_schema"] = par["json_schema"]
                    f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(chunk))
    return load_sequences(out_path)


def _constraint_compiles(engine, prompt: Prompt, spec: GenerationSpec) -> bool:
    params = spec.params(prompt)
    if "json_schema" not in params:
        return True
    try:
        engine.scheduler.grammars.validate(SamplingParams(**params))
    except ValueError as e:
        logger.warning("%s: skipped, its schema is refused: %s", prompt.id, e)
        return False
    return True
