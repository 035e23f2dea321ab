"""Why no token of a row trains, in words, and the warning that says so.

A row with no trained token is not an error (truncation makes them), but it never passes
silently: the collators warn (:class:`NoTrainedTokensWarning`, :func:`warn_untrained`) with
each row's index and the reason (:func:`untrained_reason` from the stats of
:func:`gpumask.mask_labels`, :func:`template_reason` for the TRL drop-in), and ``gpumask
show`` explains each such row (:func:`explain_untrained`, which also tries the spec without
each option that can mask a trained turn).

Example::

    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> untrained_reason(spec, [1, 10, 5, 2], [4, 0, 0])
    "no header of a trained role ('assistant') found"
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from gpumask.masking import mask_labels
from gpumask.padding import Packed
from gpumask.spec import MaskSpec

NO_ROLE = "(no role)"


class NoTrainedTokensWarning(UserWarning):
    """Some rows of a batch have no trained token (their labels are all `ignore_index`)."""


def _header_cut_at_end(spec: MaskSpec, row_ids: Sequence[int]) -> str | None:
    """The trained role whose header the row ends in the middle of, if any."""
    for role in spec.train_roles:
        for header in spec.roles[role]:
            for k in range(1, min(len(header), len(row_ids) + 1)):
                if tuple(row_ids[-k:]) == header[:k]:
                    return role
    return None


def untrained_reason(
    spec: MaskSpec,
    row_ids: Sequence[int],
    role_tokens: Sequence[int],
    original_length: int | None = None,
    max_length: int | None = None,
    truncation_side: str = "right",
    dropped_turns: int = 0,
) -> str:
    """Why a row (its real tokens `row_ids`) has no trained token, in words.

    `role_tokens` and `dropped_turns` are the row's `stats["role_tokens"]` and
    `stats["dropped_turns"]` from `mask_labels(..., return_stats=True)`; `original_length`
    is the row's length before truncation to `max_length`, if it was cut.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> untrained_reason(spec, [1, 10, 5, 2, 1], [4, 0, 1], original_length=9, max_length=5)
        "truncated to max_length=5 (from 9 tokens) inside a header of 'assistant'"
    """
    names = ", ".join(repr(r) for r in spec.train_roles)
    if len(row_ids) == 0:
        return "empty row"
    codes = [spec.role_names.index(r) for r in spec.train_roles]
    header_found = any(role_tokens[c] > 0 for c in codes)
    truncated = original_length is not None and original_length > len(row_ids)
    cut = f"truncated to max_length={max_length} (from {original_length} tokens)"
    if truncation_side == "left":
        cut += " on the left"
    if not header_found:
        if not truncated:
            return f"no header of a trained role ({names}) found"
        role = _header_cut_at_end(spec, row_ids) if truncation_side == "right" else None
        if role is not None:
            return f"{cut} inside a header of {role!r}"
        return f"{cut}, no header of a trained role ({names}) left"
    if dropped_turns:
        return dropped_reason(spec, dropped_turns)
    if truncated:
        return f"{cut}, nothing of the reply left after the header"
    return (
        f"a header of a trained role ({names}) is there, but no token after it trains "
        "(empty reply, or all of it in a masked span or ignore_token_ids)"
    )


def dropped_reason(spec: MaskSpec, dropped_turns: int) -> str:
    """That `dropped_turns` turns of a row were dropped by `tool_call_turns` (rule 5), and why.

    Example::

        >>> spec = MaskSpec(roles={"assistant": [1, 11]}, tool_call=[7], tool_call_turns="only")
        >>> dropped_reason(spec, 2)
        "tool_call_turns='only' dropped 2 'assistant' turns without a tool call"
    """
    names = "/".join(repr(r) for r in spec.train_roles)
    which = "with" if spec.tool_call_turns == "mask" else "without"
    turns = "turn" if dropped_turns == 1 else "turns"
    return (
        f"tool_call_turns={spec.tool_call_turns!r} dropped {dropped_turns} {names} {turns} "
        f"{which} a tool call"
    )


def row_reasons(
    spec: MaskSpec,
    packed: Packed,
    stats: dict[str, np.ndarray],
    original: Sequence[int] | None = None,
    max_length: int | None = None,
    truncation_side: str = "right",
) -> dict[int, str]:
    """{row: :func:`untrained_reason`} for every row of a batch with no trained token; `packed`
    holds the rows (:class:`gpumask.padding.Packed`), `stats` are those of
    :func:`gpumask.collators.mask_packed` (`.stats`), `original` the row lengths before
    truncation."""
    return {
        i: untrained_reason(
            spec,
            packed.real_ids(i),
            stats["role_tokens"][i].tolist(),
            None if original is None else original[i],
            max_length,
            truncation_side,
            int(stats["dropped_turns"][i]),
        )
        for i in np.flatnonzero(stats["trained"] == 0).tolist()
    }


def template_reason(
    found_response: bool,
    response_template,
    response_ids: list[int],
    instructions: bool,
    spec: MaskSpec,
    dropped_turns: int,
) -> str:
    """Why a row of the TRL drop-in trains nothing, in TRL's terms (templates)."""
    if not found_response:
        return f"response template {response_template!r} (ids {response_ids}) not found"
    if dropped_turns:
        return dropped_reason(spec, dropped_turns)
    if not instructions:
        return "nothing follows the last response template (truncated?)"
    return (
        "no reply: every response template is at the end of the row or "
        "followed at once by an instruction template"
    )


