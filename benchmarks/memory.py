"""Peak memory of the dense path, and the cost of building a spec's tables (issue 13).

The dense path (`mask_every_token`) is what GPU calls and compiled calls run; on the CPU it is
called directly, as the tests do. Peak memory is the largest total of live CPU allocations
during the call (the labels included, the ids not), from the torch profiler's allocation
events, printed beside the ids' size. Table building is timed once per spec (it is cached).

    nice python benchmarks/memory.py            # about a minute on 2 cores
    nice python benchmarks/memory.py --quick    # the shapes up to 2**20 tokens only
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import chat_batch  # noqa: E402

import gpumask  # noqa: E402
from gpumask.padding import Batch  # noqa: E402
from gpumask.torch_backend import _build_tables, mask_every_token  # noqa: E402

SHAPES = [(64, 8192), (8, 2**16), (2, 2**19), (1, 2**20 - 1), (1, 2**20), (1, 2**21)]
VOCAB = 151_665


def peak_bytes(fn) -> tuple[int, object]:
    """(peak live bytes allocated on the CPU while `fn()` runs, its result)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak, result


def table_bytes(tables) -> int:
    return sum(
        v.numel() * v.element_size() for v in vars(tables).values() if isinstance(v, torch.Tensor)
    )


def dense_path(quick: bool) -> None:
    chat = chat_batch(1, 8192, dense=False, seed=0)
    tool_response = ([27, 14172, 9655, 397], [522, 14172, 9655, 29])
    specs = {
        "1 span": chat.spec.replace(masked_spans=[tool_response]),
        "2 spans": chat.spec.replace(masked_spans=[tool_response, ([151657], [151658])]),
    }
    print("dense path (mask_every_token): ChatML, 4 roles, masked span kinds, attention mask")
    print(
        f"{'spec':>8} {'B x T':>12} {'dtype':>6} {'ids MiB':>8} {'peak MiB':>9} {'peak / ids':>10}"
    )
    for name, spec in specs.items():
        for size, length in SHAPES:
            if quick and length > 2**20:
                continue
            repeats = -(-length // 8192)
            row = chat.input_ids.repeat(1, repeats)[:, :length]
            for dtype in (torch.int64, torch.int32):
                ids = row.repeat(size, 1).to(dtype).contiguous()
                mask = torch.ones_like(ids, dtype=torch.bool)
                mask[:, -7:] = False  # a little padding
                batch = Batch.of(ids, mask)
                mask_every_token(Batch.of(ids[:, :64], mask[:, :64]), spec, -100, False)
                peak, _ = peak_bytes(lambda b=batch, s=spec: mask_every_token(b, s, -100, False))
                ids_bytes = ids.numel() * ids.element_size()
                print(
                    f"{name:>8} {f'{size} x {length}':>12} {str(dtype)[6:]:>6} "
                    f"{ids_bytes / 2**20:8.1f} {peak / 2**20:9.1f} {peak / ids_bytes:9.1f}x"
                )


def spec_tables() -> None:
    long_marker = list(range(150_000, 150_255))
    cases = {
        "255-token marker, 151k vocabulary": gpumask.MaskSpec(
            roles={"assistant": [151_644, 77091, 198], "user": long_marker},
            end_of_turn=[151_645],
            vocab_size=VOCAB,
        ),
        "62 markers, one of 255 tokens": gpumask.MaskSpec(
            roles={
                "user": long_marker,
                **{f"r{i}": [151_644, 1000 + i] for i in range(59)},
                "assistant": [151_644, 77091],
            },
            end_of_turn=[151_645],
            vocab_size=VOCAB,
        ),
        "marker id 40": gpumask.MaskSpec(roles={"assistant": [40, 7]}, end_of_turn=[41]),
        "marker id 10**7": gpumask.MaskSpec(roles={"assistant": [10**7, 7]}, end_of_turn=[41]),
        "marker id 2**40": gpumask.MaskSpec(roles={"assistant": [2**40, 7]}, end_of_turn=[41]),
    }
    print("\nbuilding the torch backend's tables (once per spec and device)")
    print(f"{'spec':>36} {'build s':>8} {'peak MiB':>9} {'kept MiB':>9}")
    for name, spec in cases.items():
        start = time.perf_counter()
        try:
            peak, built = peak_bytes(lambda spec=spec: _build_tables(spec, torch.device("cpu")))
        except RuntimeError as error:
            print(f"{name:>36}   fails: {str(error).splitlines()[0][:70]}")
            continue
        seconds = time.perf_counter() - start
        print(f"{name:>36} {seconds:8.2f} {peak / 2**20:9.2f} {table_bytes(built) / 2**20:9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rows up to 2**20 tokens only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"gpumask from {os.path.dirname(gpumask.__file__)}\n"
    )
    dense_path(args.quick)
    spec_tables()


if __name__ == "__main__":
    main()
