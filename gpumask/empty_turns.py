"""Turns that train only their end-of-turn token: a trained role's header, then at once the end
of turn.

A chat template that drops `tool_calls` (Llama 3.1's, SmolLM2's, Zephyr's own) renders a
tool-calling reply as an empty turn, e.g. ``<|im_start|>assistant\\n<|im_end|>``: that turn
trains its ``<|im_end|>`` alone and teaches the model to stop where it should have called a
tool. It is not an error (an empty reply may be meant), but it is never silent: the collators
and ``gpumask show`` warn with the count (:class:`EmptyTurnWarning`).

Example::

    >>> import numpy as np
    >>> from gpumask import MaskSpec
    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> ids = np.array([[1, 10, 5, 2, 1, 11, 2, 1, 11, 6, 2]])  # the first reply is empty
    >>> trained = np.array([[0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1]], dtype=bool)
    >>> count_empty_turns(ids, trained, spec).tolist()
    [1]
"""

from __future__ import annotations

import warnings

import numpy as np

from gpumask.spec import MaskSpec


class EmptyTurnWarning(UserWarning):
    """Turns of a trained role that train only their end-of-turn token (an empty reply)."""


def _matches(flat_ids: np.ndarray, starts: np.ndarray, marker: tuple[int, ...]) -> np.ndarray:
    """Whether `marker` occurs at each of `starts` (flat indices; out of range: no match)."""
    inside = (starts >= 0) & (starts + len(marker) <= flat_ids.shape[0])
    at = np.where(inside, starts, 0)
    hit = inside.copy()
    for k, token in enumerate(marker):
        hit &= flat_ids[np.minimum(at + k, flat_ids.shape[0] - 1)] == token
    return hit


def count_empty_turns(input_ids: np.ndarray, trained: np.ndarray, spec: MaskSpec) -> np.ndarray:
    """Per row of `input_ids` `[B, T]`, the turns whose trained tokens are an end-of-turn marker
    alone, right after a header of a trained role (`trained` `[B, T]`: labels != ignore_index).
    """
    batch, length = input_ids.shape
    offsets = np.arange(batch + 1, dtype=np.int64) * length
    return count_empty_turns_packed(input_ids.reshape(-1), np.reshape(trained, -1), offsets, spec)


def count_empty_turns_packed(
    ids: np.ndarray,
    trained: np.ndarray,
    offsets: np.ndarray,
    spec: MaskSpec,
    run_starts: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`count_empty_turns` for rows end to end: row i is `ids[offsets[i]:offsets[i + 1]]`
    (`trained` `[N]`), a count per row.

    Only the starts of trained runs are looked at (a few per turn), so it costs little beside
    the masking; `run_starts`, their sorted positions when the masking found them already
    (:class:`gpumask.torch_backend.PackedLabels`), saves finding them here.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> ids = np.array([1, 11, 2, 1, 11, 2, 6])  # rows [1, 11, 2] and [1, 11, 2, 6]
        >>> trained = np.array([0, 0, 1, 0, 0, 1, 1], dtype=bool)
        >>> count_empty_turns_packed(ids, trained, np.array([0, 3, 7]), spec).tolist()
        [1, 0]
    """
    rows = offsets.shape[0] - 1
    trained = np.asarray(trained, dtype=bool)
    starts = _run_starts(trained, offsets) if run_starts is None else run_starts
    if starts.size == 0 or not spec.end_of_turn:
        return np.zeros(rows, dtype=np.int64)
    row = np.searchsorted(offsets[1:], starts, side="right")
    row_start, row_end = offsets[row], offsets[row + 1]
    flat_trained = np.concatenate([trained, [False]])
    eot_alone = np.zeros(starts.shape, dtype=bool)
    for marker in spec.end_of_turn:
        end = starts + len(marker)
        in_row = end <= row_end
        run_ends = in_row & ((end == row_end) | ~flat_trained[np.where(in_row, end, -1)])
        eot_alone |= _matches(ids, starts, marker) & run_ends
    after_header = np.zeros(starts.shape, dtype=bool)
    for role in spec.train_roles:
        for header in spec.roles[role]:
            fits = starts - len(header) >= row_start
            after_header |= fits & _matches(ids, np.where(fits, starts - len(header), -1), header)
    return np.bincount(row[eot_alone & after_header], minlength=rows).astype(np.int64)


def _run_starts(trained: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Where runs of trained tokens start (a row's first token, when it trains, starts one)."""
    run_start = trained.copy()
    run_start[1:] &= ~trained[:-1]
    inner = offsets[1:-1][offsets[1:-1] < trained.shape[0]]
    run_start[inner] = trained[inner]
    return np.flatnonzero(run_start)


def empty_turns_message(counts: np.ndarray, names: list[str] | None = None) -> str | None:
    """What :func:`warn_empty_turns` says (None when `counts`, per row, are all 0)."""
    counts = np.asarray(counts)
    total = int(counts.sum())
    if total == 0:
        return None
    rows = np.flatnonzero(counts).tolist()
    where = ", ".join(names[i] if names is not None else f"row {i}" for i in rows[:10])
    if len(rows) > 10:
        where += f" and {len(rows) - 10} more"
    turns = "turn trains" if total == 1 else "turns train"
    return (
        f"{total} {turns} only the end-of-turn token, right after the header of a trained "
        f"role (an empty reply), in {where}. If these were tool-calling turns, the chat "
        "template drops `tool_calls` (Llama 3.1's, SmolLM2's and Zephyr's do): render them "
        "with a template that writes tool calls, or leave those turns out"
    )


def warn_empty_turns(who: str, counts: np.ndarray, names: list[str] | None = None) -> None:
    """One :class:`EmptyTurnWarning` with the number of empty turns and the rows holding them.

    Example::

        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warn_empty_turns("CompletionCollator", np.array([0, 2]))
        >>> str(caught[0].message)[:80]
        'CompletionCollator: 2 turns train only the end-of-turn token, right after the he'
    """
    message = empty_turns_message(counts, names)
    if message is not None:
        warnings.warn(f"{who}: {message}", EmptyTurnWarning, stacklevel=3)