def _trains(row: list[int], spec: MaskSpec) -> bool:
    labels, _ = mask_labels(torch.tensor([row]), spec, return_stats=True)  # (no warning)
    return bool((labels != -100).any())


def explain_untrained(row: Sequence[int], spec: MaskSpec, role_tokens: dict[str, int]) -> str:
    """Why no token of `row` trains under `spec` (`role_tokens`: role name -> tokens, with
    `"(no role)"`, as in :class:`gpumask.display.MaskedRow`).

    Says what :func:`untrained_reason` says, and when a trained role's header is there, tries
    the spec without each option that can mask a trained turn and names the first whose
    removal would train something.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> explain_untrained([1, 10, 5, 2, 1, 11], spec, {"user": 4, "assistant": 2})
        "every 'assistant' turn is empty: the row may be truncated right after a header"
    """
    row = [int(i) for i in row]
    roles = ", ".join(repr(r) for r in spec.train_roles)
    if not row or not any(role_tokens.get(r, 0) for r in spec.train_roles):
        counts = [role_tokens.get(name, 0) for name in (*spec.role_names, NO_ROLE)]
        return untrained_reason(spec, row, counts)
    if spec.tool_call_turns != "train" and _trains(row, spec.replace(tool_call_turns="train")):
        n = int(mask_labels(torch.tensor([row]), spec, return_stats=True)[1]["dropped_turns"][0])
        return dropped_reason(spec, n)
    if spec.masked_spans and _trains(row, spec.replace(masked_spans=())):
        return f"every {roles} token lies inside a masked span"
    if spec.ignore_token_ids and _trains(row, spec.replace(ignore_token_ids=())):
        return f"every {roles} token is in ignore_token_ids"
    if not spec.train_on_end_of_turn and _trains(row, spec.replace(train_on_end_of_turn=True)):
        return f"the {roles} turns hold only their end-of-turn token (train_on_end_of_turn=False)"
    return f"every {roles} turn is empty: the row may be truncated right after a header"


def warn_untrained(who: str, n_rows: int, reasons: dict[int, str], stacklevel: int = 4) -> None:
    """One `NoTrainedTokensWarning` naming every row without a trained token, and why."""
    if not reasons:
        return
    rows = "; ".join(f"row {i}: {reason}" for i, reason in sorted(reasons.items()))
    verbs = (
        "has no trained token and adds" if len(reasons) == 1 else "have no trained token and add"
    )
    warnings.warn(
        f"{who}: {len(reasons)} of {n_rows} rows {verbs} nothing to the loss: {rows}",
        NoTrainedTokensWarning,
        stacklevel=stacklevel,
    )
