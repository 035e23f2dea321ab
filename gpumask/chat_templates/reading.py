"""Readings taken off the probe renderings: ends of turn, headers, tool calls, tool results."""

from __future__ import annotations

import copy
import functools
from typing import Any

from gpumask.chat_templates.probes import (
    BASE_SHAPES,
    CALL_ID,
    FUNCTION,
    SHAPES,
    Ids,
    Rendering,
    render_probes,
)
from gpumask.spec import MaskSpecError, encode_in_context


def closes_json(r: Rendering, i: int) -> bool:
    """Whether token i is only quotes and closing brackets (the end of a JSON payload)."""
    piece = r.piece(i).strip()
    return bool(piece) and not piece.strip('"}]')


def common_prefix(seqs: list[Ids]) -> Ids:
    out: list[int] = []
    for column in zip(*seqs):
        if any(x != column[0] for x in column):
            break
        out.append(column[0])
    return tuple(out)


def add_alt(alts: list[Ids], ids: Ids) -> None:
    if ids and ids not in alts:
        alts.append(ids)


def _is_payload(piece: str) -> bool:
    """Whether a token is part of what a template wraps around a tool result: JSON, or the
    probe's own function name (Gemma 4's ``<|tool_response>response:NAME{...}``)."""
    return '"' in piece or "{" in piece or any(p in piece for p in (FUNCTION, FUNCTION[:4]))


def _wrapper_only(open_text: str, close_text: str) -> tuple[str, str]:
    """The text that opens and closes a tool result, without what belongs to the result:
    the function's name or call id and what follows it, JSON punctuation next to the content."""
    cuts = [at for p in (FUNCTION, CALL_ID) if (at := open_text.find(p)) >= 0]
    if cuts:
        open_text = open_text[: min(cuts)]
    return open_text.rstrip().rstrip("{[\"':").rstrip(), close_text.lstrip().lstrip('"}]').lstrip()


def _after_ends_of_turn(
    r: Rendering, span: tuple[int, int], eots: dict[str, tuple[Ids, ...]]
) -> tuple[int, int]:
    """A header holds no end of turn (EXAONE 4's ``[|endofturn|]\\n[|assistant|]`` after a tool
    result's closer read as its end): `span` from after the last one in it, and whitespace."""
    lo, hi = span
    for alt in {e for role in ("user", "assistant") for e in eots.get(role, ())}:
        at = r.find(alt, lo, hi)
        while at >= 0:
            lo = at + len(alt)
            at = r.find(alt, lo, hi)
    if lo > span[0]:
        while lo < hi and r.ws(lo):
            lo += 1
    return lo, hi


def _prefixes(seqs: list[Ids], firsts: list, skip_space: bool):
    """(common prefix, rendering, start) per group of the token runs after a role's contents,
    grouped by their first token that is not whitespace (harmony ends its last reply with
    ``<|return|>``, the others with ``<|end|>``); the leading whitespace is skipped where
    headers can stop the reading (`skip_space`). A content with nothing but whitespace after
    it (at the end of the rendering) means no end of turn at all."""
    if any(all(r.ws(start + i) for i in range(len(seq))) for seq, (r, start) in zip(seqs, firsts)):
        return [((), *firsts[0])]  # nothing but whitespace after a content, at the end
    groups: dict[int, list[tuple[Ids, Rendering, int]]] = {}
    for seq, (r, start) in zip(seqs, firsts):
        lead = 0
        while skip_space and lead < len(seq) and r.ws(start + lead):
            lead += 1
        if lead < len(seq):
            groups.setdefault(seq[lead], []).append((seq[lead:], r, start + lead))
    return [
        (common_prefix([seq for seq, _, _ in group]), group[0][1], group[0][2])
        for group in groups.values()
    ]


def _ends_with(gap: Ids, alt: Ids) -> bool:
    """Whether `gap` is `alt`, after whitespace or closing punctuation of its own."""
    return bool(alt) and len(gap) >= len(alt) and gap[len(gap) - len(alt) :] == alt


