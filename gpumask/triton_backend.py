"""The Triton backend: the rules of :mod:`gpumask.reference` in fused kernels, chunked rows.

Same signature and results as :func:`gpumask.torch_backend.mask_labels_torch`; reached through
:func:`gpumask.mask_labels` with `backend="triton"` (or `"auto"` on CUDA).

Design note
===========

Grid and chunking. A row of length T is cut into chunks of `CHUNK = BLOCK - HALO` positions;
program b * NC + c (a 1-D grid, so neither B nor NC meets CUDA's 65535 limit on grid.y) owns
chunk c of row b and loads a window of BLOCK positions (a power of two) that starts HALO
positions before its chunk. HALO = 2K - 1 for markers of up to K tokens:
whether an occurrence at q is kept depends only on the matches at q-K+1..q (an earlier match
ends at or before q), so every occurrence that covers, or ends at, a chunk position is decided
exactly inside the window. Matching looks K - 1 positions past the window, which is only a
load. Markers, their overlaps and their coverage therefore never cross chunks as state. The
launcher picks BLOCK so that B x T gives a few programs per SM (4 x 131072 and 64 x 512 both
fill an H100); a row that fits in one block runs as one chunk with no halo and one kernel.

State that does cross chunks is three "last event" quantities and one count (and, for rule
5, a mark per turn, below):
- role: the code of the last role event (sequence start, header, end of turn's end);
- span: the state map of the masked-span automaton (states 0 = none, k + 1 = span k open),
  packed as 4-bit entries (int32 up to 7 span kinds, int64 up to 15) and composed; with one
  span kind every map is the identity or a constant, so it is a "last event" too;
- turn: the number of trained-role turn starts (a prefix sum), and for `last_turn_only` the
  turn count at the end of the packed sequence open at the chunk's end.
So a row with several chunks takes three launches:
1. `_summarize_kernel` (grid B x NC): per chunk, the last role event, its span map, its turn
   starts and the turn starts before its first sequence start.
2. `_carry_kernel` (grid B): per row, scans of those summaries over the chunks (max for the
   last event, map composition for spans, cumsum for turns, a reverse max for the turn count
   at each sequence's end): the state entering every chunk.
3. `_label_kernel` (grid B x NC): recomputes its chunk with the carried state, writes labels
   and, with stats, adds per-row counts with atomics.
Rule 5 (`tool_call_turns` "mask" or "only") needs to know, at every token, whether its turn
holds a tool call anywhere, before or after it, in this chunk or another. The label kernel
then runs twice (also for one-chunk rows): first as a calls pass that numbers each token's
turn (the carried turn count plus the chunk's own starts) and marks `calls[b, turn]` with an
atomic max where a call starts in a turn of a trained role outside every span; then as the
label pass, which reads its turn's mark (one gather from a `[B, T + 2]` int32 table). With
`last_turn_only` a torch cumsum between the two turns the marks into kept turns up to each
turn, and a token trains when no kept turn lies between its own and its sequence's last.
Inside a window everything is a scan over BLOCK lanes (`tl.associative_scan`, `tl.cumsum`)
plus a one-lane shift (`tl.gather`); no `[B, T, M]` tensor exists. Matching keeps the K
shifted id vectors (int32, -1 where a token is padding, past a sequence start or out of
int32) and compares them with each marker's ids, shortest marker first, so the last hit is
the longest match.

Random drops. `uniforms` are the float32 draws the front-end takes with `torch.rand`; the
kernel compares them with the probability rounded to float32, exactly as torch compares a
float32 tensor with a Python float, so drops match the torch backend bit for bit. Draws of
another dtype (a changed default dtype), more than 15 span kinds, or marker ids past int32
(the kernels compare int32 ids) go to the torch backend.

Bytes per token (ids of w bytes, w = 4 or 8; attention/packing masks 1 byte each when given,
draws 4 bytes when used): one chunk per row: read w (+ masks, + draws), write w, the same
traffic as a device copy of the ids (2w). Several chunks: pass 1 reads w (+ masks) again, so
3w from DRAM at worst, 2w when the second read hits L2 (the ids of every benchmark shape of
issue 6 fit in an H100's 50 MB L2). Halo and look-ahead loads (about 3K / BLOCK of a window)
and per-chunk summaries (64 bytes per chunk) come from cache or are negligible.

Expected speed (not measured: written without a GPU). Memory allows 67-100% of a device copy;
the instruction count is the likelier limit. Compiled for sm_90a without a GPU (Triton 3.9,
`triton.compile` to SASS), a ChatML-with-tools spec (7 markers of at most 3 tokens, one span
kind, int64 ids) takes about 9-12 warp instructions per token in the label pass and 8-10 in
the summary pass (BLOCK 512-2048, 64-95 registers, no spills). At the H100's issue rate
(132 SMs x 4 schedulers x ~1.75 GHz, ~0.9e12 warp instructions/s) that is 10-13 us per million
tokens for one-chunk rows and ~20 us with chunks, against ~5.5 us for copying a million int64
ids: roughly 40-50% of copy bandwidth for one-chunk rows and ~25% for long rows, if issue
bound. Levers, for issue 6 to measure: a decoupled look-back (one pass instead of summary +
labels, except `last_turn_only`, which needs the sequence's end); a summary pass keyed by
event position (reductions, no coverage scan); vectorised layouts (Triton picks one lane per
thread here, so each scan runs BLOCK / (32 x warps) warp-level scans); BLOCK and num_warps.

Example (on a CUDA device, else on the CPU under TRITON_INTERPRET=1)::

    >>> import torch
    >>> from gpumask import MaskSpec
    >>> device = "cuda" if torch.cuda.is_available() else "cpu"
    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> from gpumask.padding import Batch
    >>> ids = torch.tensor([[1, 10, 5, 2, 1, 11, 6, 7, 2, 9]], device=device)
    >>> labels, _ = mask_labels_triton(Batch(ids), spec, -100, False)
    >>> labels.tolist()
    [[-100, -100, -100, -100, -100, -100, 6, 7, 2, -100]]
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from gpumask import spec as _spec
from gpumask.padding import Batch
from gpumask.spec import (
    END_OF_TURN,
    HEADER,
    SPAN_CLOSE,
    SPAN_OPEN,
    TOOL_CALL,
    TOOL_CALL_TURNS,
    MaskSpec,
    tag,
)
from gpumask.torch_backend import mask_labels_torch

# Marker words are :attr:`gpumask.spec.Marker.word`s; the kernels decode them with these.
_LENGTH_MASK = tl.constexpr(_spec.LENGTH_MASK)
_KIND_MASK = tl.constexpr(_spec.KIND_MASK)
_ARG_SHIFT = tl.constexpr(_spec.ARG_SHIFT)
_WORD_BITS = tl.constexpr(_spec.WORD_BITS)
_WORD_MASK = tl.constexpr((1 << _spec.WORD_BITS) - 1)
_HEADER = tl.constexpr(tag(HEADER))
_END_OF_TURN = tl.constexpr(tag(END_OF_TURN))
_SPAN_OPEN = tl.constexpr(tag(SPAN_OPEN))
_SPAN_CLOSE = tl.constexpr(tag(SPAN_CLOSE))
_TOOL_CALL = tl.constexpr(tag(TOOL_CALL))

# Kernel limit: span states are 4-bit entries of an int64.
MAX_SPAN_KINDS = 15
# Launcher tuning (not yet measured on a GPU, see the design note).
SINGLE_CHUNK_MAX = 2048  # rows up to this length run as one chunk, one kernel
MIN_BLOCK, MAX_BLOCK = 256, 2048
PROGRAMS_PER_SM = 4
MAX_CHUNKS = 8192  # chunks per row, scanned by one program of the carry pass
MAX_WINDOW = 1 << (31 - _spec.WORD_BITS)  # a lane and a marker word share an int32


# --- small combinators -----------------------------------------------------------------------


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


# A span-state map holds N 4-bit entries, entry x being the image of state x; "f, then g" reads
# g at each entry of f. `tl.associative_scan` passes no constexpr to its combine function, so
# each state count has its own (and none calls another jit function: the interpreter would
# re-patch triton.language on every call).
@triton.jit
def _compose4(f, g):
    out = f ^ f
    for x in tl.static_range(4):
        out |= ((g >> (4 * ((f >> (4 * x)) & 15))) & 15) << (4 * x)
    return out


@triton.jit
def _compose8(f, g):
    out = f ^ f
    for x in tl.static_range(8):
        out |= ((g >> (4 * ((f >> (4 * x)) & 15))) & 15) << (4 * x)
    return out


@triton.jit
def _compose16(f, g):
    out = f ^ f
    for x in tl.static_range(16):
        out |= ((g >> (4 * ((f >> (4 * x)) & 15))) & 15) << (4 * x)
    return out


@triton.jit
def _scan_maps(maps, N: tl.constexpr):
    """Inclusive prefix compositions of packed span-state maps (N states, a power of two)."""
    if N == 2:
        # Two states: every map is the identity (0x10) or a constant, so the last
        # non-identity map is the composition (a max scan, cheaper than composing).
        lane = tl.arange(0, maps.shape[0])
        last = tl.associative_scan(tl.where(maps != 0x10, (lane << 8) | maps, -1), 0, _max)
        out = tl.where(last >= 0, last & 255, 0x10)
    elif N == 4:
        out = tl.associative_scan(maps, 0, _compose4)
    elif N == 8:
        out = tl.associative_scan(maps, 0, _compose8)
    else:
        out = tl.associative_scan(maps, 0, _compose16)
    return out


@triton.jit
def _total_map(maps, N: tl.constexpr):
    """The composition of all maps of a block (a reduction for two states)."""
    lane = tl.arange(0, maps.shape[0])
    if N == 2:
        last = tl.max(tl.where(maps != 0x10, (lane << 8) | maps, -1))
        out = tl.where(last >= 0, last & 255, 0x10)
    else:
        out = tl.sum(tl.where(lane == maps.shape[0] - 1, _scan_maps(maps, N), 0))
    return out


# --- the work of one window ------------------------------------------------------------------


@triton.jit
def _marker_ids(x, ok):
    """Ids as int32 where `ok`, -1 elsewhere and for ids no marker can have (negative, or
    past int32: marker ids are non-negative int32)."""
    x32 = x.to(tl.int32)
    if x.dtype == tl.int64:
        ok = ok & (x32.to(tl.int64) == x)
    return tl.where(ok, x32, -1)


@triton.jit
def _window(
    ids_ptr, real_ptr, start_ptr, row, w, T, halo,
    mk_ids_ptr, mk_word_ptr, train_ptr, initial,
    M: tl.constexpr, K: tl.constexpr, R: tl.constexpr,
    NSTATES: tl.constexpr, BLOCK: tl.constexpr,
    HAS_REAL: tl.constexpr, HAS_START: tl.constexpr,
):  # fmt: skip
    """Occurrences and events of the window [w, w + BLOCK) of one row.

    `info` is the word of the longest marker matching at each lane (0: none); `last` holds
    (start lane << WORD_BITS | word) of the last kept occurrence at or before each lane.
    Events are only reported for chunk lanes (lane >= halo, position < T).
    """
    lane = tl.arange(0, BLOCK)
    pos = w + lane
    inside = (pos >= 0) & (pos < T)
    x = tl.load(ids_ptr + row + pos, mask=inside, other=-1)
    real = inside
    if HAS_REAL:
        real = real & (tl.load(real_ptr + row + pos, mask=inside, other=0) != 0)
    start = pos == 0
    if HAS_START:
        start = start | (tl.load(start_ptr + row + pos, mask=inside, other=0) != 0)

    # Matching: the ids at pos + k (k < K) as int32, -1 where no marker may use them.
    tokens = (_marker_ids(x, real),)
    for k in tl.static_range(1, K):
        q = pos + k
        ok = (q >= 0) & (q < T)
        xk = tl.load(ids_ptr + row + q, mask=ok, other=-1)
        if HAS_REAL:
            ok = ok & (tl.load(real_ptr + row + q, mask=ok, other=0) != 0)
        if HAS_START:  # a marker may not run into the next sequence (checked at every k < len)
            ok = ok & (tl.load(start_ptr + row + q, mask=ok, other=0) == 0)
        tokens = tokens + (_marker_ids(xk, ok),)
    # Markers are sorted longest first: trying them shortest first, the last hit is the longest.
    info = tl.zeros([BLOCK], tl.int32)
    for m in tl.static_range(M - 1, -1, -1):
        word = tl.load(mk_word_ptr + m)
        length = word & _LENGTH_MASK
        hit = tokens[0] == tl.load(mk_ids_ptr + m * K).to(tl.int32)
        for k in tl.static_range(1, K):
            want = tl.load(mk_ids_ptr + m * K + k).to(tl.int32)
            hit = hit & ((tokens[k] == want) | (length <= k))
        info = tl.where(hit, word, info)
    size = info & _LENGTH_MASK

    # Overlaps: keep a start at or past the end of every earlier match.
    previous = tl.maximum(lane - 1, 0)  # a one-lane shift is a gather from the lane before
    reach = tl.associative_scan(tl.where(size > 0, lane + size, 0), 0, _max)
    reach = tl.where(lane == 0, 0, tl.gather(reach, previous, 0))
    kept = (size > 0) & (lane >= reach)
    last = tl.associative_scan(tl.where(kept, (lane << _WORD_BITS) | info, -1), 0, _max)
    before = tl.where(lane == 0, -1, tl.gather(last, previous, 0))

    # Events at chunk lanes.
    chunk = (lane >= halo) & (pos < T)
    start = start & chunk
    kind = info & _KIND_MASK
    arg = info >> _ARG_SHIFT
    header = chunk & kept & (kind == _HEADER)
    opens = chunk & kept & (kind == _SPAN_OPEN)
    calls = chunk & kept & (kind == _TOOL_CALL)
    ended = chunk & (before >= 0) & (((before >> _WORD_BITS) + (before & _LENGTH_MASK)) == lane)
    end_kind = before & _KIND_MASK
    eot_end = ended & (end_kind == _END_OF_TURN)
    close_end = ended & (end_kind == _SPAN_CLOSE)
    role_code = tl.where(header, arg, tl.where(start, initial, R))
    role_key = tl.where(start | header | eot_end, (lane << 8) | role_code, -1)
    train_bits = tl.zeros([], tl.int32 if R < 32 else tl.int64)  # bit r: role r trains
    for r in tl.static_range(R):
        train_bits |= (tl.load(train_ptr + r) != 0).to(train_bits.dtype) << r
    trains = ((train_bits >> arg.to(train_bits.dtype)) & 1) != 0
    turn_start = (header & trains) | (start & ~header & (tl.load(train_ptr + initial) != 0))

    maps = tl.zeros([BLOCK], tl.int32 if NSTATES <= 8 else tl.int64)  # 4 bits per state
    if NSTATES > 0:
        reset = start | eot_end | header
        close_arg = (before & _WORD_MASK) >> _ARG_SHIFT
        for s in tl.static_range(NSTATES):
            state = tl.full([BLOCK], s, tl.int32)
            state = tl.where(reset, 0, state)
            state = tl.where(close_end & (state == close_arg + 1), 0, state)
            state = tl.where(opens & (state == 0), arg + 1, state)
            maps |= state.to(maps.dtype) << (4 * s)
    return x, real, start, chunk, last, role_key, turn_start, maps, train_bits, calls


@triton.jit
def _summarize_kernel(
    ids_ptr, real_ptr, start_ptr, summary_ptr, T, halo, chunk_len, n_chunks,
    mk_ids_ptr, mk_word_ptr, train_ptr, initial,
    M: tl.constexpr, K: tl.constexpr, R: tl.constexpr,
    NSTATES: tl.constexpr, BLOCK: tl.constexpr,
    HAS_REAL: tl.constexpr, HAS_START: tl.constexpr,
):  # fmt: skip
    """Pass 1: summary[b, c] = (last role code or -1, turn starts, turn starts before the
    first sequence start or -1 without one, span-state map) of chunk c of row b."""
    c = tl.program_id(0) % n_chunks
    b = tl.program_id(0) // n_chunks
    row = b.to(tl.int64) * T
    _, _, start, chunk, _, role_key, turn_start, maps, _, _ = _window(
        ids_ptr, real_ptr, start_ptr, row, c * chunk_len - halo, T, halo,
        mk_ids_ptr, mk_word_ptr, train_ptr, initial,
        M, K, R, NSTATES, BLOCK, HAS_REAL, HAS_START,
    )  # fmt: skip
    lane = tl.arange(0, BLOCK)
    last_role = tl.max(role_key)
    last_role = tl.where(last_role >= 0, last_role & 255, -1)
    turns = tl.sum(turn_start.to(tl.int32))
    first = tl.min(tl.where(start, lane, BLOCK))
    before_first = tl.sum((turn_start & (lane < first)).to(tl.int32))
    out = summary_ptr + (b.to(tl.int64) * n_chunks + c) * 4
    tl.store(out, last_role.to(tl.int64))
    tl.store(out + 1, turns.to(tl.int64))
    tl.store(out + 2, tl.where(first < BLOCK, before_first, -1).to(tl.int64))
    if NSTATES > 0:
        tl.store(out + 3, _total_map(maps, NSTATES).to(tl.int64))


@triton.jit
def _carry_kernel(
    summary_ptr, carry_ptr, n_chunks, initial,
    NSTATES: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Pass 2, one program per row: carry[b, :, c] = (role, span state, turn count) entering
    chunk c, and the turn count at the end of the first sequence that ends at or after chunk c
    (index n_chunks: the row's total)."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_C)
    valid = j < n_chunks
    src = summary_ptr + (b * n_chunks + j) * 4
    last_role = tl.load(src, mask=valid, other=-1)
    turns = tl.load(src + 1, mask=valid, other=0)
    before_first = tl.load(src + 2, mask=valid, other=-1)
    stride = n_chunks + 1
    out = carry_ptr + b * 4 * stride

    role = tl.associative_scan(tl.where(last_role >= 0, (j << 8) | last_role, -1), 0, _max)
    tl.store(out + j + 1, tl.where(role >= 0, role & 255, initial), mask=valid)
    tl.store(out, tl.zeros([], tl.int64) + initial)

    if NSTATES > 0:
        maps = tl.load(src + 3, mask=valid, other=0).to(tl.int32 if NSTATES <= 8 else tl.int64)
        tl.store(out + stride + j + 1, (_scan_maps(maps, NSTATES) & 15).to(tl.int64), mask=valid)
    tl.store(out + stride, tl.zeros([], tl.int64))

    turn = tl.cumsum(turns, 0)
    tl.store(out + 2 * stride + j + 1, turn, mask=valid)
    tl.store(out + 2 * stride, tl.zeros([], tl.int64))

    total = tl.sum(turns)
    at_end = turn - turns + before_first
    key = tl.where(before_first >= 0, ((BLOCK_C - j).to(tl.int64) << 32) | at_end, -1)
    nearest = tl.associative_scan(key, 0, _max, reverse=True)
    tl.store(out + 3 * stride + j, tl.where(nearest >= 0, nearest & 0xFFFFFFFF, total), mask=valid)
    tl.store(out + 3 * stride + n_chunks, total)


@triton.jit
def _label_kernel(
    ids_ptr, real_ptr, start_ptr, uniforms_ptr, labels_ptr, carry_ptr, trained_ptr, roles_ptr,
    calls_ptr, kept_ptr, dropped_ptr,
    T, halo, chunk_len, n_chunks,
    mk_ids_ptr, mk_word_ptr, train_ptr, initial, ignore_ptr,
    prob, ignore_index,
    M: tl.constexpr, K: tl.constexpr, R: tl.constexpr, RP: tl.constexpr,
    NSTATES: tl.constexpr, N_IGNORE: tl.constexpr, BLOCK: tl.constexpr,
    HAS_REAL: tl.constexpr, HAS_START: tl.constexpr, HAS_UNIFORMS: tl.constexpr,
    CARRY: tl.constexpr, TRAIN_EOT: tl.constexpr, LAST_TURN: tl.constexpr,
    WITH_STATS: tl.constexpr, TOOL: tl.constexpr, CALLS_PASS: tl.constexpr,
):  # fmt: skip
    """Pass 3 (the only pass for one-chunk rows): labels of chunk c of row b.

    With `tool_call_turns` (TOOL 1: "mask", 2: "only") it runs twice: first with CALLS_PASS,
    marking `calls[b, k]` for every turn k (numbered by turn starts from the row's start)
    that contains a tool call, then for the labels, reading each token's turn there, and
    with `last_turn_only` the kept turns up to it (`kept[b, k]`, a prefix sum)."""
    c = tl.program_id(0) % n_chunks
    b = tl.program_id(0) // n_chunks
    row = b.to(tl.int64) * T
    w = c * chunk_len - halo
    x, real, start, chunk, last, role_key, turn_start, maps, train_bits, calls = _window(
        ids_ptr, real_ptr, start_ptr, row, w, T, halo,
        mk_ids_ptr, mk_word_ptr, train_ptr, initial,
        M, K, R, NSTATES, BLOCK, HAS_REAL, HAS_START,
    )  # fmt: skip
    lane = tl.arange(0, BLOCK)
    pos = w + lane
    if CARRY:
        carried = carry_ptr + b.to(tl.int64) * 4 * (n_chunks + 1) + c
        role_in = tl.load(carried).to(tl.int32)
        span_in = tl.load(carried + (n_chunks + 1)).to(tl.int32)
        turn_in = tl.load(carried + 2 * (n_chunks + 1)).to(tl.int32)
        end_turn_in = tl.load(carried + 3 * (n_chunks + 1) + 1).to(tl.int32)
    else:
        role_in = initial
        span_in = 0
        turn_in = 0
        end_turn_in = 0

    role = tl.associative_scan(role_key, 0, _max)
    role = tl.where(role >= 0, role & 255, role_in)
    trained = chunk & real & (((train_bits >> role.to(train_bits.dtype)) & 1) != 0)
    covered = (last >= 0) & ((last >> _WORD_BITS) + (last & _LENGTH_MASK) > lane)
    cover_kind = last & _KIND_MASK
    trained = trained & ~(covered & (cover_kind == _HEADER))
    calls = calls & trained  # tool calls that start in a turn of a trained role
    if not TRAIN_EOT:
        trained = trained & ~(covered & (cover_kind == _END_OF_TURN))
    if NSTATES > 0:
        span = (_scan_maps(maps, NSTATES) >> (4 * span_in)) & 15
        trained = trained & (span == 0)
        calls = calls & (span == 0)
    if TOOL > 0:
        turn_of = turn_in + tl.cumsum(turn_start.to(tl.int32), 0)
        turn_calls = calls_ptr + b.to(tl.int64) * (T + 2) + turn_of
        if CALLS_PASS:
            tl.atomic_max(turn_calls, tl.full([BLOCK], 1, tl.int32), mask=calls)
        else:
            keep = (tl.load(turn_calls, mask=chunk, other=0) != 0) == (TOOL == 2)
            trained = trained & keep
            dropped = turn_start & ~keep
    if LAST_TURN:
        # Turn counts relative to the chunk's start; the last position of each sequence
        # (the first one at or after the lane) gives its final count.
        turn = tl.cumsum(turn_start.to(tl.int32), 0)
        seq_last = pos + 1 == T
        if HAS_START:
            nxt = (pos + 1 >= 0) & (pos + 1 < T)
            seq_last = seq_last | (tl.load(start_ptr + row + pos + 1, mask=nxt, other=0) != 0)
        key = tl.where(chunk & seq_last, ((BLOCK - 1 - lane) << 16) | turn, -1)
        end_turn = tl.associative_scan(key, 0, _max, reverse=True)
        end_turn = tl.where(end_turn >= 0, end_turn & 0xFFFF, end_turn_in - turn_in)
        if TOOL > 0:  # the last kept turn: no kept turn between a token's and the last one
            if not CALLS_PASS:
                kept = kept_ptr + b.to(tl.int64) * (T + 2) + turn_in
                kept_here = tl.load(kept + turn, mask=chunk, other=0)
                trained = trained & (kept_here == tl.load(kept + end_turn, mask=chunk, other=0))
        else:
            trained = trained & (turn == end_turn)
    if N_IGNORE > 0:
        drop = lane < 0
        for i in tl.static_range(N_IGNORE):
            drop = drop | (x == tl.load(ignore_ptr + i).to(x.dtype))
        if HAS_UNIFORMS:
            u = tl.load(uniforms_ptr + row + pos, mask=chunk, other=1.0)
            drop = drop & (u < prob)
        trained = trained & ~drop
    if not CALLS_PASS:
        tl.store(labels_ptr + row + pos, tl.where(trained, x, ignore_index), mask=chunk)
        if WITH_STATS:
            tl.atomic_add(trained_ptr + b, tl.sum(trained.to(tl.int64)))
            counts = tl.histogram(role, RP, mask=chunk & real)
            bins = tl.arange(0, RP)
            tl.atomic_add(roles_ptr + b * (R + 1) + bins, counts.to(tl.int64), mask=bins <= R)
            if TOOL > 0:
                tl.atomic_add(dropped_ptr + b, tl.sum(dropped.to(tl.int64)))


# --- launcher --------------------------------------------------------------------------------


INTERPRETED = not isinstance(_label_kernel, triton.runtime.JITFunction)  # TRITON_INTERPRET=1


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # an H100's count, so the interpreter takes the same decisions
    return torch.cuda.get_device_properties(device).multi_processor_count


def _layout(batch: int, length: int, max_len: int, device: torch.device, block: int | None):
    """(BLOCK, halo, chunk length, chunks per row) for a `batch` x `length` input."""
    halo = 2 * max_len - 1
    if block is None:
        if length <= SINGLE_CHUNK_MAX:
            return max(16, _pow2(length)), 0, max(16, _pow2(length)), 1
        block = _pow2(-(-batch * length // (PROGRAMS_PER_SM * _multiprocessors(device))))
        block = min(max(block, MIN_BLOCK, _pow2(4 * halo)), max(MAX_BLOCK, _pow2(4 * halo)))
    elif block < 16 or block > MAX_WINDOW or block & (block - 1):
        raise ValueError(f"block: expected a power of two in [16, {MAX_WINDOW}], got {block}")
    if length <= block:
        return block, 0, block, 1
    if block <= halo:
        raise ValueError(
            f"block: {block} positions cannot hold a chunk and its halo of {halo} positions "
            f"(2 x the longest marker - 1); use a block of at least {_pow2(halo + 1)}"
        )
    while -(-length // (block - halo)) + 1 > MAX_CHUNKS and block < MAX_WINDOW:
        block *= 2
    return block, halo, block - halo, -(-length // (block - halo))


@dataclasses.dataclass(frozen=True)
class Tables:
    """What the kernels read, for one spec on one device (built by :func:`tables`): the
    markers' ids `[M, K]` (int64, padded with -1) and words `[M]` (int32,
    :attr:`gpumask.spec.Marker.word`), longest first; which role codes train `[R + 1]`
    (bool, code R is none); the ids of `ignore_token_ids` `[I]`; the initial role's code;
    whether some marker id is past int32 (`wide_ids`: the kernels cannot compare it)."""

    ids: torch.Tensor
    words: torch.Tensor
    train_role: torch.Tensor
    ignore_ids: torch.Tensor
    initial_role: int
    wide_ids: bool


def _build_tables(spec: MaskSpec, device: torch.device) -> Tables:
    width = spec.max_marker_len
    ids = [list(m.ids) + [-1] * (width - len(m.ids)) for m in spec.markers]
    trains = [name in spec.train_roles for name in spec.role_names] + [False]
    return Tables(
        ids=torch.tensor(ids, dtype=torch.int64, device=device),
        words=torch.tensor([m.word for m in spec.markers], dtype=torch.int32, device=device),
        train_role=torch.tensor(trains, dtype=torch.bool, device=device),
        ignore_ids=torch.tensor(spec.ignore_token_ids, dtype=torch.int64, device=device),
        initial_role=spec.initial_code,
        wide_ids=max(max(m.ids) for m in spec.markers) >= 2**31,
    )


def tables(spec: MaskSpec, device: torch.device | str) -> Tables:
    """The kernels' :class:`Tables` for `spec` on `device`, built once and cached."""
    return spec.cached("triton", _build_tables, device)


