"""Add "json_schema" to the JSON-schema task records of a regenerated data file that lacks it (as
`python -m sglang_dspark.train --constrain-json` writes it), so the offline eval can mask with it.

    python examples/archive/attach_json_schemas.py runs/data/eval_v4.jsonl runs/data/eval_v4s.jsonl \\
        data/json_schemas/jsonschemabench_subset.jsonl 3000

The schema of record `json/<i>` is task i of the schema file (the tasks the training CLI builds with the same
--max-schema-chars); each record's prompt tokens are checked against that task's prompt.
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoTokenizer

from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.training.data import chat_prompt_ids, load_json_schema_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("schema_file")
    parser.add_argument("max_schema_chars", type=int)
    parser.add_argument("--model-path", default=None, help="target model (default: the bundled SmolLM2)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model_path))
    tasks = {p.id: p for p in load_json_schema_tasks(args.schema_file, args.max_schema_chars)}
    attached = 0
    with open(args.src, encoding="utf-8") as src, open(args.dst, "w", encoding="utf-8") as dst:
        for line in src:
            record = json.loads(line)
            if record["source"] == "json":
                task = tasks[record["id"].split("#")[0]]
                if chat_prompt_ids(tokenizer, [{"role": "user", "content": task.text}]) != record["prompt_ids"]:
                    raise SystemExit(f"{record['id']}: its prompt is not task {task.id} of {args.schema_file}")
                record["json_schema"] = task.json_schema
                attached += 1
            dst.write(json.dumps(record) + "\n")
    print(f"{args.dst}: {attached} JSON-schema records got their schema")


if __name__ == "__main__":
    main()
