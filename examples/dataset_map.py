"""Labels up front: `datasets.Dataset.map(batched=True, num_proc=N)` with gpumask.

Each worker pads its chunk of rows in one vectorised fill, masks it with
`gpumask.mask_labels` (through `CompletionCollator`), and stores the labels of the real
tokens as a new column. The labels are a function of each row alone, so they are the same
whatever the chunking, the number of processes, or the padding side.

    python examples/dataset_map.py --rows 64 --num-proc 2 --out labels_map.json
"""

from __future__ import annotations

import argparse
import json

from conversations import DEFAULT_TOKENIZER, chatml_spec, make_rows
from datasets import Dataset
from transformers import AutoTokenizer

from gpumask import CompletionCollator


def add_labels(batch: dict, collate: CompletionCollator) -> dict:
    """A `Dataset.map(batched=True)` function: the `labels` column, one list per row."""
    out = collate([{"input_ids": ids} for ids in batch["input_ids"]])
    real = out["attention_mask"].bool()
    return {"labels": [row[mask].tolist() for row, mask in zip(out["labels"], real, strict=True)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per map call")
    parser.add_argument("--out", default="labels_map.json")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    collate = CompletionCollator(tokenizer, chatml_spec(tokenizer), warn=False)
    dataset = Dataset.from_list(make_rows(tokenizer, args.rows))
    dataset = dataset.map(
        add_labels,
        batched=True,
        batch_size=args.batch_size,
        num_proc=args.num_proc,
        fn_kwargs={"collate": collate},
    )
    labels = {str(row["index"]): row["labels"] for row in dataset}
    with open(args.out, "w") as f:
        json.dump({"labels": labels}, f)
    trained = sum(sum(x != -100 for x in row) for row in labels.values())
    print(f"{len(labels)} rows, {trained} trained tokens -> {args.out}")


if __name__ == "__main__":
    main()
