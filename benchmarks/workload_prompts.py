"""The prompts of bench_spec's multi-turn and long-context workloads.

``multiturn``: conversations of two user turns, as in MT-Bench. The repository's prompt sets (DeepSpec's
``{"turns": [...]}`` rows) hold one turn each, so the first turn comes from them, taking one prompt from each of
mbpp (code), gsm8k (maths) and arena-hard-v2 (chat) in turn, and the second turn is the row's own second turn
where it has one, else ``FOLLOW_UP``: a fixed instruction to revise the first answer, as many of MT-Bench's
second turns do. The second turn's chat carries the model's own first answer, so it repeats what the model
wrote: the radix cache holds it, and a drafter can copy from it.

``longctx``: a chunk of a Python standard-library module's source (the running interpreter's, so the prompts
are fixed for one Python version), cut at a line end so that the chat-formatted prompt has at most a bucket's
tokens, followed by an instruction to explain it. Prompt i of every bucket is module i's source from its start:
the buckets differ in length only.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.training.data import chat_prompt_ids

FOLLOW_UP = "Now rewrite your answer so that it is shorter, keeping all of its key points."
MULTITURN_SOURCES = ("mbpp.jsonl", "gsm8k.jsonl", "arena-hard-v2.jsonl")
CONTEXT_BUCKETS = (2048, 4096, 6144)  # prompt tokens, chat template included
LONGCTX_MODULES = (  # standard-library modules of well over 6144 tokens each, in every Python from 3.10 on
    "argparse",
    "ast",
    "configparser",
    "dataclasses",
    "difflib",
    "enum",
    "functools",
    "inspect",
    "logging",
    "pickle",
    "pydoc",
    "shutil",
    "subprocess",
    "tarfile",
    "threading",
    "typing",
)
LONGCTX_INSTRUCTION = "Above is part of the source of Python's `{module}` module. Explain what this code does."


@dataclass(frozen=True)
class Conversation:
    """The user's two turns of a multi-turn prompt; the model's answer to the first goes between them."""

    first: str
    second: str

    def messages(self, answer: str | None = None) -> list[dict]:
        """The chat of turn 1 (``answer`` None), or of turn 2 after the model answered turn 1 with ``answer``."""
        chat = [{"role": "user", "content": self.first}]
        if answer is None:
            return chat
        return [*chat, {"role": "assistant", "content": answer}, {"role": "user", "content": self.second}]


def load_conversations(prompts_dir: Path, n: int, max_chars: int) -> list[Conversation]:
    """n conversations, one from each of MULTITURN_SOURCES in turn; first turns over max_chars are skipped."""
    per_source = []
    for name in MULTITURN_SOURCES:
        with open(prompts_dir / name) as f:  # by "\n" only: prompts contain other Unicode line separators
            rows = [json.loads(line)["turns"] for line in f if line.strip()]
        convs = [Conversation(t[0], t[1] if len(t) > 1 else FOLLOW_UP) for t in rows]
        per_source.append([conv for conv in convs if len(conv.first) <= max_chars])
    interleaved = [conv for group in zip(*per_source) for conv in group]
    return interleaved[:n]


def bucket_label(tokens: int) -> str:
    """2048 -> "2k"."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def module_source(module: str) -> str:
    """The source text of a standard-library module (a package's ``__init__.py``), found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ValueError(f"no Python source for the module {module}")
    return Path(spec.origin).read_text()


def long_message(tokenizer, module: str, bucket: int) -> str:
    """The user message whose chat-formatted prompt holds the start of module's source and the instruction in at
    most bucket tokens."""
    instruction = LONGCTX_INSTRUCTION.format(module=module)

    def message(code: str) -> str:
        return f"```python\n{code}```\n\n{instruction}"

    def length(code: str) -> int:
        return len(chat_prompt_ids(tokenizer, [{"role": "user", "content": message(code)}]))

    # the whole source may be longer than the model's context: verbose=False drops the warning about that
    source = tokenizer.encode(module_source(module), add_special_tokens=False, verbose=False)
    code = tokenizer.decode(source[: bucket - length("")])
    code = code[: code.rfind("\n") + 1]
    while length(code) > bucket:  # tokens merge differently where the cut text meets the instruction
        code = code[: code.rstrip("\n").rfind("\n") + 1]
    return message(code)


def load_long_messages(tokenizer, bucket: int, n: int) -> list[str]:
    """The first n of LONGCTX_MODULES (at most all of them) as long_message prompts of one bucket."""
    return [long_message(tokenizer, module, bucket) for module in LONGCTX_MODULES[:n]]
