"""Prove and measure gpumask on a GPU machine, in one command and under 8 minutes.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out DIR          # on the GPU machine
    PYTHONPATH=. python3 benchmarks/gpu_check.py --smoke --out DIR  # the same code on the CPU

Runs six steps in order (benchmarks/gpu_steps.py): environment; correctness on the device
(both backends against the oracle on the test suite's random cases, long rows against the CPU
torch backend); CUDA graphs and torch.compile; speed against a device copy; a bf16 Llama-style
training step with `gpumask.attach` against precomputed labels; a torch.profiler trace. Each
step runs in its own try, within its own time budget (parts left when it runs out are named),
and DIR/gpu_check.json and DIR/gpu_check.md are rewritten after every step, so a failure or a
kill keeps everything before it. Needs only torch, triton, transformers, numpy, hypothesis.

`--smoke` runs every step on the CPU with tiny shapes (the torch backend; Triton under
TRITON_INTERPRET=1, set here before triton is imported); CUDA-only parts (events, graphs,
Inductor, kernel traces) are replaced by their CPU equivalents and listed as not run. The test
suite runs it (tests/test_gpu_check.py), so the script cannot rot without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_report import Report, log  # noqa: E402  (no torch: imported before it)

TOTAL_BUDGET_S = 420  # all steps (a step may overrun its budget by one part); 8 min in all
SMOKE_BANNER = (
    "CPU smoke run (--smoke): tiny shapes on the CPU, Triton in its interpreter. "
    "Not GPU figures: its timings only show the report's format."
)


def run_steps(
    report: Report, steps: Sequence[tuple[str, str, float, Callable]], plan: Any, total_s: float
) -> Report:
    """Run `steps` in order, each in its own try and budget (its own, or what is left of
    `total_s`); a step that finds the run's time spent is recorded as skipped."""
    started = time.monotonic()
    for name, title, budget_s, fn in steps:
        left = total_s - (time.monotonic() - started)
        if left <= 1:
            report.skipped(name, title, f"the run's {total_s:.0f}s were spent before it started")
            continue
        ctx = report.start(name, title, min(budget_s, left))
        try:
            fn(ctx, plan)
        except Exception as error:
            report.fail(ctx, error)
        report.finish(ctx)
        _free_memory()
    return report


def _free_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and .md")
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU, tiny")
    parser.add_argument(
        "--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for all steps together"
    )
    parser.add_argument("--only", help="comma-separated step names to run (default: all)")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # print as it goes, also into a pipe

    import torch

    from benchmarks.gpu_steps import STEPS, gpu_plan, smoke_plan

    out = Path(args.out)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --smoke for the CPU dry run")
    plan = smoke_plan(out) if args.smoke else gpu_plan(out)
    steps = STEPS
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {s[0] for s in STEPS})
        if unknown:
            parser.error(f"--only: unknown step {unknown[0]!r}; steps: {[s[0] for s in STEPS]}")
        steps = tuple(s for s in STEPS if s[0] in wanted)
    meta = {
        "title": f"CPU smoke run, {os.cpu_count()} CPU cores"
        if args.smoke
        else torch.cuda.get_device_name(),
        "banner": SMOKE_BANNER if args.smoke else None,
        "mode": "smoke" if args.smoke else "gpu",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
        "git_commit": _git_commit(),
        "budget_s": args.budget,
    }
    report = Report(out, meta)
    log(f"gpumask GPU check ({meta['mode']}) -> {report.json_path}")
    started = time.monotonic()
    run_steps(report, steps, plan, args.budget)
    report.meta["total_s"] = round(time.monotonic() - started, 1)
    report.write()
    log("")
    for step in report.steps:
        log(f"{step.name:16s} {step.status:8s} {step.seconds():7.1f}s")
    log(f"report: {report.json_path} and {report.md_path}")
    return 1 if any(s.status == "failed" for s in report.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
