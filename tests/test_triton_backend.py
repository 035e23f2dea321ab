"""The Triton kernel against the oracle and the torch backend.

On machines without a GPU, the root conftest.py sets TRITON_INTERPRET=1, so these kernels run in
Triton's interpreter on CPU tensors; with a GPU the same tests run the compiled kernels on CUDA
tensors. The interpreter is slow per program, so rows are short and `block=16` or `32` cuts
them into many chunks: markers, spans and turns cross chunk boundaries everywhere. Tests that
need a real GPU are marked `cuda`.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from gpumask import MaskSpec, mask_labels  # noqa: E402
from gpumask.padding import Batch  # noqa: E402
from gpumask.reference import mask_labels_reference  # noqa: E402
from gpumask.torch_backend import mask_labels_torch  # noqa: E402
from gpumask.triton_backend import INTERPRETED, MAX_SPAN_KINDS, mask_labels_triton  # noqa: E402

DEVICE = torch.device("cpu" if INTERPRETED else "cuda")  # where the kernels run

N = -100  # ignore_index, short for the expected labels below


def run_triton(ids, spec, block=None, attention_mask=None, position_ids=None, cu_seqlens=None,
               seed=0, with_stats=False):  # fmt: skip
    """The kernel as `mask_labels` calls it, with a forced block (window) size, on DEVICE; the
    draws are those of `mask_labels_reference` with a CPU generator seeded with `seed`."""
    uniforms = None
    if spec.ignore_token_ids and 0.0 < spec.ignore_token_prob < 1.0:
        uniforms = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed))
    batch = Batch.of(ids, attention_mask, position_ids, cu_seqlens, uniforms)
    moved = Batch(*(None if t is None else t.to(DEVICE) for t in vars(batch).values()))
    labels, stats = mask_labels_triton(moved, spec, -100, with_stats, block=block)
    if not with_stats:
        return labels.cpu()
    return labels.cpu(), {key: value.cpu() for key, value in stats.items()}


# --- random cases ----------------------------------------------------------------------------


def _marker(rng: random.Random, used: set, alphabet: int) -> list[int]:
    while True:
        ids = tuple(rng.randrange(alphabet) for _ in range(rng.randint(1, 4)))
        if ids not in used:
            used.add(ids)
            return list(ids)


def random_case(rng: random.Random, tools: bool = False):
    """A random spec over a small alphabet (overlapping markers are frequent), ids that mix
    its markers with filler, a random layout and a random window size; with `tools`, a
    tool-call marker and `tool_call_turns` "mask" or "only"."""
    alphabet = rng.randint(2, 8)
    used: set = set()
    names = ["assistant", "user", "tool"][: rng.randint(1, 3)]
    roles = {n: [_marker(rng, used, alphabet) for _ in range(rng.randint(1, 2))] for n in names}
    eot = [_marker(rng, used, alphabet) for _ in range(rng.randint(0, 2))] or None
    spans = [(_marker(rng, used, alphabet), _marker(rng, used, alphabet))
             for _ in range(rng.choice([0, 0, 1, 1, 2, 2]))]  # fmt: skip
    spec = MaskSpec(
        roles=roles, end_of_turn=eot, masked_spans=spans,
        train_roles=rng.sample(names, rng.randint(1, len(names))),
        train_on_end_of_turn=rng.random() < 0.7, last_turn_only=rng.random() < 0.3,
        initial_role=rng.choice([None, None, *names]),
        ignore_token_ids=rng.sample(range(alphabet), rng.randint(0, 2)),
        ignore_token_prob=rng.choice([0.0, 0.5, 1.0]),
    )  # fmt: skip
    if tools:
        spec = spec.replace(tool_call=[_marker(rng, used, alphabet)],
                            tool_call_turns=rng.choice(["mask", "only"]),
                            last_turn_only=rng.random() < 0.5)  # fmt: skip

    batch, length = rng.randint(1, 2), rng.randint(1, 48)
    pool = [m.ids for m in spec.markers]
    density = rng.choice([0.0, 0.05, 0.2, 0.5])
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < length:
            if rng.random() < density:
                row += pool[rng.randrange(len(pool))]
            else:
                row.append(rng.randrange(alphabet + 2))
        rows.append(row[:length])
    ids = torch.tensor(rows, dtype=rng.choice([torch.int32, torch.int64]))

    layout: dict = {}
    kind = rng.choice(["plain", "mask", "position_ids", "cu_seqlens"])
    if kind == "mask" or rng.random() < 0.3:
        mask = torch.ones(batch, length, dtype=torch.int64)
        for b in range(batch):
            n = rng.randint(0, length)
            if rng.random() < 0.5:
                mask[b, :n] = 0  # left padding
            else:
                mask[b, length - n :] = 0  # right padding
            if rng.random() < 0.2:
                mask[b, rng.randrange(length)] = 0
        layout["attention_mask"] = mask
    if kind == "position_ids":
        pos = torch.zeros(batch, length, dtype=torch.int64)
        for b in range(batch):
            p = 0
            for t in range(length):
                p = 0 if rng.random() < 0.1 else p
                pos[b, t] = p
                p += 1
        layout["position_ids"] = pos
    if kind == "cu_seqlens":
        ids = ids[:1]
        if "attention_mask" in layout:
            layout["attention_mask"] = layout["attention_mask"][:1]
        cuts = [rng.randint(0, length) for _ in range(rng.randint(0, 4))]
        ends = [rng.choice([0, 0, 0, 1]), rng.choice([length, length, length - 1])]
        layout["cu_seqlens"] = torch.tensor(sorted(cuts + ends), dtype=torch.int32)
    block = rng.choice([None, 16, 16, 32])
    if block is not None and block <= 2 * spec.max_marker_len - 1:
        block = 32
    return spec, ids, layout, block, rng.randrange(1 << 20)


def check_case(spec, ids, layout, block, seed):
    """Labels and stats of the kernel equal the oracle's and the torch backend's."""
    expected, stats = mask_labels_reference(
        ids, spec, generator=torch.Generator().manual_seed(seed), return_stats=True, **layout
    )
    labels, triton_stats = run_triton(ids, spec, block, seed=seed, with_stats=True, **layout)
    torch_labels, torch_stats = mask_labels(
        ids, spec, generator=torch.Generator().manual_seed(seed), backend="torch",
        return_stats=True, **layout,
    )  # fmt: skip
    context = f"\n{spec}\nids={ids.tolist()}\nlayout={layout}\nblock={block}"
    assert labels.dtype == ids.dtype, context
    assert labels.tolist() == expected.tolist() == torch_labels.tolist(), context
    for key in ("trained", "role_tokens", "dropped_turns"):
        assert triton_stats[key].tolist() == stats[key].tolist() == torch_stats[key].tolist(), key


@pytest.mark.parametrize("group", range(10))
def test_random_cases_match_oracle_and_torch_backend(group):
    rng = random.Random(1000 + group)
    for _ in range(30):  # 10 groups x 30 = 300 cases
        check_case(*random_case(rng))


def test_random_cases_cover_every_option():
    """The 300 cases above do exercise what they claim to, most of them across chunks."""
    seen: set = set()
    chunked = 0
    for group in range(10):
        rng = random.Random(1000 + group)
        for _ in range(30):
            spec, ids, layout, block, _ = random_case(rng)
            chunks = block is not None and ids.shape[1] > block
            chunked += chunks
            seen |= {f"layout:{k}" for k in layout} | {f"dtype:{ids.dtype}"}
            seen |= {f"spans:{len(spec.masked_spans)}", f"chunked:{chunks}"}
            seen |= {f"last_turn_only:{spec.last_turn_only}", f"eot:{spec.train_on_end_of_turn}"}
            seen |= {f"initial:{spec.initial_role is not None}"}
            if spec.ignore_token_ids:
                seen.add(f"ignore_prob:{spec.ignore_token_prob}")
    for option in ("layout:attention_mask", "layout:position_ids", "layout:cu_seqlens",
                   "dtype:torch.int32", "dtype:torch.int64", "spans:0", "spans:1", "spans:2",
                   "chunked:True", "chunked:False", "last_turn_only:True", "eot:False",
                   "initial:True", "ignore_prob:0.5", "ignore_prob:1.0"):  # fmt: skip
        assert option in seen, option
    assert chunked >= 120, chunked  # cases whose rows are cut into several chunks


TOOL_GROUPS, TOOL_CASES_PER_GROUP = 100, 20  # 2,000 cases, in groups that run in parallel


@pytest.mark.parametrize("group", range(TOOL_GROUPS))
def test_random_tool_call_turns_match_oracle_and_torch_backend(group):
    """Rule 5 (and rule 6 with it) across chunks: tiny blocks cut the turns, so a turn's call
    is often in another chunk than some of its tokens."""
    rng = random.Random(2000 + group)
    for _ in range(TOOL_CASES_PER_GROUP):
        check_case(*random_case(rng, tools=True))


def test_random_tool_call_cases_cover_both_modes_across_chunks():
    seen: set = set()
    chunked = trains_some = drops_some = 0
    for group in range(TOOL_GROUPS):
        rng = random.Random(2000 + group)
        for _ in range(TOOL_CASES_PER_GROUP):
            spec, ids, layout, block, seed = random_case(rng, tools=True)
            chunks = block is not None and ids.shape[1] > block
            chunked += chunks
            seen.add((spec.tool_call_turns, spec.last_turn_only, chunks))
            seen |= {f"layout:{k}" for k in layout}
            _, stats = mask_labels_reference(
                ids, spec, generator=torch.Generator().manual_seed(seed), return_stats=True,
                **layout,
            )  # fmt: skip
            trains_some += int(stats["trained"].sum()) > 0
            drops_some += int(stats["dropped_turns"].sum()) > 0
    modes = {s for s in seen if isinstance(s, tuple)}
    assert len(modes) == 8, modes  # mask/only x last_turn_only x chunked
    assert {"layout:attention_mask", "layout:position_ids", "layout:cu_seqlens"} <= seen, seen
    assert chunked >= 800, chunked  # of 2,000: rows cut into several chunks (862)
    assert trains_some >= 750 and drops_some >= 850, (trains_some, drops_some)  # 801, 923


# --- chunk boundaries, by hand ---------------------------------------------------------------

CHATML = MaskSpec(
    roles={"system": [1, 20], "user": [1, 21], "assistant": [1, 22], "tool": [1, 23]},
    end_of_turn=[2],
    masked_spans=[([30], [31])],
)


def test_marker_straddling_every_chunk_boundary():
    """Slide a conversation with overlapping markers across all offsets of a 16-wide window:
    a marker that starts inside an occurrence of the previous chunk stays ignored."""
    spec = MaskSpec(roles={"user": [4], "assistant": [1, 2]}, end_of_turn=[2, 3],
                    masked_spans=[([5, 5], [6])], last_turn_only=True)  # fmt: skip
    body = [1, 2, 3, 8, 5, 5, 5, 8, 6, 8, 2, 3, 4, 9, 1, 2, 2, 3, 8, 2, 3]
    for shift in range(16):
        ids = torch.tensor([[4] + [9] * shift + body + [9] * (15 - shift)])
        expected = mask_labels_reference(ids, spec)
        assert run_triton(ids, spec, block=16).tolist() == expected.tolist(), shift


def test_consecutive_assistant_turns_across_chunks():
    ids = torch.tensor([[1, 21, 7, 2, 1, 22, 8, 8, 8, 8, 8, 2, 1, 22, 9, 9, 9, 9, 9, 9, 2, 3]])
    assert run_triton(ids, CHATML, block=16).tolist() == [
        [N, N, N, N, N, N, 8, 8, 8, 8, 8, 2, N, N, 9, 9, 9, 9, 9, 9, 2, N]
    ]


def test_tool_turn_between_replies_is_masked_across_chunks():
    ids = torch.tensor([[1, 22, 8, 8, 2, 1, 23, 5, 5, 5, 5, 5, 5, 5, 2, 1, 22, 9, 2]])
    assert run_triton(ids, CHATML, block=16).tolist() == [
        [N, N, 8, 8, 2, N, N, N, N, N, N, N, N, N, N, N, N, 9, 2]
    ]


def test_masked_span_open_over_several_chunks():
    """A tool result opened in chunk 0 and closed in chunk 3 masks everything in between;
    a span left open is closed by the end of turn (inclusive)."""
    ids = torch.tensor([[1, 22, 8, 30] + [5] * 30 + [31, 9, 30, 5, 5, 2, 7]])
    expected = [N, N, 8] + [N] * 32 + [9] + [N] * 5
    assert run_triton(ids, CHATML, block=16).tolist() == [expected]


def test_close_of_another_span_kind_does_not_end_the_open_span():
    spec = MaskSpec(roles={"assistant": [1]}, end_of_turn=[2],
                    masked_spans=[([30], [31]), ([40], [41])])  # fmt: skip
    ids = torch.tensor([[1, 8, 30, 5, 41, 5, 5, 5, 5, 5, 5, 5, 5, 31, 8, 40, 5, 31, 5, 41, 8, 2]])
    expected = [[N, 8, N, N, N, N, N, N, N, N, N, N, N, N, 8, N, N, N, N, N, 8, 2]]
    assert run_triton(ids, spec, block=16).tolist() == expected
    assert mask_labels_reference(ids, spec).tolist() == expected


def test_many_span_kinds_match_the_oracle():
    """Five span kinds (int32 maps of 8 states), eight (int64 maps of 16 states) and, past the
    kernel's limit of 15, sixteen kinds (handed to the torch backend)."""
    for kinds in (5, 8, MAX_SPAN_KINDS + 1):
        spans = [([100 + k], [200 + k]) for k in range(kinds)]
        spec = MaskSpec(roles={"assistant": [1], "user": [3]}, end_of_turn=[2],
                        masked_spans=spans)  # fmt: skip
        rng = random.Random(kinds)
        pool = [1, 2, 3, 5, 6] + [100 + k for k in range(kinds)] + [200 + k for k in range(kinds)]
        crossing = [1, 5, 100 + kinds - 1] + [5] * 20 + [200 + kinds - 1, 6, 2]  # last kind
        ids = torch.tensor([[1] + [rng.choice(pool) for _ in range(47)], crossing + [3] * 22])
        expected = mask_labels_reference(ids, spec)
        assert expected[1, :27].tolist() == [N, 5] + [N] * 22 + [6, 2, N]
        assert run_triton(ids, spec, block=16).tolist() == expected.tolist()


