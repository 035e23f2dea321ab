"""Checking a spec against rendered conversations: labels against the contents' characters.

A rendering's *anchors* are where each message's content and tool calls landed. A spec agrees
with a rendering when:

- every token inside an assistant content or tool call trains, and no token inside any other
  content does (a token that a content shares with a marker may go either way);
- no token trains before the first anchor (a BOS, a default system turn, the first header);
- between an assistant anchor and the next anchor, the trained tokens are a prefix of the gap
  (the end of turn, and the whitespace in front of it): nothing after the first masked token;
- between any other anchor and the next, nothing trains, except what leads into a reply: its
  own leading whitespace (Mistral's ``[/INST] reply``), a tool call's opening text right in
  front of it (``<tool_call>``), and the text in front of a reply that goes
  on after a tool result inside the assistant's own turn.

A gap with a message in it that left no anchor (an empty content) is not checked.

Example (the Qwen2.5 tokenizer)::

    >>> spec = MaskSpec.from_tokenizer(tok)
    >>> from gpumask.chat_templates.probes import render_probes
    >>> r = render_probes(tok, None)["user, assistant"][0]
    >>> disagreements(spec, r)
    []
    >>> disagreements(spec.replace(end_of_turn=None), r)[0]
    "token 14 '\\n' between the assistant's content and the end would train"
"""

from __future__ import annotations

from gpumask.chat_templates.probes import Rendering
from gpumask.spec import MaskSpec


def labels_of(spec: MaskSpec, ids: list[int]) -> list[bool]:
    """Which of `ids` (one conversation) train under `spec`, on the CPU."""
    import torch

    from gpumask.masking import mask_labels

    if not ids:
        return []
    labels = mask_labels(torch.tensor([ids]), spec, backend="torch")[0]
    return (labels != -100).tolist()


def disagreements(
    spec: MaskSpec, r: Rendering, trained: list[bool] | None = None, inline_results: bool = False
) -> list[str]:
    """Where `spec`'s labels on rendering `r` disagree with its contents (see the module)."""
    trained = labels_of(spec, r.ids) if trained is None else trained
    problems: list[str] = []

    def who(a) -> str:
        return f"the {a.role}'s {'tool call' if a.kind == 'call' else 'content'}"

    for a in r.anchors:
        want = a.role == "assistant"
        for t in range(a.first, a.stop):
            inside = a.start <= r.offsets[t][0] and r.offsets[t][1] <= a.end
            if inside and trained[t] != want:
                problems.append(
                    f"token {t} {r.piece(t)!r} of {who(a)} would {'not ' if want else ''}train"
                )
                break
    for k in range(len(r.anchors) + 1):
        prev = r.anchors[k - 1] if k else None
        lo = prev.stop if prev else 0
        hi = r.anchors[k].first if k < len(r.anchors) else len(r.ids)
        nxt = f"{who(r.anchors[k])}" if k < len(r.anchors) else "the end"
        where = f"between {who(prev)} and {nxt}" if prev else f"before {nxt}"
        first = prev.message + 1 if prev else 0
        last = r.anchors[k].message if k < len(r.anchors) else len(r.messages)
        if any(m in r.invisible for m in range(first, last)):
            continue  # a message the template renders with nothing to anchor it (no content)
        if prev is not None and prev.role == "assistant":
            masked = next((t for t in range(lo, hi) if not trained[t]), hi)
            late = next((t for t in range(masked, hi) if trained[t]), None)
            if late is not None:
                problems.append(f"token {late} {r.piece(late)!r} {where} would train")
        elif not (inline_results and prev is not None and prev.role == "tool"):
            nxt_anchor = r.anchors[k] if k < len(r.anchors) else None
            opening = hi  # a reply's own leading space, a call's opening text train with it
            while (
                nxt_anchor is not None
                and nxt_anchor.role == "assistant"
                and opening > lo
                and trained[opening - 1]
                and (nxt_anchor.kind == "call" or r.ws(opening - 1))
            ):
                opening -= 1
            late = next((t for t in range(lo, opening) if trained[t]), None)
            if late is not None:
                problems.append(f"token {late} {r.piece(late)!r} {where} would train")
    return problems


def describe(problems: list[str], r: Rendering) -> str:
    """One line: the first problem, in its probe and rendering."""
    return f"{problems[0]} (conversation {r.name!r}: {r.text!r})"


__all__ = ["disagreements", "describe", "labels_of"]
