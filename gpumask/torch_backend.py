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

Positions are int32 (rows up to 2**20 tokens; int64 beyond), which halves the memory traffic
of the scans.

Paths. :func:`mask_labels_torch` picks one: :func:`mask_every_token` for GPU tensors and
under `torch.compile`; for eager calls on CPU tensors, where data-dependent shapes cost
nothing, :func:`mask_on_marker_runs`, which runs these steps on the marker tokens and one token
per run of other tokens only and spreads the result back. On the CPU, large batches are masked
in blocks of whole rows (about `CPU_BLOCK_TOKENS` each), so that every intermediate stays in
reused memory instead of fresh pages. All paths give the same labels.

Tables. :func:`tables` builds what the matching reads from `spec.markers`, once per spec and
device (cached on the spec).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from gpumask.padding import Batch
from gpumask.spec import (
    ARG_SHIFT,
    END_OF_TURN,
    HEADER,
    KIND_MASK,
    LENGTH_MASK,
    SPAN_CLOSE,
    SPAN_OPEN,
    TOOL_CALL,
    Marker,
    MaskSpec,
    tag,
)

# Largest window table (entries) the matching uses; beyond it, per-offset bitmask tables.
MAX_WINDOW_TABLE = 1 << 16
# On the CPU, large batches are masked in blocks of whole rows of about this many tokens.
CPU_BLOCK_TOKENS = 1 << 20
# The covering occurrence's length and kind + 1: the word's bits below its arg.
COVER_BITS = ARG_SHIFT

# (labels, stats): stats as `mask_labels(..., return_stats=True)` gives them, or None.
Result = tuple[torch.Tensor, dict[str, torch.Tensor] | None]


@dataclasses.dataclass(frozen=True)
class Tables:
    """What the torch backend reads, for one spec on one device (built by :func:`tables`).

    Markers are sorted longest first, so bit `m` of a match word is marker `m` and the lowest
    set bit of a word is the longest marker that matches there. A marker's word is
    :attr:`gpumask.spec.Marker.word` (length, kind + 1, arg).

    - `match_words` `[K, V + 1]` (int32 when the markers fit in 31 bits, else int64): bit m
      of `match_words[k, v]` is set when marker m accepts token v at offset k (its k-th id
      is v, or it is shorter than k + 1). Column V stands for every id that no marker uses,
      and for padding.
    - `key_words` `[67]` int32, indexed by `key = lowest set bit % 67` (2**m % 67 is
      distinct for every m < 64): the word of marker m, 0 for keys that name no marker
      (key 0: nothing matches).
    - `token_class` `[V + 1]` int32: 1 + the rank of each id among the ids markers use, 0 for
      the others; `window_words` `[n_classes ** K]` int32 (None when larger than
      `MAX_WINDOW_TABLE`): the word of the longest marker that starts a window of K token
      classes, indexed by `sum(class[p + k] * n_classes ** (K - 1 - k))`.
    - `marker_token` `[V + 2]` bool, shifted by one: `marker_token[v + 1]` is whether some
      marker uses id v (index 0 stands for negative ids, V + 1 for ids >= V), so ids need
      one clamp and no fix-up before an `index_select`.
    - `can_overlap`: whether two occurrences can overlap at all (a marker starting inside
      another's span); when not, every match is kept.
    - `ignore_ids` `[I]`: the ids of `ignore_token_ids`; the other fields are the spec's
      options as the steps read them (`initial_role` is a role code).
    """

    match_words: torch.Tensor
    key_words: torch.Tensor
    token_class: torch.Tensor
    n_classes: int
    window_words: torch.Tensor | None
    marker_token: torch.Tensor
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
                overlap = min(len(a.ids) - offset, len(b.ids))
                if a.ids[offset : offset + overlap] == b.ids[:overlap]:
                    return True
    return False


