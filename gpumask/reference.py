"""The rules of gpumask, written as a plain loop: the oracle every backend is tested against.

Slow and obvious on purpose: one row at a time, one token at a time. Each rule below is the
contract of ../SPEC section 2; the examples use ChatML with markers written as text.

Rule 1, occurrences. A marker occurs at p when the ids at p.. equal it, all of them real
tokens (attention mask 1) of one packed sequence. At one start the longest marker wins; an
occurrence that starts inside an earlier one (of any marker, kept or not) is ignored.

Rule 2, roles. Every sequence starts in `initial_role` (default none). A header's tokens are
never trained; after it, the role is the header's. An end-of-turn's tokens belong to the
current role; after it, the role is none::

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n
    masked ...........................................  trained: "Hello<|im_end|>"

Each header switches the role, so in Q A A both replies train and in Q A T A the tool turn
between replies is masked.

Rule 3, masked spans. From an open through its close (inclusive) tokens are masked; a turn
that ends first (end of turn, or a header) ends the span, its end-of-turn included. Spans do
not nest: an open inside an open span, or a close that does not match the open span, is
ignored::

    <|im_start|>assistant\\nLet me look.<tool_response>42</tool_response>Done<|im_end|>
    trained: "Let me look." and "Done<|im_end|>"

Rule 4, end of turn. Trained with its turn when `train_on_end_of_turn` (default True).

Rule 5, turns chosen by content. A *turn* of a trained role runs from the end of its header
(or from a sequence start, when `initial_role` trains and no header starts there) through the
end of the next end of turn, or up to the next header or the end of the sequence. It
*contains a tool call* when a `tool_call` occurrence starts at one of its tokens outside every
masked span (`tool_call` markers take part in rule 1 like the others, and change no role or
span). With `tool_call_turns="mask"` the turns that contain a call do not train, all of their
tokens; with `"only"` only those turns train; `"train"` (default) ignores calls.

Rule 6, last turn only. With `last_turn_only`, only the last turn of a trained role in each
packed sequence that rule 5 keeps trains (a kept turn counts even if nothing in it trains).

Rule 7, ignored ids. Tokens whose id is in `ignore_token_ids` do not train, each with
probability `ignore_token_prob`. When 0 < prob < 1 the draws are
`torch.rand(B, T, generator=generator, device=input_ids.device)` (:meth:`MaskSpec.draws`),
one per position, and a token is dropped when its draw is below the probability; every
backend uses those same draws.

Rule 8, padding and packing. Tokens with attention mask 0 never train and never take part in
a marker. Packed sequences (by `position_ids` restarting at 0, or `cu_seqlens` over a
flattened `[1, N]` batch; positions at or past `cu_seqlens[-1]` are padding) are masked as if
each stood alone.

Example::

    >>> from gpumask import MaskSpec
    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> mask_labels_reference(torch.tensor([[1, 10, 5, 2, 1, 11, 6, 7, 2, 9]]), spec).tolist()
    [[-100, -100, -100, -100, -100, -100, 6, 7, 2, -100]]

Rule 5 on ChatML-like ids: user `1 10`, assistant `1 11`, tool `1 12`, end of turn `2`, a
tool call starts with `7`, a masked span runs from `8` to `9`; `trained` lists the labels
that are not -100. In Q A(call) T A, the reply that calls is `6 7 6 2`, the other `3 2`::

    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11], "tool": [1, 12]},
    ...                 end_of_turn=[2], masked_spans=[([8], [9])], tool_call=[7])
    >>> def trained(rows, spec, **layout):
    ...     labels = mask_labels_reference(torch.tensor(rows), spec, **layout)
    ...     return [[i for i in row if i != -100] for row in labels.tolist()]
    >>> Q, T, A = [1, 10, 5, 2], [1, 12, 4, 2], [1, 11, 3, 2]
    >>> A_call = [1, 11, 6, 7, 6, 2]
    >>> trained([Q + A_call + T + A], spec)
    [[6, 7, 6, 2, 3, 2]]
    >>> trained([Q + A_call + T + A], spec.replace(tool_call_turns="mask"))
    [[3, 2]]
    >>> trained([Q + A_call + T + A], spec.replace(tool_call_turns="only"))
    [[6, 7, 6, 2]]

A call in a user or tool turn, or inside a masked span, does not count::

    >>> only = spec.replace(tool_call_turns="only")
    >>> trained([[1, 10, 7, 2] + A, [1, 12, 7, 2] + A, [1, 11, 6, 8, 7, 9, 6, 2]], only)
    [[], [], []]

Consecutive replies where only the second calls; a header also ends a turn, so in the second
row the reply `3 3` (no end of turn) is a turn of its own::

    >>> rows = [Q + A + [1, 11, 7, 2], Q + [1, 11, 3, 3, 1, 11, 7, 2]]
    >>> trained(rows, only), trained(rows, spec.replace(tool_call_turns="mask"))
    ([[7, 2], [7, 2]], [[3, 2], [3, 3]])

`last_turn_only` takes the last turn that rule 5 keeps::

    >>> row = [Q + A_call + T + A]
    >>> [trained(row, spec.replace(last_turn_only=True, tool_call_turns=mode))[0]
    ...  for mode in ("train", "mask", "only")]
    [[3, 2], [3, 2], [6, 7, 6, 2]]

Packed rows: each sequence has its own turns, so a call at the start of the second sequence
(in no turn) does not reach back into the first; left padding takes part in nothing::

    >>> trained([[1, 11, 3, 7, 2, 1, 11, 7, 2]], only,
    ...         position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5]]))
    [[7, 2]]
    >>> trained([[7, 7, 1, 11, 3, 2]], only, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]))
    [[]]
"""

