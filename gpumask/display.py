"""Show which tokens train: conversations with trained tokens highlighted, and counts per role.

Shared by ``gpumask show`` (:mod:`gpumask.cli`) and the demo. :func:`mask_rows` masks token-id
rows with :func:`gpumask.mask_labels` and explains every row in which nothing trains
(:func:`gpumask.reports.explain_untrained`);
:func:`format_row` prints one row (ANSI colours, or ``[[...]]`` around trained text without
them), :func:`format_summary` the totals, :func:`html_page` all of it as one HTML page.

Example::

    >>> from gpumask import MaskSpec
    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> rows = mask_rows([[1, 10, 5, 2, 1, 11, 6, 2], [1, 10, 5, 2]], spec)
    >>> rows[0].trained
    (False, False, False, False, False, False, True, True)
    >>> rows[0].role_tokens
    {'user': 4, 'assistant': 4, '(no role)': 0}
    >>> rows[1].reason
    "no header of a trained role ('assistant') found"
    >>> decode = lambda ids: "".join(f"<{i}>" for i in ids)
    >>> format_row(rows[0], decode, color=False)
    '<1><10><5><2><1><11>[[<6><2>]]'
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gpumask.masking import mask_labels
from gpumask.padding import pad_rows
from gpumask.reports import NO_ROLE, dropped_reason, explain_untrained
from gpumask.spec import MaskSpec

TRAINED_ANSI, OTHER_ANSI, RESET_ANSI = "\x1b[1;30;42m", "\x1b[2m", "\x1b[0m"
DROPPED_ANSI = "\x1b[9;31m"  # struck through, red: a turn that tool_call_turns dropped
TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"
DROPPED_OPEN, DROPPED_CLOSE = "~~", "~~"
CHUNK_TOKENS = 2**20  # padded tokens per batch in mask_rows
# Context decoded before a run of tokens, so that a run's text is what it adds to its context
# (SentencePiece leading spaces, characters split over byte-level tokens).
_CONTEXT = 8

Decode = Callable[[list[int]], str]


@dataclasses.dataclass(frozen=True)
class MaskedRow:
    """One masked row: its ids, which of them train, tokens per role, and why none train.

    `role_tokens` counts the row's tokens by role (a header's tokens count with the role it
    opens; `"(no role)"` counts tokens outside any turn). `reason` is None when a token trains.
    `dropped` marks the tokens of the turns that `tool_call_turns` dropped (rule 5; empty
    without them), `dropped_note` says how many turns and why.
    """

    ids: tuple[int, ...]
    trained: tuple[bool, ...]
    role_tokens: dict[str, int]
    reason: str | None
    dropped: tuple[bool, ...] = ()
    dropped_note: str | None = None

    @property
    def n_trained(self) -> int:
        return sum(self.trained)


def mask_rows(rows: Sequence[Sequence[int]], spec: MaskSpec) -> list[MaskedRow]:
    """Mask `rows` (lists of token ids, any lengths) in padded batches, with explanations.

    Consecutive rows go into one batch while it holds at most `CHUNK_TOKENS` padded tokens.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> [r.n_trained for r in mask_rows([[1, 11, 6, 7, 2], [1, 10, 5]], spec)]
        [3, 0]
    """
    rows = [[int(i) for i in row] for row in rows]
    out: list[MaskedRow] = []
    start = 0
    while start < len(rows):
        end, longest = start + 1, len(rows[start])
        while end < len(rows) and max(longest, len(rows[end])) * (end + 1 - start) <= CHUNK_TOKENS:
            longest = max(longest, len(rows[end]))
            end += 1
        out += _mask_batch(rows[start:end], spec)
        start = end
    return out


def _mask_batch(rows: list[list[int]], spec: MaskSpec) -> list[MaskedRow]:
    length = max(1, max(len(row) for row in rows))
    ids, keep = pad_rows([np.array(row, dtype=np.int64) for row in rows], length, 0, "right")
    ids, keep = torch.from_numpy(ids), torch.from_numpy(keep)
    labels, stats = mask_labels(ids, spec, attention_mask=keep, return_stats=True)
    dropped = _dropped_tokens(ids, keep, spec)
    names = [*spec.role_names, NO_ROLE]
    out = []
    for b, row in enumerate(rows):
        trained = tuple(bool(x) for x in (labels[b, : len(row)] != -100).tolist())
        counts = dict(zip(names, stats["role_tokens"][b].tolist(), strict=True))
        reason = None if any(trained) else explain_untrained(row, spec, counts)
        n_dropped = int(stats["dropped_turns"][b])
        note = dropped_reason(spec, n_dropped) if n_dropped else None
        row_dropped = () if dropped is None else tuple(dropped[b, : len(row)].tolist())
        out.append(MaskedRow(tuple(row), trained, counts, reason, row_dropped, note))
    return out


def _dropped_tokens(ids: torch.Tensor, keep: torch.Tensor, spec: MaskSpec):
    """The tokens that train but for `tool_call_turns` (bool `[B, T]`), or None without it:
    the spec with and without rule 5, rule 6 left out and the same draws for rule 7."""
    if spec.tool_call_turns == "train":
        return None
    labels = [
        mask_labels(
            ids,
            spec.replace(tool_call_turns=mode, last_turn_only=False),
            attention_mask=keep,
            generator=torch.Generator().manual_seed(0),
        )
        != -100
        for mode in ("train", spec.tool_call_turns)
    ]
    return labels[0] & ~labels[1]


def segments(ids: Sequence[int], trained: Sequence, decode: Decode) -> list[tuple[str, Any]]:
    """The row's text cut into runs of tokens of the same kind (`trained[t]`: trained or not,
    or any other label per token): `[(text, kind), ...]`.

    Example::

        >>> segments([5, 6, 7], [False, True, True], lambda ids: "".join(map(str, ids)))
        [('5', False), ('67', True)]
    """
    return runs(ids, trained, decode)


def runs(ids: Sequence[int], keys: Sequence, decode: Decode) -> list[tuple[str, object]]:
    """The row's text cut into runs of tokens with equal `keys`: `[(text, key), ...]`.

    Example::

        >>> runs([5, 6, 7], ["user", "user", None], lambda ids: "".join(map(str, ids)))
        [('56', 'user'), ('7', None)]
    """
    out: list[tuple[str, object]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or keys[end] != keys[start]:
            before = list(ids[max(0, start - _CONTEXT) : start])
            context = decode(before) if before else ""
            text = decode(before + list(ids[start:end]))
            text = (
                text[len(context) :] if text.startswith(context) else decode(list(ids[start:end]))
            )
            out.append((text, keys[start]))
            start = end
    return out


def token_roles(ids: Sequence[int], spec: MaskSpec) -> tuple[str | None, ...]:
    """The role of each token's turn (its content and end of turn), None for header tokens
    and tokens between turns; read with the spec set to train each role in turn.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> token_roles([1, 10, 5, 2, 3, 1, 11, 6, 2], spec)
        (None, None, 'user', 'user', None, None, None, 'assistant', 'assistant')
    """
    row = torch.tensor([[int(i) for i in ids]], dtype=torch.int64)
    out: list[str | None] = [None] * len(ids)
    for role in spec.role_names:
        view = spec.replace(
            train_roles=(role,),
            train_on_end_of_turn=True,
            last_turn_only=False,
            masked_spans=(),
            ignore_token_ids=(),
        )
        labels, _ = mask_labels(row, view, return_stats=True)  # (no warning for a role absent)
        for t in (labels[0] != -100).nonzero().flatten().tolist():
            out[t] = role
    return tuple(out)


def _ansi(text: str, style: str) -> str:
    # Style each line on its own, so a highlight never runs past the end of a line.
    return "\n".join(f"{style}{line}{RESET_ANSI}" if line else "" for line in text.split("\n"))


def _kinds(row: MaskedRow) -> list[str]:
    """Per token: "trained", "dropped" (its turn dropped by `tool_call_turns`) or ""."""
    dropped = row.dropped or (False,) * len(row.ids)
    return ["trained" if t else "dropped" if d else "" for t, d in zip(row.trained, dropped)]


def format_row(row: MaskedRow, decode: Decode, color: bool = True) -> str:
    """The row's text with trained tokens highlighted (ANSI), or between [[ ]] without colour;
    the tokens of turns that `tool_call_turns` dropped struck through in red, or between ~~ ~~.
    """
    styles = {"trained": TRAINED_ANSI, "dropped": DROPPED_ANSI, "": OTHER_ANSI}
    marks = {"trained": (TRAINED_OPEN, TRAINED_CLOSE), "dropped": (DROPPED_OPEN, DROPPED_CLOSE)}
    parts = []
    for text, kind in segments(row.ids, _kinds(row), decode):
        if color:
            parts.append(_ansi(text, styles[kind]))
        else:
            opening, closing = marks.get(kind, ("", ""))
            parts.append(f"{opening}{text}{closing}")
    return "".join(parts)


def legend(color: bool) -> str:
    """One line that says how trained tokens are shown."""
    if color:
        return f"trained tokens: {_ansi('highlighted', TRAINED_ANSI)}, others dimmed"
    return f"trained tokens: between {TRAINED_OPEN} and {TRAINED_CLOSE}"


def row_heading(row: MaskedRow, name: str) -> str:
    """E.g. `line 2: 12 of 40 tokens trained (30.0%); user 20, assistant 15, (no role) 5`."""
    total = len(row.ids)
    share = f" ({100 * row.n_trained / total:.1f}%)" if total else ""
    roles = ", ".join(f"{role} {n}" for role, n in row.role_tokens.items() if n)
    text = f"{name}: {row.n_trained} of {total} tokens trained{share}"
    text = f"{text}; {roles}" if roles else text
    return f"{text}; {row.dropped_note}" if row.dropped_note else text


def totals(rows: Sequence[MaskedRow]) -> dict[str, int]:
    """Tokens per role over all rows, in the order of the first row's roles."""
    out: dict[str, int] = {}
    for row in rows:
        for role, n in row.role_tokens.items():
            out[role] = out.get(role, 0) + n
    return out