def test_last_turn_only_with_packed_sequences_across_chunks():
    spec = CHATML.replace(last_turn_only=True)
    first = [1, 22, 8, 2, 1, 21, 7, 2, 1, 22, 8, 8, 8, 8, 8, 8, 8, 8, 8, 2]
    second = [1, 22, 9, 9, 9, 9, 9, 9, 9, 9, 9, 2, 1, 21, 7, 2]
    ids = torch.tensor([first + second])
    position_ids = torch.tensor([list(range(len(first))) + list(range(len(second)))])
    expected = [[N] * 10 + [8] * 9 + [2] + [N, N] + [9] * 9 + [2] + [N] * 4]
    assert run_triton(ids, spec, block=16, position_ids=position_ids).tolist() == expected
    cu_seqlens = torch.tensor([0, len(first), len(first) + len(second)])
    assert run_triton(ids, spec, block=16, cu_seqlens=cu_seqlens).tolist() == expected


def test_marker_never_spans_two_packed_sequences():
    ids = torch.tensor([[5, 5, 5, 1, 22, 8, 2, 1, 22, 8, 2] * 3])
    starts = [0, 4, 11, 15, 22, 26]  # the second sequence begins between 1 and 22
    position_ids = torch.zeros_like(ids)
    for t in range(1, ids.shape[1]):
        position_ids[0, t] = 0 if t in starts else position_ids[0, t - 1] + 1
    expected = mask_labels_reference(ids, CHATML, position_ids=position_ids)
    assert run_triton(ids, CHATML, block=16, position_ids=position_ids).tolist() == (
        expected.tolist()
    )
    assert expected[0, 5].item() == N  # "22 8" after a split header is no assistant turn


