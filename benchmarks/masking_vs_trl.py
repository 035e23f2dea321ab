"""The core issue's criterion: ``mask_labels`` against trl 0.19.1's own masking loop, on the CPU.

On a 64 x 8192 batch of ChatML-like conversations (:mod:`benchmarks.data`), sparse case
(templates start with ``<|im_start|>``) and dense case (templates start with ``\\n``, 5% of all
tokens): TRL's masking loop is the time of its ``DataCollatorForCompletionOnlyLM`` minus the time
of its parent ``DataCollatorForLanguageModeling`` on the same examples (ids as lists), taken in
interleaved rounds, the median of the per-round differences. ``mask_labels`` (torch backend)
runs on the same batch as a tensor; "every token" is the torch backend run on every token, as
under ``torch.compile`` or on a GPU, instead of skipping the runs of plain tokens as eager CPU
calls do.

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