def _build_tables(spec: MaskSpec, device: torch.device) -> Tables:
    markers = spec.markers
    max_len = spec.max_marker_len
    vocab = max(max(m.ids) for m in markers) + 1
    match_words = torch.zeros(max_len, vocab + 1, dtype=torch.int64)
    for bit, marker in enumerate(markers):
        for k in range(max_len):
            if k < len(marker.ids):
                match_words[k, marker.ids[k]] |= 1 << bit
            else:
                match_words[k, :] |= 1 << bit
    if len(markers) <= 31:
        match_words = match_words.to(torch.int32)
    key_words = torch.zeros(67, dtype=torch.int32)
    for bit, marker in enumerate(markers):
        key_words[(1 << bit) % 67] = marker.word
    marker_tokens = sorted({i for m in markers for i in m.ids})
    token_class = torch.zeros(vocab + 1, dtype=torch.int32)
    token_class[marker_tokens] = torch.arange(1, len(marker_tokens) + 1, dtype=torch.int32)
    n_classes = len(marker_tokens) + 1
    window_words = None
    if n_classes**max_len <= MAX_WINDOW_TABLE:
        window_words = torch.zeros([n_classes] * max_len, dtype=torch.int32)
        for marker in reversed(markers):  # shortest first: the longest match is written last
            window_words[tuple(marker_tokens.index(i) + 1 for i in marker.ids)] = marker.word
        window_words = window_words.flatten().to(device)
    no = torch.zeros(1, dtype=torch.bool)
    return Tables(
        match_words=match_words.to(device),
        key_words=key_words.to(device),
        token_class=token_class.to(device),
        n_classes=n_classes,
        window_words=window_words,
        marker_token=torch.cat([no, token_class[:vocab] != 0, no]).to(device),
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


def _shift_right(x: torch.Tensor, fill: int) -> torch.Tensor:
    """x[:, t - 1] at t, `fill` at t = 0."""
    return F.pad(x[:, :-1], (1, 0), value=fill)


def _last_code(event: torch.Tensor, scaled_positions: torch.Tensor, code, bits: int):
    """The code of the last event at or before t (low `bits` bits; all ones before any).

    `scaled_positions` is `position << bits`, plus the code already when `code` is None."""
    packed = torch.where(event, scaled_positions if code is None else scaled_positions + code, -1)
    return torch.cummax(packed, dim=1).values & ((1 << bits) - 1)


def _span_automaton(
    seq_start, header_start, eot_end, open_start, open_arg, close_end, close_arg, n_spans
) -> torch.Tensor:
    """State (0 none, k + 1 span k open) after each token, for several span kinds.

    Each token maps the state before it to the state after it; the maps are composed with a
    Hillis-Steele scan (log2(T) steps of a gather over the n_spans + 1 states).
    """
    batch, length = header_start.shape
    states = torch.arange(n_spans + 1, device=header_start.device)
    f = states.expand(batch, length, n_spans + 1)
    f = torch.where((seq_start | eot_end)[..., None], 0, f)
    close_arg = close_arg.long()[..., None]
    f = torch.where((close_end & ~seq_start)[..., None] & (f == close_arg + 1), 0, f)
    f = torch.where(header_start[..., None], 0, f)
    f = torch.where(open_start[..., None] & (f == 0), open_arg.long()[..., None] + 1, f)
    step = 1
    while step < length:
        earlier = F.pad(f[:, :-step], (0, 0, step, 0))
        earlier[:, :step] = states
        f = torch.gather(f, 2, earlier)
        step *= 2
    return f[..., 0]


def _match_by_window(ids: torch.Tensor, c: Tables, starts) -> torch.Tensor:
    """Word of the longest marker at each start: the K token classes from p on, read as one
    number in base `n_classes`, index `window_words`. `starts` (None: only t = 0) marks
    where packed sequences start: read from an earlier window, the class there is 0 ("no
    marker uses it"), so no match runs across, as none runs past the end (padded with 0)."""
    classes = torch.take(c.token_class, ids)
    code = classes
    if c.max_len > 1:
        length = ids.shape[1]
        later = classes if starts is None else classes.masked_fill(starts, 0)
        padded = F.pad(later, (0, c.max_len - 1), value=0)
        for k in range(1, c.max_len):
            code = code * c.n_classes + padded[:, k : k + length]
    return torch.take(c.window_words, code.long())


def _match_by_bits(ids: torch.Tensor, c: Tables, starts) -> torch.Tensor:
    """Word of the longest marker at each start, for specs whose window table would be too
    large: AND the per-offset bitmasks, isolate the lowest bit (the longest marker). Ids at
    packed sequence starts (`starts`) and past the end read as `vocab` from an earlier
    window: only markers shorter than the offset accept it."""
    hits = torch.take(c.match_words[0], ids)
    if c.max_len > 1:
        length = ids.shape[1]
        vocab = c.match_words.shape[1] - 1
        later = ids if starts is None else ids.masked_fill(starts, vocab)
        padded = F.pad(later, (0, c.max_len - 1), value=vocab)
        for k in range(1, c.max_len):
            hits &= torch.take(c.match_words[k], padded[:, k : k + length])
    return torch.take(c.key_words, ((hits & -hits) % 67).long())


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
    if batch.input_ids.device.type != "cpu":
        return mask_every_token(batch, spec, ignore_index, with_stats)
    path = mask_every_token if torch.compiler.is_compiling() else mask_on_marker_runs
    return in_row_blocks(path, batch, spec, ignore_index, with_stats)


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


def mask_every_token(batch: Batch, spec: MaskSpec, ignore_index: int, with_stats: bool) -> Result:
    """The rules on every token: static shapes, no host sync (GPU, `torch.compile`)."""
    input_ids, real = batch.input_ids, batch.real
    c = tables(spec, input_ids.device)
    size = input_ids.shape[0]
    vocab = c.match_words.shape[1] - 1
    ids = input_ids.long().clamp(-1, vocab)  # -1 is column `vocab` too: no marker uses it
    if real is not None:
        ids = ids.masked_fill(~real, vocab)
    trained, role, dropped = _trained_and_role(ids, c, batch.seq_start)
    if real is not None:
        trained &= real
    stats = None
    if with_stats:
        counted = torch.ones_like(role, dtype=torch.int64) if real is None else real.long()
        role_tokens = torch.zeros(size, c.n_roles + 1, dtype=torch.int64, device=role.device)
        role_tokens.scatter_add_(1, role.long(), counted)
        stats = {"role_tokens": role_tokens, "dropped_turns": _count(dropped, size, ids.device)}
    return _labels(batch, c, trained, ignore_index, stats)


def mask_on_marker_runs(
    batch: Batch, spec: MaskSpec, ignore_index: int, with_stats: bool
) -> Result:
    """The rules on the marker tokens and one token per run of others (:func:`_on_marker_runs`):
    fewer tokens, but data-dependent shapes, so for eager calls on the CPU."""
    c = tables(spec, batch.input_ids.device)
    trained, stats = _on_marker_runs(batch.input_ids, c, batch.real, batch.seq_start, with_stats)
    return _labels(batch, c, trained, ignore_index, stats)


def _labels(batch: Batch, c: Tables, trained, ignore_index, stats) -> Result:
    """Rule 7 (ignored ids), then the labels; `stats["trained"]` (when counted before rule 7)
    is recounted when rule 7 drops anything."""
    input_ids, uniforms = batch.input_ids, batch.uniforms
    if c.ignore_ids.numel() and c.ignore_token_prob > 0.0:
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
        stats["trained"] = trained.sum(dim=1)
    return labels, {key: stats[key] for key in ("trained", "role_tokens", "dropped_turns")}


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """(trained, and with `with_stats` the stats: trained and role counts, dropped turns),
    by :func:`_trained_and_role` on a shorter sequence: the marker tokens (real tokens whose
    id some marker uses) and, of each run of other tokens, its first token only, which
    stands for the run.

    Nothing happens inside such a plain run: no marker starts, covers or ends there, so every
    token of it gets the state of its first token (runs are cut where padding starts or ends,
    so a run is all real or all padding). Marker tokens keep their order and adjacency (a gap
    always follows a plain token), so matching, overlaps and coverage read the same on the
    kept tokens, taken as packed sequences (one per row, or per packed sequence). The result
    is spread back over the runs with one gather, and the counts are summed over the runs.
    With markers `[1, 11]` and `[2]`, the row `1 11 5 6 7 2 8 9` is computed on
    `1 11 5 2 8`: `5` stands for `5 6 7`, `8` for `8 9`.

    About 8 passes over the `[B, T]` batch instead of some 40; the kept tokens are data
    dependent, so this is for eager calls on the CPU.
    """
    batch, length = input_ids.shape
    vocab = c.marker_token.shape[0] - 2
    flat = input_ids.reshape(-1)
    marker = c.marker_token.index_select(0, (flat + 1).clamp_(0, vocab + 1)).view(batch, length)
    after = marker[:, :-1]  # a run starts after a marker token, at t = 0, ...
    if real is not None:  # ... where padding starts or ends (a run is all real or all padding)
        after = after | (real[:, 1:] ^ real[:, :-1])
        marker &= real
    keep = marker | F.pad(after, (1, 0), value=True)
    if seq_start is not None:  # ... and at packed sequence starts
        keep |= seq_start
    keep = keep.view(-1)
    kept = keep.nonzero().squeeze(1)
    ids = torch.where(marker.view(-1)[kept], flat[kept].long(), vocab)
    starts = kept % length == 0
    if seq_start is not None:
        starts |= seq_start.reshape(-1)[kept]
    trained, role, dropped = _trained_and_role(ids[None], c, starts[None])
    trained, role = trained[0], role[0]
    if real is not None:
        trained &= real.reshape(-1)[kept]
    # run[t]: 1 + the index of the kept token that stands for t; index 0 is never read.
    run = torch.cumsum(keep, 0, dtype=torch.int32 if keep.numel() < 2**31 else torch.int64)
    trained_all = F.pad(trained, (1, 0)).index_select(0, run).view(batch, length)
    if not with_stats:
        return trained_all, None
    counts = F.pad(kept[1:], (0, 1), value=flat.numel()) - kept  # tokens in each run
    if real is not None:
        counts *= real.reshape(-1)[kept]
    row = kept // length
    trained_counts = torch.zeros(batch, dtype=torch.int64, device=input_ids.device)
    trained_counts.index_put_((row,), counts * trained, accumulate=True)
    role_tokens = torch.zeros(batch, c.n_roles + 1, dtype=torch.int64, device=input_ids.device)
    role_tokens.index_put_((row, role.long()), counts, accumulate=True)
    dropped_turns = torch.zeros(batch, dtype=torch.int64, device=input_ids.device)
    if dropped is not None:
        dropped_turns.index_put_((row,), dropped[0].long(), accumulate=True)
    stats = {"trained": trained_counts, "role_tokens": role_tokens, "dropped_turns": dropped_turns}
    return trained_all, stats


def _trained_and_role(ids: torch.Tensor, c: Tables, seq_start: torch.Tensor | None):
    """(trained, role, dropped): whether each token trains by rules 1-6 (real tokens and rule
    7 are left to the caller), the role code of each token (`n_roles` for none), and the
    starts of the turns rule 5 drops (None when `tool_call_turns` is "train").

    Rule 5 is a per-turn reduction: turns are numbered by a cumulative sum of their starts,
    the calls of each turn are added up by its number (a scatter into `[B, T + 1]`), and
    every token reads its turn's count back (a gather).

    `ids` are clamped to [-1, vocab], with `vocab` at tokens that are not real.
    """
    batch, length = ids.shape
    device = ids.device
    index_type = torch.int32 if length < 2 ** (31 - COVER_BITS) else torch.int64
    positions = torch.arange(length, dtype=index_type, device=device)
    role_bits = max(c.n_roles.bit_length(), 1)
    train_bits = c.train_role_bits

    # 1. Matching: the word (length, kind, arg) of the longest marker matching at each start.
    match = _match_by_window if c.window_words is not None else _match_by_bits
    word = match(ids, c, seq_start)
    packed = seq_start is not None
    if packed:
        seq_start = seq_start | (positions == 0)
    else:
        seq_start = (positions == 0).expand(batch, length)
    word = word.to(index_type)

    # 2. Overlaps: keep a start at or past every earlier match's end.
    kept = word != 0
    if c.can_overlap:
        reach = _shift_right(torch.cummax(positions + (word & LENGTH_MASK), dim=1).values, 0)
        kept &= positions >= reach
        word = torch.where(kept, word, 0)
    kind = word & KIND_MASK  # tag(kind); 0 where no occurrence is kept
    arg = word >> ARG_SHIFT

    # 3. Coverage: the kept occurrence covering t (its start, length and kind, packed into
    # one cummax), and the kind of the one that ended at t - 1.
    cover = torch.cummax(
        torch.where(kept, (positions << COVER_BITS) + (word & (1 << COVER_BITS) - 1), 0), dim=1
    ).values
    cover_tag = cover & KIND_MASK
    cover_end = (cover >> COVER_BITS) + (cover & LENGTH_MASK)  # first position after it
    covered = positions < cover_end
    end_tag = _shift_right(torch.where(cover_end == positions + 1, cover_tag, 0), 0)

    header_start = kind == tag(HEADER)
    eot_end = end_tag == tag(END_OF_TURN)
    scaled = positions << role_bits
    if packed:
        no_header_code = torch.where(seq_start, scaled + c.initial_role, scaled + c.n_roles)
    else:  # one sequence per row: the initial role at t = 0 only, a 1-D row of codes
        first = torch.where(positions == 0, c.initial_role, c.n_roles).to(index_type)
        no_header_code = scaled + first
    role_code = torch.where(header_start, scaled + arg, no_header_code)
    role = _last_code(seq_start | header_start | eot_end, role_code, None, role_bits)
    if c.n_roles > 30:  # shift the python int `train_bits` in 64 bits
        role, arg = role.long(), arg.long()

    if train_bits & (train_bits - 1) == 0:  # one trained role
        trained = role == train_bits.bit_length() - 1
    else:
        trained = ((train_bits >> role) & 1).bool()
    trained &= ~(covered & (cover_tag == tag(HEADER)))
    calls = None  # rule 5: tool-call starts inside a trained turn, outside every span
    if c.tool_call_turns != "train":
        calls = trained & (kind == tag(TOOL_CALL))
    if c.n_spans:
        open_start = kind == tag(SPAN_OPEN)
        close_end = end_tag == tag(SPAN_CLOSE)
        if c.n_spans == 1:
            span_event = seq_start | header_start | eot_end | open_start | close_end
            in_span = _last_code(span_event, positions << 1, open_start.to(index_type), 1) == 1
        else:
            close_start = kind == tag(SPAN_CLOSE)
            last_close_arg = _last_code(close_start, positions << 6, arg, 6)
            close_arg = _shift_right(last_close_arg, 0)
            state = _span_automaton(
                seq_start, header_start, eot_end, open_start, arg, close_end, close_arg, c.n_spans
            )
            in_span = state != 0
        trained &= ~in_span
        if calls is not None:
            calls &= ~in_span
    if not c.train_on_end_of_turn:
        trained &= ~(covered & (cover_tag == tag(END_OF_TURN)))
    dropped = None
    if calls is not None or c.last_turn_only:
        turn_start = header_start & ((train_bits >> arg) & 1).bool()
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
