"""End to end, from chat `messages` to collated batches: trl 1.x, Unsloth and gpumask.

On the conversations of :mod:`benchmarks.pipeline_data` (2,000, about 5.0M Qwen2.5 tokens, 570
with a tool call) in a `datasets.Dataset`, each pipeline is timed in three parts, in one
process, torch on one thread:

- **prep**: tokenization and whatever masks the pipeline builds before training;
- **fetch**: rows from the prepared dataset, 64 at a time, in order, with
  `Dataset.__getitems__` (what a DataLoader's batch fetch calls);
- **collate**: the pipeline's collator on those 64 rows.

Every pipeline runs twice (`--repeats`), the second round in the opposite order, and each part
is reported as its fastest round: this machine is shared, and the fastest is the least
disturbed. Labels are checked in the first round.

The pipelines:

- ``trl``: trl 1.x's own preparation and collator, as `SFTTrainer(...,
  args=SFTConfig(assistant_only_loss=True, max_length=None))` runs them: the trainer's
  `_prepare_dataset` (tokenization with `return_assistant_tokens_mask` from a `{% generation %}`
  template, then its labels column) on the tokenizer given `templates/qwen2_5_generation.jinja`
  (Qwen2.5's rendering, marked where trl's own training copy of Qwen2.5's template marks it),
  the columns the Trainer keeps (`_remove_unused_columns`), then `trainer.data_collator` (trl's
  `DataCollatorForLanguageModeling`). The trainer is built beforehand, untimed, on one row;
- ``unsloth``: tokenized as gpumask's pipeline is (Unsloth's own SFTTrainer needs `unsloth` and
  a GPU), then `unsloth_zoo`'s `train_on_responses_only` (a batched `datasets.map` with a
  per-token Python loop; user and assistant headers given as Unsloth documents for Qwen2.5)
  on a stand-in trainer that holds the dataset; it swaps in the collator it uses,
  `transformers.DataCollatorForSeq2Seq`;
- ``gpumask``: tokenized with `apply_chat_template` in a `datasets.map`, then
  `gpumask.CompletionCollator` with `MaskSpec.from_tokenizer`'s spec;
- ``floor``: gpumask's tokenization alone, and padding alone (rows fetched as int64 tensors,
  `pad_sequence` and the attention mask): no pipeline can do less.

Each pipeline's labels are compared, batch by batch, with `gpumask.mask_labels` on the same
ids, and every differing token is counted by what it is and what precedes it. Peak memory is
measured in a fresh subprocess per pipeline (`--child`): the resident set's high-water mark
(VmHWM) during prep, fetch and collate, above the resident set when the pipeline starts (data,
tokenizer and imports already loaded). Resident memory, not tracemalloc: tracemalloc sees only
Python's allocator, not Arrow's, the tokenizer's or torch's buffers, and slows the timed code.

Then what a user can do about tokenization, on the same data: a batched `map`, `num_proc=2`,
tokenizing once and keeping the result (`save_to_disk`, then `load_from_disk` in later runs),
and rows fetched as numpy arrays (`with_format("numpy")`) for gpumask's collator.

Peers that are not installed are skipped with the command that installs them: run it with the
second environment (`make setup-bench`; `make bench` does) for trl 1.x and unsloth_zoo.

    python benchmarks/pipelines.py             # results/pipelines-<machine>-<date>.json/.png/.md
    python benchmarks/pipelines.py -n 200      # fewer conversations; writes nothing without --out
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("UNSLOTH_ZOO_DISABLE_GPU_INIT", "1")  # unsloth_zoo imports on the CPU

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import torch  # noqa: E402

import gpumask  # noqa: E402
from benchmarks.pipeline_data import conversations, has_tool_call  # noqa: E402
from benchmarks.run import machine, render_table  # noqa: E402

TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "qwen2_5"
GENERATION_TEMPLATE = ROOT / "benchmarks" / "templates" / "qwen2_5_generation.jinja"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 64
UNSLOTH_ZOO = "unsloth_zoo==2026.10.9"
INSTALL = {
    "trl": "make setup-bench, then run with .venv-trl1/bin/python (trl==1.16.0; the main .venv "
    "keeps trl 0.19.1)",
    "unsloth": f"pip install --no-deps {UNSLOTH_ZOO} (make setup-bench does, in .venv-trl1)",
}
X = -100


@dataclasses.dataclass
class Prepared:
    """A pipeline after prep: the dataset rows are fetched from, and its collator."""

    dataset: Any
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """`setup(tokenizer)` runs untimed (imports, a trainer); `prepare(dataset, tokenizer,
    setup's result)` is the timed prep; `missing()` is None when the pipeline can run."""

    key: str
    label: str
    prepare: Callable[[Any, Any, Any], Prepared]
    setup: Callable[[Any], Any] = lambda tok: None
    missing: Callable[[], str | None] = lambda: None
    labels: bool = True


# --- tokenization, shared by gpumask, Unsloth and the floor ---------------------------------


def tokenize(dataset: Any, tok: Any, batched: bool = False, num_proc: int | None = None) -> Any:
    """`input_ids` of every conversation with `apply_chat_template`, in a `datasets.map`.

    One call per row by default (as trl and Unsloth map); `batched` renders and encodes 1,000
    conversations a call; `num_proc` splits the rows among processes.
    """

    def encode(rows: dict[str, Any]) -> dict[str, Any]:
        return {"input_ids": tok.apply_chat_template(rows["messages"], tokenize=True)["input_ids"]}

    return dataset.map(encode, batched=batched, num_proc=num_proc, remove_columns=["messages"])


# --- the pipelines ----------------------------------------------------------------------------


def _trl_missing() -> str | None:
    try:
        version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return f"trl 1.x: not installed; {INSTALL['trl']}"
    if int(version.split(".")[0]) < 1:
        return f"trl 1.x: this environment has trl {version}; {INSTALL['trl']}"
    return None


def _trl_setup(tok: Any) -> Any:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    trl_tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    trl_tok.chat_template = GENERATION_TEMPLATE.read_text()
    config = LlamaConfig(
        vocab_size=len(trl_tok),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="pipelines-trl-"),
        assistant_only_loss=True,
        max_length=None,  # the default (1024) would truncate these conversations
        per_device_train_batch_size=BATCH,
        report_to="none",
        use_cpu=True,
    )
    one = Dataset.from_dict({"messages": [conversations(1)[0]]})
    trainer = SFTTrainer(
        model=LlamaForCausalLM(config), args=args, train_dataset=one, processing_class=trl_tok
    )
    return trainer


def _trl(dataset: Any, tok: Any, trainer: Any) -> Prepared:
    prepared = trainer._prepare_dataset(
        dataset, trainer.processing_class, trainer.args, False, None, "train"
    )
    kept = trainer._remove_unused_columns(prepared, description="training")
    return Prepared(kept, trainer.data_collator)


def _unsloth_missing() -> str | None:
    if importlib.util.find_spec("unsloth_zoo") is None:
        return f"Unsloth (unsloth_zoo): not installed; {INSTALL['unsloth']}"
    return None


def _unsloth_setup(tok: Any) -> Any:
    from unsloth_zoo.dataset_utils import train_on_responses_only

    return train_on_responses_only


def _unsloth(dataset: Any, tok: Any, train_on_responses_only: Callable) -> Prepared:
    trainer = types.SimpleNamespace(
        train_dataset=tokenize(dataset, tok),
        eval_dataset=None,
        processing_class=tok,
        data_collator=None,
        args=types.SimpleNamespace(max_length=None, packing=False),
    )
    train_on_responses_only(
        trainer,
        instruction_part="<|im_start|>user\n",
        response_part="<|im_start|>assistant\n",
    )
    return Prepared(trainer.train_dataset, trainer.data_collator)


def _gpumask(dataset: Any, tok: Any, _: Any) -> Prepared:
    spec = gpumask.MaskSpec.from_tokenizer(tok)
    return Prepared(tokenize(dataset, tok), gpumask.CompletionCollator(tok, spec))


def pad_only(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """The floor's collate: rows already int64 tensors, right-padded, with their mask."""
    ids = [row["input_ids"] for row in rows]
    return {
        "input_ids": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id),
        "attention_mask": torch.nn.utils.rnn.pad_sequence(
            [torch.ones_like(i) for i in ids], batch_first=True
        ),
    }


