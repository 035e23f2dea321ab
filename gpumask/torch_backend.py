"""The torch backend: the rules of :mod:`gpumask.reference` as batched tensor ops.

Every step is a whole-batch op of shape `[B, T]`, so it runs wherever the tensors are, with
static shapes and no host-device synchronisation:

1. Matching, with no `[B, T, M]` tensor: each token id maps to a small class (0 for ids no
   marker uses); the classes of the K tokens from p on (K = longest marker), read as one
   number, index `window_words`, which holds the word (length, kind, arg) of the longest
   marker starting there. When that table would be too large, per-offset bitmask tables are
   AND-ed instead and the lowest set bit (markers are sorted longest first) names the marker.
2. Overlaps: a start is kept when it lies at or past the running maximum (`cummax`) of the
   ends of every earlier match; skipped when the markers cannot overlap at all.
3. State: "the last event at or before t", for the covering occurrence, the role and the
   span, is one `cummax` each over `position * 2**bits + code`: the maximum is the last
   event, and its low bits carry its code, so no gather is needed. With two or more span
   kinds the span state is a small automaton, composed by a log-depth scan.

Memory. Positions are int32 (rows up to 2**25 tokens; int64 beyond), codes and flags uint8
and bool, and each intermediate is freed once read, so the every-token path peaks at about
31 bytes a token (a `cummax` allocates int64 indices it does not need): under 8x the ids'
size with int32 ids, under 4x with int64 (`benchmarks/memory.py`).

Paths. :func:`mask_labels_torch` picks one: :func:`mask_every_token` for GPU tensors and
under `torch.compile`; for eager calls on CPU tensors, where data-dependent shapes cost
nothing, :func:`mask_on_marker_runs`, which runs these steps on the marker tokens and one token
per run of other tokens only and spreads the result back. Eager CPU calls mask large batches
in blocks of whole rows (about `CPU_BLOCK_TOKENS` each), so that every intermediate stays in
reused memory instead of fresh pages; compiled calls do not (the block count would be a guard
on the batch size). The collators call :func:`mask_packed_rows`, the same path on their rows
packed end to end, so that no padding is read, with stats per row; when every token is real
(no attention mask with zeros) it finds the kept tokens from the positions of the marker
tokens, so that a batch costs two passes over its tokens beside the labels (the marker-id
lookup and the spreading back). All paths give the same labels.

Tables. :func:`tables` builds what the matching reads from `spec.markers`, once per spec and
device (cached on the spec).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from gpumask.padding import Batch, sequence_starts
from gpumask.spec import (
    ARG_SHIFT,
    END_OF_TURN,
    HEADER,
    KIND_MASK,
    KIND_SHIFT,
    LENGTH_MASK,
    SPAN_CLOSE,
    SPAN_OPEN,
    TOOL_CALL,
    Marker,
    MaskSpec,
)

# Largest window table (entries) the matching uses; beyond it, per-offset bitmask tables.
MAX_WINDOW_TABLE = 1 << 16
# Marker ids below this map to their class through a table over the ids (at most 4 MiB);
# larger ones through a binary search of the marker ids.
DIRECT_CLASS_IDS = 1 << 20
# On the CPU, large batches are masked in blocks of whole rows of about this many tokens.
CPU_BLOCK_TOKENS = 1 << 20
# Positions are int32 while `position << 6` fits (a role code or span index, < 2**6, packs
# beside a position), i.e. rows of up to 2**25 tokens; int64 beyond.
INT32_POSITIONS = 1 << 25

# (labels, stats): stats as `mask_labels(..., return_stats=True)` gives them, or None.
Result = tuple[torch.Tensor, dict[str, torch.Tensor] | None]


@dataclasses.dataclass(frozen=True)
class PackedLabels:
    """What :func:`mask_packed_rows` gives for rows packed end to end (`[N]` tokens): `labels`
    `[N]`, `stats` per row, `trained` (bool `[N]`: the tokens that train) and `run_starts`,
    the sorted positions where runs of trained tokens start (a row's first token, when it
    trains, starts one), or None where rule 7 dropped tokens after the runs were found.
    Tensors; numpy arrays after :meth:`numpy`."""

    labels: torch.Tensor
    stats: dict[str, torch.Tensor]
    trained: torch.Tensor
    run_starts: torch.Tensor | None

    def numpy(self) -> PackedLabels:
        """The same, as numpy arrays (no copy)."""
        return PackedLabels(
            self.labels.numpy(),
            {key: value.numpy() for key, value in self.stats.items()},
            self.trained.numpy(),
            None if self.run_starts is None else self.run_starts.numpy(),
        )


@dataclasses.dataclass(frozen=True)
class Tables:
    """What the torch backend reads, for one spec on one device (built by :func:`tables`).

    Markers are sorted longest first, so bit `m` of a match word is marker `m` and the lowest
    set bit of a word is the longest marker that matches there. A marker's word is
    :attr:`gpumask.spec.Marker.word` (length, kind + 1, arg).

    Every token id maps to a small *class* first (:func:`token_classes`): 1 + its rank among
    the U distinct ids that markers use, 0 for every other id and for padding. Every other
    table is indexed by class, so memory depends on the markers, not on their ids or on the
    vocabulary.

    - `token_class` `[V + 2]` int32, shifted by one: `token_class[v + 1]` is the class of id
      v (index 0 stands for negative ids, V + 1 for ids >= V, V = 1 + the largest marker
      id), so ids need one clamp before an `index_select`. None when the largest marker id
      is `DIRECT_CLASS_IDS` or more; then `marker_ids` `[U]` (sorted, int64) is searched.
    - `marker_id` `[V + 2]` bool, `token_class != 0`: whether id v is a marker id, read by the
      collators' packed path; None with `token_class`.
    - `match_words` `[K, U + 1]` (int32 when the markers fit in 31 bits, else int64): bit m
      of `match_words[k, c]` is set when marker m accepts a token of class c at offset k
      (its k-th id has class c, or it is shorter than k + 1).
    - `key_words` `[67]` int32, indexed by `key = lowest set bit % 67` (2**m % 67 is
      distinct for every m < 64): the word of marker m, 0 for keys that name no marker
      (key 0: nothing matches).
    - `window_words` `[n_classes ** K]` int32 (None when larger than `MAX_WINDOW_TABLE`): the
      word of the longest marker that starts a window of K token classes, indexed by
      `sum(class[p + k] * n_classes ** (K - 1 - k))`.
    - `can_overlap`: whether two occurrences can overlap at all (a marker starting inside
      another's span); when not, every match is kept.
    - `ignore_ids` `[I]`: the ids of `ignore_token_ids`; the other fields are the spec's
      options as the steps read them (`initial_role` is a role code).
    """

    token_class: torch.Tensor | None
    marker_id: torch.Tensor | None
    marker_ids: torch.Tensor
    match_words: torch.Tensor
    key_words: torch.Tensor
    n_classes: int
    window_words: torch.Tensor | None
    can_overlap: bool
    ignore_ids: torch.Tensor
    max_len: int
    n_roles: int
    n_spans: int
    initial_role: int
    train_role_bits: int
    train_on_end_of_turn: bool
    last_turn_only: bool
    tool_call_turns: str
    ignore_token_prob: float


def _can_overlap(markers: tuple[Marker, ...]) -> bool:
    """Whether some marker can start strictly inside an occurrence of another (or itself)."""
    for a in markers:
        for b in markers:
            for offset in range(1, len(a.ids)):
                if a.ids[offset] != b.ids[0]:
                    continue
                overlap = min(len(a.ids) - offset, len(b.ids))
                if a.ids[offset : offset + overlap] == b.ids[:overlap]:
                    return True
    return False


def _match_words(markers: tuple[Marker, ...], rank: dict[int, int], max_len: int) -> torch.Tensor:
    """`match_words` `[K, U + 1]`: per offset, the markers that accept each token class."""
    short = [sum(1 << m for m, marker in enumerate(markers) if len(marker.ids) <= k)
             for k in range(max_len)]  # fmt: skip
    words = torch.tensor(short, dtype=torch.int64)[:, None].repeat(1, len(rank) + 1)
    accepts: dict[tuple[int, int], int] = {}
    for bit, marker in enumerate(markers):
        for k, i in enumerate(marker.ids):
            accepts[k, rank[i]] = accepts.get((k, rank[i]), 0) | 1 << bit
    if accepts:
        at = torch.tensor(list(accepts), dtype=torch.int64)
        words[at[:, 0], at[:, 1]] |= torch.tensor(list(accepts.values()), dtype=torch.int64)
    return words.to(torch.int32) if len(markers) <= 31 else words


def _build_tables(spec: MaskSpec, device: torch.device) -> Tables:
    markers = spec.markers
    max_len = spec.max_marker_len
    marker_tokens = sorted({i for m in markers for i in m.ids})
    rank = {i: r + 1 for r, i in enumerate(marker_tokens)}  # the class of each marker id
    n_classes = len(marker_tokens) + 1
    key_words = torch.zeros(67, dtype=torch.int32)
    for bit, marker in enumerate(markers):
        key_words[(1 << bit) % 67] = marker.word
    token_class = None
    if marker_tokens[-1] < DIRECT_CLASS_IDS:
        token_class = torch.zeros(marker_tokens[-1] + 3, dtype=torch.int32)
        token_class[torch.tensor(marker_tokens) + 1] = torch.arange(1, n_classes, dtype=torch.int32)
        token_class = token_class.to(device)
    window_words = None
    if n_classes**max_len <= MAX_WINDOW_TABLE:
        window_words = torch.zeros([n_classes] * max_len, dtype=torch.int32)
        for marker in reversed(markers):  # shortest first: the longest match is written last
            window_words[tuple(rank[i] for i in marker.ids)] = marker.word
        window_words = window_words.flatten().to(device)
    return Tables(
        token_class=token_class,
        marker_id=None if token_class is None else token_class != 0,
        marker_ids=torch.tensor(marker_tokens, dtype=torch.int64).to(device),
        match_words=_match_words(markers, rank, max_len).to(device),
        key_words=key_words.to(device),
        n_classes=n_classes,
        window_words=window_words,
        can_overlap=_can_overlap(markers),
        ignore_ids=torch.tensor(spec.ignore_token_ids, dtype=torch.int64).to(device),
        max_len=max_len,
        n_roles=len(spec.roles),
        n_spans=len(spec.masked_spans),
        initial_role=spec.initial_code,
        train_role_bits=spec.train_role_bits,
        train_on_end_of_turn=spec.train_on_end_of_turn,
        last_turn_only=spec.last_turn_only,
        tool_call_turns=spec.tool_call_turns,
        ignore_token_prob=spec.ignore_token_prob,
    )


def tables(spec: MaskSpec, device: torch.device | str = "cpu") -> Tables:
    """The torch backend's :class:`Tables` for `spec` on `device`, built once and cached.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> tables(spec).max_len, tables(spec) is tables(spec, torch.device("cpu"))
        (2, True)
    """
    return spec.cached("torch", _build_tables, device)


def token_classes(ids: torch.Tensor, c: Tables) -> torch.Tensor:
    """The class of each id (int32, same shape): 1 + its rank among the marker ids, 0 for ids
    no marker uses.

    Example::

        >>> c = tables(MaskSpec(roles={"assistant": [2**40, 7]}))
        >>> token_classes(torch.tensor([[7, 2**40, 8, -1]]), c).tolist()
        [[1, 2, 0, 0]]
    """
    if c.token_class is not None:
        top = c.token_class.shape[0] - 1
        shifted = (ids.reshape(-1) + 1).clamp_(0, top)
        return c.token_class.index_select(0, shifted).view(ids.shape)
    marker_ids = c.marker_ids
    rank = torch.searchsorted(marker_ids, ids.long(), out_int32=True).clamp_(
        max=len(marker_ids) - 1
    )
    found = marker_ids.index_select(0, rank.view(-1)).view(ids.shape) == ids
    return torch.where(found, rank + 1, 0)


def _shift_right(x: torch.Tensor, fill: int) -> torch.Tensor:
    """x[:, t - 1] at t, `fill` at t = 0."""
    return F.pad(x[:, :-1], (1, 0), value=fill)


def _last_code(event: torch.Tensor, positions: torch.Tensor, code, bits: int) -> torch.Tensor:
    """The code (`bits` bits, a tensor or an int) of the last event at or before t, all ones
    before any: one cummax over `position << bits | code` at the events, -1 elsewhere."""
    packed = torch.where(event, (positions << bits) + code, -1)
    del event, code  # freed before the scan when the caller passed them as temporaries
    return torch.cummax(packed, dim=1).values.bitwise_and_((1 << bits) - 1)


def _span_automaton(
    seq_start, header_start, eot_end, open_start, open_arg, close_end, close_arg, n_spans
) -> torch.Tensor:
    """State (0 none, k + 1 span k open) after each token, for several span kinds.

    Each token maps the state before it to the state after it; the maps are composed with a
    Hillis-Steele scan (log2(T) steps of a gather over the n_spans + 1 states). Maps are
    int8 (states < 2**6), widened only for the index of each gather.
    """
    batch, length = header_start.shape
    states = torch.arange(n_spans + 1, dtype=torch.int8, device=header_start.device)
    f = states.expand(batch, length, n_spans + 1)
    f = f.masked_fill((seq_start | eot_end)[..., None], 0)
    close_state = (close_arg + 1).to(torch.int8)[..., None]
    f = f.masked_fill((close_end & ~seq_start)[..., None] & (f == close_state), 0)
    del close_state
    f = f.masked_fill(header_start[..., None], 0)
    f = torch.where(open_start[..., None] & (f == 0), (open_arg + 1).to(torch.int8)[..., None], f)
    # log2(T) steps; under torch.compile enough for any int32 length, so that the step count
    # is no guard on a dynamic T (the steps past log2(T) compose identities).
    steps = 31 if torch.compiler.is_compiling() else max(length - 1, 0).bit_length()
    positions = torch.arange(length, dtype=torch.int32, device=f.device)[:, None]
    for i in range(steps):
        # f at t - 2**i where t >= 2**i (a roll, which wraps the first 2**i positions round:
        # those read `states` below); padding by 2**i instead would allocate up to 2**30
        # positions in the steps past log2(T).
        shifted = torch.roll(f, 1 << i, 1)
        earlier = torch.where(positions < 1 << i, states, shifted)
        del shifted
        f = torch.gather(f, 2, earlier.long())
        del earlier
    return f[..., 0]


def _match_by_window(classes: torch.Tensor, c: Tables, starts) -> torch.Tensor:
    """Word of the longest marker at each start: the K token classes from p on, read as one
    number in base `n_classes`, index `window_words`. `starts` (None: only t = 0) marks
    where packed sequences start: read from an earlier window, the class there is 0 ("no
    marker uses it"), so no match runs across, as none runs past the end (padded with 0)."""
    code = classes
    if c.max_len > 1:
        length = classes.shape[1]
        later = classes if starts is None else classes.masked_fill(starts, 0)
        padded = F.pad(later, (0, c.max_len - 1), value=0)
        for k in range(1, c.max_len):
            code = code * c.n_classes + padded[:, k : k + length]
    return c.window_words.index_select(0, code.reshape(-1)).view(classes.shape)


def _match_by_bits(classes: torch.Tensor, c: Tables, starts) -> torch.Tensor:
    """Word of the longest marker at each start, for specs whose window table would be too
    large: AND the per-offset bitmasks, isolate the lowest bit (the longest marker). Classes
    at packed sequence starts (`starts`) and past the end read as 0 from an earlier window:
    only markers shorter than the offset accept it."""
    shape = classes.shape

    def accepted(k: int, index: torch.Tensor) -> torch.Tensor:
        return c.match_words[k].index_select(0, index.reshape(-1)).view(shape)

    hits = accepted(0, classes)
    if c.max_len > 1:
        length = shape[1]
        later = classes if starts is None else classes.masked_fill(starts, 0)
        padded = F.pad(later, (0, c.max_len - 1), value=0)
        for k in range(1, c.max_len):
            hits &= accepted(k, padded[:, k : k + length])
    return c.key_words.index_select(0, ((hits & -hits) % 67).reshape(-1)).view(shape)


def mask_labels_torch(batch: Batch, spec: MaskSpec, ignore_index: int, with_stats: bool) -> Result:
    """(labels `[B, T]`, stats): with `with_stats`, `{"trained": [B], "role_tokens": [B, R + 1],
    "dropped_turns": [B]}` as :func:`gpumask.mask_labels` documents them, else None.

    Called by :func:`gpumask.mask_labels`, which validates and prepares `batch`. Picks its
    path (see the module docstring); every path takes the same arguments.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> batch = Batch(torch.tensor([[1, 11, 6, 2, 1, 10, 7, 2]]))
        >>> mask_labels_torch(batch, spec, -100, False)[0].tolist()
        [[-100, -100, 6, 2, -100, -100, -100, -100]]
    """
    if batch.input_ids.device.type != "cpu" or torch.compiler.is_compiling():
        return mask_every_token(batch, spec, ignore_index, with_stats)  # no guard on B
    return in_row_blocks(mask_on_marker_runs, batch, spec, ignore_index, with_stats)


def in_row_blocks(path, batch: Batch, spec: MaskSpec, ignore_index: int, with_stats: bool):
    """`path` over blocks of whole rows of about `CPU_BLOCK_TOKENS` tokens, concatenated."""
    size, length = batch.input_ids.shape
    rows = max(1, CPU_BLOCK_TOKENS // length)
    if size <= rows:
        return path(batch, spec, ignore_index, with_stats)
    parts = [
        path(batch.rows(i, i + rows), spec, ignore_index, with_stats) for i in range(0, size, rows)
    ]
    labels = torch.cat([labels for labels, _ in parts])
    if not with_stats:
        return labels, None
    return labels, {key: torch.cat([stats[key] for _, stats in parts]) for key in parts[0][1]}


def mask_packed_rows(
    ids: torch.Tensor,
    offsets: torch.Tensor,
    spec: MaskSpec,
    ignore_index: int,
    real: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
) -> PackedLabels:
    """The labels, stats per row and trained tokens (:class:`PackedLabels`) of rows packed end
    to end in `ids` `[N]` (CPU, eager): row i is `ids[offsets[i]:offsets[i + 1]]` (int64
    offsets, empty rows allowed), `real` (bool `[N]`, None: all) marks its real tokens,
    `uniforms` `[N]` are its draws of rule 7.

    The labels of each row are those of the row masked alone, as in a padded batch, but no
    padding is read: this is the collators' path. Rows are masked in blocks of about
    `CPU_BLOCK_TOKENS` tokens, whole rows each.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> ids = torch.tensor([1, 11, 6, 2, 1, 10, 7, 2, 11, 5])
        >>> result = mask_packed_rows(ids, torch.tensor([0, 4, 4, 10]), spec, -100)
        >>> result.labels.tolist(), result.stats["trained"].tolist(), result.run_starts.tolist()
        ([-100, -100, 6, 2, -100, -100, -100, -100, -100, -100], [2, 0, 0], [2])
    """
    n_rows = offsets.shape[0] - 1
    cuts = [0, n_rows]
    if ids.shape[0] > CPU_BLOCK_TOKENS:  # a new block at a row that ends past the next multiple
        block = offsets[1:] // CPU_BLOCK_TOKENS  # (not before the first token)
        new = (block[1:] != block[:-1]) & (offsets[1:-1] > 0)
        cuts[1:1] = (torch.nonzero(new).squeeze(1) + 1).tolist()
    parts = [
        _mask_packed_block(ids, offsets[a : b + 1], spec, ignore_index, real, uniforms)
        for a, b in zip(cuts, cuts[1:])
    ]
    if len(parts) == 1:
        return parts[0]
    run_starts = None
    if all(part.run_starts is not None for part in parts):
        run_starts = torch.cat([part.run_starts for part in parts])
    return PackedLabels(
        torch.cat([part.labels for part in parts]),
        {key: torch.cat([part.stats[key] for part in parts]) for key in parts[0].stats},
        torch.cat([part.trained for part in parts]),
        run_starts,
    )


def _mask_packed_block(ids, offsets, spec, ignore_index, real, uniforms) -> PackedLabels:
    """:func:`mask_packed_rows` on the rows of `offsets` (a slice of the offsets)."""
    first, last = int(offsets[0]), int(offsets[-1])
    block = ids[first:last]
    local = offsets - first
    c = tables(spec, ids.device)
    if real is None:
        trained, stats, run_starts = _on_packed_runs(block, c, local)
    else:
        seq_start = sequence_starts(last - first, None, local)
        real = real[first:last][None]
        trained, stats, run_starts = _on_marker_runs(block[None], c, real, seq_start, True, local)
    batch = Batch(block[None], uniforms=None if uniforms is None else uniforms[first:last][None])
    labels, stats = _labels(batch, c, trained, ignore_index, stats, local)
    if _drops(c):  # (trained in place: the runs found before the drops may have moved)
        run_starts = None
    return PackedLabels(
        labels[0], stats, trained[0], None if run_starts is None else run_starts + first
    )


def mask_every_token(batch: Batch, spec: MaskSpec, ignore_index: int, with_stats: bool) -> Result:
    """The rules on every token: static shapes, no host sync (GPU, `torch.compile`)."""
    input_ids, real = batch.input_ids, batch.real
    c = tables(spec, input_ids.device)
    size = input_ids.shape[0]
    # Classes, 0 at padding; passed on with no other reference, so they are freed once read.
    trained, role, dropped = _trained_and_role(
        token_classes(input_ids, c)
        if real is None
        else token_classes(input_ids, c).masked_fill_(~real, 0),
        c,
        batch.seq_start,
    )
    if real is not None:
        trained &= real
    stats = None
    if with_stats:
        counted = torch.ones_like(role, dtype=torch.int64) if real is None else real.long()
        role_tokens = torch.zeros(size, c.n_roles + 1, dtype=torch.int64, device=role.device)
        role_tokens.scatter_add_(1, role.long(), counted)
        stats = {"role_tokens": role_tokens, "dropped_turns": _count(dropped, size, role.device)}
    return _labels(batch, c, trained, ignore_index, stats)


def mask_on_marker_runs(
    batch: Batch, spec: MaskSpec, ignore_index: int, with_stats: bool
) -> Result:
    """The rules on the marker tokens and one token per run of others (:func:`_on_marker_runs`):
    fewer tokens, but data-dependent shapes, so for eager calls on the CPU."""
    c = tables(spec, batch.input_ids.device)
    trained, stats, _ = _on_marker_runs(batch.input_ids, c, batch.real, batch.seq_start, with_stats)
    return _labels(batch, c, trained, ignore_index, stats)


def _labels(batch: Batch, c: Tables, trained, ignore_index, stats, offsets=None) -> Result:
    """Rule 7 (ignored ids), then the labels; `stats["trained"]` (when counted before rule 7)
    is recounted when rule 7 drops anything: per row, or per packed row of `offsets`."""
    input_ids, uniforms = batch.input_ids, batch.uniforms
    if _drops(c):
        drop = torch.isin(input_ids, c.ignore_ids.to(input_ids.dtype))
        if uniforms is not None:
            drop &= uniforms < c.ignore_token_prob
        trained &= ~drop
        if stats is not None:
            stats.pop("trained", None)  # counted before the drops
    labels = torch.where(trained, input_ids, ignore_index)
    if stats is None:
        return labels, None
    if "trained" not in stats:
        stats["trained"] = (
            trained.sum(dim=1) if offsets is None else count_in_rows(trained[0], offsets)
        )
    return labels, {key: stats[key] for key in ("trained", "role_tokens", "dropped_turns")}


def _drops(c: Tables) -> bool:
    """Whether rule 7 can drop tokens (`ignore_token_ids` with a probability above 0)."""
    return bool(c.ignore_ids.numel()) and c.ignore_token_prob > 0.0


def count_in_rows(flags: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The count of `flags` (bool `[N]`) in each packed row `offsets[i]:offsets[i + 1]`.

    >>> count_in_rows(torch.tensor([True, False, True, True]), torch.tensor([0, 1, 1, 4]))
    tensor([1, 0, 2])
    """
    total = F.pad(torch.cumsum(flags, 0), (1, 0))
    return total[offsets[1:]] - total[offsets[:-1]]


def _count(flags: torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor:
    """Per-row counts of `flags` (bool `[B, T]`); zeros for None."""
    if flags is None:
        return torch.zeros(rows, dtype=torch.int64, device=device)
    return flags.sum(dim=1)


def _on_marker_runs(
    input_ids: torch.Tensor,
    c: Tables,
    real: torch.Tensor | None,
    seq_start: torch.Tensor | None,
    with_stats: bool,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None, torch.Tensor | None]:
    """(trained, and with `with_stats` the stats: trained and role counts, dropped turns, per
    row, or with `offsets` per packed row `offsets[i]:offsets[i + 1]` of a `[1, N]` batch, and
    the flat positions where runs of trained tokens start, else None twice),
    by :func:`_trained_and_role` on a shorter sequence: the marker tokens (real tokens whose
    id some marker uses) and, of each run of other tokens, its first token only, which
    stands for the run.

    Nothing happens inside such a plain run: no marker starts, covers or ends there, so every
    token of it gets the state of its first token (runs are cut where padding starts or ends,
    so a run is all real or all padding). Marker tokens keep their order and adjacency (a gap
    always follows a plain token), so matching, overlaps and coverage read the same on the
    kept tokens, taken as packed sequences (one per row, or per packed sequence). The result
    is spread back over the runs with one repeat, and the counts are summed over the runs.
    With markers `[1, 11]` and `[2]`, the row `1 11 5 6 7 2 8 9` is computed on
    `1 11 5 2 8`: `5` stands for `5 6 7`, `8` for `8 9`.

    About 8 passes over the `[B, T]` batch instead of some 40; the kept tokens are data
    dependent, so this is for eager calls on the CPU.
    """
    batch, length = input_ids.shape
    flat = input_ids.reshape(-1)
    classes = token_classes(flat, c)
    marker = (classes != 0).view(batch, length)
    after = marker[:, :-1]  # a run starts after a marker token, at t = 0, ...
    if real is not None:  # ... where padding starts or ends (a run is all real or all padding)
        after = after | (real[:, 1:] ^ real[:, :-1])
        marker &= real
    keep = marker | F.pad(after, (1, 0), value=True)
    if seq_start is not None:  # ... and at packed sequence starts
        keep |= seq_start
    keep = keep.view(-1)
    kept = torch.from_numpy(np.flatnonzero(keep.numpy()))  # (numpy's: twice as fast on the CPU)
    kept_classes = torch.where(marker.view(-1)[kept], classes[kept], 0)
    starts = kept % length == 0
    if seq_start is not None:
        starts |= seq_start.reshape(-1)[kept]
    real_kept = None if real is None else real.reshape(-1)[kept]
    if offsets is None:
        row, rows = kept // length, batch
    else:
        row, rows = torch.searchsorted(offsets[1:], kept, right=True), offsets.shape[0] - 1
    n = flat.numel()
    trained, stats, run_starts = _on_kept(kept, kept_classes, starts, real_kept, c, n, with_stats,
                                          row, rows)  # fmt: skip
    return trained.view(batch, length), stats, run_starts


def _on_packed_runs(
    ids: torch.Tensor, c: Tables, offsets: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """:func:`_on_marker_runs` for rows packed end to end (`ids` `[N]`, every token real),
    with stats per row and the starts of trained runs. The kept tokens are the marker tokens,
    the token after each and each row's first token, found from the positions of the marker
    tokens, so that the only passes over the rows are the lookup of marker ids and the
    spreading back (trained `[1, N]`)."""
    n = ids.shape[0]
    flat = ids.numpy()
    direct = c.token_class is not None
    markers = np.flatnonzero(
        _read_table(c.marker_id, flat) if direct else token_classes(ids, c).numpy()
    )
    first = offsets[:-1].numpy()
    at = np.zeros(n + 2, dtype=bool)  # (index n: a marker at the end, or an empty last row)
    at[markers] = True
    at[markers + 1] = True
    at[first] = True
    kept = np.flatnonzero(at[:n])
    starts = np.zeros(kept.shape[0], dtype=bool)
    starts[np.searchsorted(kept, first[first < n])] = True
    row = np.searchsorted(offsets[1:].numpy(), kept, side="right")
    kept = torch.from_numpy(kept)
    if direct:
        classes = torch.from_numpy(_read_table(c.token_class, flat[kept.numpy()]))
    else:
        classes = token_classes(ids[kept], c)
    starts, row = torch.from_numpy(starts), torch.from_numpy(row)
    rows = offsets.shape[0] - 1
    trained, stats, run_starts = _on_kept(kept, classes, starts, None, c, n, True, row, rows)
    return trained[None], stats, run_starts


def _read_table(table: torch.Tensor, ids: np.ndarray) -> np.ndarray:
    """`table[ids + 1]` in numpy, for a table shifted by one as `Tables.token_class` is: index 0
    for negative ids, the last for ids past the table."""
    table = table.numpy()
    if table[1]:  # id 0 is set: shifted, so that negative ids read index 0
        return table.take(ids + 1, mode="clip")
    return table[1:].take(ids, mode="clip")  # negative ids clip to id 0, which is not set


def _on_kept(
    kept: torch.Tensor,
    classes: torch.Tensor,
    starts: torch.Tensor,
    real: torch.Tensor | None,
    c: Tables,
    n: int,
    with_stats: bool,
    row: torch.Tensor,
    rows: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None, torch.Tensor | None]:
    """(trained `[n]`, and with `with_stats` the stats per row and where runs of trained tokens
    start, else None twice) from the kept tokens of :func:`_on_marker_runs`: their
    flat positions `kept` among `n` tokens, their `classes` (0 for the token standing for a
    plain run), whether a sequence `starts` there, whether they are `real` (None: all), and
    the `row` (of `rows`) each lies in."""
    trained, role, dropped = _trained_and_role(classes[None], c, starts[None])
    trained, role = trained[0], role[0]
    if real is not None:
        trained &= real
    counts = F.pad(kept[1:], (0, 1), value=n) - kept  # tokens in each run
    # Each kept token's result repeated over its run (numpy's repeat: several times faster
    # than a cumsum and a gather, or torch's repeat_interleave).
    trained_all = torch.from_numpy(np.repeat(trained.numpy(), counts.numpy()))
    if not with_stats:
        return trained_all, None, None
    # A run of trained tokens starts where a kept token trains and the one before it does not,
    # or lies in another sequence.
    run_starts = kept[trained & ~(F.pad(trained[:-1], (1, 0), value=False) & ~starts)]
    if real is not None:
        counts *= real
    trained_counts = torch.zeros(rows, dtype=torch.int64)
    trained_counts.index_put_((row,), counts * trained, accumulate=True)
    role_tokens = torch.zeros(rows, c.n_roles + 1, dtype=torch.int64)
    role_tokens.index_put_((row, role.long()), counts, accumulate=True)
    dropped_turns = torch.zeros(rows, dtype=torch.int64)
    if dropped is not None:
        dropped_turns.index_put_((row,), dropped[0].long(), accumulate=True)
    stats = {"trained": trained_counts, "role_tokens": role_tokens, "dropped_turns": dropped_turns}
    return trained_all, stats, run_starts


def _trained_and_role(ids: torch.Tensor, c: Tables, seq_start: torch.Tensor | None):
    """(trained, role, dropped): whether each token trains by rules 1-6 (real tokens and rule
    7 are left to the caller), the role code of each token (`n_roles` for none), and the
    starts of the turns rule 5 drops (None when `tool_call_turns` is "train").

    Rule 5 is a per-turn reduction: turns are numbered by a cumulative sum of their starts,
    the calls of each turn are added up by its number (a scatter into `[B, T + 1]`), and
    every token reads its turn's count back (a gather).

    `ids` are token classes (:func:`token_classes`), 0 at tokens that are not real.
    """
    batch, length = ids.shape
    device = ids.device
    index_type = torch.int32 if length < INT32_POSITIONS else torch.int64
    positions = torch.arange(length, dtype=index_type, device=device)
    role_bits = max(c.n_roles.bit_length(), 1)
    train_bits = c.train_role_bits

    # 1. Matching: the word (length, kind, arg) of the longest marker matching at each start.
    match = _match_by_window if c.window_words is not None else _match_by_bits
    word = match(ids, c, seq_start).to(index_type)
    del ids  # the caller's reference is all that is left: memory for the steps below
    packed = seq_start is not None
    if packed:
        seq_start = seq_start | (positions == 0)
    else:
        seq_start = (positions == 0).expand(batch, length)

    # 2. Overlaps: keep a start at or past every earlier match's end.
    kept = word != 0
    if c.can_overlap:
        reach = _shift_right(torch.cummax(positions + (word & LENGTH_MASK), dim=1).values, 0)
        kept &= positions >= reach
        del reach
        word = torch.where(kept, word, 0)
    # From here on intermediates are bool or uint8 where they can be, and freed when read.
    kind = ((word & KIND_MASK) >> KIND_SHIFT).to(torch.uint8)  # kind + 1; 0: no occurrence
    arg = (word >> ARG_SHIFT).to(torch.uint8)  # role or span index (< 2**6)

    # 3. Coverage: the kept occurrence covering t, as its end (the first position after it)
    # and kind packed in one cummax (kept occurrences never overlap, so the last one has the
    # largest end), and the kind of the one that ended at t - 1.
    ends = torch.where(kept, (positions + (word & LENGTH_MASK)) << 3 | kind, 0)
    del word, kept
    cover = torch.cummax(ends, dim=1).values
    del ends
    cover_kind = (cover & 7).to(torch.uint8)
    cover_end = cover >> 3
    del cover
    covered = positions < cover_end
    end_kind = _shift_right(cover_kind.masked_fill(cover_end != positions + 1, 0), 0)
    del cover_end
    in_header = covered & (cover_kind == HEADER + 1)
    in_end_of_turn = None if c.train_on_end_of_turn else covered & (cover_kind == END_OF_TURN + 1)
    del covered, cover_kind

    header_start = kind == HEADER + 1
    eot_end = end_kind == END_OF_TURN + 1
    # The initial role at sequence starts (only t = 0 of a row, unpacked: a 1-D row).
    # Role codes (uint8): a header's role, the initial role at sequence starts, else none.
    code = torch.full_like(header_start, c.n_roles, dtype=torch.uint8)
    code.masked_fill_(seq_start if packed else positions == 0, c.initial_role)
    code = torch.where(header_start, arg, code)
    role = _last_code(seq_start | header_start | eot_end, positions, code, role_bits)
    role = role.to(torch.uint8)
    del code
    # Shifting the python int `train_bits` by a code takes an int tensor that holds it.
    shift_type = torch.int64 if c.n_roles > 30 else torch.int32

    if train_bits & (train_bits - 1) == 0:  # one trained role
        trained = role == train_bits.bit_length() - 1
    else:
        trained = ((train_bits >> role.to(shift_type)) & 1).bool()
    trained &= ~in_header
    del in_header
    calls = None  # rule 5: tool-call starts inside a trained turn, outside every span
    if c.tool_call_turns != "train":
        calls = trained & (kind == TOOL_CALL + 1)
    if c.n_spans:
        open_start = kind == SPAN_OPEN + 1
        close_end = end_kind == SPAN_CLOSE + 1
        if c.n_spans == 1:
            span_event = seq_start | header_start | eot_end | open_start | close_end
            in_span = _last_code(span_event, positions, open_start, 1) == 1
            del span_event
        else:
            close_start = kind == SPAN_CLOSE + 1
            last_close_arg = _last_code(close_start, positions, arg, 6)
            close_arg = _shift_right(last_close_arg, 0)
            state = _span_automaton(
                seq_start, header_start, eot_end, open_start, arg, close_end, close_arg, c.n_spans
            )
            in_span = state != 0
        trained &= ~in_span
        if calls is not None:
            calls &= ~in_span
    if in_end_of_turn is not None:
        trained &= ~in_end_of_turn
    dropped = None
    if calls is not None or c.last_turn_only:
        turn_start = header_start & ((train_bits >> arg.to(shift_type)) & 1).bool()
        if train_bits >> c.initial_role & 1:  # a header at a sequence start starts the turn
            turn_start |= seq_start & ~header_start
    if calls is not None:
        turn = torch.cumsum(turn_start.to(index_type), dim=1).long()
        in_turn = torch.zeros(batch, length + 1, dtype=index_type, device=device)
        in_turn.scatter_add_(1, turn, calls.to(index_type))
        keep = (in_turn.gather(1, turn) > 0) == (c.tool_call_turns == "only")
        trained &= keep
        dropped = turn_start & ~keep
        turn_start = turn_start & keep  # rule 6 counts the kept turns only
    if c.last_turn_only:
        turn = torch.cumsum(turn_start.to(index_type), dim=1)
        if packed:  # the count at the last token of each sequence
            starts_at = torch.where(seq_start, positions, length)
            next_start = torch.flip(torch.cummin(torch.flip(starts_at, [1]), dim=1).values, [1])
            last_turn = turn.gather(1, F.pad(next_start[:, 1:], (0, 1), value=length).long() - 1)
        else:
            last_turn = turn[:, -1:]
        trained &= turn == last_turn
    return trained, role, dropped
