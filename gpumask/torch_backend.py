"""The torch backend: the rules of :mod:`gpumask.reference` as batched tensor ops.

Every step is a whole-batch op of shape `[B, T]`, so it runs wherever the tensors are, with
static shapes and no host-device synchronisation:

1. Matching, with no `[B, T, M]` tensor: `match_tables[k]` maps a token id to the bits of
   the markers that accept it at offset k, so AND-ing `K` table look-ups (K = longest marker)
   gives, per start, the bits of every marker that matches there. Its lowest bit is the
   longest match (markers are sorted longest first); `x & -x` isolates it and `% 67` names it
   (2**i % 67 differs for every i < 64).
2. Overlaps: a start is kept when it lies at or past the running maximum (`cummax`) of the
   ends of every earlier match.
3. State: each kept start covers `len` tokens (the last kept start at or before t, by
   `cummax`, tells which). Role and span state are "the last event at or before t", read by
   one more `cummax` over event positions. With two or more span kinds the span state is a
   small automaton, composed by a log-depth scan.
"""

from __future__ import annotations

import torch

from gpumask.spec import END_OF_TURN, HEADER, SPAN_CLOSE, SPAN_OPEN, CompiledSpec

# 2**i % 67 is distinct for i in 0..63: this table turns a power of two back into i.
_LOG2_BY_MOD67 = [0] * 67
for _i in range(63):
    _LOG2_BY_MOD67[(1 << _i) % 67] = _i
_LOG2_CACHE: dict[torch.device, torch.Tensor] = {}


def _log2_table(device: torch.device) -> torch.Tensor:
    table = _LOG2_CACHE.get(device)
    if table is None:
        table = _LOG2_CACHE[device] = torch.tensor(_LOG2_BY_MOD67, device=device)
    return table


def _shift_right(x: torch.Tensor, fill) -> torch.Tensor:
    """x[:, t - 1] at t, `fill` at t = 0."""
    return torch.nn.functional.pad(x[:, :-1], (1, 0), value=fill)