def _floor(dataset: Any, tok: Any, _: Any) -> Prepared:
    tensors = tokenize(dataset, tok).with_format("torch")
    return Prepared(tensors, lambda rows: pad_only(rows, tok.pad_token_id))


PIPELINES = [
    Pipeline("gpumask", "gpumask (tokenize + `CompletionCollator`)", _gpumask),
    Pipeline(
        "trl",
        "trl 1.x SFTTrainer (`assistant_only_loss=True`)",
        _trl,
        setup=_trl_setup,
        missing=_trl_missing,
    ),
    Pipeline(
        "unsloth",
        "Unsloth `train_on_responses_only` (unsloth_zoo, CPU)",
        _unsloth,
        setup=_unsloth_setup,
        missing=_unsloth_missing,
    ),
    Pipeline("floor", "floors: tokenize only; pad tensors only", _floor, labels=False),
]


# --- one pipeline, timed and checked ---------------------------------------------------------


class LabelCheck:
    """Labels of every batch against `gpumask.mask_labels` on the same ids, and the ids of
    every row against those gpumask's pipeline fetched (by row digest)."""

    def __init__(self, tok: Any, ids_digests: dict[int, str] | None):
        self.tok, self.ids_digests = tok, ids_digests
        self.spec = gpumask.MaskSpec.from_tokenizer(tok)
        self.digests: dict[int, str] = {}
        self.kinds: collections.Counter = collections.Counter()
        self.rows_differing = self.rows_other_ids = self.tokens = 0
        self.trained = self.trained_by_gpumask = 0
        self._text: dict[int, str] = {}

    def add(self, first_row: int, batch: dict[str, torch.Tensor]) -> None:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        self.tokens += int(mask.sum())
        for i in range(ids.shape[0]):
            row = ids[i][mask[i]].to(torch.int64).numpy()
            digest = self.digests[first_row + i] = hashlib.sha1(row.tobytes()).hexdigest()
            if self.ids_digests is not None:
                self.rows_other_ids += self.ids_digests.get(first_row + i) != digest
        if "labels" not in batch:
            return
        labels = batch["labels"]
        expected = gpumask.mask_labels(ids, self.spec, attention_mask=batch["attention_mask"])
        self.trained += int((labels != X).sum())
        self.trained_by_gpumask += int((expected != X).sum())
        differ = labels != expected
        self.rows_differing += int(differ.any(1).sum())
        for b, t in differ.nonzero().tolist():
            who = "only this pipeline" if labels[b, t] != X else "only gpumask"
            before = self.text(int(ids[b, t - 1])) if t else "(row start)"
            self.kinds[(who, self.text(int(ids[b, t])), before)] += 1

    def text(self, token: int) -> str:
        if token not in self._text:
            self._text[token] = self.tok.decode([token])
        return self._text[token]

    def report(self) -> dict[str, Any]:
        return {
            "trained_tokens": self.trained,
            "trained_tokens_gpumask": self.trained_by_gpumask,
            "differing_tokens": sum(self.kinds.values()),
            "rows_differing": self.rows_differing,
            "rows_with_other_ids_than_gpumask": self.rows_other_ids,
            "differences": [
                {"trained_by": who, "token": token, "after": before, "count": count}
                for (who, token, before), count in self.kinds.most_common()
            ],
        }


