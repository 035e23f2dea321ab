"""The GPU proof kit (benchmarks/gpu_check.py): its CPU smoke run covers every step, and the
report keeps a failing step's error, the steps after it, and what ran out of time."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gpumask

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is not installed: found from the checkout

from benchmarks import gpu_steps  # noqa: E402
from benchmarks.gpu_check import run_steps  # noqa: E402
from benchmarks.gpu_report import Report  # noqa: E402

STEP_NAMES = ["environment", "correctness", "graphs_compile", "speed", "training_step", "profile"]


def test_smoke_run_reports_every_step_ok(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["name"] for s in report["steps"]] == STEP_NAMES
    for name, step in steps.items():
        failing = [c for c in step["checks"] if not c["passed"]]
        assert step["status"] == "ok", (name, step["error"], failing, step["out_of_time"])
        assert step["checks"], name
    assert report["meta"]["mode"] == "smoke"
    assert "Not GPU figures" in report["meta"]["banner"]

    random_cases = steps["correctness"]["result"]["random_cases"]
    assert random_cases["checked"] == {"torch": 24, "triton": 24}
    assert random_cases["failures"] == {"torch": 0, "triton": 0}
    long_rows = steps["correctness"]["result"]["long_rows"]
    assert len(long_rows) == 9  # every variant, cu_seqlens included (a 1-row shape)
    assert all(row["torch"] == row["triton"] == "equal" for row in long_rows)
    speed_rows = steps["speed"]["result"]["rows"]
    assert [(r["ids"], r["packed"]) for r in speed_rows] == [
        ("int64", False),
        ("int64", True),
        ("int32", False),
        ("int32", True),
    ]
    assert all(r["triton us"] > 0 and r["torch us"] > 0 and r["copy us"] > 0 for r in speed_rows)
    assert steps["training_step"]["result"]["loss (attach)"] > 0
    assert steps["profile"]["result"]["top"]
    assert (tmp_path / "gpu_check_trace.json.gz").stat().st_size > 0

    # What cannot run on a CPU is named, with the reason.
    not_run = {name: " ".join(step["not_run"]) for name, step in steps.items()}
    assert "CUDA graph capture and replay" in not_run["graphs_compile"]
    assert "torch.compile of the Triton backend" in not_run["graphs_compile"]
    assert "CUDA-event timing" in not_run["speed"]
    assert "GPU kernel times" in not_run["profile"]

    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "CPU smoke run" in markdown.splitlines()[0]
    for name in STEP_NAMES:
        assert f"| {name} | ok |" in markdown
        assert f"## {name}: " in markdown


def _raises(ctx, plan):
    ctx.result["measured before the error"] = 1
    raise RuntimeError("kernel exploded")


def test_failing_step_keeps_its_error_and_later_steps_still_run(tmp_path):
    seen_on_disk = []

    def reads_report(ctx, plan):
        report = json.loads((tmp_path / "gpu_check.json").read_text())
        seen_on_disk.append([s["status"] for s in report["steps"]])
        ctx.check("ran", True)

    def runs_out_of_time(ctx, plan):
        for part in ("first part", "second part"):
            if ctx.out_of_budget(part):
                break

    def sleeps(ctx, plan):
        time.sleep(1.0)

    steps = [
        ("raises", "Raises", 10, _raises),
        ("reads", "Reads the report", 10, reads_report),
        ("no_time", "Has no budget", 0, runs_out_of_time),
        ("sleeps", "Spends the run's time", 10, sleeps),
        ("never", "Finds no time left", 10, reads_report),
    ]
    report = run_steps(Report(tmp_path, {"title": "test"}), steps, None, total_s=1.8)

    data = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = [s["status"] for s in data["steps"]]
    assert statuses == ["failed", "ok", "partial", "ok", "skipped"]
    assert [s.status for s in report.steps] == statuses
    assert seen_on_disk == [["failed", "running"]]  # written after the failure, before the next
    failed = data["steps"][0]
    assert failed["error"] == "RuntimeError: kernel exploded"
    assert "_raises" in failed["traceback"]
    assert failed["result"] == {"measured before the error": 1}
    assert data["steps"][2]["out_of_time"] == ["first part"]
    assert "spent before it started" in data["steps"][4]["out_of_time"][0]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "Error: `RuntimeError: kernel exploded`" in markdown
    assert "Left out when the time budget ran out:\n\n- first part" in markdown


def test_a_backend_that_differs_from_the_oracle_is_reported_with_its_case(monkeypatch):
    real = gpumask.mask_labels

    def torch_backend_off_by_one(ids, spec, backend, **kwargs):
        labels, stats = real(ids, spec, backend="torch", **kwargs)  # no kernel runs here
        return (labels + 1 if backend == "torch" else labels), stats

    monkeypatch.setattr(gpumask, "mask_labels", torch_backend_off_by_one)
    out = gpu_steps.check_cases(4, 0, 1, "cpu", deadline=time.time() + 300)
    assert out["checked"] == {"torch": 4, "triton": 4}
    assert [f["backend"] for f in out["failures"]] == ["torch"] * 4
    first = out["failures"][0]
    assert first["case"] == 0 and first["error"] == "labels or stats differ from the oracle"
    assert first["spec"].startswith("MaskSpec(") and first["input_ids"]  # enough to reproduce
    assert "spec" not in out["failures"][3]  # only the first three in full

    merged = gpu_steps._merge([out], 4)
    assert merged["failures"] == {"torch": 4, "triton": 0}
    assert len(merged["first_failures"]) == 4


def test_cases_past_the_deadline_are_counted_not_run():
    out = gpu_steps.check_cases(4, 1, 2, "cpu", deadline=0.0)  # this part: cases 1 and 3
    assert out["checked"] == {"torch": 0, "triton": 0} and out["left"] == 2