from __future__ import annotations

import torch

from gpumask.spec import END_OF_TURN, HEADER, SPAN_CLOSE, SPAN_OPEN, TOOL_CALL, MaskSpec


def sequence_ids(
    length: int, position_ids: list[int] | None, cu_seqlens: list[int] | None
) -> list[int]:
    """The packed-sequence index of every position of one row (-1 for padding past cu_seqlens)."""
    if cu_seqlens is not None:
        out = [-1] * length
        for s in range(len(cu_seqlens) - 1):
            for t in range(cu_seqlens[s], min(cu_seqlens[s + 1], length)):
                out[t] = s
        return out
    out, current = [], -1
    for t in range(length):
        if t == 0 or (position_ids is not None and position_ids[t] == 0):
            current += 1
        out.append(current)
    return out


def sequence_starts(
    length: int, position_ids: list[int] | None, cu_seqlens: list[int] | None
) -> set[int]:
    """Where packed sequences start in one row: t = 0, every position id 0, and every
    `cu_seqlens` offset below `length` but the last (an empty sequence starts where the next
    one does; padding past the last offset starts none)."""
    if cu_seqlens is not None:
        return {0} | {offset for offset in cu_seqlens[:-1] if offset < length}
    return {t for t in range(length) if t == 0 or (position_ids and position_ids[t] == 0)}


def _occurrences(ids: list[int], real: list[bool], seq: list[int], spec: MaskSpec) -> dict:
    """Kept occurrences as {start: marker}, by rule 1."""
    length = len(ids)
    longest = {}
    for p in range(length):
        for marker in spec.markers:  # longest first
            end = p + len(marker.ids)
            if end <= length and all(
                ids[p + k] == marker.ids[k] and real[p + k] and seq[p + k] == seq[p]
                for k in range(len(marker.ids))
            ):
                longest[p] = marker
                break
    kept, reach = {}, 0
    for p in range(length):
        if p in longest:
            if p >= reach:
                kept[p] = longest[p]
            reach = max(reach, p + len(longest[p].ids))
    return kept


