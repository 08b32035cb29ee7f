"""Prompt sets: DeepSpec `{"turns": [...]}` JSONL files and JSON-schema tasks, with fixed splits.

Malformed lines are reported with their file and line number and skipped; loading goes on.
Every prompt gets a stable id `<source>/<index>` so that regeneration can resume and so that the
eval / calibration / train splits never overlap (eval = indices [0, n_eval), calibration = the next
n_calib, train = the rest).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

JSON_TASK_TEMPLATE = "Produce a JSON object matching this schema:\n{schema}\nAnswer with the JSON object only."
# a base model without a chat template (Gemma 3 270M) reads a chat as a plain transcript
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class Prompt:
    id: str  # "<source>/<index>"
    source: str
    text: str
    json_schema: str | None = None  # a JSON-schema task's schema (compact JSON), to constrain its response


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of a chat, formatted for the assistant's next answer by the model's chat template, or by
    PLAIN_CHAT_TEMPLATE where the model has none."""
    template = None if tokenizer.chat_template else PLAIN_CHAT_TEMPLATE
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def read_jsonl(path: Path | str) -> list[dict]:
    """Objects of a JSONL file; malformed lines are logged as `file:line: reason` and skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                logger.warning("%s:%d: skipping malformed line (%s)", path, lineno, e.msg)
                continue
            if not isinstance(obj, dict):
                logger.warning("%s:%d: skipping line (not a JSON object)", path, lineno)
                continue
            rows.append({"_line": lineno, **obj})
    return rows


def load_turn_prompts(path: Path | str, source: str | None = None) -> list[Prompt]:
    """First user turn of every `{"turns": [...]}` record; the source defaults to the file stem."""
    source = source or Path(path).stem
    out = []
    for row in read_jsonl(path):
        turns = row.get("turns")
        if not (isinstance(turns, list) and turns and isinstance(turns[0], str)):
            logger.warning("%s:%d: skipping record without a string 'turns' list", path, row["_line"])
            continue
        out.append(Prompt(f"{source}/{len(out)}", source, turns[0]))
    return out


def load_json_schema_tasks(path: Path | str, max_schema_chars: int, source: str = "json") -> list[Prompt]:
    """One task per schema whose compact JSON is at most `max_schema_chars` long."""
    out = []
    for row in read_jsonl(path):
        schema = row.get("schema")
        if not isinstance(schema, dict):
            logger.warning("%s:%d: skipping record without a 'schema' object", path, row["_line"])
            continue
        text = json.dumps(schema, separators=(",", ":"))
        if len(text) <= max_schema_chars:
            out.append(Prompt(f"{source}/{len(out)}", source, JSON_TASK_TEMPLATE.format(schema=text), text))
    return out


SPLITS = ("train", "eval", "calib")


@dataclass(frozen=True)
class SplitSpec:
    n_eval: int = 50
    n_calib: int = 25


def split(prompts: list[Prompt], which: str, spec: SplitSpec) -> list[Prompt]:
    """`which` in {eval, calib, train}: a fixed slice of one source's prompts."""
    bounds = {
        "eval": (0, spec.n_eval),
        "calib": (spec.n_eval, spec.n_eval + spec.n_calib),
        "train": (spec.n_eval + spec.n_calib, None),
    }
    lo, hi = bounds[which]
    return prompts[lo:hi]


def load_prompt_sources(
    prompt_files: list[str], json_schema_file: str | None, max_schema_chars: int
) -> dict[str, list[Prompt]]:
    """source name -> its prompts, in file order."""
    sources = {Path(p).stem: load_turn_prompts(p) for p in prompt_files}
    if json_schema_file:
        sources["json"] = load_json_schema_tasks(json_schema_file, max_schema_chars)
    return sources


def select(sources: dict[str, list[Prompt]], which: str, per_source: int | None, spec: SplitSpec) -> list[Prompt]:
    """Up to `per_source` prompts of split `which` from every source, interleaved round-robin."""
    picked = [split(p, which, spec)[:per_source] for p in sources.values()]
    out = []
    for i in range(max((len(p) for p in picked), default=0)):
        out += [p[i] for p in picked if i < len(p)]
    return out