def test_left_and_right_padding_give_the_same_labels():
    conversation = [1, 21, 7, 7, 2, 1, 22, 8, 8, 8, 8, 8, 8, 2, 1, 22, 9, 9, 2]
    pad = [0] * 13
    ids = torch.tensor([pad + conversation, conversation + pad])
    mask = torch.tensor([[0] * 13 + [1] * 19, [1] * 19 + [0] * 13])
    labels = run_triton(ids, CHATML, block=16, attention_mask=mask)
    assert labels[0, 13:].tolist() == labels[1, :19].tolist() == [
        N, N, N, N, N, N, N, 8, 8, 8, 8, 8, 8, 2, N, N, 9, 9, 2
    ]  # fmt: skip
    assert labels[0, :13].tolist() == labels[1, 19:].tolist() == [N] * 13


def test_padding_breaks_a_marker_but_not_the_turn():
    """A masked token inside a header stops it matching; roles carry on across padding."""
    ids = torch.tensor([[1, 22, 8, 8, 1, 0, 22, 8, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 1, 1, 1]])
    assert run_triton(ids, CHATML, attention_mask=mask).tolist() == [[N, N, 8, 8, 1, N, 22, 8, 2]]


def test_int32_and_int64_ids_give_the_same_labels_in_their_dtype():
    ids = torch.tensor([[1, 21, 7, 2, 1, 22, 8, 30, 5, 31, 8, 2]])
    for dtype in (torch.int32, torch.int64):
        labels = run_triton(ids.to(dtype), CHATML, block=16)
        assert labels.dtype == dtype
        assert labels.tolist() == [[N, N, N, N, N, N, 8, N, N, N, 8, 2]]