def _row_labels(ids, real, seq, starts, spec: MaskSpec, uniforms, ignore_index: int):
    """(labels, role of each token, trained tokens, turns dropped by rule 5) of one row;
    `starts` are the positions where a packed sequence starts."""
    role_names = spec.role_names
    none = len(role_names)
    initial = none if spec.initial_role is None else role_names.index(spec.initial_role)
    trains = {role_names.index(r) for r in spec.train_roles}
    kept = _occurrences(ids, real, seq, spec)
    length = len(ids)

    role = [none] * length
    trainable = [False] * length
    turn = [0] * length  # the number of trained-role turns started so far in the row
    turn_seq = {}  # turn -> the packed sequence it starts in
    has_call = {}  # turn -> whether it contains a tool call (rule 5)
    state_role, open_span, turns = initial, None, 0
    covered_by, covered_left = None, 0
    end_of_marker_at = {}  # position just after an occurrence -> its marker
    for p, marker in kept.items():
        end_of_marker_at[p + len(marker.ids)] = marker
    for t in range(length):
        if t == 0 or seq[t] != seq[t - 1]:
            state_role, open_span, covered_left = initial, None, 0
        else:
            ended = end_of_marker_at.get(t)
            if ended is not None and ended.kind == END_OF_TURN:
                state_role, open_span = none, None
            if ended is not None and ended.kind == SPAN_CLOSE and open_span == ended.arg:
                open_span = None
        marker = kept.get(t)
        if t in starts and initial in trains and not (marker and marker.kind == HEADER):
            turns += 1  # (a header at the sequence start starts the turn instead)
            turn_seq[turns], has_call[turns] = seq[t], False
        if marker is not None:
            covered_by, covered_left = marker, len(marker.ids)
            if marker.kind == HEADER:
                state_role, open_span = marker.arg, None
                if marker.arg in trains:
                    turns += 1
                    turn_seq[turns], has_call[turns] = seq[t], False
            elif marker.kind == SPAN_OPEN and open_span is None:
                open_span = marker.arg
        in_header = covered_left > 0 and covered_by.kind == HEADER
        in_eot = covered_left > 0 and covered_by.kind == END_OF_TURN
        covered_left = max(covered_left - 1, 0)
        in_turn = state_role in trains and not in_header
        if in_turn and open_span is None and marker is not None and marker.kind == TOOL_CALL:
            has_call[turns] = True
        role[t] = state_role
        turn[t] = turns
        trainable[t] = (
            real[t] and in_turn and open_span is None and (spec.train_on_end_of_turn or not in_eot)
        )
    mode = spec.tool_call_turns
    keeps = {k: mode == "train" or has_call[k] == (mode == "only") for k in has_call}
    trainable = [ok and keeps.get(turn[t], False) for t, ok in enumerate(trainable)]
    if spec.last_turn_only:
        last = {}  # packed sequence -> its last kept turn
        for k in sorted(k for k in keeps if keeps[k]):
            last[turn_seq[k]] = k
        trainable = [ok and turn[t] == last.get(seq[t]) for t, ok in enumerate(trainable)]
    ignore = set(spec.ignore_token_ids)
    prob = spec.ignore_token_prob
    for t in range(length):
        if trainable[t] and ids[t] in ignore:
            if prob >= 1.0 or (prob > 0.0 and uniforms[t] < prob):
                trainable[t] = False
    labels = [ids[t] if trainable[t] else ignore_index for t in range(length)]
    dropped = sum(not keep for keep in keeps.values())
    return labels, role, sum(trainable), dropped


def mask_labels_reference(
    input_ids: torch.Tensor,
    spec: MaskSpec,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    ignore_index: int = -100,
    generator: torch.Generator | None = None,
    return_stats: bool = False,
):
    """Labels by the rules above, one row and one token at a time (same signature as
    :func:`gpumask.mask_labels`, no backend)."""
    batch, length = input_ids.shape
    uniforms = spec.draws(input_ids, generator)
    if uniforms is not None:
        uniforms = uniforms.cpu().tolist()
    all_labels, trained, role_tokens, dropped_turns = [], [], [], []
    for b in range(batch):
        ids = input_ids[b].tolist()
        real = (
            [True] * length
            if attention_mask is None
            else [bool(v) for v in attention_mask[b].tolist()]
        )
        pos = None if position_ids is None else position_ids[b].tolist()
        cu = None if cu_seqlens is None else cu_seqlens.tolist()
        seq = sequence_ids(length, pos, cu)
        real = [r and s >= 0 for r, s in zip(real, seq)]
        row_uniforms = None if uniforms is None else uniforms[b]
        starts = sequence_starts(length, pos, cu)
        labels, role, n_trained, dropped = _row_labels(
            ids, real, seq, starts, spec, row_uniforms, ignore_index
        )
        all_labels.append(labels)
        trained.append(n_trained)
        dropped_turns.append(dropped)
        counts = [0] * (len(spec.role_names) + 1)
        for t in range(length):
            if real[t]:
                counts[role[t]] += 1
        role_tokens.append(counts)
    labels = torch.tensor(all_labels, dtype=input_ids.dtype, device=input_ids.device)
    if not return_stats:
        return labels
    return labels, {
        "trained": torch.tensor(trained, dtype=torch.int64, device=input_ids.device),
        "role_tokens": torch.tensor(role_tokens, dtype=torch.int64, device=input_ids.device),
        "dropped_turns": torch.tensor(dropped_turns, dtype=torch.int64, device=input_ids.device),
    }
