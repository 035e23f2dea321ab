"""`MaskSpec.from_tokenizer` on the template zoo (tests/zoo.py): the outcome per template (agree,
partial with the types warned about, no end of turn, refused with the reason) and the time of
the first call (reading, checking) and of a second call on the same tokenizer (the cache).

    python benchmarks/template_zoo.py [--out benchmarks/results/template_zoo.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from zoo import ZOO, load_zoo  # noqa: E402

from gpumask import MaskSpec, MaskSpecError, TemplateWarning  # noqa: E402


def outcome(name: str) -> tuple[str, float, float]:
    """(outcome, first call seconds, second call seconds) for one zoo template."""
    tok = load_zoo(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            MaskSpec.from_tokenizer(tok)
            error = None
        except MaskSpecError as e:
            error = str(e).split("\n")[0]
        first = time.perf_counter() - start
        start = time.perf_counter()
        try:
            MaskSpec.from_tokenizer(tok)
        except MaskSpecError:
            pass
        second = time.perf_counter() - start
    kinds = sorted({str(w.message).split(":")[0] for w in caught if w.category is TemplateWarning})
    if error:
        return f"refused ({error[:90]})", first, second
    return ("partial: " + ", ".join(kinds) if kinds else "agree"), first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the table as Markdown to this file")
    args = parser.parse_args()
    rows = []
    for name in sorted(ZOO):
        load_zoo(name)  # tokenizer loading is not timed
        result, first, second = outcome(name)
        rows.append((name, ZOO[name].family.split(" (")[0], result, first, second))
        print(f"{name:22} {first * 1e3:8.0f} ms {second * 1e3:7.3f} ms  {result}", flush=True)
    firsts, seconds = [r[3] for r in rows], [r[4] for r in rows]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    summary = (
        f"{len(rows)} templates on {machine}: first call median {statistics.median(firsts):.2f} s, "
        f"max {max(firsts):.2f} s; second call median {statistics.median(seconds) * 1e3:.3f} ms, "
        f"max {max(seconds) * 1e3:.3f} ms"
    )
    print(summary)
    if args.out:
        lines = [
            "# `MaskSpec.from_tokenizer` on the template zoo",
            "",
            f"Written by `python benchmarks/template_zoo.py --out {args.out}`. {summary}.",
            "",
            "| template | family | outcome | first call (s) | second call (ms) |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {n} | {f} | {o} | {a:.2f} | {b * 1e3:.3f} |" for n, f, o, a, b in rows]
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