def test_int64_ids_beyond_int32_never_match_a_marker():
    big = 2**32 + 22  # the low 32 bits are the assistant header's second id
    ids = torch.tensor([[1, 22, 8, 2, 1, big, 9, 2, -1, 22, 9]])
    assert run_triton(ids, CHATML).tolist() == [[N, N, 8, 2, N, N, N, N, N, N, N]]


def test_stats_count_trained_tokens_and_role_tokens_per_row():
    ids = torch.tensor([[1, 20, 5, 2, 1, 21, 7, 2, 1, 22, 8, 8, 2, 0], [1, 22, 8, 2] + [0] * 10])
    mask = torch.tensor([[1] * 13 + [0], [1] * 4 + [0] * 10])
    labels, stats = run_triton(ids, CHATML, block=16, attention_mask=mask, with_stats=True)
    trained, roles = stats["trained"], stats["role_tokens"]
    assert labels[0].tolist() == [N] * 10 + [8, 8, 2, N]
    assert trained.tolist() == [3, 2]
    # columns: system, user, assistant, tool, none (header tokens count with their role)
    assert roles.tolist() == [[4, 4, 5, 0, 0], [0, 0, 4, 0, 0]]


def test_train_on_end_of_turn_false_and_initial_role():
    spec = CHATML.replace(train_on_end_of_turn=False, initial_role="assistant")
    ids = torch.tensor([[8, 8, 2, 5, 1, 21, 7, 2, 1, 22, 9, 2, 6]])
    assert run_triton(ids, spec).tolist() == [[8, 8, N, N, N, N, N, N, N, N, 9, N, N]]