def fetch_and_collate(
    prepared: Prepared, inspect: Callable[[int, dict[str, torch.Tensor]], None] | None = None
) -> tuple[float, float]:
    """Seconds spent fetching and collating every row, `BATCH` rows at a time, in order;
    `inspect(first row, batch)` sees each batch between the timed calls."""
    fetch = collate = 0.0
    n = len(prepared.dataset)
    for first in range(0, n, BATCH):
        start = time.perf_counter()
        rows = prepared.dataset.__getitems__(list(range(first, min(first + BATCH, n))))
        middle = time.perf_counter()
        batch = prepared.collate(rows)
        end = time.perf_counter()
        fetch += middle - start
        collate += end - middle
        if inspect is not None:
            inspect(first, batch)
    return fetch, collate


def run_pipeline(
    pipeline: Pipeline,
    dataset: Any,
    tok: Any,
    ids_digests: dict[int, str] | None = None,
    check: bool = True,
) -> tuple[dict[str, Any], LabelCheck | None]:
    """Prep, fetch and collate every row, in batches of `BATCH`; labels checked unless not
    `check` (between the timed calls, untimed; gpumask's spec for the check is read after the
    prep, so that gpumask's prep pays `from_tokenizer`'s first call)."""
    context = pipeline.setup(tok)
    gc.collect()
    start = time.perf_counter()
    prepared = pipeline.prepare(dataset, tok, context)
    prep = time.perf_counter() - start
    checker = LabelCheck(tok, ids_digests) if check else None
    fetch, collate = fetch_and_collate(prepared, None if checker is None else checker.add)
    n = len(prepared.dataset)
    result = {
        "pipeline": pipeline.key,
        "label": pipeline.label,
        "rows": n,
        "prep_s": prep,
        "fetch_s": fetch,
        "collate_s": collate,
        "collate_ms_per_64_rows": collate / n * BATCH * 1e3,
        "end_to_end_s": prep + fetch + collate,
    }
    return result, checker


