"""What `CompletionCollator` costs on list rows, against the padding-only floor, and where it goes.

The batch: 64 rows tokenized with Qwen2.5's tokenizer from synthetic multi-turn ChatML
conversations (a system prompt, 2-9 user/assistant exchanges, a tool call and its
`<tool_response>` in about 3 conversations in 10), about 2,700 tokens a row on average and
ragged (789 to 4,612), generated here from a fixed seed. The spec is
`MaskSpec.from_tokenizer(tok)`. Rows come as the tokenizer returns them, dicts of Python lists:
`{"input_ids": [...]}` ("ids"), and with its `attention_mask` too ("ids + mask").

The padding-only floor is the cheapest honest way found to turn the same rows into the padded
`input_ids` and `attention_mask` tensors a model reads, with no labels: the lists converted to
one int64 array end to end by the fastest of the conversions in `FLOORS` (measured each run;
so far always one `struct.pack` a row, joined with `b"".join`), one `np.full` of the pad id,
one boolean-masked write of the joined ids (right padding), the attention mask from the row
lengths (or, with "ids + mask", the given masks converted and written the same way), then
`torch.from_numpy`. It validates nothing, checks nothing and masks nothing: anything a collator
does beyond it is its own cost.

Every time is the median of interleaved rounds (each round times every case once) in one
process on one torch thread; "best" is the fastest round, which a busy machine moves less.
The ratios are of medians: "x list floor" against the floor of the same input (rows as lists;
for tensor rows, the tensor floor), "x tensor floor" against padding rows that are int64
tensors already (the issue's "pad tensors only" floor). On a shared machine the medians of
list rows swing by up to 2x from run to run, also with the allocator's state (glibc returning
freed pages and faulting them in again; `MALLOC_TRIM_THRESHOLD_` and `MALLOC_MMAP_THRESHOLD_`
set high remove most of it), so compare figures from one run.

The breakdown times the collator's steps one by one, as `CompletionCollator.__call__` runs
them at this commit; `--no-breakdown` prints the totals only, and so runs on older code too
(for a before/after: `PYTHONPATH=OLD_TREE:. python benchmarks/collate_cost.py
--no-breakdown`).

    python benchmarks/collate_cost.py [--rows 64] [--rounds 41] [--threads 1] [--no-breakdown]
"""

from __future__ import annotations

import argparse
import array
import itertools
import random
import statistics
import struct
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import gpumask  # noqa: E402
from benchmarks.run import TOKENIZER, machine  # noqa: E402

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "an", "er", "is", "on", "ul")
COMMON = (
    "the of and to in is that for it as with was on be at by this had not are but from or "
    "have an they which one you were all we can her has there been if more when will would "
    "who so no data model value file function return list result error number time system"
).split()


def _words(rng: random.Random, n: int) -> str:
    """`n` words: common English ones, invented ones, numbers and some punctuation."""
    out = []
    for i in range(n):
        draw = rng.random()
        if draw < 0.6:
            word = rng.choice(COMMON)
        elif draw < 0.93:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        else:
            word = str(rng.randint(0, 10_000))
        if i and rng.random() < 0.08:
            word += rng.choice((".", ",", ":", "?", ".\n", "\n\n"))
        out.append(word)
    return " ".join(out)


