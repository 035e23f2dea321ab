"""The core issue's criterion: ``mask_labels`` against trl 0.19.1's own masking loop, on the CPU.

On a 64 x 8192 batch of ChatML-like conversations (:mod:`benchmarks.data`), sparse case
(templates start with ``<|im_start|>``) and dense case (templates start with ``\\n``, 5% of all
tokens): TRL's masking loop is the time of its ``DataCollatorForCompletionOnlyLM`` minus the time
of its parent ``DataCollatorForLanguageModeling`` on the same examples (ids as lists), taken in
interleaved rounds, the median of the per-round differences. ``mask_labels`` (torch backend)
runs on the same batch as a tensor; "every token" is the torch backend run on every token, as
under ``torch.compile`` or on a GPU, instead of skipping the runs of plain tokens as eager CPU
calls do.

A second table prices rule 5 (`tool_call_turns`): the same batches with a tool-call token in
about one turn in three, masked with `tool_call_turns="only"` and `"mask"` against the same
call without the option, interleaved rounds, eager and on every token.

    python benchmarks/masking_vs_trl.py [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import gpumask  # noqa: E402
from benchmarks.data import chat_batch  # noqa: E402
from benchmarks.run import TOKENIZER, machine  # noqa: E402
from gpumask.padding import Batch  # noqa: E402
from gpumask.torch_backend import mask_every_token  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(dense: bool, rounds: int, tok, size: int = 64, length: int = 8192) -> dict:
    """Medians (seconds) of TRL's collate, its parent's, their paired difference, mask_labels
    (eager CPU), and the torch backend on every token."""
    from transformers import DataCollatorForLanguageModeling
    from trl import DataCollatorForCompletionOnlyLM

    batch = chat_batch(size, length, dense, seed=0)
    examples = [{"input_ids": row.tolist()} for row in batch.input_ids]
    trl = DataCollatorForCompletionOnlyLM(
        batch.response_template, batch.instruction_template, tokenizer=tok
    )
    parent = DataCollatorForLanguageModeling(tok, mlm=False)
    ids = batch.input_ids

    def ours() -> torch.Tensor:
        return gpumask.mask_labels(ids, batch.spec, backend="torch")

    def every_token() -> torch.Tensor:
        return mask_every_token(Batch(ids), batch.spec, -100, False)[0]

    assert torch.equal(ours(), every_token())  # also builds the tables
    full, base, ml, dense_path = [], [], [], []
    for _ in range(rounds):
        full.append(seconds(lambda: trl(examples)))
        base.append(seconds(lambda: parent(examples)))
        ml.append(seconds(ours))
        dense_path.append(seconds(every_token))
    loop = [f - b for f, b in zip(full, base, strict=True)]
    return {
        "trl": statistics.median(full),
        "parent": statistics.median(base),
        "loop": statistics.median(loop),
        "mask_labels": statistics.median(ml),
        "every_token": statistics.median(dense_path),
    }


TOOL_CALL = 151657  # Qwen2.5's <tool_call>


def tool_call_cost(dense: bool, rounds: int, size: int = 64, length: int = 8192) -> dict:
    """Medians (seconds) of mask_labels without rule 5 and with "only" and "mask", eager and
    on every token, on a batch where about one turn in three holds a tool call."""
    batch = chat_batch(size, length, dense, seed=0)
    ids = batch.input_ids.clone()
    g = torch.Generator().manual_seed(1)
    content = ids > 1000  # content tokens (benchmarks.data draws them from 1000 up)
    ids[content & (torch.rand(ids.shape, generator=g) < 1 / 300)] = TOOL_CALL
    specs = {
        "without": batch.spec,
        "only": batch.spec.replace(tool_call=[TOOL_CALL], tool_call_turns="only"),
        "mask": batch.spec.replace(tool_call=[TOOL_CALL], tool_call_turns="mask"),
    }
    runs = {}
    for name, spec in specs.items():
        runs[f"{name} eager"] = lambda spec=spec: gpumask.mask_labels(ids, spec, backend="torch")
        runs[f"{name} every token"] = lambda spec=spec: mask_every_token(
            Batch(ids), spec, -100, False
        )[0]
    for name, fn in runs.items():  # tables built, and both paths agree
        assert torch.equal(fn(), runs[name.split()[0] + " eager"]()), name
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(seconds(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    load = os.getloadavg()[0]
    print(
        f"64 x 8192, {machine()['label']}, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread(s)), load average {load:.2f}; "
        f"medians of {args.rounds} rounds, ms"
    )
    head = ("case", "trl collate", "trl parent", "trl masking loop", "mask_labels", "every token")
    print("{:<7}{:>13}{:>12}{:>18}{:>13}{:>13}  verdict".format(*head))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dense in (False, True):
            r = compare(dense, args.rounds, tok)
            ratio = r["loop"] / r["mask_labels"]
            verdict = f"{'faster' if ratio > 1 else 'SLOWER'}: {ratio:.1f}x TRL's loop"
            print(
                f"{'dense' if dense else 'sparse':<7}{r['trl'] * 1e3:>13.1f}"
                f"{r['parent'] * 1e3:>12.1f}{r['loop'] * 1e3:>18.1f}"
                f"{r['mask_labels'] * 1e3:>13.1f}{r['every_token'] * 1e3:>13.1f}  {verdict}"
            )
        print("\ntool_call_turns (rule 5), same batches with a tool call in ~1 turn in 3, ms")
        print("{:<7}{:<12}{:>9}{:>9}{:>9}  cost of 'only', 'mask'".format(
            "case", "path", "without", "only", "mask"))  # fmt: skip
        for dense in (False, True):
            r = tool_call_cost(dense, args.rounds)
            for path in ("eager", "every token"):
                base, only, mask = (r[f"{name} {path}"] for name in ("without", "only", "mask"))
                print(
                    f"{'dense' if dense else 'sparse':<7}{path:<12}{base * 1e3:>9.1f}"
                    f"{only * 1e3:>9.1f}{mask * 1e3:>9.1f}  "
                    f"+{(only / base - 1) * 100:.0f}%, +{(mask / base - 1) * 100:.0f}%"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