# --- what a user can do about tokenization ---------------------------------------------------


def levers(dataset: Any, tok: Any, repeats: int = 2) -> dict[str, Any]:
    """Tokenization batched, and batched on 2 processes; the tokenized rows saved with
    `save_to_disk` and loaded again (a later run's prep); gpumask's fetch and collate with rows
    as lists and as numpy arrays. Seconds for the whole dataset, the fastest of `repeats`."""
    out: dict[str, Any] = {}

    def fastest(key: str, work: Callable[[], Any]) -> Any:
        times = []
        for _ in range(repeats):
            gc.collect()
            start = time.perf_counter()
            result = work()
            times.append(time.perf_counter() - start)
        out[key] = min(times)
        return result

    fastest("tokenize_batched_s", lambda: tokenize(dataset, tok, batched=True))
    tokenized = fastest(
        "tokenize_batched_2_processes_s", lambda: tokenize(dataset, tok, batched=True, num_proc=2)
    )
    with tempfile.TemporaryDirectory(prefix="pipelines-saved-") as saved:
        fastest("save_to_disk_s", lambda: tokenized.save_to_disk(saved))
        loaded = fastest("load_from_disk_s", lambda: datasets.load_from_disk(saved))
        collate = gpumask.CompletionCollator(tok, gpumask.MaskSpec.from_tokenizer(tok))
        for name, rows_from in (("lists", loaded), ("numpy", loaded.with_format("numpy"))):
            runs = [fetch_and_collate(Prepared(rows_from, collate)) for _ in range(repeats)]
            out[f"gpumask_fetch_{name}_s"] = min(fetch for fetch, _ in runs)
            collate_s = min(spent for _, spent in runs)
            out[f"gpumask_collate_{name}_ms_per_64_rows"] = collate_s / len(rows_from) * BATCH * 1e3
        del loaded, rows_from  # the saved files go with the folder
    return out


# --- peak memory, one subprocess per pipeline ------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def child(key: str, n: int) -> dict[str, Any]:
    """One pipeline end to end; the resident set at its start and its peak (meant for a fresh
    process: `--child`)."""
    pipeline = next(p for p in PIPELINES if p.key == key)
    tok, dataset = _load(n)
    context = pipeline.setup(tok)
    gc.collect()
    try:  # reset the high-water mark to the current resident set (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start_kib = _status_kib("VmRSS")
    fetch_and_collate(pipeline.prepare(dataset, tok, context))
    peak_kib = _status_kib("VmHWM") if reset else None
    return {"start_rss_mib": _mib(start_kib), "peak_rss_mib": _mib(peak_kib)}


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def memory(key: str, n: int) -> dict[str, Any]:
    """`child(key, n)` in a subprocess of this Python."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", key, "-n", str(n)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["peak_rss_mib"] is not None:
        report["peak_above_start_mib"] = report["peak_rss_mib"] - report["start_rss_mib"]
    return report


# --- the run ----------------------------------------------------------------------------------


def _load(n: int) -> tuple[Any, Any]:
    """The tokenizer, and the conversations as a Dataset; its chat template compiled and
    `datasets.map` run once on a few rows (untimed), so that no pipeline pays that first."""
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    dataset = datasets.Dataset.from_dict({"messages": conversations(n)})
    tokenize(dataset.select(range(min(n, 8))), tok)
    return tok, dataset


def run(
    n: int = 2000, measure_memory: bool = True, with_levers: bool = True, repeats: int = 2
) -> dict[str, Any]:
    """Every pipeline that can run here, `repeats` rounds (in opposite orders in turn; labels
    checked in the first), then the levers, then (if asked) peak memory."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(n, measure_memory, with_levers, repeats)
    finally:
        torch.set_num_threads(before)


PARTS = ("prep_s", "fetch_s", "collate_s")


