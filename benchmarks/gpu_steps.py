"""The six steps of the GPU check, and the few device-specific tools they use.

Every step is `step(ctx, plan)`: it fills `ctx` (a :class:`benchmarks.gpu_report.StepContext`:
result, checks, parts not run, parts left out for time) and reads sizes from `plan` (the GPU
run's, or the CPU smoke run's: same code, tiny shapes). Only the public API is used
(`gpumask.mask_labels`, `MaskSpec`, `gpumask.attach`, backends "torch" and "triton") and the
oracle `gpumask.reference`.

Where the device is the CPU, two tools change and the code around them stays: :class:`Timer`
times with `time.perf_counter` instead of CUDA events (and does not flush an L2 cache), and
:func:`capture` returns the function itself instead of a CUDA graph's replay.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import gpumask
from benchmarks.gpu_data import (
    IM_END,
    N_MARKERS,
    ROOT,
    VOCAB,
    chat_stream,
    chatml_tools_spec,
    random_cases,
)
from benchmarks.gpu_report import StepContext
from gpumask.reference import mask_labels_reference

BACKENDS = ("torch", "triton")
IGNORE = -100


@dataclasses.dataclass
class Plan:
    """Sizes of one run. `state` carries the model from the training step to the profile."""

    device: torch.device
    out_dir: Path
    cases: int = 2000
    workers: int = 12
    long_shapes: tuple[tuple[int, int], ...] = ((8, 131072), (1, 1048576))
    speed_shapes: tuple[tuple[int, int], ...] = (
        (8, 512),
        (64, 512),
        (64, 8192),
        (256, 8192),
        (8, 131072),
        (1, 1048576),
    )
    speed_runs: int = 50
    speed_warmup: int = 5
    graph_shape: tuple[int, int] = (8, 4096)
    compile_backend: str = "inductor"
    model: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict(
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=12,
            num_attention_heads=16,
            num_key_value_heads=16,
        )
    )
    train_shape: tuple[int, int] = (8, 4096)
    train_runs: int = 10
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def gpu_plan(out_dir: Path) -> Plan:
    """The run on a GPU machine: the issue's sizes."""
    return Plan(torch.device("cuda"), out_dir, workers=max(1, min(12, (os.cpu_count() or 2) - 2)))


def smoke_plan(out_dir: Path) -> Plan:
    """The same steps on the CPU with tiny shapes (Triton in its interpreter)."""
    return Plan(
        torch.device("cpu"),
        out_dir,
        cases=24,
        workers=1,
        long_shapes=((1, 320),),
        speed_shapes=((2, 128),),
        speed_runs=2,
        speed_warmup=1,
        graph_shape=(2, 128),
        compile_backend="eager",
        model=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        ),
        train_shape=(2, 128),
        train_runs=2,
    )


# --- device tools ----------------------------------------------------------------------------


