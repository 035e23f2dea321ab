"""Side-by-side timings: loop-based completion collators against gpumask, on the same batches.

Timed, in one process, on the synthetic ChatML batches of :mod:`benchmarks.data` (sparse and
dense template cases, ragged rows given as Python lists and as tensors):

- ``trl``: trl 0.19.1 ``DataCollatorForCompletionOnlyLM`` (the real one), response template and
  one instruction template;
- ``loop``: :mod:`benchmarks.multirole_loop`, our loop implementation of the multi-role
  algorithm proposed for TRL (instruction templates as a list), labelled as such;
- ``dropin``: ``gpumask.DataCollatorForCompletionOnlyLM`` with TRL's arguments;
- ``collator``: ``gpumask.CompletionCollator`` with the full spec;
- ``mask_labels``: ``gpumask.mask_labels`` alone on the padded batch (no padding cost), with the
  torch backend on the CPU, and with torch and Triton on the GPU when CUDA is present.

The collators are timed end to end (padding and masking). Each number is the median of at least
three calls after a warm-up call (a warm-up slower than a second counts as a call). Loop-based
collators are skipped above ``LOOP_TOKEN_LIMIT`` tokens per batch (several seconds a call).
Torch runs on one CPU thread unless ``--threads`` says otherwise: collators run in DataLoader
workers, which PyTorch sets to one thread, and one thread is not thrown off by a busy machine.

    python benchmarks/run.py            # the full grid: results/<machine>-<date>.json and .png
    python benchmarks/run.py --quick    # B=64, T=1024 and 4096 only: a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import gpumask  # noqa: E402
from benchmarks.data import ChatBatch, chat_batch, collator_examples  # noqa: E402
from benchmarks.multirole_loop import MultiRoleLoopCollator  # noqa: E402

TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "qwen2_5"
RESULTS = ROOT / "benchmarks" / "results"
FULL_GRID = [
    *((8, t) for t in (512, 2048, 8192, 32768)),
    *((64, t) for t in (512, 1024, 2048, 4096, 8192)),
    *((256, t) for t in (512, 2048, 8192, 32768)),
]
QUICK_GRID = [(64, 1024), (64, 4096)]
LOOP_TOKEN_LIMIT = 2**21
LOOP_NOTE = (
    "* our loop implementation of the multi-role algorithm proposed in TRL PR 3224 "
    "(benchmarks/multirole_loop.py), not TRL code"
)
IDS_KINDS = ("lists", "tensors")


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation: `make(batch, tokenizer)` returns the function that is timed.

    Collators are called on the examples; `mask_labels` variants on (input_ids,
    attention_mask) already padded and on their device.
    """

    key: str
    label: str
    make: Callable[[ChatBatch, Any], Callable]
    collator: bool = True
    loop: bool = False
    device: str = "cpu"


def _trl(batch: ChatBatch, tok: Any) -> Callable:
    from trl import DataCollatorForCompletionOnlyLM

    return DataCollatorForCompletionOnlyLM(
        batch.response_template, batch.instruction_template, tokenizer=tok
    )


def _loop(batch: ChatBatch, tok: Any) -> Callable:
    others = [ids for role, ids in _headers(batch).items() if role != "assistant"]
    return MultiRoleLoopCollator(batch.response_template, others, tokenizer=tok)


def _dropin(batch: ChatBatch, tok: Any) -> Callable:
    return gpumask.DataCollatorForCompletionOnlyLM(
        batch.response_template, batch.instruction_template, tokenizer=tok
    )


def _collator(batch: ChatBatch, tok: Any) -> Callable:
    return gpumask.CompletionCollator(tok, spec=batch.spec)


def _mask_labels(backend: str) -> Callable[[ChatBatch, Any], Callable]:
    def make(batch: ChatBatch, tok: Any) -> Callable:
        return lambda ids, mask: gpumask.mask_labels(
            ids, batch.spec, attention_mask=mask, backend=backend
        )

    return make


def _headers(batch: ChatBatch) -> dict[str, list[int]]:
    return {role: list(alts[0]) for role, alts in batch.spec.roles.items()}


def implementations(cuda: bool, quick: bool = False) -> list[Impl]:
    """What is timed: TRL first (the reference of every ratio); `quick` leaves out our loop."""
    impls = [
        Impl("trl", "trl 0.19.1", _trl, loop=True),
        Impl("loop", "multi-role loop*", _loop, loop=True),
        Impl("dropin", "gpumask drop-in", _dropin),
        Impl("collator", "CompletionCollator", _collator),
        Impl("mask_torch_cpu", "mask_labels CPU", _mask_labels("torch"), collator=False),
    ]
    if quick:
        impls = [i for i in impls if i.key != "loop"]
    if cuda:
        impls.append(
            Impl(
                "mask_torch_cuda",
                "mask_labels torch GPU",
                _mask_labels("torch"),
                collator=False,
                device="cuda",
            )
        )
        try:
            import triton  # noqa: F401

            impls.append(
                Impl(
                    "mask_triton_cuda",
                    "mask_labels triton GPU",
                    _mask_labels("triton"),
                    collator=False,
                    device="cuda",
                )
            )
        except ImportError:
            pass
    return impls