def _run(n: int, measure_memory: bool, with_levers: bool, repeats: int) -> dict[str, Any]:
    tok, dataset = _load(n)
    chats = dataset["messages"]
    load_before = os.getloadavg()
    skipped = [
        {"pipeline": p.key, "why": why} for p in PIPELINES if (why := p.missing()) is not None
    ]
    runnable = [p for p in PIPELINES if p.missing() is None]  # gpumask first: its ids are kept
    results: dict[str, dict[str, Any]] = {}
    digests = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for round_ in range(repeats):
            for pipeline in runnable if round_ % 2 == 0 else runnable[::-1]:
                result, checker = run_pipeline(pipeline, dataset, tok, digests, round_ == 0)
                if checker is None:
                    results[pipeline.key]["rounds"].append({k: result[k] for k in PARTS})
                    continue
                if pipeline.key == "gpumask":
                    digests, tokens = checker.digests, checker.tokens
                if pipeline.labels:
                    result["labels"] = checker.report()
                result["same_ids_as_gpumask"] = checker.rows_other_ids == 0
                result["rounds"] = [{k: result[k] for k in PARTS}]
                results[pipeline.key] = result
        for result in results.values():  # each part: its fastest round
            for part in PARTS:
                result[part] = min(r[part] for r in result["rounds"])
            result["collate_ms_per_64_rows"] = result["collate_s"] / result["rows"] * BATCH * 1e3
            result["end_to_end_s"] = sum(result[part] for part in PARTS)
        lever_report = levers(dataset, tok, repeats) if with_levers else None
        if lever_report is not None and "floor" in results:
            lever_report["tokenize_per_row_s"] = results["floor"]["prep_s"]
    load_after = os.getloadavg()
    if measure_memory:
        for key, result in results.items():
            result["memory"] = memory(key, n)
    import transformers

    versions = {"datasets": datasets.__version__, "transformers": transformers.__version__}
    for name in ("trl", "unsloth_zoo"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "load_before": load_before,
        "load_after": load_after,
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "versions": versions,
        "data": {
            "conversations": n,
            "with_tool_call": sum(has_tool_call(c) for c in chats),
            "tokens": tokens,
            "batch_size": BATCH,
        },
        "memory_method": (
            "peak resident set (VmHWM, reset at the pipeline's start) in a fresh subprocess per "
            "pipeline, above the resident set at its start (tokenizer, data, imports loaded)"
            if measure_memory
            else None
        ),
        "repeats": repeats,
        "pipelines": list(results.values()),
        "skipped": skipped,
        "levers": lever_report,
    }


# --- output -----------------------------------------------------------------------------------


def table(report: dict[str, Any], markdown: bool = False) -> str:
    """One line per pipeline: prep, fetch, collate per 64 rows, end to end, peak memory."""
    head = ["pipeline", "prep s", "fetch s", "collate ms / 64 rows", "end to end s"]
    with_memory = report["memory_method"] is not None
    if with_memory:
        head.append("peak RSS MiB above start")
    lines = []
    for r in report["pipelines"]:
        floor = r["pipeline"] == "floor"
        line = [
            r["label"] if markdown else r["pipeline"],
            f"{r['prep_s']:.1f}",
            f"{r['fetch_s']:.1f}",
            f"{r['collate_ms_per_64_rows']:.1f}",
            "" if floor else f"{r['end_to_end_s']:.1f}",
        ]
        if with_memory:
            above = r.get("memory", {}).get("peak_above_start_mib")
            line.append("-" if above is None else f"{above:.0f}")
        lines.append(line)
    return render_table(head, lines, [":---"] + ["---:"] * (len(head) - 1), markdown)


def label_lines(report: dict[str, Any]) -> list[str]:
    """Per pipeline: labels equal to gpumask's, or which tokens differ and how many."""
    out = []
    for r in report["pipelines"]:
        if "labels" not in r:
            continue
        labels = r["labels"]
        ids = "" if r["same_ids_as_gpumask"] else "; input_ids differ from gpumask's on some rows"
        head = (
            f"{r['pipeline']}: {labels['trained_tokens']} trained tokens, gpumask "
            f"{labels['trained_tokens_gpumask']}"
        )
        if not labels["differing_tokens"]:
            out.append(f"{head}: labels equal to gpumask's on every row{ids}")
            continue
        kinds = "; ".join(
            f"{d['count']} {d['token']!r} after {d['after']!r} ({d['trained_by']})"
            for d in labels["differences"][:6]
        )
        more = len(labels["differences"]) - 6
        out.append(
            f"{head}: {labels['differing_tokens']} tokens differ in {labels['rows_differing']} "
            f"rows: {kinds}{f'; {more} more kinds' if more > 0 else ''}{ids}"
        )
    return out