def format_summary(rows: Sequence[MaskedRow], names: Sequence[str] | None = None) -> str:
    """Tokens per role, the trained share, and every row in which nothing trains, with why.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> print(format_summary(mask_rows([[1, 10, 5, 2, 1, 11, 6, 2], [1, 10, 5, 2]], spec)))
        2 rows, 12 tokens, 2 trained (16.7%)
        role       tokens  share
        user            8  66.7%
        assistant       4  33.3%
        (no role)       0   0.0%
        1 row with no trained token:
          row 1: no header of a trained role ('assistant') found
    """
    names = list(names) if names is not None else [f"row {i}" for i in range(len(rows))]
    tokens = sum(len(r.ids) for r in rows)
    trained = sum(r.n_trained for r in rows)

    def pct(n: int) -> str:
        return f"{100 * n / tokens:.1f}%" if tokens else "-"

    plural = "" if len(rows) == 1 else "s"
    lines = [f"{len(rows)} row{plural}, {tokens} tokens, {trained} trained ({pct(trained)})"]
    counts = totals(rows)
    width = max([len("role"), *(len(r) for r in counts)])
    lines.append(f"{'role':<{width}}  {'tokens':>6}  {'share':>5}")
    lines += [f"{role:<{width}}  {n:>6}  {pct(n):>5}" for role, n in counts.items()]
    empty = [(name, r) for name, r in zip(names, rows, strict=True) if r.reason is not None]
    if empty:
        lines.append(f"{len(empty)} row{'' if len(empty) == 1 else 's'} with no trained token:")
        lines += [f"  {name}: {r.reason}" for name, r in empty]
    else:
        lines.append("every row trains at least one token")
    return "\n".join(lines)