def mask_labels_triton(
    batch: Batch, spec: MaskSpec, ignore_index: int, with_stats: bool, *, block: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """(labels `[B, T]`, stats or None), as :func:`gpumask.torch_backend.mask_labels_torch`.

    Arguments and results are those of :func:`gpumask.torch_backend.mask_labels_torch`;
    `block` (a power of two, default: chosen from the shape) sets the window of one program,
    so tests can force chunk boundaries everywhere.

    Example::

        >>> from gpumask import MaskSpec
        >>> device = "cuda" if torch.cuda.is_available() else "cpu"
        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> batch = Batch(torch.tensor([[1, 11, 6, 2, 1, 11, 7, 2]], device=device))
        >>> mask_labels_triton(batch, spec, -100, False)[0].tolist()
        [[-100, -100, 6, 2, -100, -100, 7, 2]]
    """
    input_ids, real, seq_start, uniforms = (
        batch.input_ids, batch.real, batch.seq_start, batch.uniforms
    )  # fmt: skip
    if not input_ids.is_cuda and not INTERPRETED:
        raise ValueError(
            f"input_ids: on {input_ids.device}; the Triton backend runs on CUDA tensors (or in "
            "Triton's interpreter, with TRITON_INTERPRET=1 set before triton is imported); "
            "use backend='torch' on this device"
        )
    size, length = input_ids.shape
    ignoring = bool(spec.ignore_token_ids) and spec.ignore_token_prob > 0.0
    device = input_ids.device
    c = tables(spec, device)
    if (
        size == 0
        or len(spec.masked_spans) > MAX_SPAN_KINDS
        or c.wide_ids
        or (ignoring and uniforms is not None and uniforms.dtype != torch.float32)
    ):
        return mask_labels_torch(batch, spec, ignore_index, with_stats)
    ids = input_ids.contiguous()
    real = None if real is None else real.contiguous()
    seq_start = None if seq_start is None else seq_start.contiguous()
    uniforms = uniforms.contiguous() if ignoring and uniforms is not None else None
    BLOCK, halo, chunk_len, n_chunks = _layout(size, length, spec.max_marker_len, device, block)
    n_markers = len(spec.markers)
    n_states = 0 if len(spec.masked_spans) == 0 else _pow2(len(spec.masked_spans) + 1)
    common = dict(
        M=n_markers, K=spec.max_marker_len, R=len(spec.roles),
        NSTATES=n_states, BLOCK=BLOCK, HAS_REAL=real is not None,
        HAS_START=seq_start is not None, num_warps=min(8, max(1, BLOCK // 256)),
    )  # fmt: skip
    markers = (c.ids, c.words, c.train_role, c.initial_role)
    dummy = ids
    real_arg = dummy if real is None else real
    start_arg = dummy if seq_start is None else seq_start

    carry = dummy
    if n_chunks > 1:
        summary = torch.empty(size, n_chunks, 4, dtype=torch.int64, device=device)
        carry = torch.empty(size, 4, n_chunks + 1, dtype=torch.int64, device=device)
        _summarize_kernel[(size * n_chunks,)](
            ids, real_arg, start_arg, summary, length, halo, chunk_len, n_chunks,
            *markers, **common,
        )  # fmt: skip
        _carry_kernel[(size,)](
            summary, carry, n_chunks, c.initial_role,
            NSTATES=n_states, BLOCK_C=_pow2(n_chunks + 1), num_warps=4,
        )  # fmt: skip

    labels = torch.empty_like(ids)
    trained = roles = dropped = calls = kept = dummy
    tool = TOOL_CALL_TURNS.index(spec.tool_call_turns)  # 0 "train", 1 "mask", 2 "only"
    if with_stats:
        trained = torch.zeros(size, dtype=torch.int64, device=device)
        roles = torch.zeros(size, len(spec.roles) + 1, dtype=torch.int64, device=device)
        dropped = torch.zeros(size, dtype=torch.int64, device=device)
    if tool:
        calls = torch.zeros(size, length + 2, dtype=torch.int32, device=device)

    def label_pass(kept: torch.Tensor, calls_pass: bool) -> None:
        _label_kernel[(size * n_chunks,)](
            ids, real_arg, start_arg, dummy if uniforms is None else uniforms, labels, carry,
            trained, roles, calls, kept, dropped, length, halo, chunk_len, n_chunks, *markers,
            c.ignore_ids if ignoring else dummy, spec.ignore_token_prob, ignore_index,
            RP=_pow2(len(spec.roles) + 1), N_IGNORE=c.ignore_ids.numel() if ignoring else 0,
            HAS_UNIFORMS=uniforms is not None, CARRY=n_chunks > 1,
            TRAIN_EOT=spec.train_on_end_of_turn, LAST_TURN=spec.last_turn_only,
            WITH_STATS=with_stats, TOOL=tool, CALLS_PASS=calls_pass, **common,
        )  # fmt: skip

    if tool:
        label_pass(kept, calls_pass=True)
        if spec.last_turn_only:  # kept turns up to each turn (turn 0: before any turn)
            kept_turns = ((calls != 0) == (tool == 2)).to(torch.int32)
            kept_turns[:, 0] = 0
            kept = torch.cumsum(kept_turns, 1, dtype=torch.int32)
    label_pass(kept, calls_pass=False)
    if not with_stats:
        return labels, None
    return labels, {"trained": trained, "role_tokens": roles, "dropped_turns": dropped}
