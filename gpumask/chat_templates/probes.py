"""The probe conversations: sentinel contents, rendered with the template, tokenized with
character offsets, and where each content and tool call landed (its anchors)."""

from __future__ import annotations

import dataclasses
from typing import Any

from gpumask.spec import MaskSpecError

Ids = tuple[int, ...]


Ids = tuple[int, ...]

# Probe contents: distinct letter-only words, in shapes (text before, text after). The first
# two end in a letter and in a full stop (which some vocabularies merge with a following "<");
# the others start with characters that some vocabularies merge with the end of a header
# (SentencePiece's "]{" after "[/INST]", byte-level BPE's "\n\n" after ChatML's "\n").
WORDS = {
    "system": ("Vexqsone", "Vexqstwo"),
    "user": ("Vexquone", "Vexqutwo"),
    "assistant": ("Vexqaone", "Vexqatwo"),
    "tool": ("Vexqtone", "Vexqttwo"),
}
SHAPES = (
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
BASE_SHAPES = 2
CALL_CONTENT = "Vexqcone"
FUNCTION = "vexq_lookup"
ARGUMENT = "vexq_city"
VALUE = "Vexqcity"
CALL_ID = "call00001"
PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": FUNCTION,
            "description": "Look up a city.",
            "parameters": {
                "type": "object",
                "properties": {ARGUMENT: {"type": "string", "description": "The city."}},
                "required": [ARGUMENT],
            },
        },
    }
]


@dataclasses.dataclass
class Anchor:
    """Where a message's content (kind "content") or tool call (kind "call") landed."""

    message: int
    role: str
    kind: str
    start: int  # characters
    end: int
    first: int  # tokens: the first one overlapping the anchor, and one past the last
    stop: int


@dataclasses.dataclass
class Rendering:
    """One probe conversation, rendered, tokenized, with its anchors located."""

    name: str
    shape: int
    messages: list[dict]
    primary: bool  # a conversation without tools
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    anchors: list[Anchor]
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


def probe_message(role: str, content: str | None, call: bool = False) -> dict:
    message: dict[str, Any] = {"role": role, "content": content}
    if call:
        message["tool_calls"] = [
            {
                "id": CALL_ID,
                "type": "function",
                "function": {"name": FUNCTION, "arguments": {ARGUMENT: VALUE}},
            }
        ]
    if role == "tool":
        message["tool_call_id"] = CALL_ID
        message["name"] = FUNCTION
    return message


def probe_conversations(lead: str, trail: str) -> list[tuple[str, list[dict], bool, bool]]:
    """(name, messages, with tools, add_generation_prompt) of every probe conversation."""
    s1 = lead + WORDS["system"][0] + trail
    u1, u2 = (lead + w + trail for w in WORDS["user"])
    a1, a2 = (lead + w + trail for w in WORDS["assistant"])
    t1, t2 = (lead + w + trail for w in WORDS["tool"])
    user, assistant, system = (
        probe_message("user", u1),
        probe_message("assistant", a1),
        probe_message("system", s1),
    )
    user2, assistant2 = probe_message("user", u2), probe_message("assistant", a2)
    call = probe_message("assistant", lead + CALL_CONTENT + trail, call=True)
    bare_call = probe_message("assistant", None, call=True)
    tool, tool2 = probe_message("tool", t1), probe_message("tool", t2)
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


def find_call(text: str, lo: int) -> tuple[int, int] | None:
    """The character span of the tool call after `lo`: the JSON object around its name."""
    name = text.find(FUNCTION, lo)
    if name < 0:
        return None
    start = text.rfind("{", lo, name)
    if start < 0:
        value = text.find(VALUE, name)
        return (name, value + len(VALUE)) if value >= 0 else None
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return start, end + 1
    return None


def render(tokenizer, template, shape, name, messages, tools, gen) -> Rendering | None:
    try:
        text = tokenizer.apply_chat_template(
            messages,
            tools=PROBE_TOOLS if tools else None,
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
        call = find_call(text, lo) if message.get("tool_calls") else None
        if call is not None:
            spans.append((index, "call", *call))
            lo = call[1]
    anchors = []
    for index, kind, start, end in spans:
        first = next(i for i, (_, e) in enumerate(offsets) if e > start)
        stop = next((i for i in range(first, len(ids)) if offsets[i][0] >= end), len(ids))
        anchors.append(Anchor(index, messages[index]["role"], kind, start, end, first, stop))
    return Rendering(
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
