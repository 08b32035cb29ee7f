"""The target regenerates the responses of a prompt set through our Engine (batched, resumable).

Output: one JSONL record per prompt, `{"id", "source", "prompt_ids", "response_ids", "temperature"}`,
appended (and fsync-ed) after every batch; a rerun skips the ids already present, and a torn last
line from an interrupted run is reported and skipped by `read_jsonl`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sglang_dspark.train.data import Prompt, read_jsonl


@dataclass
class Sequence:
    id: str
    source: str
    prompt_ids: list[int]
    response_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def load_sequences(path: Path | str, min_response: int = 1) -> list[Sequence]:
    if not Path(path).exists():
        return []
    return [
        Sequence(r["id"], r["source"], r["prompt_ids"], r["response_ids"])
        for r in read_jsonl(path)
        if len(r.get("response_ids", [])) >= min_response
    ]


def regenerate(
    engine,
    prompts: list[Prompt],
    out_path: Path | str,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    max_prompt_tokens: int,
) -> list[Sequence]:
    """Generate a response for every prompt not yet in `out_path`; returns all sequences of the file."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {s.id for s in load_sequences(out_path, min_response=0)}
    todo = []
    for p in prompts:
        if p.id in done:
            continue
        ids = chat_prompt_ids(engine.tokenizer, p.text)
        if len(ids) <= max_prompt_tokens:
            todo.append((p, ids))
    params = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"regenerate {out_path.name}") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            outs = engine.generate(input_ids=[ids for _, ids in chunk], sampling_params=params)
            with open(out_path, "a", encoding="utf-8") as f:
                for (p, ids), out in zip(chunk, outs, strict=True):
                    rec = {"id": p.id, "source": p.source, "prompt_ids": ids, "response_ids": out["output_ids"]}
                    f.write(json.dumps({**rec, "temperature": temperature}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(chunk))
    return load_sequences(out_path)
