"""Read a chat format off a tokenizer's own chat template: `MaskSpec.from_tokenizer`.

The template is rendered on probe conversations whose contents are sentinels (strings like
``Vexquone`` that occur nowhere else and do not merge with their neighbours), the rendering
is tokenized with character offsets, and the markers are read as token ids *in context*:

- **end of turn** of a role: the tokens every turn of that role has right after its content
  (their common prefix), up to the first whitespace-only token; the ``\\n`` that ChatML puts
  after ``<|im_end|>`` lies between turns and belongs to no turn;
- **header** of a role: the tokens between the previous turn's end of turn (and any
  whitespace after it) and the content, e.g. ``<|im_start|>assistant\\n``. A template with no
  generation prompt and nothing that ends a user turn (Mistral ``[INST] q [/INST]reply</s>``)
  leads into the reply right after the user's content: that text (``[/INST]``) is the
  assistant's header. Every distinct context gives an alternative: the first header of a
  SentencePiece conversation has a leading ``▁``, Qwen3 puts an empty ``<think>`` block in the
  last assistant turn only, Mistral's reply after a tool result follows ``[/TOOL_RESULTS]``;
- **tool calls**: the wrapper around the call's JSON (Qwen ``<tool_call>``...``</tool_call>``,
  Mistral ``[TOOL_CALLS]``); calls stay trained unless `train_tool_calls=False`, which masks
  them as a span (the wrapper needs an open and a close);
- **tool results**: a role of their own when their header is new (Llama 3 ``ipython``,
  Mistral ``[TOOL_RESULTS]``), or inside another role's turn when they follow that role's
  header (Qwen puts ``<tool_response>`` in a user turn), or inside the assistant's turn when no
  end of turn comes between the call and the result; inside a turn, their wrapper becomes a
  masked span.
  Text that a template wraps around a tool result's content (Mistral's ``{"content": ``...
  ``, "call_id": "..."}``, Llama 3.1's quotes) is the result's, not a marker's: a tool header
  ends before the first ``{`` or ``"``, a tool result's end of turn starts after the quotes and
  brackets that close it, and the text after a result with no end of turn belongs to it up to
  the first special token.

The BOS and a default system turn (SmolLM2, Qwen) in front of the first message are not part
of its header. A system message that the template folds into a user turn (Gemma, Mistral)
gives no system role. Probes the template rejects (strict alternation, no system or tool role)
are skipped; the rest must be enough, or :class:`MaskSpecError` names what was not found. The
result is checked on every probe (assistant content trained, everything else's content
masked) before it is returned.

Example (the Qwen2.5 tokenizer and its own template)::

    >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
    >>> spec = MaskSpec.from_tokenizer(tok)
    >>> spec.roles["assistant"]  # '<|im_start|>assistant\\n', and without the '\\n' it can merge
    ((151644, 77091, 198), (151644, 77091))
    >>> spec.end_of_turn  # '<|im_end|>'
    ((151645,),)
    >>> fmt = detect_chat_format(tok)
    >>> fmt.tool_results, tok.decode(fmt.masked_spans[0][0][0])
    ("inside role 'user'", '<tool_response>\\n')
    >>> fmt.tool_call  # '<tool_call>' ... '</tool_call>', trained unless train_tool_calls=False
    (((151657,),), ((151658,),))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gpumask.spec import MaskSpec, MaskSpecError

Ids = tuple[int, ...]

# Probe contents: distinct letter-only words, in shapes (text before, text after). The first
# two end in a letter and in a full stop (which some vocabularies merge with a following "<");
# the others start with characters that some vocabularies merge with the end of a header
# (SentencePiece's "]{" after "[/INST]", byte-level BPE's "\n\n" after ChatML's "\n").
_WORDS = {
    "system": ("Vexqsone", "Vexqstwo"),
    "user": ("Vexquone", "Vexqutwo"),
    "assistant": ("Vexqaone", "Vexqatwo"),
    "tool": ("Vexqtone", "Vexqttwo"),
}
_SHAPES = (
    ("", ""),
    ("", "."),
    ("{", ""),
    ("(", ""),
    ("1", ""),
    ('"', ""),
    (" ", ""),
    ("\n", ""),
    ("\n\n", ""),
)
_BASE_SHAPES = 2
_CALL_CONTENT = "Vexqcone"
_FUNCTION = "vexq_lookup"
_ARGUMENT = "vexq_city"
_VALUE = "Vexqcity"
_CALL_ID = "call00001"
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _FUNCTION,
            "description": "Look up a city.",
            "parameters": {
                "type": "object",
                "properties": {_ARGUMENT: {"type": "string", "description": "The city."}},
                "required": [_ARGUMENT],
            },
        },
    }
]
_ROLE_ORDER = ("system", "user", "assistant", "tool")
_MAIN_ROLES = ("user", "assistant")


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """What :func:`detect_chat_format` read off a chat template, as token ids in context.

    `headers`: role -> header alternatives. `end_of_turn`: end-of-turn alternatives (all roles).
    `tool_call`: (opens, closes) wrapping a tool call, `None` when the template renders calls
    with no wrapper (or none at all); `closes` may be empty (Mistral's call ends with the turn).
    `tool_results`: where tool results live: ``"role 'tool'"``, ``"inside role 'user'"`` or
    ``"not rendered"``. `masked_spans`: (opens, closes) of tool-result wrappers inside another
    role's turn. `tool_calls_rendered`: whether the template renders tool calls at all.
    """

    headers: dict[str, tuple[Ids, ...]]
    end_of_turn: tuple[Ids, ...]
    masked_spans: tuple[tuple[tuple[Ids, ...], tuple[Ids, ...]], ...]
    tool_call: tuple[tuple[Ids, ...], tuple[Ids, ...]] | None
    tool_calls_rendered: bool
    tool_results: str

    def spec(self, tokenizer: Any = None, *, train_tool_calls: bool = True) -> MaskSpec:
        """The `MaskSpec` of this format (tool calls masked as a span if not `train_tool_calls`)."""
        spans = [([list(i) for i in o], [list(i) for i in c]) for o, c in self.masked_spans]
        if not train_tool_calls:
            if self.tool_call is None or not self.tool_call[1]:
                raise MaskSpecError(
                    "train_tool_calls=False: the template "
                    + (
                        "renders no tool call"
                        if not self.tool_calls_rendered
                        else "wraps tool calls in no (open, close) pair"
                        if self.tool_call is None
                        else "opens tool calls but has no close marker"
                    )
                    + ", so tool calls cannot be masked as a span"
                )
            opens, closes = self.tool_call
            spans.append(([list(i) for i in opens], [list(i) for i in closes]))
        return MaskSpec(
            roles={role: [list(i) for i in alts] for role, alts in self.headers.items()},
            end_of_turn=[list(i) for i in self.end_of_turn] or None,
            masked_spans=spans,
            tokenizer=tokenizer,
        )


def spec_from_tokenizer(
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    train_tool_calls: bool = True,
    **overrides: Any,
) -> MaskSpec:
    """The `MaskSpec` of `tokenizer`'s chat template (see the module docstring).

    Args:
        tokenizer: a fast Hugging Face tokenizer with a chat template.
        chat_template: a Jinja template to read instead of `tokenizer.chat_template`.
        train_tool_calls: train the assistant's tool calls (default); False masks them as a
            span (needs a template that wraps calls in an open and a close marker).
        **overrides: `MaskSpec` keyword arguments that replace what was detected, e.g.
            `last_turn_only=True`, `train_roles=("assistant", "tool")`, `masked_spans=[...]`.

    Example::

        >>> spec = spec_from_tokenizer(tok, last_turn_only=True)  # Qwen2.5
        >>> spec.roles["assistant"], spec.last_turn_only
        (((151644, 77091, 198), (151644, 77091)), True)
    """
    chat_format = detect_chat_format(tokenizer, chat_template=chat_template)
    spec = chat_format.spec(tokenizer, train_tool_calls=train_tool_calls)
    if overrides:
        spec = spec.replace(tokenizer=tokenizer, **overrides)
    return spec


# --- probes ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Anchor:
    """Where a message's content (kind "content") or tool call (kind "call") landed."""

    message: int
    role: str
    kind: str
    start: int  # characters
    end: int
    first: int  # tokens: the first one overlapping the anchor, and one past the last
    stop: int


@dataclasses.dataclass
class _Rendering:
    """One probe conversation, rendered, tokenized, with its anchors located."""

    name: str
    shape: int
    messages: list[dict]
    primary: bool  # a conversation without tools
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    anchors: list[_Anchor]
    invisible: set[int]  # messages with no anchor (dropped by the template)

    def piece(self, i: int) -> str:
        return self.text[self.offsets[i][0] : self.offsets[i][1]]

    def ws(self, i: int) -> bool:
        return not self.piece(i).strip()

    def cover(self, start: int, end: int) -> Ids:
        """The tokens overlapping characters [start, end)."""
        return tuple(t for t, (s, e) in zip(self.ids, self.offsets) if s < end and e > start)

    def find(self, sub: Ids, lo: int = 0, hi: int | None = None) -> int:
        """The first token index >= lo where `sub` starts and ends before `hi`, or -1."""
        hi = len(self.ids) if hi is None else hi
        for i in range(lo, hi - len(sub) + 1):
            if tuple(self.ids[i : i + len(sub)]) == sub:
                return i
        return -1

    def after(self, k: int) -> int:
        """The token index where the anchor after anchor k starts (or the end)."""
        return self.anchors[k + 1].first if k + 1 < len(self.anchors) else len(self.ids)


def _message(role: str, content: str | None, call: bool = False) -> dict:
    message: dict[str, Any] = {"role": role, "content": content}
    if call:
        message["tool_calls"] = [
            {
                "id": _CALL_ID,
                "type": "function",
                "function": {"name": _FUNCTION, "arguments": {_ARGUMENT: _VALUE}},
            }
        ]
    if role == "tool":
        message["tool_call_id"] = _CALL_ID
        message["name"] = _FUNCTION
    return message


def _probes(lead: str, trail: str) -> list[tuple[str, list[dict], bool, bool]]:
    """(name, messages, with tools, add_generation_prompt) of every probe conversation."""
    s1 = lead + _WORDS["system"][0] + trail
    u1, u2 = (lead + w + trail for w in _WORDS["user"])
    a1, a2 = (lead + w + trail for w in _WORDS["assistant"])
    t1, t2 = (lead + w + trail for w in _WORDS["tool"])
    user, assistant, system = (
        _message("user", u1),
        _message("assistant", a1),
        _message("system", s1),
    )
    user2, assistant2 = _message("user", u2), _message("assistant", a2)
    call = _message("assistant", lead + _CALL_CONTENT + trail, call=True)
    bare_call = _message("assistant", None, call=True)
    tool, tool2 = _message("tool", t1), _message("tool", t2)
    return [
        ("user, assistant", [user, assistant], False, False),
        ("system, two exchanges", [system, user, assistant, user2, assistant2], False, False),
        ("consecutive assistant turns", [user, assistant, assistant2], False, False),
        ("consecutive user turns", [user, user2, assistant], False, False),
        ("system in the middle", [user, assistant, system, user2, assistant2], False, False),
        ("user only", [user], False, False),
        ("user only, generation prompt", [user], False, True),
        ("tool call with content", [user, call, tool, assistant2], True, False),
        ("tool call without content", [user, bare_call, tool, tool2, assistant2], True, False),
        ("ends with a tool result", [user, call, tool], True, False),
        ("ends with a tool result, generation prompt", [user, call, tool], True, True),
    ]


def _find_call(text: str, lo: int) -> tuple[int, int] | None:
    """The character span of the tool call after `lo`: the JSON object around its name."""
    name = text.find(_FUNCTION, lo)
    if name < 0:
        return None
    start = text.rfind("{", lo, name)
    if start < 0:
        value = text.find(_VALUE, name)
        return (name, value + len(_VALUE)) if value >= 0 else None
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return start, end + 1
    return None


def _render(tokenizer, template, shape, name, messages, tools, gen) -> _Rendering | None:
    try:
        text = tokenizer.apply_chat_template(
            messages,
            tools=_PROBE_TOOLS if tools else None,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=gen,
        )
    except Exception:  # a template that rejects this conversation (raise_exception, ...)
        return None
    if not isinstance(text, str):
        return None
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise MaskSpecError(
            f"tokenizer: reading the chat format needs character offsets, which "
            f"{type(tokenizer).__name__} does not give; load a fast tokenizer"
        ) from error
    ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    spans: list[tuple[int, str, int, int]] = []
    lo = 0
    for index, message in enumerate(messages):
        content = message.get("content")
        at = text.find(content, lo) if content else -1
        if at >= 0:
            spans.append((index, "content", at, at + len(content)))
            lo = at + len(content)
        call = _find_call(text, lo) if message.get("tool_calls") else None
        if call is not None:
            spans.append((index, "call", *call))
            lo = call[1]
    anchors = []
    for index, kind, start, end in spans:
        first = next(i for i, (_, e) in enumerate(offsets) if e > start)
        stop = next((i for i in range(first, len(ids)) if offsets[i][0] >= end), len(ids))
        anchors.append(_Anchor(index, messages[index]["role"], kind, start, end, first, stop))
    return _Rendering(
        name=name,
        shape=shape,
        messages=messages,
        primary=not tools,
        text=text,
        ids=ids,
        offsets=offsets,
        anchors=anchors,
        invisible=set(range(len(messages))) - {a.message for a in anchors},
    )


def _closes_json(r: _Rendering, i: int) -> bool:
    """Whether token i is only quotes and closing brackets (the end of a JSON payload)."""
    piece = r.piece(i).strip()
    return bool(piece) and not piece.strip('"}]')


def _common_prefix(seqs: list[Ids]) -> Ids:
    out: list[int] = []
    for column in zip(*seqs):
        if any(x != column[0] for x in column):
            break
        out.append(column[0])
    return tuple(out)


def _add(alts: list[Ids], ids: Ids) -> None:
    if ids and ids not in alts:
        alts.append(ids)


class _Detector:
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
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self.special = set(getattr(tokenizer, "all_special_ids", ())) | {
            int(i) for i, t in added.items() if getattr(t, "special", False)
        }
        self.renderings: dict[str, list[_Rendering]] = {}
        plain: dict[str, str] = {}
        words = [*(w for ws in _WORDS.values() for w in ws), _CALL_CONTENT]
        for shape, (lead, trail) in enumerate(_SHAPES):
            for name, messages, tools, gen in _probes(lead, trail):
                r = _render(tokenizer, template, shape, name, messages, tools, gen)
                if r is None:
                    continue
                if shape == 0:
                    plain[name] = r.text
                else:  # a template that trims or edits contents tells nothing more here
                    expected = plain.get(name)
                    for word in words if expected is not None else ():
                        expected = expected.replace(word, lead + word + trail)
                    if r.text != expected:
                        continue
                self.renderings.setdefault(name, []).append(r)

    def all(self, primary: bool | None = None) -> list[_Rendering]:
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

    def end_of_turn(self, role: str, known: dict[str, list[Ids]]) -> tuple[Ids, ...]:
        """The end-of-turn alternatives of `role`: per probe shape, the common prefix of the
        tokens after every content of that role, up to a whitespace-only token or a header."""
        if role == "user" and self._leads_into_reply("user only", "user only, generation prompt"):
            return ()
        if role == "tool" and self._leads_into_reply(
            "ends with a tool result", "ends with a tool result, generation prompt"
        ):
            return ()
        headers = [alt for alts in known.values() for alt in alts]
        found: list[Ids] = []
        for shape in range(len(_SHAPES)):
            seqs, first = [], None
            for r in self.all():
                if r.shape != shape:
                    continue
                for k, a in enumerate(r.anchors):
                    if (
                        a.role == role
                        and a.kind == "content"
                        and not r.messages[a.message].get("tool_calls")
                    ):
                        start = a.stop
                        while role == "tool" and start < r.after(k) and _closes_json(r, start):
                            start += 1  # the quote or brace closing a result's JSON is its own
                        seqs.append(tuple(r.ids[start : r.after(k)]))
                        first = first or (r, start)
            if not seqs:
                continue
            prefix = _common_prefix(seqs)
            r, at = first
            n = next(
                (
                    i
                    for i in range(len(prefix))
                    if r.ws(at + i)
                    or any(r.find(alt, at + i, at + i + len(alt)) == at + i for alt in headers)
                ),
                len(prefix),
            )
            _add(found, prefix[:n])
        return tuple(found)

    def header_span(
        self,
        r: _Rendering,
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
                lo = next((i for i in range(lo, hi) if r.ids[i] in self.special), -1)
                if lo < 0:
                    raise MaskSpecError(
                        "header after a tool result: the template puts no end of turn after a "
                        f"tool result and no special token before the next turn ("
                        f"{r.text[prev.end : a.start]!r} in probe {r.name!r}), so where the "
                        "result's wrapper ends and the next header starts cannot be told"
                    )
        while lo < hi and r.ws(lo):
            lo += 1
        if a.role == "tool":  # a wrapper around the result's content is not the header's
            cut = next((i for i in range(lo, hi) if '"' in r.piece(i) or "{" in r.piece(i)), hi)
            if cut < hi:
                hi = cut
                while hi > lo and r.ws(hi - 1):
                    hi -= 1
        if a.kind == "call" or not r.primary or prev is None:
            # a known header, then text of the turn (a call's wrapper, a tool list)
            starts = [alt for alt in known.get(a.role, ()) if r.find(alt, lo, lo + len(alt)) == lo]
            if starts:
                return lo, lo + len(max(starts, key=len))
        return (lo, hi) if lo < hi else None

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
                    merged = r.shape >= _BASE_SHAPES
                    after_a_turn = r.primary and k > 0 and not merged
                    if (
                        (a.role == "tool" and inside)
                        or (step == "merged") != merged
                        or (step == "after a turn") != after_a_turn
                    ):
                        continue
                    span = self.header_span(r, k, eots, known, inside)
                    if span is None:
                        continue
                    alt = tuple(r.ids[span[0] : span[1]])
                    if (
                        step != "merged"
                        or any(
                            len(alt) < len(h) and h[: len(alt)] == alt
                            for h in known.get(a.role, ())
                        )
                        and (len(alt) > 1 or alt[0] in self.special)
                    ):
                        _add(found.setdefault(a.role, []), alt)
        return found

    def tool_call(self, eots, known, result_open: str | None):
        """(opens, closes) of the text around a tool call's JSON, or None when there is none.
        `result_open` is the text that opens a tool result right after a call, if one can."""
        opens: list[Ids] = []
        closes: list[Ids] = []
        for r in self.all(primary=False):
            for k, a in enumerate(r.anchors):
                if a.kind != "call":
                    continue
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
                if open_text:
                    at = r.text.rfind(open_text, lo, a.start)
                    _add(opens, r.cover(at, at + len(open_text)))
                if close_text:
                    at = r.text.find(close_text, a.end, hi)
                    _add(closes, r.cover(at, at + len(close_text)))
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

    def wrapper_span(self, open_text: str, close_text: str) -> tuple | None:
        """(opens, closes) of the text around every tool result, as tokens in context."""
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
                        _add(opens, r.cover(at, at + len(open_text)))
                    if (at := r.text.find(close_text, a.end, hi)) >= 0:
                        _add(closes, r.cover(at, at + len(close_text)))
        return tuple(opens), tuple(closes)


def _drop_folded(headers: dict[str, list[Ids]], decode) -> dict[str, tuple[Ids, ...]]:
    """A role whose header is the user's or the assistant's (a system message folded into a
    user turn) loses it; a header made of another header and a header of its own role is not
    one (Mistral's `[/TOOL_RESULTS][TOOL_RESULTS]` is two)."""
    main = {alt: role for role in _MAIN_ROLES for alt in headers.get(role, ())}
    for role in _MAIN_ROLES:
        for alt in headers.get(role, ()):
            if main[alt] != role:
                raise MaskSpecError(
                    f"the user and assistant turns have the same header "
                    f"{decode(list(alt))!r}={list(alt)}; the chat format cannot tell them apart"
                )
    every = {alt for alts in headers.values() for alt in alts}
    out: dict[str, tuple[Ids, ...]] = {}
    for role in _ROLE_ORDER:
        alts = [alt for alt in headers.get(role, ()) if role in _MAIN_ROLES or alt not in main]
        alts = [
            alt
            for alt in alts
            if not any(
                len(o) < len(alt)
                and alt[len(alt) - len(o) :] == o
                and alt[: len(alt) - len(o)] in every
                for o in alts
            )
        ]
        if alts:
            out[role] = tuple(alts)
    return out


def detect_chat_format(tokenizer: Any, chat_template: str | None = None) -> ChatFormat:
    """Read the chat format off `tokenizer`'s chat template (or `chat_template`).

    Raises :class:`MaskSpecError` naming what could not be found.

    Example::

        >>> fmt = detect_chat_format(tok)   # Llama 3.1
        >>> [tok.decode(h) for h in fmt.headers["assistant"]]
        ['<|start_header_id|>assistant<|end_header_id|>\\n\\n']
    """
    d = _Detector(tokenizer, chat_template)
    base = d.renderings.get("user, assistant")
    if not base:
        try:
            tokenizer.apply_chat_template(
                [_message("user", "Hi"), _message("assistant", "Hello")],
                chat_template=chat_template,
                tokenize=False,
            )
            error = "it renders no text"
        except Exception as e:  # noqa: BLE001 - reported to the user
            error = f"{type(e).__name__}: {e}"
        raise MaskSpecError(
            f"the chat template rejects a plain user/assistant conversation ({error})"
        )
    for r in base[:1]:
        rendered = {a.role for a in r.anchors}
        for role in _MAIN_ROLES:
            if role not in rendered:
                raise MaskSpecError(
                    f"the chat template renders no {role} content: "
                    f"[user, assistant] gave {r.text!r}"
                )

    main_roles = ("system", "user", "assistant")
    eots = {role: d.end_of_turn(role, {}) for role in main_roles}
    known = d.headers(eots, {}, None, d.all(primary=True))
    eots = {role: d.end_of_turn(role, known) for role in main_roles}
    if not eots["assistant"]:
        r = base[0]
        raise MaskSpecError(
            "end of turn not found: the template puts nothing but whitespace after the "
            f"assistant's content ({r.text[r.anchors[-1].end :]!r} in {r.text!r}), so the end "
            "of an assistant turn cannot be marked; write the MaskSpec by hand"
        )
    known = d.headers(eots, {}, None, d.all(primary=True))
    for role in _MAIN_ROLES:
        if not known.get(role):
            raise MaskSpecError(
                f"header of role {role!r} not found: nothing stands between "
                f"the previous turn's end and the {role}'s content"
            )

    tools = d.all(primary=False)
    inside, result_open, result_close = d.tool_results(eots, known)
    result_span = d.wrapper_span(result_open, result_close) if inside else None
    tool_call = d.tool_call(eots, known, result_open if inside == "assistant" else None)
    eots["tool"] = eots[inside] if inside else d.end_of_turn("tool", known)
    headers = {role: list(alts) for role, alts in known.items()}
    for role, alts in d.headers(eots, known, inside, tools).items():
        for alt in alts:
            _add(headers.setdefault(role, []), alt)
    headers = _drop_folded(headers, tokenizer.decode)
    end_of_turn: list[Ids] = []
    for role in headers:
        for alt in eots.get(role, ()):
            _add(end_of_turn, alt)
    results = any(a.role == "tool" for r in tools for a in r.anchors)
    chat_format = ChatFormat(
        headers=headers,
        end_of_turn=tuple(end_of_turn),
        masked_spans=(result_span,) if result_span else (),
        tool_call=tool_call,
        tool_calls_rendered=any(a.kind == "call" for r in tools for a in r.anchors),
        tool_results=(
            f"inside role {inside!r}"
            if inside
            else "role 'tool'"
            if "tool" in headers
            else "not rendered"
            if not results
            else "no header found"
        ),
    )
    _self_check(d, chat_format)
    return chat_format


def _self_check(d: _Detector, chat_format: ChatFormat) -> None:
    """Mask every probe with the detected format: the tokens of assistant contents and tool
    calls must train, every other role's content must not (a token that a content shares with
    a marker can go either way, by the marker: it is not checked)."""
    import torch

    from gpumask.masking import mask_labels

    spec = chat_format.spec(d.tokenizer)
    for r in d.all():
        labels, _ = mask_labels(torch.tensor([r.ids]), spec, backend="torch", return_stats=True)
        labels = labels[0].tolist()  # (return_stats: a probe that trains nothing is no warning)
        for a in r.anchors:
            want = a.role == "assistant"
            for t in range(a.first, a.stop):
                inside = a.start <= r.offsets[t][0] and r.offsets[t][1] <= a.end
                if inside and (labels[t] != -100) != want:
                    raise MaskSpecError(
                        f"the detected format does not reproduce the probe {r.name!r}: token "
                        f"{t} ({r.piece(t)!r}) of the {a.role}'s {a.kind} would "
                        f"{'not ' if want else ''}train.\nRendering: {r.text!r}\n{spec!r}"
                    )
