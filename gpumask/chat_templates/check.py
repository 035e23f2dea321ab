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
        nxt = r.anchors[k] if k < len(r.anchors) else None
        lo = prev.stop if prev else 0
        hi = nxt.first if nxt else len(r.ids)
        first = prev.message + 1 if prev else 0
        last = nxt.message if nxt else len(r.messages)
        if any(m in r.invisible for m in range(first, last)):
            continue  # a message the template renders with nothing to anchor it (no content)
        if prev is not None and prev.role == "tool" and inline_results:
            continue  # a reply that goes on after a tool result inside its own turn
        end = lo  # trained from the start: the end of a reply, its end of turn
        while prev is not None and prev.role == "assistant" and end < hi and trained[end]:
            end += 1
        start = hi  # trained up to the end: a reply's own leading space, a call's opening
        while (
            nxt is not None
            and nxt.role == "assistant"
            and start > end
            and trained[start - 1]
            and (nxt.kind == "call" or r.ws(start - 1))
        ):
            start -= 1
        late = next((t for t in range(end, start) if trained[t]), None)
        if late is not None:
            where = f"between {who(prev)} and " if prev else "before "
            problems.append(
                f"token {late} {r.piece(late)!r} {where}{who(nxt) if nxt else 'the end'} "
                "would train"
            )
    return problems


def describe(problems: list[str], r: Rendering) -> str:
    """One line: the first problem, in its probe and rendering."""
    return f"{problems[0]} (conversation {r.name!r}: {r.text!r})"


__all__ = ["disagreements", "describe", "labels_of"]