def lever_lines(report: dict[str, Any]) -> list[str]:
    """The levers, with the ratios the README quotes."""
    lv = report["levers"]
    if lv is None:
        return []
    return [
        f"tokenize ({report['data']['conversations']} conversations): one call per row "
        f"{lv['tokenize_per_row_s']:.1f} s, batched {lv['tokenize_batched_s']:.1f} s, batched "
        f"on 2 processes {lv['tokenize_batched_2_processes_s']:.1f} s",
        f"tokenized once and kept: save_to_disk {lv['save_to_disk_s']:.2f} s, then a later run's "
        f"prep is load_from_disk: {lv['load_from_disk_s']:.2f} s",
        f"gpumask fetch + collate, rows as lists: {lv['gpumask_fetch_lists_s']:.2f} s + "
        f"{lv['gpumask_collate_lists_ms_per_64_rows']:.1f} ms / 64 rows; as numpy arrays "
        f"(with_format('numpy')): {lv['gpumask_fetch_numpy_s']:.2f} s + "
        f"{lv['gpumask_collate_numpy_ms_per_64_rows']:.1f} ms / 64 rows",
    ]


def header(report: dict[str, Any]) -> str:
    d, info = report["data"], report["machine"]
    return (
        f"{d['conversations']} conversations, {d['tokens']} tokens (Qwen2.5), "
        f"{d['with_tool_call']} with a tool call; batches of {d['batch_size']}; "
        f"{info['label']}, torch {info['torch']} on {info['torch_threads']} thread(s), "
        f"{report['date']}; each part the fastest of {report['repeats']} round(s); "
        f"load average {report['load_before'][0]:.2f} before, "
        f"{report['load_after'][0]:.2f} after"
    )


def markdown(report: dict[str, Any]) -> str:
    """The table, the labels check, the skipped peers and the levers, as Markdown."""
    parts = [header(report), "", table(report, markdown=True), ""]
    parts += [f"- {line}" for line in label_lines(report)]
    parts += [f"- skipped: {s['why']}" for s in report["skipped"]]
    parts += [f"- {line}" for line in lever_lines(report)]
    if report["memory_method"]:
        parts.append(f"- memory: {report['memory_method']}")
    return "\n".join(parts) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """End to end as stacked bars (prep, fetch, collate), collate per 64 rows, peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["pipelines"]
    names = [r["pipeline"] for r in rows]
    panels = 3 if report["memory_method"] else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    left = [0.0] * len(rows)
    for part in ("prep_s", "fetch_s", "collate_s"):
        values = [r[part] for r in rows]
        axes[0].barh(names, values, left=left, label=part[:-2])
        left = [a + b for a, b in zip(left, values)]
    axes[0].set_xlabel("seconds, whole dataset")
    axes[0].legend(fontsize=8)
    axes[0].invert_yaxis()
    axes[1].barh(names, [r["collate_ms_per_64_rows"] for r in rows], color="tab:green")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("collate, ms per 64 rows (log)")
    axes[1].invert_yaxis()
    if panels == 3:
        peaks = [r.get("memory", {}).get("peak_above_start_mib") or 0 for r in rows]
        axes[2].barh(names, peaks, color="tab:purple")
        axes[2].set_xlabel("peak RSS above start, MiB")
        axes[2].invert_yaxis()
    d = report["data"]
    fig.suptitle(
        f"{d['conversations']} conversations, {d['tokens'] / 1e6:.2f}M tokens; "
        f"{report['machine']['label']}, 1 torch thread, {report['date']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-n", type=int, default=2000, help="conversations (default 2000; fewer writes nothing)"
    )
    parser.add_argument("--out", type=Path, help="results JSON (the PNG and .md go beside it)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="rounds of every pipeline; each part its fastest"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-levers", action="store_true", help="skip the tokenization levers")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"-n: expected a positive number of conversations, got {args.n}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1 round, got {args.repeats}")
    if args.child:
        torch.set_num_threads(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(json.dumps(child(args.child, args.n)))
        return 0
    report = run(args.n, not args.no_memory, not args.no_levers, args.repeats)
    out = args.out
    if out is None and args.n == 2000:
        out = RESULTS / f"pipelines-{report['machine']['slug']}-{report['date']}.json"
    print(header(report))
    print(table(report))
    for line in label_lines(report) + lever_lines(report):
        print(line)
    for s in report["skipped"]:
        print(f"skipped: {s['why']}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        plot(report, out.with_suffix(".png"))
        out.with_suffix(".md").write_text(markdown(report))
        print(f"wrote {out}, {out.with_suffix('.png')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
