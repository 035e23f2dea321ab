"""The GPU check's report: every step's status, checks, results and errors, as JSON and Markdown.

Both files are rewritten after every step (and whenever a step saves mid-way), so a run that is
killed or times out keeps everything measured before. A step fills a :class:`StepContext`::

    report = Report("gpu_check_out", {"mode": "gpu"})
    ctx = report.start("speed", "Both backends against a device copy", budget_s=90)
    ctx.result["rows"] = [{"B x T": "64x8192", "triton us": 40.0}]
    ctx.check("every row timed", True)
    if ctx.out_of_budget("the remaining shapes"):
        ...
    report.finish(ctx)  # "ok", "failed" or "partial"; both files rewritten

Status of a step: `ok` (every check passed), `failed` (a check failed or it raised: its error
and traceback are kept), `partial` (its time budget ran out, the parts left are named),
`skipped` (not started: the run's time was spent); a step left `running` in the files was cut
off by a kill. Parts that cannot run where the check runs (CUDA graphs on a CPU, say) are
listed under "not run" with the reason; they leave `ok` alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    """Print at once: the output is read while the check runs (and after a kill)."""
    print(message, flush=True)


class StepContext:
    """What one step records: its result (filled as it goes), checks, budget and skips."""

    def __init__(self, report: Report, name: str, title: str, budget_s: float) -> None:
        self.report = report
        self.name = name
        self.title = title
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.ended: float | None = None
        self.status = "running"
        self.result: dict[str, Any] = {}
        self.checks: list[dict[str, Any]] = []
        self.not_run: list[str] = []
        self.out_of_time: list[str] = []
        self.error: str | None = None
        self.traceback: str | None = None

    def left(self) -> float:
        """Seconds of this step's budget left."""
        return self.budget_s - (time.monotonic() - self.started)

    def out_of_budget(self, part: str, reserve_s: float = 0.0) -> bool:
        """True (and `part` recorded as left out) when less than `reserve_s` seconds are left."""
        if self.left() > reserve_s:
            return False
        self.out_of_time.append(part)
        self.log(f"budget spent, skipped: {part}")
        return True

    def check(self, name: str, passed: bool, detail: Any = None) -> None:
        entry = {"name": name, "passed": bool(passed)}
        if detail is not None:
            entry["detail"] = detail
        self.checks.append(entry)
        self.log(f"{'PASS' if passed else 'FAIL'} {name}" + ("" if passed else f": {detail}"))

    def skip(self, part: str, why: str) -> None:
        """A part that does not run here, and why (not a failure)."""
        self.not_run.append(f"{part}: {why}")
        self.log(f"not run: {part} ({why})")

    def log(self, message: str) -> None:
        log(f"[{self.name} {time.monotonic() - self.started:6.1f}s] {message}")

    def save(self) -> None:
        """Write the report now, this step included as it stands."""
        self.report.write()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "seconds": self.seconds(),
            "budget_s": self.budget_s,
            "checks": self.checks,
            "not_run": self.not_run,
            "out_of_time": self.out_of_time,
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
        }

    def seconds(self) -> float:
        end = time.monotonic() if self.ended is None else self.ended
        return round(end - self.started, 2)


class Report:
    """`gpu_check.json` and `gpu_check.md` in `out_dir`, rewritten on every change."""

    def __init__(self, out_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.steps: list[StepContext] = []

    @property
    def json_path(self) -> Path:
        return self.dir / "gpu_check.json"

    @property
    def md_path(self) -> Path:
        return self.dir / "gpu_check.md"

    def start(self, name: str, title: str, budget_s: float) -> StepContext:
        ctx = StepContext(self, name, title, budget_s)
        self.steps.append(ctx)
        ctx.log(f"start: {title} (budget {budget_s:.0f}s)")
        self.write()
        return ctx

    def skipped(self, name: str, title: str, why: str) -> None:
        ctx = StepContext(self, name, title, 0.0)
        ctx.status = "skipped"
        ctx.ended = ctx.started
        ctx.out_of_time.append(why)
        self.steps.append(ctx)
        ctx.log(f"skipped: {why}")
        self.write()

    def fail(self, ctx: StepContext, error: BaseException) -> None:
        """Record what a step raised (the step is then finished by `finish`)."""
        ctx.error = f"{type(error).__name__}: {error}"
        ctx.traceback = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        ctx.log(f"ERROR {ctx.error}")
        print(ctx.traceback, file=sys.stderr, flush=True)

    def finish(self, ctx: StepContext) -> str:
        ctx.ended = time.monotonic()
        if ctx.error is not None or any(not c["passed"] for c in ctx.checks):
            ctx.status = "failed"
        elif ctx.out_of_time:
            ctx.status = "partial"
        else:
            ctx.status = "ok"
        ctx.log(f"{ctx.status} in {ctx.seconds():.1f}s")
        self.write()
        return ctx.status

    def as_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "steps": [s.as_dict() for s in self.steps]}

    def write(self) -> None:
        data = self.as_dict()
        _replace(self.json_path, json.dumps(data, indent=1, default=str) + "\n")
        _replace(self.md_path, markdown(data))


def _replace(path: Path, text: str) -> None:
    """Write through a temporary file, so a kill mid-write leaves the previous version."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- Markdown --------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> str:
    """The report as Markdown: a summary table, then one section per step."""
    meta = data["meta"]
    lines = [f"# gpumask GPU check: {meta.get('title', '')}", ""]
    if meta.get("banner"):
        lines += [f"> **{meta['banner']}**", ""]
    lines += [f"- {k}: {_cell(v)}" for k, v in meta.items() if k not in ("title", "banner")]
    lines += ["", "| step | status | seconds | budget s | checks passed | not run | out of time |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for s in data["steps"]:
        passed = sum(c["passed"] for c in s["checks"])
        lines.append(
            f"| {s['name']} | {s['status']} | {s['seconds']} | {s['budget_s']:.0f} | "
            f"{passed}/{len(s['checks'])} | {len(s['not_run'])} | {len(s['out_of_time'])} |"
        )
    for s in data["steps"]:
        lines += ["", f"## {s['name']}: {s['title']}", "", f"Status: **{s['status']}**", ""]
        if s["checks"]:
            lines += ["Checks:", ""]
            for c in s["checks"]:
                mark = "pass" if c["passed"] else "**FAIL**"
                detail = f" ({_cell(c['detail'])})" if "detail" in c else ""
                lines.append(f"- {mark}: {c['name']}{detail}")
            lines.append("")
        if s["not_run"]:
            lines += ["Not run here:", ""] + [f"- {why}" for why in s["not_run"]] + [""]
        if s["out_of_time"]:
            lines += ["Left out when the time budget ran out:", ""]
            lines += [f"- {part}" for part in s["out_of_time"]] + [""]
        lines += _result_lines(s["result"])
        if s["error"]:
            lines += ["", f"Error: `{s['error']}`", "", "```", s["traceback"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _result_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in result.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            lines += ["", f"{key}:", "", "| " + " | ".join(columns) + " |"]
            lines.append("|" + "---|" * len(columns))
            lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in value]
            lines.append("")
        elif isinstance(value, dict):
            lines.append(f"- {key}:")
            lines += [f"  - {k}: {_cell(v)}" for k, v in value.items()]
        else:
            lines.append(f"- {key}: {_cell(value)}")
    return lines


MAX_CELL = 400  # characters of one value in the Markdown (the JSON keeps all of it)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    if len(text) > MAX_CELL:
        text = text[:MAX_CELL] + " ... (in full in the JSON)"
    return text.replace("|", "\\|").replace("\n", " ")
