"""Which K to self-draft with (--speculative-algorithm SELF): offline, per K, how often the target's first K
layers (+ its final norm and LM head) pick the token the whole model picks.

    python benchmarks/self_draft_layers.py                        # the default model, code prompts
    python benchmarks/self_draft_layers.py --model-path DIR --workload chat

The target generates greedy answers to the workload's prompts (bench_spec.py's workloads, chat-formatted);
one teacher-forced forward over each prompt + answer captures every layer's hidden state, and each K's
head is scored on the answer positions. Columns: agreement = P(the K-layer head's argmax = the target's
token) (the acceptance of a greedy draft made from the true context); cost = a drafted token's cost in
decode steps, by the weights it reads: (K layers + LM head) / (L layers + LM head) (a small model's LM head
over a large vocabulary is a large share of a step); one-draft gain = (1 + agreement) / (1 + cost), the
tokens per unit of time of a round that drafts and verifies one token relative to plain decoding
(verifying two tokens taken to cost one step). A K whose gain is below 1 cannot pay at any draft length:
later drafts are accepted less often.
"""

from __future__ import annotations

import argparse

import torch
from bench_spec import WORKLOADS, chat_ids, load_workload

from sglang_dspark import Engine
from sglang_dspark.model_executor.sequence_forward import forward_sequences
from sglang_dspark.models.config import DecoderConfig


def layer_agreement(model, prompts: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
    """[L] fraction of answer tokens each first-K-layers head (K = 1..L) predicts as its argmax."""
    layers = model.config.num_layers
    seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
    hits = torch.zeros(layers)
    for seq, prompt, answer in zip(seqs, prompts, answers):
        hidden = forward_sequences(model, [seq], capture_layers=tuple(range(layers)))[0].hidden_states
        rows = slice(len(prompt) - 1, len(seq) - 1)  # the positions predicting each answer token
        target = torch.tensor(answer)
        with torch.inference_mode():
            for k in range(layers):
                head = model.compute_logits(model.norm(hidden[k][rows]))
                hits[k] += float((head.argmax(dim=-1) == target).sum())
    return hits / sum(len(a) for a in answers)


def draft_cost(cfg: DecoderConfig, k: int) -> float:
    """A first-k-layers draft step's weights over a whole step's: (k layers + LM head) / (L layers + LM head)."""
    attention = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    layer = attention + 3 * cfg.hidden_size * cfg.intermediate_size
    head = cfg.vocab_size * cfg.hidden_size
    return (k * layer + head) / (cfg.num_layers * layer + head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="the target (default: the default model)")
    ap.add_argument("--workload", default="code", choices=WORKLOADS)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    engine = Engine(model_path=args.model_path, dtype=args.dtype, log_level="warning")
    try:
        items = load_workload(args.workload, args.num_prompts)
        prompts = chat_ids(engine.tokenizer, items)
        params = [{"temperature": 0, "max_new_tokens": args.max_new_tokens, **extra} for _, extra in items]
        answers = [r["output_ids"] for r in engine.generate(input_ids=prompts, sampling_params=params)]
        model = engine.scheduler.runner.model
        agreement = layer_agreement(model, prompts, answers)
    finally:
        engine.shutdown()
    layers = len(agreement)
    print(f"{engine.model_dir.name}, {layers} layers, {args.workload}: {sum(map(len, answers))} answer tokens\n")
    print("| K | agreement | cost | one-draft gain |\n|---:|---:|---:|---:|")
    for k in range(1, layers):
        a, cost = float(agreement[k - 1]), draft_cost(model.config, k)
        print(f"| {k} | {a:.3f} | {cost:.2f} | {(1 + a) / (1 + cost):.2f} |")


if __name__ == "__main__":
    main()