def test_random_drops_match_the_torch_backend_bit_for_bit():
    spec = CHATML.replace(ignore_token_ids=[8], ignore_token_prob=0.5)
    ids = torch.tensor([[1, 22] + [8, 9] * 20 + [2]] * 2)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        expected = mask_labels(ids, spec, generator=gen, backend="torch")
        assert run_triton(ids, spec, block=32, seed=seed).tolist() == expected.tolist()
        dropped = (expected[:, 2:-1:2] == N).sum().item()
        assert 0 < dropped < 40  # some 8s dropped, some kept


def test_draws_compare_in_float32_as_torch_does():
    """A draw equal to float32(0.7), which is below the double 0.7, is not below the
    probability: torch rounds the probability to float32 before comparing, and so does the
    kernel."""
    spec = CHATML.replace(ignore_token_ids=[8], ignore_token_prob=0.7)
    ids = torch.tensor([[1, 22, 8, 8, 2]])
    uniforms = torch.tensor([[0.0, 0.0, 0.7, 0.6999, 0.0]], dtype=torch.float32)
    ids, uniforms = ids.to(DEVICE), uniforms.to(DEVICE)
    expected = mask_labels_torch(Batch(ids, uniforms=uniforms), spec, -100, False)[0]
    labels = mask_labels_triton(Batch(ids, uniforms=uniforms), spec, -100, False)[0]
    assert labels.tolist() == expected.tolist() == [[N, N, 8, N, 2]]
    draws64 = uniforms.double()  # another dtype goes to the torch backend, same result
    assert mask_labels_triton(Batch(ids, uniforms=draws64), spec, -100, False)[0].tolist() == (
        mask_labels_torch(Batch(ids, uniforms=draws64), spec, -100, False)[0].tolist()
    )