def measure(
    fn: Callable[[], Any],
    sync: Callable[[], None],
    min_calls: int = 3,
    min_seconds: float = 0.3,
    max_calls: int = 15,
) -> list[float]:
    """Seconds per call: a warm-up, then calls until `min_calls` and `min_seconds` are reached."""

    def once() -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    first = once()
    samples = [first] if first > 1.0 else []
    while len(samples) < max_calls and (len(samples) < min_calls or sum(samples) < min_seconds):
        samples.append(once())
    return samples


def pad(examples: list[dict[str, Any]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) of tensor examples."""
    rows = [e["input_ids"] for e in examples]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    return ids, mask


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpus = os.cpu_count() or 1
    info = {
        "cpus": cpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["label"] = f"{info['gpu']}, {cpus}-core CPU"
        info["slug"] = "-".join(info["gpu"].lower().split())
    else:
        info["label"] = f"{cpus}-core CPU, no GPU"
        info["slug"] = f"cpu-{cpus}core"
    return info


def run(
    grid: Iterable[tuple[int, int]],
    impls: list[Impl],
    seed: int = 0,
    progress: bool = True,
    threads: int = 1,
) -> dict[str, Any]:
    """Time every implementation on every grid point, sparse and dense, lists and tensors.

    Torch runs on `threads` CPU threads meanwhile (restored after).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _timings(list(grid), impls, seed, progress)
    finally:
        torch.set_num_threads(before)


def _timings(
    grid: list[tuple[int, int]], impls: list[Impl], seed: int, progress: bool
) -> dict[str, Any]:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    collators = [i for i in impls if i.collator]
    maskers = [i for i in impls if not i.collator]
    steps = len(grid) * 2 * (len(IDS_KINDS) * len(collators) + len(maskers))
    bar = tqdm(total=steps, disable=not progress, unit="timing", leave=False)
    load_before = os.getloadavg()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size, length in grid:
            for dense in (False, True):
                case = "dense" if dense else "sparse"
                batch = chat_batch(size, length, dense, seed=seed)
                point = {"batch": size, "length": length, "tokens": size * length, "case": case}
                for ids_kind in IDS_KINDS:
                    examples = collator_examples(batch, as_tensors=ids_kind == "tensors", seed=seed)
                    for impl in collators:
                        bar.set_description(f"B={size} T={length} {case} {ids_kind} {impl.key}")
                        row = {**point, "impl": impl.key, "ids": ids_kind}
                        if impl.loop and size * length > LOOP_TOKEN_LIMIT:
                            skipped.append(row)
                        else:
                            collate = impl.make(batch, tok)
                            results.append(
                                {
                                    **row,
                                    "seconds": measure(
                                        lambda c=collate, e=examples: c(e), lambda: None
                                    ),
                                }
                            )
                        bar.update()
                ids, mask = pad(
                    collator_examples(batch, as_tensors=True, seed=seed), tok.pad_token_id
                )
                for impl in maskers:
                    bar.set_description(f"B={size} T={length} {case} {impl.key}")
                    on = (ids.to(impl.device), mask.to(impl.device))
                    fn = impl.make(batch, tok)
                    sync = torch.cuda.synchronize if impl.device == "cuda" else (lambda: None)
                    results.append(
                        {
                            **point,
                            "impl": impl.key,
                            "ids": "tensors",
                            "seconds": measure(lambda f=fn, a=on: f(*a), sync),
                        }
                    )
                    bar.update()
    bar.close()
    for row in results:
        row["median_s"] = statistics.median(row["seconds"])
        row["min_s"] = min(row["seconds"])
    _add_ratios(results)
    return {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "loop_token_limit": LOOP_TOKEN_LIMIT,
        "implementations": {i.key: i.label for i in impls},
        "results": results,
        "skipped": skipped,
    }


def _add_ratios(results: list[dict[str, Any]]) -> None:
    trl = {
        (r["batch"], r["length"], r["case"], r["ids"]): r["median_s"]
        for r in results
        if r["impl"] == "trl"
    }
    for r in results:
        base = trl.get((r["batch"], r["length"], r["case"], r["ids"]))
        r["trl_over_this"] = None if base is None else base / r["median_s"]


def table(report: dict[str, Any], markdown: bool = False) -> str:
    """Medians in ms, and how many times faster than TRL, one line per (B, T, case, ids)."""
    impls = report["implementations"]
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        for ids in IDS_KINDS if r["impl"].startswith("mask_") else (r["ids"],):
            by_key.setdefault((r["batch"], r["length"], r["case"], ids), {})[r["impl"]] = r
    trl_of = {k: v["trl"]["median_s"] for k, v in by_key.items() if "trl" in v}

    def cell(key: tuple, impl: str) -> str:
        r = by_key[key].get(impl)
        if r is None:
            return "skipped" if impl in ("trl", "loop") else "-"
        text = f"{r['median_s'] * 1e3:.1f}"
        if impl != "trl" and key in trl_of:
            text += f" ({trl_of[key] / r['median_s']:.1f}x)"
        return text

    head = ["B", "T", "case", "ids", *impls.values()]
    lines = [
        [str(k[0]), str(k[1]), k[2], k[3], *(cell(k, i) for i in impls)]
        for k in sorted(by_key, key=lambda k: (k[0], k[1], k[2] == "dense", k[3]))
    ]
    return render_table(head, lines, ["---:", "---:", ":---", ":---"] + ["---:"] * len(impls),
                        markdown)  # fmt: skip


def render_table(head: list[str], lines: list[list[str]], align: list[str], markdown: bool) -> str:
    """`lines` under `head`: a markdown table (`align`: its `---:` / `:---` cells), or plain
    columns right-aligned for a terminal.

        >>> print(render_table(["a", "bb"], [["1", "2"]], [":---", "---:"], markdown=False))
        a  bb
        1   2
        >>> print(render_table(["a", "bb"], [["1", "2"]], [":---", "---:"], markdown=True))
        | a | bb |
        |:---|---:|
        | 1 | 2 |
    """
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*row) for row in [head, *lines])