def conversation(rng: random.Random) -> list[dict[str, Any]]:
    """One conversation: a system prompt, then user/assistant exchanges, some with a tool call."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": _words(rng, rng.randint(20, 120))}
    ]
    with_tool = rng.random() < 0.3
    exchanges = rng.randint(2, 9)
    tool_at = rng.randrange(exchanges) if with_tool else -1
    for k in range(exchanges):
        messages.append({"role": "user", "content": _words(rng, rng.randint(10, 160))})
        if k == tool_at:
            name = "".join(rng.choice(SYLLABLES) for _ in range(3))
            call = {"name": name, "arguments": {"query": _words(rng, 4), "n": rng.randint(1, 9)}}
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"type": "function", "function": call}],
                }
            )
            messages.append({"role": "tool", "content": _words(rng, rng.randint(15, 130))})
        messages.append({"role": "assistant", "content": _words(rng, rng.randint(25, 280))})
    return messages


def chat_rows(tok, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """`n` tokenizer outputs (`input_ids`, `attention_mask` lists) of synthetic conversations."""
    rng = random.Random(seed)
    texts = [tok.apply_chat_template(conversation(rng), tokenize=False) for _ in range(n)]
    encoded = tok(texts, add_special_tokens=False)
    return [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]


# --- the floor ------------------------------------------------------------------------------


def _joined_fromiter(rows: list[list[int]], total: int) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)


def _joined_array(rows: list[list[int]], total: int) -> np.ndarray:
    return np.frombuffer(array.array("q", itertools.chain.from_iterable(rows)), dtype=np.int64)


def _per_row_array(rows: list[list[int]], total: int) -> np.ndarray:
    return np.concatenate([np.frombuffer(array.array("q", r), dtype=np.int64) for r in rows])


def _per_row_numpy(rows: list[list[int]], total: int) -> np.ndarray:
    return np.concatenate([np.array(r, dtype=np.int64) for r in rows])


def _per_row_struct(rows: list[list[int]], total: int) -> np.ndarray:
    return np.frombuffer(b"".join(struct.pack(f"{len(r)}q", *r) for r in rows), dtype=np.int64)


# How a list of lists becomes one int64 array; the floor takes the fastest of these.
FLOORS: dict[str, Callable[[list[list[int]], int], np.ndarray]] = {
    "np.fromiter(chain)": _joined_fromiter,
    "array('q', chain)": _joined_array,
    "array('q') per row": _per_row_array,
    "np.array per row": _per_row_numpy,
    "struct.pack per row": _per_row_struct,
}


def pad_floor(examples, pad_id: int, join, with_mask: bool) -> dict[str, torch.Tensor]:
    """The padding-only floor: padded input_ids and attention_mask, right padding, no labels."""
    rows = [e["input_ids"] for e in examples]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    total = int(lengths.sum())
    keep = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
    input_ids = np.full(keep.shape, pad_id, dtype=np.int64)
    input_ids[keep] = join(rows, total)
    if with_mask:
        attention_mask = np.zeros(keep.shape, dtype=np.int64)
        attention_mask[keep] = join([e["attention_mask"] for e in examples], total)
    else:
        attention_mask = keep.astype(np.int64)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
    }


def tensor_floor(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """The floor for rows that are int64 tensors already (the issue's "pad tensors only"): one
    `torch.cat`, then the same numpy fill and masked write."""
    rows = [e["input_ids"] for e in examples]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    keep = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
    input_ids = np.full(keep.shape, pad_id, dtype=np.int64)
    input_ids[keep] = torch.cat(rows).numpy()
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(keep.astype(np.int64)),
    }


# --- timing ---------------------------------------------------------------------------------


def interleaved(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """The ms of each case in each of `rounds` rounds, each timing every case once in turn (so
    that a load change on a shared machine falls on every case alike), after one warm-up."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_ms(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """The median ms of each case over interleaved rounds (:func:`interleaved`)."""
    return {name: statistics.median(t) for name, t in interleaved(cases, rounds).items()}


def breakdown(collate, examples) -> dict[str, Callable[[], Any]]:
    """`collate(examples)` (batch mode, right padding, no truncation) step by step, as
    `CompletionCollator.__call__` runs them."""
    from gpumask.collators import mask_packed
    from gpumask.empty_turns import count_empty_turns_packed
    from gpumask.padding import (
        Packed,
        layout,
        pad_joined,
        padded_length,
        row_lengths,
        split_examples,
    )
    from gpumask.reports import row_reasons

    spec, ignore = collate.spec, collate.ignore_index
    rows, masks = split_examples(examples)
    lengths = row_lengths(rows)
    length = padded_length(lengths, None)
    packed = Packed.of(rows, masks)
    keep = layout(lengths, length, collate.padding_side)
    masked = mask_packed(packed, keep, spec, ignore)
    labels, stats = masked.labels, masked.stats

    def pad():
        mask = keep.astype(np.int64) if masks is None else pad_joined(packed.mask, keep, 0)
        return pad_joined(packed.ids, keep, collate.pad_token_id), mask

    return {
        "conversion (split_examples)": lambda: split_examples(examples),
        "joining (Packed.of, layout)": lambda: (
            Packed.of(rows, masks),
            layout(lengths, length, collate.padding_side),
        ),
        "masking (mask_packed: labels, stats)": lambda: mask_packed(packed, keep, spec, ignore),
        "reasons, empty turns": lambda: (
            row_reasons(spec, packed, stats),
            count_empty_turns_packed(
                packed.ids, masked.trained, packed.offsets, spec, masked.run_starts
            ),
        ),
        "padding (ids, attention mask, labels)": lambda: (
            pad(),
            pad_joined(labels, keep, ignore),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-breakdown", action="store_true", help="totals only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the warnings' cost is measured, not their text

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    spec = gpumask.MaskSpec.from_tokenizer(tok)
    with_masks = chat_rows(tok, args.rows)
    ids_only = [{"input_ids": e["input_ids"]} for e in with_masks]
    tensors = [{"input_ids": torch.tensor(e["input_ids"])} for e in with_masks]
    lengths = [len(e["input_ids"]) for e in with_masks]
    collate = gpumask.CompletionCollator(tok, spec)
    trl = gpumask.DataCollatorForCompletionOnlyLM(
        "<|im_start|>assistant\n", ["<|im_start|>user\n", "<|im_start|>system\n"], tokenizer=tok
    )
    pad_id = collate.pad_token_id
    info = machine()
    print(f"# collate cost: {info['label']}, torch {info['torch']}, {args.threads} thread(s)")
    print(
        f"{len(lengths)} rows, {sum(lengths)} tokens (mean {statistics.mean(lengths):.0f}, "
        f"min {min(lengths)}, max {max(lengths)}), padded to {max(lengths)}; median of "
        f"{args.rounds} interleaved rounds"
    )

    floors = {}
    for name, join in FLOORS.items():
        floors[f"floor ids: {name}"] = lambda j=join: pad_floor(ids_only, pad_id, j, False)
        floors[f"floor ids + mask: {name}"] = lambda j=join: pad_floor(with_masks, pad_id, j, True)
    floors["tensor floor: torch.cat + numpy fill"] = lambda: tensor_floor(tensors, pad_id)
    collators = {
        "CompletionCollator, ids (lists)": lambda: collate(ids_only),
        "CompletionCollator, ids + mask (lists)": lambda: collate(with_masks),
        "CompletionCollator, ids (int64 tensors)": lambda: collate(tensors),
        "DataCollatorForCompletionOnlyLM, ids (lists)": lambda: trl(ids_only),
        "DataCollatorForCompletionOnlyLM, ids + mask (lists)": lambda: trl(with_masks),
    }
    times = interleaved({**floors, **collators}, args.rounds)
    ms = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    floor_ids = min(v for k, v in ms.items() if k.startswith("floor ids:"))
    floor_masks = min(v for k, v in ms.items() if k.startswith("floor ids + mask:"))
    floor_tensors = ms["tensor floor: torch.cat + numpy fill"]
    print("\n| floor | ms / batch | best ms |\n|---|---|---|")
    for name in floors:
        print(f"| {name} | {ms[name]:.2f} | {best[name]:.2f} |")
    print(
        "\n| collator | ms / batch | best ms | x list floor | x tensor floor |\n"
        "|---|---|---|---|---|"
    )
    for name in collators:
        floor = floor_masks if "mask (lists)" in name else floor_ids
        if "tensors" in name:
            floor = floor_tensors
        print(
            f"| {name} | {ms[name]:.2f} | {best[name]:.2f} | {ms[name] / floor:.1f}x | "
            f"{ms[name] / floor_tensors:.1f}x |"
        )
    if not args.no_breakdown:
        for title, examples in (("ids (lists)", ids_only), ("ids (int64 tensors)", tensors)):
            steps = interleaved_ms(breakdown(collate, examples), args.rounds)
            whole = interleaved_ms({"": lambda e=examples: collate(e)}, args.rounds)[""]
            print(f"\n| CompletionCollator, {title}: step | ms | share |\n|---|---|---|")
            for name, value in steps.items():
                print(f"| {name} | {value:.2f} | {value / whole:.0%} |")
            rest = whole - sum(steps.values())
            print(f"| the rest (calls, dict, torch.from_numpy) | {rest:.2f} | {rest / whole:.0%} |")
            print(f"| whole call | {whole:.2f} | 100% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