def test_public_entry_point_dispatches_to_the_kernel_with_the_same_draws():
    """`mask_labels(backend="triton")` and `backend="torch"` draw the same uniforms from the
    same generator, so even random drops agree; stats and a custom ignore_index too."""
    spec = CHATML.replace(ignore_token_ids=[8], ignore_token_prob=0.5, last_turn_only=True)
    ids = torch.tensor([[1, 21, 7, 2, 1, 22] + [8, 9] * 12 + [2], [0] * 5 + [1, 22] + [8] * 24])
    mask = torch.tensor([[1] * 31, [0] * 5 + [1] * 26])
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    results = [
        mask_labels(ids, spec, attention_mask=mask, backend=backend, return_stats=True,
                    ignore_index=-1, generator=torch.Generator(DEVICE).manual_seed(3))
        for backend in ("torch", "triton")
    ]  # fmt: skip
    (a, stats_a), (b, stats_b) = results
    assert b.tolist() == a.tolist()
    dropped = (a == -1).sum().item() - 13  # 13 labels (headers, user turn, padding) never train
    assert 0 < dropped < 36  # some of the 36 eights are dropped, not all
    assert stats_b["trained"].tolist() == stats_a["trained"].tolist()
    assert stats_b["role_tokens"].tolist() == stats_a["role_tokens"].tolist()


def test_default_window_for_a_long_row():
    """Rows longer than one block are cut into chunks by the launcher's own choice."""
    rng = random.Random(5)
    pieces = [[1, 21, 7, 7, 2], [1, 22, 8, 8, 8, 2], [1, 23, 5, 2], [30, 5, 31], [9, 9, 9]]
    row: list[int] = []
    while len(row) < 2100:
        row += rng.choice(pieces)
    ids = torch.tensor([row[:2100]])
    expected = mask_labels(ids, CHATML.replace(last_turn_only=True), backend="torch")
    assert run_triton(ids, CHATML.replace(last_turn_only=True)).tolist() == expected.tolist()


def test_bad_block_is_rejected_with_the_reason():
    ids = torch.tensor([[1, 22, 8, 2] * 10])
    with pytest.raises(ValueError, match="block: expected a power of two"):
        run_triton(ids, CHATML, block=24)
    long_marker = MaskSpec(roles={"assistant": list(range(1, 10))})
    with pytest.raises(ValueError, match="block: 16 positions cannot hold a chunk"):
        run_triton(ids, long_marker, block=16)