def targets(report: dict[str, Any]) -> list[str]:
    """The issue's criteria at B=64, T <= 4096: drop-in >= 5x TRL (lists), >= 20x (tensors)."""
    out = []
    for r in report["results"]:
        if r["impl"] != "dropin" or r["batch"] != 64 or r["length"] > 4096:
            continue
        if r["trl_over_this"] is None:
            continue
        goal = 5 if r["ids"] == "lists" else 20
        verdict = "ok" if r["trl_over_this"] >= goal else "MISSED"
        out.append(
            f"drop-in vs trl, B=64 T={r['length']} {r['case']} {r['ids']}: "
            f"{r['trl_over_this']:.1f}x (target {goal}x) {verdict}"
        )
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Log-log: median time against tokens per batch, one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True, sharey=True)
    for ax, (case, ids) in zip(
        axes.flat, [(c, i) for c in ("sparse", "dense") for i in IDS_KINDS], strict=True
    ):
        for key, label in report["implementations"].items():
            rows = [
                r
                for r in report["results"]
                if r["impl"] == key
                and r["case"] == case
                and (r["ids"] == ids or key.startswith("mask_"))
            ]
            if not rows:
                continue
            by_tokens: dict[int, list[float]] = {}
            for r in rows:
                by_tokens.setdefault(r["tokens"], []).append(r["median_s"])
            xs = sorted(by_tokens)
            ys = [statistics.geometric_mean(by_tokens[x]) for x in xs]
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label)
            ax.scatter(
                [r["tokens"] for r in rows],
                [r["median_s"] for r in rows],
                s=8,
                color=line.get_color(),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{case} templates, ids as {ids}")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("tokens per batch (B x T)")
        ax.set_ylabel("seconds per batch (median)")
    axes.flat[0].legend(fontsize=8)
    info = report["machine"]
    fig.suptitle(
        f"Completion-only labels, {info['label']}, {info['torch_threads']} torch thread(s) "
        f"({report['date']}, load {report['load_before'][0]:.1f}); mask_labels excludes padding"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="B=64, T=1024 and 4096 only; write nothing unless --out is given",
    )
    parser.add_argument("--out", type=Path, help="results JSON (the PNG goes beside it)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, as in DataLoader workers, where collators run)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="JSON",
        help="redraw the PNG of an earlier results file, and print its table",
    )
    args = parser.parse_args(argv)

    if args.plot:
        report = json.loads(args.plot.read_text())
        plot(report, args.plot.with_suffix(".png"))
        print(table(report))
        return 0
    cuda = torch.cuda.is_available()
    grid = QUICK_GRID if args.quick else FULL_GRID
    report = run(grid, implementations(cuda, args.quick), threads=args.threads)
    out = args.out
    if out is None and not args.quick:
        out = RESULTS / f"{report['machine']['slug']}-{report['date']}.json"
    print(
        f"{report['machine']['label']}; torch {torch.__version__}, "
        f"{report['machine']['torch_threads']} thread(s); load average "
        f"{report['load_before'][0]:.2f} before, {report['load_after'][0]:.2f} after"
    )
    print(
        "median ms per batch (x = times faster than trl 0.19.1 on the same examples); "
        "mask_labels: masking alone, on the padded batch"
    )
    print(table(report))
    if "loop" in report["implementations"]:
        print(LOOP_NOTE)
    for line in targets(report):
        print(line)
    points = sorted({(r["batch"], r["length"]) for r in report["skipped"]})
    if points:
        where = ", ".join(f"B={b} T={t}" for b, t in points)
        print(
            f"skipped: trl and the multi-role loop above {LOOP_TOKEN_LIMIT} tokens per batch "
            f"(seconds per call): {where}"
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        plot(report, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    if args.markdown:
        args.markdown.write_text(table(report, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