def _last_event(event: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Index of the last position <= t where `event` holds (-1 before the first)."""
    return torch.cummax(torch.where(event, positions, -1), dim=1).values


def _span_automaton(
    seq_start, header_start, eot_end, open_start, open_arg, close_end, close_arg, n_spans
) -> torch.Tensor:
    """State (0 none, k + 1 span k open) after each token, for several span kinds.

    Each token maps the state before it to the state after it; the maps are composed with a
    Hillis-Steele scan (log2(T) steps of a gather over the n_spans + 1 states).
    """
    batch, length = seq_start.shape
    states = torch.arange(n_spans + 1, device=seq_start.device)
    f = states.expand(batch, length, n_spans + 1)
    f = torch.where((seq_start | eot_end)[..., None], 0, f)
    f = torch.where((close_end & ~seq_start)[..., None] & (f == close_arg[..., None] + 1), 0, f)
    f = torch.where(header_start[..., None], 0, f)
    f = torch.where(open_start[..., None] & (f == 0), open_arg[..., None] + 1, f)
    step = 1
    while step < length:
        earlier = torch.nn.functional.pad(f[:, :-step], (0, 0, step, 0))
        earlier[:, :step] = states
        f = torch.gather(f, 2, earlier)
        step *= 2
    return f[..., 0]


def mask_labels_torch(
    input_ids: torch.Tensor,
    compiled: CompiledSpec,
    real: torch.Tensor | None,
    seq_start: torch.Tensor | None,
    uniforms: torch.Tensor | None,
    ignore_index: int,
    with_stats: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Labels `[B, T]`, and when `with_stats` trained counts `[B]` and role counts `[B, R+1]`.

    `real` (bool `[B, T]`, None: all real) marks real tokens; `seq_start` (bool `[B, T]`,
    None: only t = 0) marks where packed sequences start; `uniforms` are the draws of rule 7.
    Called by :func:`gpumask.mask_labels`, which validates and prepares these.
    """
    c = compiled
    batch, length = input_ids.shape
    device = input_ids.device
    vocab = c.match_tables.shape[1] - 1
    positions = torch.arange(length, device=device).expand(batch, length)
    none_role = c.n_roles

    # 1. Matching: bits of the markers that match at each start.
    ids = input_ids.long()
    unused = (ids < 0) | (ids >= vocab)
    if real is not None:
        unused |= ~real
    ids = ids.masked_fill(unused, vocab)
    hits = c.match_tables[0][ids]
    if c.max_len > 1:
        padded = torch.nn.functional.pad(ids, (0, c.max_len - 1), value=vocab)
        for k in range(1, c.max_len):
            hits &= c.match_tables[k][padded[:, k : k + length]]
    if seq_start is None:
        seq_end = torch.full_like(positions, length)  # first position after the sequence
        seq_start = positions == 0
    else:
        seq_start = seq_start | (positions == 0)
        starts_at = torch.where(seq_start, positions, length)
        next_start = torch.flip(torch.cummin(torch.flip(starts_at, [1]), dim=1).values, [1])
        seq_end = torch.nn.functional.pad(next_start[:, 1:], (0, 1), value=length)
        hits &= c.length_ok[(seq_end - positions).clamp(max=c.max_len)]
    matched = hits != 0
    marker = _log2_table(device)[(hits & -hits) % 67]

    # 2. Overlaps: keep a start at or past every earlier match's end.
    ends = torch.where(matched, positions + c.lengths[marker], 0)
    reach = _shift_right(torch.cummax(ends, dim=1).values, 0)
    kept = matched & (positions >= reach)
    kind = torch.where(kept, c.kinds[marker], -1)
    arg = c.args[marker]

    # 3. Coverage: which kept occurrence covers t, and which one ended just before t.
    last_start = _last_event(kept, positions).clamp(min=0)
    cover_kind = kind.gather(1, last_start)
    cover_len = c.lengths[marker.gather(1, last_start)]
    covered = (cover_kind >= 0) & (positions < last_start + cover_len)
    ends_here = covered & (positions == last_start + cover_len - 1)
    end_kind = _shift_right(torch.where(ends_here, cover_kind, -1), -1)

    header_start = kind == HEADER
    eot_end = end_kind == END_OF_TURN
    role_code = torch.where(header_start, arg, torch.where(seq_start, c.initial_role, none_role))
    role_event = seq_start | header_start | eot_end
    role = role_code.gather(1, _last_event(role_event, positions))

    open_start = kind == SPAN_OPEN
    if c.n_spans == 0:
        in_span = None
    elif c.n_spans == 1:
        close_end = end_kind == SPAN_CLOSE
        span_event = seq_start | header_start | eot_end | open_start | close_end
        in_span = open_start.gather(1, _last_event(span_event, positions))
    else:
        close_end = end_kind == SPAN_CLOSE
        close_arg = _shift_right(torch.where(ends_here, arg.gather(1, last_start), 0), 0)
        state = _span_automaton(
            seq_start, header_start, eot_end, open_start, arg, close_end, close_arg, c.n_spans
        )
        in_span = state != 0

    trained = c.train_role[role] & ~(covered & (cover_kind == HEADER))
    if in_span is not None:
        trained &= ~in_span
    if not c.train_on_end_of_turn:
        trained &= ~(covered & (cover_kind == END_OF_TURN))
    if real is not None:
        trained &= real
    if c.last_turn_only:
        turn_start = (header_start & c.train_role[arg]) | (seq_start & c.train_role[c.initial_role])
        turn = torch.cumsum(turn_start, dim=1)
        trained &= turn == turn.gather(1, seq_end - 1)
    if c.ignore_ids.numel() and c.ignore_token_prob > 0.0:
        drop = torch.isin(input_ids, c.ignore_ids.to(input_ids.dtype))
        if uniforms is not None:
            drop &= uniforms < c.ignore_token_prob
        trained &= ~drop

    labels = torch.where(trained, input_ids, ignore_index)
    if not with_stats:
        return labels, None, None
    counted = torch.ones_like(role) if real is None else real.long()
    role_tokens = torch.zeros(batch, none_role + 1, dtype=torch.int64, device=device)
    role_tokens.scatter_add_(1, role, counted)
    return labels, trained.sum(dim=1), role_tokens