# --- compiled for a GPU, without one --------------------------------------------------------

COMPILE_FOR_H100 = textwrap.dedent("""
    import warnings
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from gpumask import triton_backend as tb

    def compile_(fn, ids, consts, num_warps):
        types = {"ids_ptr": ids, "labels_ptr": ids, "real_ptr": "*i1", "start_ptr": "*i1",
                 "train_ptr": "*i1", "uniforms_ptr": "*fp32", "prob": "fp32",
                 "mk_word_ptr": "*i32", "calls_ptr": "*i32", "kept_ptr": "*i32"}
        names = fn.arg_names
        signature = {n: "constexpr" if n in consts else types.get(n, "*i64" if n.endswith("_ptr")
                     else "i32") for n in names}
        constexprs = {(names.index(n),): v for n, v in consts.items() if n in names}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})

    warnings.simplefilter("ignore")
    for ids, nstates, block, on in (("*i64", 4, 1024, True), ("*i32", 2, 256, False)):
        consts = dict(M=7, K=3, R=4, RP=8, NSTATES=nstates, N_IGNORE=2 * on, BLOCK=block,
                      BLOCK_C=64, HAS_REAL=on, HAS_START=on, HAS_UNIFORMS=on, CARRY=on,
                      TRAIN_EOT=not on, LAST_TURN=on, WITH_STATS=on, TOOL=2 * on,
                      CALLS_PASS=False)
        for kernel in (tb._summarize_kernel, tb._carry_kernel, tb._label_kernel):
            compile_(kernel, ids, consts, num_warps=block // 256)
        compile_(tb._label_kernel, ids, {**consts, "CALLS_PASS": True}, num_warps=block // 256)
    print("compiled")
""")


def test_kernels_compile_for_an_h100_without_a_gpu():
    """The interpreter accepts code that the compiler rejects (a jit function returning a
    dtype, say): compile every kernel to an sm_90 binary, which needs no GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_cpu_tensors_without_the_interpreter_get_a_clear_error():
    script = (
        "import torch, gpumask\n"
        "spec = gpumask.MaskSpec(roles={'assistant': [1]})\n"
        "gpumask.mask_labels(torch.tensor([[1, 2]]), spec, backend='triton')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert "input_ids: on cpu; the Triton backend runs on CUDA tensors" in done.stderr


# --- on a GPU --------------------------------------------------------------------------------


@pytest.mark.cuda
def test_compiled_kernel_matches_torch_backend_on_cuda():
    rng = random.Random(7)
    spec = CHATML.replace(last_turn_only=True, ignore_token_ids=[9], ignore_token_prob=0.5)
    pieces = [[1, 21, 7, 7, 2], [1, 22, 8, 9, 8, 2], [1, 23, 5, 2], [30, 5, 31], [9, 9, 9]]
    for batch, length in ((64, 512), (8, 8192), (2, 70000)):
        rows = []
        for _ in range(batch):
            row: list[int] = []
            while len(row) < length:
                row += rng.choice(pieces)
            rows.append(row[:length])
        ids = torch.tensor(rows, device="cuda")
        position_ids = torch.arange(length, device="cuda").remainder(1000).expand(batch, -1)
        for dtype in (torch.int32, torch.int64):
            for layout in ({}, {"position_ids": position_ids}):
                results = [
                    mask_labels(ids.to(dtype), spec, backend=backend, return_stats=True,
                                generator=torch.Generator("cuda").manual_seed(1), **layout)
                    for backend in ("torch", "triton")
                ]  # fmt: skip
                (a, sa), (b, sb) = results
                assert torch.equal(a, b)
                assert torch.equal(sa["trained"], sb["trained"])
                assert torch.equal(sa["role_tokens"], sb["role_tokens"])