class Reader:
    """The probe renderings of one template, and the readings taken off them."""

    def __init__(self, tokenizer: Any, template: str | None) -> None:
        source = template if template is not None else getattr(tokenizer, "chat_template", None)
        if not source:
            raise MaskSpecError(
                "tokenizer has no chat_template to read the chat format from; set "
                "tokenizer.chat_template, pass chat_template=..., or write the MaskSpec by hand"
            )
        if isinstance(source, dict):  # named templates: apply_chat_template picks one per probe
            source = "\n".join(str(t) for t in source.values())
        elif not isinstance(source, str):
            raise MaskSpecError(
                f"chat_template: expected a Jinja template string, got {type(source).__name__}"
            )
        self.tokenizer = tokenizer
        self.emits_bos = "bos_token" in source
        self.bos = getattr(tokenizer, "bos_token_id", None)
        # Control tokens: special ones and every added token (DeepSeek's chat tokens are
        # added but not flagged special).
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self.control = set(getattr(tokenizer, "all_special_ids", ())) | {int(i) for i in added}
        self.renderings = render_probes(tokenizer, template)

    def without(self, kinds: set[str | None]) -> Reader:
        """The same readings, without the renderings of the conversation types `kinds`."""
        other = copy.copy(self)
        other.renderings = {
            name: rs for name, rs in self.renderings.items() if rs[0].type not in kinds
        }
        return other

    def all(self, primary: bool | None = None) -> list[Rendering]:
        return [
            r
            for rs in self.renderings.values()
            for r in rs
            if primary is None or r.primary == primary
        ]

    def _leads_into_reply(self, plain: str, with_prompt: str) -> bool:
        """Whether the generation prompt adds nothing after this ending: the text after the
        last message then leads into the assistant's reply (Mistral's `[/INST]`)."""
        a = {r.shape: r.text for r in self.renderings.get(plain, ())}
        b = {r.shape: r.text for r in self.renderings.get(with_prompt, ())}
        shapes = a.keys() & b.keys()
        return bool(shapes) and all(a[shape] == b[shape] for shape in shapes)

    def end_of_turn(
        self, role: str, known: dict[str, list[Ids]], others: tuple[Ids, ...] = ()
    ) -> tuple[Ids, ...]:
        """The end-of-turn alternatives of `role`: per probe shape, the common prefix of the
        tokens after every content of that role, from its first token that is not whitespace up
        to the next whitespace-only token or header. A tool result is read where its turn
        ends (the last of consecutive results). With `others` (the user's and assistant's
        ends), what is read becomes the one of them it holds (EXAONE 4's
        ``</tool_result>[|endofturn|]``) or the first that follows it (the text of a default
        preamble after a system content is the system turn's, not its end)."""
        if role == "user" and self._leads_into_reply("user only", "user only, generation prompt"):
            return ()
        if role == "tool" and self._leads_into_reply(
            "ends with a tool result", "ends with a tool result, generation prompt"
        ):
            return ()
        headers = [alt for alts in known.values() for alt in alts]
        found: list[Ids] = []
        for shape in range(len(SHAPES)):
            seqs, firsts, into_reply = [], [], set()
            for r in self.all():
                if r.shape != shape:
                    continue
                for k, a in enumerate(r.anchors):
                    if (
                        a.role == role
                        and a.kind == "content"
                        and not r.messages[a.message].get("tool_calls")
                        and not (
                            role == "tool"
                            and r.anchors[k + 1 :][:1]
                            and r.anchors[k + 1].role == "tool"
                        )
                    ):
                        start = a.stop
                        while role == "tool" and start < r.after(k) and closes_json(r, start):
                            start += 1  # the quote or brace closing a result's JSON is its own
                        seqs.append(tuple(r.ids[start : r.after(k)]))
                        firsts.append((r, start))
                        if role == "tool" and r.anchors[k + 1 :][:1]:
                            if r.anchors[k + 1].role == "assistant":
                                into_reply.add(seqs[-1])
            if not seqs:
                continue
            for prefix, r, at in _prefixes(seqs, firsts, bool(known)):
                n = next(
                    (
                        i
                        for i in range(len(prefix))
                        if r.ws(at + i)
                        or any(r.find(alt, at + i, at + i + len(alt)) == at + i for alt in headers)
                    ),
                    len(prefix),
                )
                alt = prefix[:n]
                if any(_ends_with(gap, alt) for gap in into_reply):
                    continue  # what ends a result leads into a reply: its header (DeepSeek)
                inside = [
                    o for o in others if any(alt[i : i + len(o)] == o for i in range(len(alt)))
                ]
                later = [  # boilerplate after the content (Command-R's preamble), then the end
                    (i, o)
                    for o in others
                    for i in range(len(prefix))
                    if prefix[i : i + len(o)] == o
                ]
                if inside:
                    alt = inside[0]
                elif later and alt not in others:
                    alt = min(later)[1]
                add_alt(found, alt)
        return tuple(found)

    def header_span(
        self,
        r: Rendering,
        k: int,
        eots: dict[str, tuple[Ids, ...]],
        known: dict[str, list[Ids]],
        inside: str | None,
    ) -> tuple[int, int] | None:
        """The token range [lo, hi) of the header before anchor k of `r`, or None."""
        a = r.anchors[k]
        prev = r.anchors[k - 1] if k else None
        if prev is not None and prev.message == a.message:
            return None  # a tool call after the content of the same message
        if any(m in r.invisible for m in range(prev.message + 1 if prev else 0, a.message)):
            return None
        lo, hi = (prev.stop if prev else 0), a.first
        if prev is None:
            for alt in known.get(a.role, ()):
                if r.find(alt, hi - len(alt), hi) == hi - len(alt) >= 0:
                    return hi - len(alt), hi
            if self.emits_bos and lo < hi and r.ids[lo] == self.bos:
                lo += 1
            for alt in {e for alts in eots.values() for e in alts}:
                while (at := r.find(alt, lo, hi)) >= 0:  # a default system turn
                    lo = at + len(alt)
        else:
            prev_role = "assistant" if prev.kind == "call" else prev.role
            if prev_role == "tool" and inside:
                prev_role = inside
            ends = [(at, len(e)) for e in eots.get(prev_role, ()) if (at := r.find(e, lo, hi)) >= 0]
            if ends:
                at, n = min(ends)
                lo = at + n
            elif eots.get(prev_role):
                return None
            elif prev_role == "tool":
                heads = [at for alt in known.get(a.role, ()) if (at := r.find(alt, lo, hi)) >= 0]
                lo = min(
                    heads, default=next((i for i in range(lo, hi) if r.ids[i] in self.control), -1)
                )
                if lo < 0:  # the payload's closing punctuation is the result's
                    lo = prev.stop
                    while lo < hi and (r.ws(lo) or closes_json(r, lo)):
                        lo += 1
        while lo < hi and r.ws(lo):
            lo += 1
        if a.role == "tool":  # a wrapper around the result's content is not the header's
            cut = next((i for i in range(lo, hi) if _is_payload(r.piece(i))), hi)
            if cut < hi:
                hi = cut
                while hi > lo and r.ws(hi - 1):
                    hi -= 1
        starts = [alt for alt in known.get(a.role, ()) if r.find(alt, lo, lo + len(alt)) == lo]
        prompt = self.prompt_header  # the header as a generation prompt writes it
        prompted = a.role == "assistant" and prompt and r.find(prompt, lo, lo + len(prompt)) == lo
        if a.kind == "reasoning" and (starts or prompted):
            # what opens a reasoning block is the reply's own: the shortest header before it,
            # and the whitespace after it
            end = lo + len(min([*starts, *([prompt] if prompted else [])], key=len))
            while end < hi and r.ws(end):
                end += 1
            return lo, end
        if a.kind == "call" and prompted and not starts:
            return lo, lo + len(prompt)  # a call's opening text (Command-A's <|START_ACTION|>)
        if starts and (a.kind == "call" or not r.primary or prev is None):
            # a known header, then text of the turn (a call's wrapper, a tool list)
            return lo, lo + len(max(starts, key=len))
        return (lo, hi) if lo < hi else None

    @functools.cached_property
    def prompt_header(self) -> Ids:
        """The tokens a generation prompt adds after a user turn: the assistant's header as
        the model is prompted with it (empty when the template adds nothing)."""
        plain = {r.shape: r for r in self.renderings.get("user only", ())}
        for r in self.renderings.get("user only, generation prompt", ()):
            base = plain.get(r.shape)
            if base is not None and r.text.startswith(base.text) and r.shape == 0:
                n = len(common_prefix([tuple(base.ids), tuple(r.ids)]))
                while n < len(r.ids) and r.ws(n):
                    n += 1
                return tuple(r.ids[n:])
        return ()

    def headers(self, eots, known, inside, renderings) -> dict[str, list[Ids]]:
        """Header alternatives per role read before every anchor of `renderings`.

        Headers after a turn of a conversation without tools are read first, as they are; the
        others (the first message's, after a default system turn or a BOS; a tool
        conversation's, where a tool list or a call may follow) are cut to one of those where
        one starts them. Contents that start with a character that merges with a header's last
        token give that header without it (a header of one token only when it is special).
        """
        found: dict[str, list[Ids]] = {}
        for step in ("after a turn", "others", "merged"):
            if step != "after a turn":
                known = {
                    role: [*known.get(role, ()), *found.get(role, ())] for role in {*known, *found}
                }
            for r in renderings:
                for k, a in enumerate(r.anchors):
                    merged = r.shape >= BASE_SHAPES
                    after_a_turn = r.primary and k > 0 and not merged and a.kind != "reasoning"
                    if (
                        (a.role == "tool" and inside)
                        or (step == "merged") != merged
                        or (step == "after a turn") != after_a_turn
                    ):
                        continue
                    span = self.header_span(r, k, eots, known, inside)
                    if span is None:
                        continue
                    span = _after_ends_of_turn(r, span, eots)
                    alt = tuple(r.ids[span[0] : span[1]])
                    if not alt:
                        continue
                    if step != "merged" or self._merged_variant(r, span, known.get(a.role, ())):
                        add_alt(found.setdefault(a.role, []), alt)
        return found

    def _merged_variant(self, r: Rendering, span: tuple[int, int], known: list[Ids]) -> bool:
        """Whether the header at `span` is a known one that lost its last token to a content
        that merges with it (a header of one token only when it is a control token)."""
        alt = tuple(r.ids[span[0] : span[1]])
        return any(
            len(alt) < len(h) and h[: len(alt)] == alt and (len(alt) > 1 or alt[0] in self.control)
            for h in known
        )

    def tool_call(self, eots, known, result_open: str | None):
        """(opens, closes) of the text around a tool call's JSON, or None when there is none.
        `result_open` is the text that opens a tool result right after a call, if one can."""
        opens: list[Ids] = []
        closes: list[Ids] = []
        for r in self.all(primary=False):
            for k, a in enumerate(r.anchors):
                if a.kind != "call":
                    continue
                after_call, before_call = (
                    0 <= j < len(r.anchors)
                    and r.anchors[j].kind == "call"
                    and r.anchors[j].message == a.message
                    for j in (k - 1, k + 1)
                )
                if after_call and before_call:
                    continue  # the text between two calls repeats a close and an open
                if k and r.anchors[k - 1].message == a.message:
                    lo = r.anchors[k - 1].end
                else:
                    span = self.header_span(r, k, eots, known, None)
                    if span is None:
                        continue
                    lo = r.offsets[span[1] - 1][1]
                ends = [at for e in eots["assistant"] if (at := r.find(e, a.stop, r.after(k))) >= 0]
                hi = r.offsets[min(ends)][0] if ends else r.anchors[k + 1].start
                open_text = r.text[lo : a.start].strip().rstrip("[").strip()
                close_text = r.text[a.end : hi].strip().lstrip("]").strip()
                if result_open and close_text.endswith(result_open):
                    close_text = close_text[: -len(result_open)].strip()
                if open_text and not after_call:
                    at = r.text.rfind(open_text, lo, a.start)
                    add_alt(opens, r.cover(at, at + len(open_text)))
                if close_text and not before_call:
                    at = r.text.find(close_text, a.end, hi)
                    add_alt(closes, r.cover(at, at + len(close_text)))
        return (tuple(opens), tuple(closes)) if opens else None

    def tool_results(self, eots, known) -> tuple[str | None, str, str]:
        """(the role whose turn holds tool results, None for a role of their own; the texts
        that open and close a result inside that turn, "" when there are none)."""
        for r in self.renderings.get("tool call with content", ()):
            k = next((k for k, a in enumerate(r.anchors) if a.role == "tool"), 0)
            if not k:
                continue
            prev, a = r.anchors[k - 1], r.anchors[k]
            nxt = r.anchors[k + 1].start if k + 1 < len(r.anchors) else len(r.text)
            ends = [
                (at, len(e))
                for e in eots["assistant"]
                if (at := r.find(e, prev.stop, a.first)) >= 0
            ]
            if not ends and not eots["assistant"]:
                return None, "", ""  # no turn ever ends: a result has a header of its own
            if not ends:  # the call's turn goes on: the result is inside it, up to the reply
                close = r.text[a.end : nxt].strip()
                return "assistant", self._result_open(close), close
            lo = sum(min(ends))
            while lo < a.first and r.ws(lo):
                lo += 1
            holders = [
                (len(alt), role)
                for role in ("user", "system", "assistant")
                for alt in known.get(role, ())
                if r.find(alt, lo, lo + len(alt)) == lo
            ]
            if not holders:
                return None, "", ""
            n, inside = max(holders)
            ends = [at for e in eots.get(inside, ()) if (at := r.find(e, a.stop, r.after(k))) >= 0]
            hi = r.offsets[min(ends)][0] if ends else nxt
            return (
                inside,
                r.text[r.offsets[lo + n - 1][1] : a.start].strip(),
                r.text[a.end : hi].strip(),
            )
        return None, "", ""

    def _result_open(self, close: str) -> str:
        """The text that opens a tool result: what follows `close` between two results."""
        for r in self.renderings.get("tool call without content", ()):
            for before, a in zip(r.anchors, r.anchors[1:]):
                gap = r.text[before.end : a.start].strip()
                if before.role == a.role == "tool" and close and gap.startswith(close):
                    return gap[len(close) :].strip()
        return ""

    def reasoning_span(self, eots, known) -> tuple | None:
        """(opens, closes, is a turn) around a reply's reasoning block, as tokens in context
        and in the contexts of other text: the text between the header and the reasoning, and
        between the reasoning and the content. Where the reasoning is a turn of its own
        (harmony's analysis channel, which ends with an end of turn), the opens are that
        turn's headers and there are no closes."""
        opens: list[Ids] = []
        closes: list[Ids] = []
        turn = False
        for r in self.renderings.get("reasoning", ()):
            k = next(k for k, a in enumerate(r.anchors) if a.kind == "reasoning")
            a = r.anchors[k]
            span = self.header_span(r, k, eots, known, None)
            lo = r.offsets[span[1] - 1][1] if span else r.anchors[k - 1].end if k else 0
            hi = r.anchors[k + 1].first if k + 1 < len(r.anchors) else len(r.ids)
            ends = [(at, e) for e in eots["assistant"] if (at := r.find(e, a.stop, hi)) >= 0]
            open_text = r.text[lo : a.start].strip()
            if ends and span:  # a turn of its own: its header, through the reasoning's opening
                end = r.text.rfind(open_text, lo, a.start) + len(open_text)
                add_alt(opens, r.cover(r.offsets[span[0]][0], end))
                turn = True
                continue
            nxt = r.anchors[k + 1].start if k + 1 < len(r.anchors) else len(r.text)
            close_text = r.text[a.end : nxt].strip()
            for text, found, where in ((open_text, opens, lo), (close_text, closes, a.end)):
                if text:
                    at = r.text.find(text, where)
                    add_alt(found, r.cover(at, at + len(text)))
                    for alt in encode_in_context(self.tokenizer, text):  # as in other text
                        add_alt(found, alt)
        if not (opens and (closes or turn)):
            return None
        return tuple(opens), tuple(closes), turn

    def wrapper_span(self, open_text: str, close_text: str) -> tuple | None:
        """(opens, closes) of the text around every tool result, as tokens in context."""
        open_text, close_text = _wrapper_only(open_text, close_text)
        if not (open_text and close_text):
            return None
        opens: list[Ids] = []
        closes: list[Ids] = []
        for r in self.all(primary=False):
            for k, a in enumerate(r.anchors):
                if a.role == "tool":
                    lo = r.anchors[k - 1].end if k else 0
                    hi = r.anchors[k + 1].start if k + 1 < len(r.anchors) else len(r.text)
                    if (at := r.text.rfind(open_text, lo, a.start)) >= 0:
                        add_alt(opens, r.cover(at, at + len(open_text)))
                    if (at := r.text.find(close_text, a.end, hi)) >= 0:
                        add_alt(closes, r.cover(at, at + len(close_text)))
        return tuple(opens), tuple(closes)