# Text colours of the roles in the HTML page, in the order of `spec.role_names`.
ROLE_COLOURS = ("#1f5fbf", "#8a3ffc", "#b35c00", "#007d79", "#a2191f", "#5c6b00")


def _role_class(role: str | None, role_names: Sequence[str]) -> str:
    return "r-none" if role is None else f"r{role_names.index(role) % len(ROLE_COLOURS)}"


def html_page(
    rows: Sequence[MaskedRow],
    decode: Decode,
    names: Sequence[str] | None = None,
    title: str = "gpumask: trained tokens",
    header: str = "",
    spec: MaskSpec | None = None,
) -> str:
    """A self-contained HTML page: the summary, then every row with trained tokens highlighted.

    `header` (plain text, e.g. the spec's repr) is shown under the title. With `spec`, each
    turn's text is coloured by its role (:func:`token_roles`), with a legend of the colours;
    headers and the text between turns are grey.
    """
    names = list(names) if names is not None else [f"row {i}" for i in range(len(rows))]
    role_names = list(spec.role_names) if spec is not None else []
    body = [f"<h1>{html.escape(title)}</h1>"]
    if header:
        body.append(f"<pre class='spec'>{html.escape(header)}</pre>")
    body.append(f"<pre class='summary'>{html.escape(format_summary(rows, names))}</pre>")
    legend_items = ["Trained tokens are <span class='t'>highlighted</span>."]
    if spec is not None:
        legend_items += [
            f"<span class='{_role_class(r, role_names)}'>{html.escape(r)}</span>"
            for r in role_names
        ]
        legend_items.append("<span class='r-none'>headers and between turns</span>")
    body.append(f"<p class='legend'>{' '.join(legend_items)}</p>")
    for name, row in zip(names, rows, strict=True):
        roles = token_roles(row.ids, spec) if spec is not None else (None,) * len(row.ids)
        spans = []
        for text, (role, kind) in runs(row.ids, list(zip(roles, _kinds(row))), decode):
            classes = _role_class(role, role_names) + {"trained": " t", "dropped": " d"}.get(
                kind, ""
            )
            label = html.escape(role or "no role", quote=True)
            spans.append(f"<span class='{classes}' title='{label}'>{html.escape(text)}</span>")
        body.append(f"<h2>{html.escape(row_heading(row, name))}</h2><pre>{''.join(spans)}</pre>")
        if row.reason:
            body.append(f"<p class='why'>No token trains: {html.escape(row.reason)}</p>")
    colours = "".join(f".r{i}{{color:{c}}}" for i, c in enumerate(ROLE_COLOURS))
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
        "pre{white-space:pre-wrap;background:#f6f8fa;padding:1em;border-radius:6px;color:#777}"
        "pre.summary,pre.spec{color:#000}.r-none{color:#999}" + colours + ""
        ".t{background:#b7f0b1;font-weight:600}.d{text-decoration:line-through;color:#b00}"
        ".legend span{margin-right:1em}"
        ".why{color:#b00}h2{font-size:1em}"
    )
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