class Timer:
    """Microseconds per call of `fn(*make_args())`, with fresh arguments before every run.

    On CUDA: CUDA events around each call, after `make_args` and a write of 256 MB that evicts
    the L2 cache (so inputs come from DRAM), one synchronisation at the end. Nothing in the
    loop waits for the GPU (unless the timed call does), so the host queues the launches ahead
    of the GPU and the events time the kernels, not the launches. On the CPU:
    `time.perf_counter` around each call.
    """

    FLUSH_BYTES = 256 << 20

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.flush = (
            torch.empty(self.FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None
        )

    def times_us(
        self, fn: Callable, make_args: Callable[[], tuple], runs: int, warmup: int
    ) -> list[float]:
        for _ in range(warmup):
            fn(*make_args())
        if not self.cuda:
            times = []
            for _ in range(runs):
                args = make_args()
                start = time.perf_counter()
                fn(*args)
                times.append((time.perf_counter() - start) * 1e6)
            return times
        events = []
        for _ in range(runs):
            args = make_args()
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return [start.elapsed_time(end) * 1e3 for start, end in events]


def capture(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """On CUDA, `fn()` captured in a CUDA graph (after warm-up calls on a side stream): the
    returned function replays it and returns the static outputs. On the CPU, `fn` itself."""
    if device.type != "cuda":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()

    def replay():
        graph.replay()
        return outputs

    return replay


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def attempt(ctx: StepContext, part: str, fn: Callable[[], Any]) -> Any:
    """`fn()`, or None when it raises: then a failed check names `part` and the error, and the
    traceback is kept under result["tracebacks"], so the step goes on with its other parts."""
    try:
        return fn()
    except Exception as error:
        ctx.check(part, False, f"{type(error).__name__}: {error}")
        ctx.result.setdefault("tracebacks", {})[part] = traceback.format_exc()
        return None


def same(a: tuple, b: tuple) -> bool:
    """(labels, stats) pairs equal: labels with their dtype, and every count."""
    (la, sa), (lb, sb) = a, b
    return (
        la.dtype == lb.dtype
        and torch.equal(la.cpu(), lb.cpu())
        and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in ("trained", "role_tokens"))
    )


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --- 1. environment --------------------------------------------------------------------------


def environment(ctx: StepContext, plan: Plan) -> None:
    """Versions, the device's properties and clocks."""
    r = ctx.result
    r["python"] = platform.python_version()
    r["platform"] = platform.platform()
    r["cpus"] = os.cpu_count()
    r["torch"] = torch.__version__
    r["torch_cuda"] = torch.version.cuda
    for name in ("triton", "transformers", "numpy", "hypothesis"):
        try:
            r[name] = importlib.import_module(name).__version__
        except Exception as error:  # a missing or broken package is a finding, not a crash
            r[name] = f"unavailable ({type(error).__name__}: {error})"
    where = Path(gpumask.__file__).parent
    where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
    r["gpumask"] = f"{gpumask.__version__} ({where})"
    r["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET", "")
    ctx.check("triton importable", not r["triton"].startswith("unavailable"), r["triton"])
    r["cuda_available"] = torch.cuda.is_available()
    if not plan.cuda:
        ctx.skip("GPU name, SMs, L2, memory, clocks", "the smoke run uses the CPU")
        return
    ctx.check("CUDA available", r["cuda_available"])
    props = torch.cuda.get_device_properties(plan.device)
    r["device"] = props.name
    r["capability"] = f"{props.major}.{props.minor}"
    r["sms"] = props.multi_processor_count
    r["l2_bytes"] = getattr(props, "L2_cache_size", None)
    r["memory_gib"] = round(props.total_memory / 2**30, 1)
    r["nvidia_smi"] = _nvidia_smi()


def _nvidia_smi() -> dict[str, str]:
    """Clocks and limits, one query per field (an unknown field fails alone)."""
    if shutil.which("nvidia-smi") is None:
        return {"error": "nvidia-smi not found"}
    fields = (
        "driver_version",
        "clocks.sm",
        "clocks.max.sm",
        "clocks.mem",
        "clocks.max.mem",
        "power.draw",
        "power.limit",
        "temperature.gpu",
        "compute_mode",
        "persistence_mode",
    )
    out = {}
    for field in fields:
        try:
            done = subprocess.run(
                ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            out[field] = (done.stdout or done.stderr).strip().splitlines()[0]
        except Exception as error:
            out[field] = f"unavailable ({type(error).__name__})"
    return out


# --- 2. correctness --------------------------------------------------------------------------


def correctness(ctx: StepContext, plan: Plan) -> None:
    """Both backends on the device against the oracle on the suite's random cases (in worker
    processes, which compile the kernel variants in parallel), then long rows against the
    CPU torch backend."""
    deadline = time.time() + max(ctx.left() - 15, 5)
    spawn = multiprocessing.get_context("spawn")
    start = functools.partial(spawn.Pool, plan.workers, initializer=_one_thread)
    pool = attempt(ctx, "start worker processes", start)
    results = []
    try:
        if pool is not None:
            parts = [
                pool.apply_async(
                    check_cases, (plan.cases, k, plan.workers, plan.device.type, deadline)
                )
                for k in range(plan.workers)
            ]
            ctx.log(f"{plan.cases} random cases in {plan.workers} worker processes")
        attempt(ctx, "long rows", lambda: long_rows(ctx, plan))
        for k, part in enumerate(parts if pool is not None else []):
            wait = functools.partial(part.get, max(deadline - time.time() + 20, 1))
            done = attempt(ctx, f"random cases, worker {k}", wait)
            results += [done] if done is not None else []
        if not results:  # no worker could run (say, a GPU in exclusive-process mode)
            ctx.log(f"{plan.cases} random cases in this process")
            results.append(check_cases(plan.cases, 0, 1, plan.device.type, deadline))
    finally:
        if pool is not None:
            pool.terminate()
    ctx.result["random_cases"] = merged = _merge(results, plan.cases)
    for backend in BACKENDS:
        failures = merged["failures"][backend]
        ctx.check(
            f"{backend} backend equals the oracle on {merged['checked'][backend]} random cases",
            merged["checked"][backend] > 0 and failures == 0,
            f"{failures} failing (the first ones under first_failures)" if failures else None,
        )
    ctx.check(
        "the suite's strategy drew every case asked for",
        merged["generated"] == plan.cases,
        merged["generated"],
    )
    if merged["left_for_time"]:
        ctx.out_of_time.append(f"{merged['left_for_time']} random cases (worker deadline)")


def _one_thread() -> None:
    torch.set_num_threads(1)  # many workers share the machine's cores


def check_cases(n: int, part: int, parts: int, device: str, deadline: float) -> dict[str, Any]:
    """Cases `part`, `part + parts`, ... of the suite's first `n`, on `device`: labels and
    stats of each backend equal the oracle's (the oracle draws on the same device, from a
    generator seeded alike). Stops at `deadline` (time.time())."""
    dev = torch.device(device)
    cases = random_cases(n)
    checked = {b: 0 for b in BACKENDS}
    failures: list[dict[str, Any]] = []
    coverage: dict[str, int] = {}
    left = 0
    for i in range(part, len(cases), parts):
        if time.time() > deadline:
            left += 1
            continue
        spec, ids, kwargs, seed = cases[i]
        ids = ids.to(dev)
        kwargs = {k: v.to(dev) for k, v in kwargs.items()}
        want = mask_labels_reference(
            ids, spec, generator=_generator(dev, seed), return_stats=True, **kwargs
        )
        for backend in BACKENDS:
            try:
                got = gpumask.mask_labels(
                    ids,
                    spec,
                    generator=_generator(dev, seed),
                    backend=backend,
                    return_stats=True,
                    **kwargs,
                )
                ok, message = same(got, want), "labels or stats differ from the oracle"
            except Exception as error:
                ok, message = False, f"{type(error).__name__}: {error}"
            checked[backend] += 1
            if not ok and len(failures) < 3:  # the first ones in full, to reproduce
                failures.append(
                    {
                        "case": i,
                        "backend": backend,
                        "error": message,
                        "spec": repr(spec),
                        "input_ids": ids.tolist(),
                        "kwargs": {k: v.tolist() for k, v in kwargs.items()},
                        "seed": seed,
                    }
                )
            elif not ok:
                failures.append({"case": i, "backend": backend, "error": message})
        for feature in _features(spec, ids, kwargs):
            coverage[feature] = coverage.get(feature, 0) + 1
    return {
        "generated": len(cases),
        "checked": checked,
        "failures": failures,
        "left": left,
        "coverage": coverage,
    }


def _features(spec: gpumask.MaskSpec, ids: torch.Tensor, kwargs: dict) -> list[str]:
    """What a case exercises, for the coverage counts (read off MaskSpec's options)."""
    out = [f"ids {str(ids.dtype).removeprefix('torch.')}", *(f"with {k}" for k in kwargs)]
    spans = len(getattr(spec, "masked_spans", ()))
    out += [f"{spans} span kinds"] if spans else []
    out += ["last_turn_only"] if getattr(spec, "last_turn_only", False) else []
    if spec.ignore_token_ids and 0 < spec.ignore_token_prob < 1:
        out.append(f"random drops (p={spec.ignore_token_prob}, {ids.device.type} generator)")
    return out


def _merge(results: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The workers' counts added up; failures by backend, the first five in full."""
    failures = [f for r in results for f in r["failures"]]
    coverage: dict[str, int] = {}
    for r in results:
        for feature, count in r["coverage"].items():
            coverage[feature] = coverage.get(feature, 0) + count
    return {
        "asked": n,
        "generated": min((r["generated"] for r in results), default=0),
        "workers_done": len(results),
        "checked": {b: sum(r["checked"][b] for r in results) for b in BACKENDS},
        "failures": {b: sum(f["backend"] == b for f in failures) for b in BACKENDS},
        "left_for_time": sum(r["left"] for r in results),
        "coverage": dict(sorted(coverage.items())),
        "first_failures": failures[:5],
    }


def _long_variants(batch: int) -> list[tuple[str, dict, dict]]:
    """(name, MaskSpec options, input options) of the long-row checks."""
    drops = {"ignore_token_ids": [IM_END]}
    variants = [
        ("int64", {}, {"dtype": torch.int64}),
        ("int32", {}, {"dtype": torch.int32}),
        ("padding left and right", {}, {"padding": True}),
        ("packed (position_ids), int32", {}, {"packed": "position_ids", "dtype": torch.int32}),
        ("last_turn_only, packed", {"last_turn_only": True}, {"packed": "position_ids"}),
        (
            "initial_role, no end-of-turn training, padding",
            {"initial_role": "assistant", "train_on_end_of_turn": False},
            {"padding": True},
        ),
        ("drops p=1 (<|im_end|>)", drops, {}),
        ("drops p=0.5, device generator", {**drops, "ignore_token_prob": 0.5}, {}),
    ]
    if batch == 1:
        variants.insert(4, ("packed (cu_seqlens)", {}, {"packed": "cu_seqlens"}))
    return variants


def _long_inputs(batch, length, seed, dtype=torch.int64, padding=False, packed=None):
    """CPU (input_ids, kwargs) of a long-row check."""
    ids, position_ids = chat_stream(batch, length, dtype, "cpu", seed=seed, packed=bool(packed))
    kwargs = {}
    if padding:
        g = torch.Generator().manual_seed(seed)
        pad = torch.randint(0, length // 4, (batch, 1), generator=g)
        positions = torch.arange(length)
        left = (torch.arange(batch) % 2 == 0)[:, None]
        padded = torch.where(left, positions < pad, positions >= length - pad)
        kwargs["attention_mask"] = (~padded).long()
    if packed == "position_ids":
        kwargs["position_ids"] = position_ids
    elif packed == "cu_seqlens":
        starts = torch.nonzero(position_ids[0] == 0).flatten()
        kwargs["cu_seqlens"] = torch.cat([starts, torch.tensor([length])]).int()
    return ids, kwargs


def long_rows(ctx: StepContext, plan: Plan) -> None:
    """Each backend on the device equals the CPU torch backend on long rows, variant by variant
    (random drops: the two device backends equal each other, and drop only what may drop)."""
    rows = ctx.result.setdefault("long_rows", [])
    if not plan.cuda:
        ctx.skip(
            "long rows on a GPU",
            "the device is the CPU: the torch backend is checked "
            "against itself here, the Triton interpreter against it",
        )
    for batch, length in plan.long_shapes:
        for name, options, inputs in _long_variants(batch):
            if ctx.out_of_budget(f"long rows {batch}x{length}: {name} (and the rest)", 20):
                return
            row = {"shape": f"{batch}x{length}", "variant": name}
            rows.append(row)
            check = functools.partial(_long_row, ctx, plan, row, options, inputs)
            attempt(ctx, f"long rows {batch}x{length} {name}", check)
            ctx.save()


def _long_row(ctx, plan, row, options, inputs) -> None:
    batch, length = (int(x) for x in row["shape"].split("x"))
    ids, kwargs = _long_inputs(batch, length, seed=batch, **inputs)
    dev_ids, dev_kwargs = ids.to(plan.device), {k: v.to(plan.device) for k, v in kwargs.items()}
    spec = chatml_tools_spec(**options)
    prob = options.get("ignore_token_prob", 1.0)
    random_drops = 0 < prob < 1
    # Random drops: the CPU gives the labels before drops (the device's draws differ).
    drop_options = ("ignore_token_ids", "ignore_token_prob") if random_drops else ()
    cpu_spec = chatml_tools_spec(**{k: v for k, v in options.items() if k not in drop_options})
    start = time.perf_counter()
    want = gpumask.mask_labels(ids, cpu_spec, backend="torch", return_stats=True, **kwargs)
    row["cpu torch s"] = round(time.perf_counter() - start, 3)
    row["trained %"] = round(100 * float((want[0] != IGNORE).float().mean()), 2)
    got = {}
    for backend in BACKENDS:
        got[backend] = gpumask.mask_labels(
            dev_ids,
            spec,
            backend=backend,
            return_stats=True,
            generator=_generator(plan.device, 7),
            **dev_kwargs,
        )
    name = f"long rows {row['shape']} {row['variant']}"
    if not random_drops:
        for backend in BACKENDS:
            row[backend] = "equal" if same(got[backend], want) else "DIFFERENT"
            where = plan.device.type
            ctx.check(f"{name}: {backend} on {where} equals CPU torch", row[backend] == "equal")
        return
    row["torch"] = row["triton"] = "equal" if same(got["torch"], got["triton"]) else "DIFFERENT"
    ctx.check(f"{name}: triton and torch draw and drop alike", row["torch"] == "equal")
    labels, kept = got["triton"][0].cpu(), want[0]
    ignored_id = torch.isin(ids, torch.tensor(options["ignore_token_ids"], dtype=ids.dtype))
    dropped = (labels == IGNORE) & (kept != IGNORE)
    only_kept = torch.equal(torch.where(labels != IGNORE, labels, kept), kept)
    candidates = int(((kept != IGNORE) & ignored_id).sum())
    row["dropped"] = f"{int(dropped.sum())} of {candidates}"
    passed = only_kept and bool(ignored_id[dropped].all())
    ctx.check(f"{name}: drops only trained ignore ids, keeps the rest", passed)
    if candidates >= 400:
        share = float(dropped.sum()) / candidates
        ctx.check(f"{name}: drop rate near {prob}", abs(share - prob) < 0.1, round(share, 3))
    else:
        ctx.skip(f"{name}: drop rate", f"{candidates} candidates, too few to judge a rate")


# --- 3. CUDA graphs and torch.compile --------------------------------------------------------


def graphs_and_compile(ctx: StepContext, plan: Plan) -> None:
    """mask_labels captured in a CUDA graph and replayed on new ids; a step that calls it
    compiled with torch.compile(fullgraph=True); both equal to eager calls."""
    if not plan.cuda:
        ctx.skip(
            "CUDA graph capture and replay",
            "no CUDA device: the same static-input copies "
            "and comparisons ran with plain calls in place of replays",
        )
    for backend in BACKENDS:
        attempt(ctx, f"graph ({backend})", lambda b=backend: _graph(ctx, plan, b))
        ctx.save()
    for backend in BACKENDS:
        if not plan.cuda and backend == "triton":
            ctx.skip(
                "torch.compile of the Triton backend",
                "Dynamo cannot trace kernels that Triton's interpreter runs (CPU smoke run)",
            )
            continue
        if ctx.out_of_budget(f"torch.compile ({backend})", 40):  # a compile can take 30s
            continue
        attempt(ctx, f"compile ({backend})", lambda b=backend: _compiled_step(ctx, plan, b))
        ctx.save()
    if plan.compile_backend != "inductor":
        ctx.skip(
            "Inductor code generation",
            f"compiled with backend={plan.compile_backend!r} "
            "(Dynamo's full-graph tracing only) in the CPU smoke run",
        )


def _graph(ctx: StepContext, plan: Plan, backend: str) -> None:
    spec = chatml_tools_spec()
    batch, length = plan.graph_shape
    static_ids, _ = chat_stream(batch, length, torch.int64, plan.device, seed=10)
    mask = torch.ones_like(static_ids)
    mask[0, length // 2 :] = 0

    def call(ids):
        return gpumask.mask_labels(
            ids, spec, attention_mask=mask, backend=backend, return_stats=True
        )

    replay = capture(lambda: call(static_ids), plan.device)
    results = []
    for seed in (11, 12, 13):
        fresh, _ = chat_stream(batch, length, torch.int64, plan.device, seed=seed)
        static_ids.copy_(fresh)
        results.append(same(replay(), call(fresh)))
    how = "CUDA graph replays" if plan.cuda else "plain calls"
    ctx.check(f"{backend}: {how} on 3 new batches equal eager calls", all(results), results)


class _TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 64)
        self.head = torch.nn.Linear(64, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _compiled_step(ctx: StepContext, plan: Plan, backend: str) -> None:
    spec = chatml_tools_spec()
    model = _TinyLM().to(plan.device)
    batch, length = plan.graph_shape

    def step(ids, mask):
        labels = gpumask.mask_labels(ids, spec, attention_mask=mask, backend=backend)
        logits = model(ids)[:, :-1].flatten(0, 1).float()
        targets = labels[:, 1:].flatten()
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE)
        return loss, labels

    compiled = torch.compile(step, fullgraph=True, backend=plan.compile_backend)
    out = {"backend": backend}
    for k, seed in enumerate((20, 21)):
        ids, _ = chat_stream(batch, length, torch.int64, plan.device, seed=seed)
        mask = torch.ones_like(ids)
        mask[-1, : length // 3] = 0
        start = time.perf_counter()
        loss, labels = compiled(ids, mask)
        sync(plan.device)
        out[f"call {k + 1} s"] = round(time.perf_counter() - start, 2)
        want_loss, want_labels = step(ids, mask)
        ctx.check(
            f"compiled step ({backend}), batch {k + 1}: labels equal eager, loss close",
            torch.equal(labels, want_labels)
            and torch.allclose(loss, want_loss, rtol=1e-4, atol=1e-5),
            {"loss": float(loss.detach()), "eager loss": float(want_loss.detach())},
        )
    ctx.result.setdefault("compile", []).append(out)


# --- 4. speed --------------------------------------------------------------------------------


def speed(ctx: StepContext, plan: Plan) -> None:
    """Microseconds per call (median), GB/s (ids read + labels written) and the share of a
    device copy's speed, for both backends, over the shapes, int64/int32, packed or not."""
    flush = " and an L2 flush (a 256 MB write)" if plan.cuda else ""
    ctx.result["method"] = (
        f"{'CUDA events' if plan.cuda else 'time.perf_counter'}; {plan.speed_warmup} warm-up "
        f"calls, then the median of {plan.speed_runs}; before every call, fresh random ids with "
        f"planted ChatML-with-tools turns ({N_MARKERS} markers){flush}. GB/s = (ids read + "
        "labels written) / time; the copy is a device-to-device copy of the same ids; "
        "'x copy' = copy time / time. Packed rows also read int64 position_ids."
    )
    timer = Timer(plan.device)
    rows = ctx.result.setdefault("rows", [])
    copies: dict[tuple, float] = {}
    configs = [
        (batch, length, dtype, packed)
        for batch, length in plan.speed_shapes
        for dtype in (torch.int64, torch.int32)
        for packed in (False, True)
    ]
    for i, config in enumerate(configs):
        label = "{}x{} {} packed={}".format(*config[:2], str(config[2])[6:], config[3])
        if ctx.out_of_budget(f"speed rows from {label} on ({len(configs) - i} rows)", 5):
            break
        rows.append(_speed_row(ctx, plan, timer, copies, label, *config))
        ctx.log(str(rows[-1]))
        ctx.save()
    timed = all(f"{name} us" in row for row in rows for name in ("copy", *BACKENDS))
    ctx.check("every row timed both backends and the copy", bool(rows) and timed)
    if not plan.cuda:
        ctx.skip(
            "CUDA-event timing and L2 flush",
            "CPU smoke run: perf_counter timings of "
            "tiny shapes (Triton interpreted); they show the format, not speed",
        )


def _speed_row(ctx, plan, timer, copies, label, batch, length, dtype, packed) -> dict[str, Any]:
    spec = chatml_tools_spec()
    generator = _generator(plan.device, batch + length)
    row = {"B x T": f"{batch}x{length}", "ids": str(dtype)[6:], "packed": packed}
    nbytes = 2 * batch * length * dtype.itemsize

    def make():
        return chat_stream(batch, length, dtype, plan.device, generator=generator, packed=packed)

    def timed(fn):
        return timer.times_us(fn, make, plan.speed_runs, plan.speed_warmup)

    if (batch, length, dtype) not in copies:  # the copy does not depend on packing
        out = torch.empty(batch, length, dtype=dtype, device=plan.device)
        times = attempt(ctx, f"speed copy {label}", lambda: timed(lambda ids, _: out.copy_(ids)))
        copies[(batch, length, dtype)] = statistics.median(times) if times else float("nan")
    copy_us = copies[(batch, length, dtype)]
    row["copy us"] = round(copy_us, 1)
    row["copy GB/s"] = round(nbytes / copy_us / 1e3, 3)
    for backend in BACKENDS:

        def call(ids, position_ids, backend=backend):
            return gpumask.mask_labels(ids, spec, position_ids=position_ids, backend=backend)

        times = attempt(ctx, f"speed {backend} {label}", lambda call=call: timed(call))
        if times:
            us = statistics.median(times)
            row[f"{backend} us"] = round(us, 1)
            row[f"{backend} GB/s"] = round(nbytes / us / 1e3, 3)
            row[f"{backend} x copy"] = round(copy_us / us, 3)
    return row


# --- 5. a training step ----------------------------------------------------------------------


def _model(plan: Plan):
    """The Llama-style bf16 model of the training step and the profile, made once per run."""
    if "model" not in plan.state:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=VOCAB, max_position_embeddings=plan.train_shape[1], **plan.model
        )
        with plan.device:
            model = LlamaForCausalLM(config)
        plan.state["model"] = model.to(torch.bfloat16).train()
    return plan.state["model"]


def _train_batch(plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    ids, _ = chat_stream(*plan.train_shape, torch.int64, plan.device, seed=30)
    return ids, torch.ones_like(ids)


def training_step(ctx: StepContext, plan: Plan) -> None:
    """Forward + backward of a bf16 Llama-style model with `gpumask.attach` (labels made in
    the step) against the same step with labels precomputed: losses equal, masking's share."""
    if plan.cuda:
        torch.cuda.reset_peak_memory_stats()
    model = _model(plan)
    r = ctx.result
    r["model"] = {
        **plan.model,
        "vocab_size": VOCAB,
        "dtype": "bfloat16",
        "attention": getattr(model.config, "_attn_implementation", None),
        "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }
    r["batch"] = "x".join(map(str, plan.train_shape))
    spec = chatml_tools_spec()
    ids, mask = _train_batch(plan)
    labels = gpumask.mask_labels(ids, spec, attention_mask=mask)
    timer = Timer(plan.device)

    def zero_grads():
        model.zero_grad(set_to_none=True)
        return ()

    def attached():
        model(input_ids=ids, attention_mask=mask).loss.backward()

    def precomputed():
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()

    hook = gpumask.attach(model, spec)
    try:
        with torch.no_grad():
            masked_loss = model(input_ids=ids, attention_mask=mask).loss
            given_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        r["loss (attach)"], r["loss (precomputed)"] = float(masked_loss), float(given_loss)
        difference = {"difference": float((masked_loss - given_loss).abs())}
        equal = torch.equal(masked_loss, given_loss)
        ctx.check("losses equal (attach vs precomputed labels)", equal, difference)
        times = {"attach": [], "precomputed": []}
        for fn in (attached, precomputed):
            timer.times_us(fn, zero_grads, 0, 2)
        for i in range(plan.train_runs):  # alternate, so that drift hits both alike
            if ctx.out_of_budget(f"training steps {i + 1}..{plan.train_runs}", 10):
                break
            times["attach"] += timer.times_us(attached, zero_grads, 1, 0)
            times["precomputed"] += timer.times_us(precomputed, zero_grads, 1, 0)
        alone = timer.times_us(
            lambda: gpumask.mask_labels(ids, spec, attention_mask=mask), tuple, 20, 3
        )
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    step_us, given_us = (statistics.median(times[k]) for k in ("attach", "precomputed"))
    mask_us = statistics.median(alone)
    r["steps timed (each way)"] = len(times["attach"])
    r["step with attach ms"] = round(step_us / 1e3, 2)
    r["step with precomputed labels ms"] = round(given_us / 1e3, 2)
    r["mask_labels alone us"] = round(mask_us, 1)
    r["masking share: mask_labels alone / step %"] = round(100 * mask_us / step_us, 3)
    r["masking share: (attach - precomputed) / step %"] = round(
        100 * (step_us - given_us) / step_us, 3
    )
    if plan.cuda:
        r["peak memory GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    else:
        ctx.skip("the bf16 GPU step", "CPU smoke run: a 2-layer model timed with perf_counter")


# --- 6. a profile ----------------------------------------------------------------------------


def profile(ctx: StepContext, plan: Plan) -> None:
    """torch.profiler over one masked training step: the top kernels by time, each marked when
    mask_labels launches a kernel of that name on its own (profiled alone, on the same batch:
    the Triton kernels are gpumask's alone, elementwise kernels may be the model's too)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    model = _model(plan)
    spec = chatml_tools_spec()
    ids, mask = _train_batch(plan)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if plan.cuda else [])
    hook = gpumask.attach(model, spec)
    try:
        model(input_ids=ids, attention_mask=mask).loss.backward()  # warm-up
        model.zero_grad(set_to_none=True)
        sync(plan.device)
        with profiler(activities=activities) as step_prof:
            model(input_ids=ids, attention_mask=mask).loss.backward()
            sync(plan.device)
        model.zero_grad(set_to_none=True)
    finally:
        hook.remove()
    with profiler(activities=activities) as mask_prof:
        gpumask.mask_labels(ids, spec, attention_mask=mask)
        sync(plan.device)
    masking = _kernel_times(mask_prof, plan.cuda)
    step = _kernel_times(step_prof, plan.cuda)
    total = sum(us for _, us in step.values())
    r = ctx.result
    r["what"] = "GPU kernels" if plan.cuda else "CPU operators, self time (no CUDA device)"
    r["step total us"] = round(total, 1)
    r["top"] = [
        {
            "name": name[:90],
            "calls": calls,
            "us": round(us, 1),
            "% of step": round(100 * us / total, 2),
            "also launched by mask_labels": name in masking,
        }
        for name, (calls, us) in sorted(step.items(), key=lambda kv: -kv[1][1])[:15]
    ]
    r["mask_labels alone"] = [
        {"name": name[:90], "calls": calls, "us": round(us, 1)}
        for name, (calls, us) in sorted(masking.items(), key=lambda kv: -kv[1][1])[:15]
    ]
    ctx.check("the profiles hold events", total > 0 and bool(masking))
    trace = plan.out_dir / "gpu_check_trace.json.gz"
    attempt(ctx, "chrome trace", lambda: step_prof.export_chrome_trace(str(trace)))
    r["trace"] = trace.name
    if not plan.cuda:
        ctx.skip("GPU kernel times", "no CUDA device: CPU operator times instead")


def _kernel_times(prof, cuda: bool) -> dict[str, tuple[int, float]]:
    """name -> (calls, total us): device kernels on CUDA, CPU operators' self time otherwise."""
    out: dict[str, tuple[int, float]] = {}
    if cuda:
        from torch.autograd import DeviceType

        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                calls, us = out.get(event.name, (0, 0.0))
                out[event.name] = (calls + 1, us + event.time_range.elapsed_us())
        return out
    for event in prof.key_averages():
        if event.self_cpu_time_total > 0:
            out[event.key] = (event.count, float(event.self_cpu_time_total))
    return out


STEPS: tuple[tuple[str, str, float, Callable[[StepContext, Plan], None]], ...] = (
    ("environment", "Versions, device, clocks", 15, environment),
    ("correctness", "Random cases vs the oracle, long rows vs the CPU", 130, correctness),
    ("graphs_compile", "CUDA graphs and torch.compile(fullgraph=True)", 90, graphs_and_compile),
    ("speed", "Both backends against a device copy", 90, speed),
    ("training_step", "bf16 Llama-style step: attach vs precomputed labels", 60, training_step),
    ("profile", "torch.profiler over one masked training step", 30, profile),
)
"""(name, title, time budget in seconds on a GPU, function), in the order they run."""
