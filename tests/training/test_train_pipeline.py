"""CI-sized training: a tiny drafter on a tiny random target learns, checkpoints survive failures, resumes."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch
from transformers import AutoTokenizer

from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.models.tiny import tiny_random_model
from sglang_dspark.speculative.dspark import checkpoint as ckpt_mod
from sglang_dspark.speculative.dspark.checkpoint import load_drafter
from sglang_dspark.speculative.dspark.draft_vocab import FREQUENCIES_NAME, TokenFrequencies
from sglang_dspark.training.config import TrainConfig
from sglang_dspark.training.data import load_turn_prompts
from sglang_dspark.training.regenerate import load_sequences
from sglang_dspark.training.trainer import CHECKPOINT_DIR, EXPORT_DIR, Trainer, response_token_frequencies, target_view


def write_data(path, n: int = 6, malformed: bool = True) -> None:
    g = torch.Generator().manual_seed(0)
    with open(path, "w") as f:
        for i in range(n):
            prompt = torch.randint(4, 97, (8,), generator=g).tolist()
            resp = torch.randint(4, 97, (24,), generator=g).tolist()
            f.write(json.dumps({"id": f"t/{i}", "source": "t", "prompt_ids": prompt, "response_ids": resp}) + "\n")
            if malformed and i == 2:
                f.write('{"id": "broken", "prompt_ids": [1, 2\n')


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        data_file=str(tmp_path / "data.jsonl"),
        variants=["dspark", "dflash"],
        num_draft_layers=1,
        block_size=4,
        target_layer_ids=[-1, 1, 3],
        mask_token_id=3,
        markov_rank=8,
        num_anchors=8,
        lr=3e-3,
        grad_accum=2,
        max_steps=12,
        save_every=4,
        warmup_ratio=0.1,
    )
    return TrainConfig(**{**base, **kw})


def read_log(path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            out.setdefault(row["variant"], []).append(float(row["loss"]))
    return out


def test_training_lowers_loss_and_reports_malformed_lines(tmp_path, caplog):
    write_data(tmp_path / "data.jsonl")
    target = tiny_random_model()
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path), target, tokenizer=None).train(tmp_path / "data.jsonl")
    assert any("data.jsonl:4" in r.getMessage() and "malformed" in r.getMessage() for r in caplog.records)
    losses = read_log(tmp_path / "out" / "train_log.csv")
    for variant, curve in losses.items():
        assert len(curve) == 12
        assert sum(curve[-3:]) / 3 < 0.95 * sum(curve[:3]) / 3, (variant, curve)
    for variant in ("dspark", "dflash"):
        exported = load_drafter(
            tmp_path / "out" / variant / EXPORT_DIR, target.embed_tokens.weight, target.lm_head_weight
        )
        assert exported.dtype == torch.bfloat16
        assert (exported.markov_head is None) == (variant == "dflash")
        # the draft vocabulary's ranking: the training responses' tokens by count
        freqs = TokenFrequencies.load(tmp_path / "out" / variant / EXPORT_DIR / FREQUENCIES_NAME)
        assert freqs == response_token_frequencies(load_sequences(tmp_path / "data.jsonl"))
        assert freqs.counted_tokens == 6 * 24


def test_failed_checkpoint_keeps_the_previous_one_and_training_resumes(tmp_path, monkeypatch):
    write_data(tmp_path / "data.jsonl", malformed=False)
    target = tiny_random_model()
    Trainer(config(tmp_path, max_steps=4), target, None).train(tmp_path / "data.jsonl")
    before = (tmp_path / "out" / "dspark" / CHECKPOINT_DIR / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", disk_full)
    trainer = Trainer(config(tmp_path, max_steps=8), target, None)
    assert trainer.step == 4  # resumed
    with pytest.raises(OSError):  # the final export fails too: surfaced, not swallowed
        trainer.train(tmp_path / "data.jsonl")
    assert (tmp_path / "out" / "dspark" / CHECKPOINT_DIR / "model.safetensors").read_bytes() == before
    assert not list((tmp_path / "out" / "dspark").glob(".*tmp*"))  # no half-written directories left
    monkeypatch.undo()
    resumed = Trainer(config(tmp_path, max_steps=8), target, None)
    assert resumed.step == 4
    resumed.train(tmp_path / "data.jsonl")
    assert resumed.step == 8


def test_prompt_file_with_malformed_lines(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text('{"turns": ["a"]}\nnot json\n{"turns": []}\n{"turns": ["b"]}\n')
    with caplog.at_level(logging.WARNING):
        prompts = load_turn_prompts(path)
    assert [p.text for p in prompts] == ["a", "b"] and [p.id for p in prompts] == ["p/0", "p/1"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "p.jsonl:2" in messages and "p.jsonl:3" in messages


def test_regenerate_only_writes_the_requested_split(tmp_path):
    """`--split eval --regenerate-only`: the target's greedy responses to the held-out prompts only."""
    from sglang_dspark.train import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [f"Say the number {i}."]}) + "\n" for i in range(6)))
    out = tmp_path / "eval.jsonl"
    flags = ["--prompt-files", str(prompts), "--n-eval", "2", "--n-calib", "1", "--max-new-tokens", "4"]
    flags += ["--gen-temperature", "0", "--target-dtype", "float32", "--gen-batch-size", "4"]
    assert main([*flags, "--split", "eval", "--regenerate-only", "--data-file", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["p/0", "p/1"]
    assert all(r["temperature"] == 0 and 0 < len(r["response_ids"]) <= 4 for r in records)
    # --write-token-frequencies regenerates the training split if needed, counts its responses into an
    # existing drafter directory and stops (no training)
    drafter_dir, train = tmp_path / "drafter", tmp_path / "train.jsonl"
    drafter_dir.mkdir()
    assert main([*flags, "--data-file", str(train), "--write-token-frequencies", str(drafter_dir)]) == 0
    freqs = TokenFrequencies.load(drafter_dir / FREQUENCIES_NAME)
    assert freqs == response_token_frequencies(load_sequences(train)) and freqs.counted_tokens > 0
    assert list(drafter_dir.iterdir()) == [drafter_dir / FREQUENCIES_NAME]
    with pytest.raises(ValueError, match="quantization"):  # the target's weights are the server's --quantization
        main([*flags, "--regenerate-only", "--data-file", str(out), "--target-quantization", "int3"])
    with pytest.raises(ValueError, match="--regenerate-only"):
        TrainConfig(split="eval")
    with pytest.raises(ValueError, match="split must be one of"):
        TrainConfig(split="test", regenerate_only=True)


def test_json_tasks_regenerate_under_their_schema(tmp_path, caplog):
    """--constrain-json: a JSON-schema task's responses come from the target under the schema's grammar (as
    a server answers it); a schema the grammar backend refuses is skipped and named; several samples per
    prompt get ids <prompt id>#k."""
    from sglang_dspark.train import main

    enum = {"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"], "additionalProperties": False}
    schemas = [enum, enum, {"type": "objekt"}, enum]  # eval, calib, then two training schemas
    path = tmp_path / "schemas.jsonl"
    path.write_text("".join(json.dumps({"schema": s}) + "\n" for s in schemas))
    out = tmp_path / "train.jsonl"
    flags = ["--json-schema-file", str(path), "--n-eval", "1", "--n-calib", "1", "--max-new-tokens", "16"]
    flags += ["--target-dtype", "float32", "--data-file", str(out), "--regenerate-only", "--constrain-json"]
    with caplog.at_level(logging.WARNING):
        assert main([*flags, "--samples-per-prompt", "2", "--gen-temperature", "1.0"]) == 0
    assert "json/2: skipped" in caplog.text and "objekt" in caplog.text
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["json/3", "json/3#1"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    for sequence in load_sequences(out):
        assert sequence.json_schema == json.dumps(enum, separators=(",", ":"))  # offline eval masks with it
        assert json.loads(tokenizer.decode(sequence.response_ids, skip_special_tokens=True))["a"] in (1, 2)
    with pytest.raises(ValueError, match="temperature > 0"):
        TrainConfig(samples_per_prompt=2, gen_temperature=0)


def test_a_grown_drafter_starts_drafting_what_the_smaller_one_did_and_trains_on(tmp_path):
    write_data(tmp_path / "data.jsonl", malformed=False)
    target = tiny_random_model()
    Trainer(config(tmp_path, max_steps=4), target, None).train(tmp_path / "data.jsonl")
    grown_cfg = config(
        tmp_path, output_dir=str(tmp_path / "grown"), num_draft_layers=2, grow_from=str(tmp_path / "out")
    )
    trainer = Trainer(grown_cfg, target, None)
    seq = load_sequences(tmp_path / "data.jsonl")[0]
    for variant, grown in trainer.drafters.items():
        smaller = load_drafter(
            tmp_path / "out" / variant / EXPORT_DIR, target.embed_tokens.weight, target.lm_head_weight, torch.float32
        )
        assert len(grown.layers) == 2 and len(smaller.layers) == 1
        view = target_view(target, seq, grown.config.target_layer_ids)
        anchors = torch.arange(view.prompt_len, len(view.ids) - 1)
        with torch.no_grad():
            a, b = (
                grown.teacher_forced(view.feats, view.ids, anchors),
                smaller.teacher_forced(view.feats, view.ids, anchors),
            )
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
        if variant == "dspark":
            torch.testing.assert_close(a.confidence_logits, b.confidence_logits, atol=1e-4, rtol=1e-4)
    trainer.train(tmp_path / "data.jsonl")
    assert len(read_log(tmp_path / "grown" / "train_log.csv")["dspark"]) == 12
    exported = load_drafter(
        tmp_path / "grown" / "dspark" / EXPORT_DIR, target.embed_tokens.weight, target.lm_head_weight
    )
    assert len(exported.layers) == 2 and bool(exported.layers[1].mlp.down_proj.weight.abs().sum() > 0)  # trained
    with pytest.raises(ValueError, match="block_size 4 vs 5"):
        Trainer(
            config(tmp_path, output_dir=str(tmp_path / "bad"), block_size=5, grow_from=str(tmp_path / "out")),
            target,
            None,
        )


def test_a_time_box_ends_training_with_a_checkpoint_and_a_sharded_export(tmp_path):
    """max_minutes stops the loop (here before the first step), then checkpoints and exports as the end of
    training does; export_shard_mib splits the exported weights (how a remote GPU run brings them back)."""
    write_data(tmp_path / "data.jsonl", malformed=False)
    target = tiny_random_model()
    cfg = config(tmp_path, max_minutes=0.0, export_shard_mib=0.05, variants=["dspark"])
    trainer = Trainer(cfg, target, None)
    trainer.train(tmp_path / "data.jsonl")
    assert trainer.step == 0
    out = tmp_path / "out" / "dspark"
    assert (out / CHECKPOINT_DIR / "model.safetensors").is_file()
    index = json.loads((out / EXPORT_DIR / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    exported = load_drafter(out / EXPORT_DIR, target.embed_tokens.weight, target.lm_head_weight)
    assert exported.dtype == torch.bfloat16


def test_training_over_a_draft_vocabulary_keeps_its_ids_for_the_whole_run(tmp_path):
    write_data(tmp_path / "data.jsonl", malformed=False)
    target = tiny_random_model()
    Trainer(config(tmp_path, max_steps=8, draft_vocab_size=40), target, None).train(tmp_path / "data.jsonl")
    losses = read_log(tmp_path / "out" / "train_log.csv")
    for variant, curve in losses.items():
        assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, (variant, curve)
    kept = json.loads((tmp_path / "out" / "train_vocab.json").read_text())["token_ids"]
    sequences = load_sequences(tmp_path / "data.jsonl")
    assert kept == response_token_frequencies(sequences).draft_vocab(40, 97).tolist()
    write_data(tmp_path / "data.jsonl", n=12, malformed=False)  # more data: the run keeps its ids
    resumed = Trainer(config(tmp_path, max_steps=10, draft_vocab_size=40), target, None)
    resumed.train(tmp_path / "data.jsonl")
    assert resumed.step == 10 and resumed.vocab.tolist() == kept
    with pytest.raises(ValueError, match="holds the 40 ids .* draft_vocab_size is 30"):
        Trainer(config(tmp_path, max_steps=12, draft_vocab_size=30), target, None).train(tmp_path / "data.jsonl")
