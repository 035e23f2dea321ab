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

    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
    >>> spec = MaskSpec.from_tokenizer(tok)
    >>> from gpumask.chat_templates.probes import render_probes
    >>> r = render_probes(tok, None)["user, assistant"][0]
    >>> disagreements(spec, r)
    []
    >>> wrong = spec.replace(roles={"assistant": [[151644]]})  # '<|im_start|>', the only role
    >>> disagreements(wrong, r)[0]
    "token 24 'V' of the user's content would train"
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from gpumask.chat_templates.probes import TYPES, Probe, Rendering, render
from gpumask.spec import MaskSpec, MaskSpecError


def labels_of(spec: MaskSpec, ids: list[int]) -> list[bool]:
    """Which of `ids` (one conversation) train under `spec`, on the CPU."""
    import torch

    from gpumask.masking import mask_labels

    if not ids:
        return []
    labels, _ = mask_labels(torch.tensor([ids]), spec, backend="torch", return_stats=True)
    return (labels[0] != -100).tolist()


def disagreements(
    spec: MaskSpec, r: Rendering, trained: list[bool] | None = None, inline_results: bool = False
) -> list[str]:
    """Where `spec`'s labels on rendering `r` disagree with its contents (see the module)."""
    trained = labels_of(spec, r.ids) if trained is None else trained
    problems: list[str] = []

    def who(a) -> str:
        return f"the {a.role}'s {'tool call' if a.kind == 'call' else a.kind}"

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
        if nxt is None and r.generation_prompt:
            continue  # what a generation prompt adds is not trained data
        end = lo  # trained from the start: the end of a reply, its end of turn
        while prev is not None and prev.role == "assistant" and end < hi and trained[end]:
            end += 1
        start = hi  # trained up to the end: a reply's own leading space, a call's opening
        while (
            nxt is not None
            and nxt.role == "assistant"
            and start > end
            and trained[start - 1]
            and (nxt.kind != "content" or r.ws(start - 1))
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


@dataclasses.dataclass
class TypeReport:
    """How one conversation type fared: `status` is "agree", "disagree", "not rendered",
    "refused" (from_tokenizer warned that its labels are wrong there) or "calls dropped" (the
    template renders the turn but not its tool calls)."""

    kind: str
    status: str
    conversations: int = 0
    disagreeing: int = 0
    first: str = ""  # the first disagreement: what, and the conversation with trained text


@dataclasses.dataclass
class CheckReport:
    """What :func:`check_template` found, per conversation type."""

    spec: MaskSpec | None
    types: list[TypeReport]
    refused: str = ""  # from_tokenizer's error, when it refused the template
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No refusal and no disagreement on a type the spec accepted."""
        return not self.refused and all(t.status != "disagree" for t in self.types)

    def format(self) -> str:
        """The report as text: a table, then the first disagreement of each failing type."""
        lines = [repr(self.spec)] if self.spec is not None else []
        if self.refused:
            lines.append(f"refused: {self.refused}")
        lines += [f"warning: {w}" for w in self.warnings]
        width = max(len(t.kind) for t in self.types) if self.types else 4
        lines.append(f"{'conversation type':<{width}}  status         agree  disagree")
        for t in self.types:
            agree = t.conversations - t.disagreeing
            counts = f"{agree:>5}  {t.disagreeing:>8}" if t.conversations else ""
            lines.append(f"{t.kind:<{width}}  {t.status:<13}  {counts}".rstrip())
        for t in self.types:
            if t.first:
                lines.append(f"\n--- {t.kind}: {t.first}")
        lines.append("\nOK: every accepted type agrees" if self.ok else "\nFAILED")
        return "\n".join(lines)


def check_template(
    tokenizer: Any,
    spec: MaskSpec | None = None,
    *,
    chat_template: str | None = None,
    n: int = 20,
    seed: int = 0,
) -> CheckReport:
    """Render `n` random conversations of every type the template accepts and compare the
    labels of `spec` (default: what `MaskSpec.from_tokenizer` reads) with their contents.

    Example (the Qwen2.5 tokenizer)::

        >>> from transformers import AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
        >>> report = check_template(tok, n=3)
        >>> report.ok, [(t.kind, t.status) for t in report.types][:2]
        (True, [('exchange', 'agree'), ('system prompt', 'agree')])
    """
    from gpumask.chat_templates.format import read_format
    from gpumask.chat_templates.reading import Reader

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected a number of conversations >= 1, got {n!r}")
    template = chat_template
    reader = Reader(tokenizer, template)
    report = CheckReport(spec=spec, types=[])
    unsupported: dict[str, str] = {}
    inline = False
    try:
        chat_format = read_format(reader, tokenizer, template)  # the probes rendered once
        unsupported = dict(chat_format.unsupported)
        inline = chat_format.tool_results == "inside role 'assistant'"
        if spec is None:
            report.spec = spec = chat_format.spec(tokenizer)
            report.warnings = chat_format.warnings
    except MaskSpecError as error:
        if spec is None:
            report.refused = str(error)
            return report
    rng = random.Random(seed)
    for kind in TYPES:
        renderings = random_renderings(tokenizer, template, reader, kind, n, rng)
        if renderings is None:
            report.types.append(TypeReport(kind, "not rendered"))
            continue
        result = TypeReport(kind, "refused" if kind in unsupported else "agree")
        for r in renderings:
            messages = r.messages
            result.conversations += 1
            calls = sum(len(m.get("tool_calls") or ()) for m in messages)
            if calls and result.status == "agree" and not any(a.kind == "call" for a in r.anchors):
                result.status = "calls dropped"
            trained = labels_of(spec, r.ids)
            problems = disagreements(spec, r, trained, inline)
            if problems:
                result.disagreeing += 1
                if not result.first:
                    result.first = f"{problems[0]}\n{highlight(r, trained)}"
        if result.disagreeing and result.status != "refused":
            result.status = "disagree"
        if result.status == "refused":
            result.first = result.first and f"(from_tokenizer warned) {result.first}"
        report.types.append(result)
    return report


def random_renderings(
    tokenizer: Any, template: str | None, reader: Any, kind: str, n: int, rng: random.Random
) -> list[Rendering] | None:
    """`n` random conversations of type `kind`, rendered as the template renders its probe of
    that type (dict or string arguments, a bare call's None or ""); None when it rendered no
    probe of that type."""
    from gpumask.chat_templates.conversations import conversation

    probes = [rs[0] for rs in reader.renderings.values() if rs[0].type == kind]
    if not probes:
        return None
    call = next((m for m in probes[0].messages if m.get("tool_calls")), None)
    style = {
        "string_arguments": bool(call)
        and isinstance(call["tool_calls"][0]["function"]["arguments"], str),
        "bare_content": "" if call is not None and call["content"] == "" else None,
    }
    out = []
    for _ in range(n):
        messages, tools = conversation(kind, rng, **style)
        r = render(
            tokenizer, template, 0, Probe(kind, kind, (), bool(tools), False), messages, tools
        )
        if r is not None:
            out.append(r)
    return out


def highlight(r: Rendering, trained: list[bool]) -> str:
    """The rendering with its trained text between [[ and ]]."""
    out, at, inside = [], 0, False
    for (s, _), t in zip(r.offsets, trained):
        if t != inside:
            out.append(r.text[at:s] + ("[[" if t else "]]"))
            at, inside = s, t
    out.append(r.text[at:] + ("]]" if inside else ""))
    return "".join(out)
