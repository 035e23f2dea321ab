"""The probe conversations: sentinel contents, rendered with the template, tokenized with
character offsets, and where each content and tool call landed (its anchors)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import re
from typing import Any

from gpumask.spec import MaskSpecError

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
REASONING = "Vexqrone"
SENTINEL = "Vexq"  # every probe content has it
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
    type: str | None  # the conversation type it checks (None: read only)
    shape: int
    generation_prompt: bool
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


def probe_message(
    role: str, content: str | None, calls: int = 0, string_arguments: bool = False
) -> dict:
    """A probe message; `calls` tool calls, their arguments a dict or a JSON string."""
    message: dict[str, Any] = {"role": role, "content": content}
    if calls:
        arguments = {ARGUMENT: VALUE}
        message["tool_calls"] = [
            {
                "id": CALL_ID if i == 0 else f"{CALL_ID[:-1]}{i + 1}",
                "type": "function",
                "function": {
                    "name": FUNCTION,
                    "arguments": json.dumps(arguments) if string_arguments else arguments,
                },
            }
            for i in range(calls)
        ]
    if role == "tool":
        message["tool_call_id"] = CALL_ID
        message["name"] = FUNCTION
    return message


# The conversation types a template may render, by the names warnings and reports use.
EXCHANGE = "exchange"
TYPES = (
    EXCHANGE,
    "system prompt",
    "several exchanges",
    "consecutive replies",
    "consecutive user turns",
    "system in the middle",
    "tool call",
    "tool call without content",
    "several tool calls",
    "reasoning",
)


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe conversation: its name, its conversation type (None: read, not checked)."""

    name: str
    type: str | None
    messages: tuple[dict, ...]
    tools: bool
    generation_prompt: bool


def probe_conversations(lead: str, trail: str, string_arguments: bool = False) -> list[Probe]:
    """Every probe conversation, its contents in the shape (lead, trail)."""
    s1 = lead + WORDS["system"][0] + trail
    u1, u2 = (lead + w + trail for w in WORDS["user"])
    a1, a2 = (lead + w + trail for w in WORDS["assistant"])
    t1, t2 = (lead + w + trail for w in WORDS["tool"])
    user, user2 = probe_message("user", u1), probe_message("user", u2)
    assistant, assistant2 = probe_message("assistant", a1), probe_message("assistant", a2)
    system = probe_message("system", s1)
    content = lead + CALL_CONTENT + trail
    call = probe_message("assistant", content, 1, string_arguments)
    two_calls = probe_message("assistant", content, 2, string_arguments)
    bare_call = probe_message("assistant", None, 1, string_arguments)
    tool, tool2 = probe_message("tool", t1), probe_message("tool", t2)
    reasoning = lead + REASONING + trail
    thinking = dict(assistant, reasoning_content=reasoning, thinking=reasoning)
    plain = [
        ("user, assistant", EXCHANGE, [user, assistant], False),
        (
            "system, two exchanges",
            "system prompt",
            [system, user, assistant, user2, assistant2],
            False,
        ),
        ("two exchanges", "several exchanges", [user, assistant, user2, assistant2], False),
        (
            "consecutive assistant turns",
            "consecutive replies",
            [user, assistant, assistant2],
            False,
        ),
        ("consecutive user turns", "consecutive user turns", [user, user2, assistant], False),
        (
            "system in the middle",
            "system in the middle",
            [user, assistant, system, user2, assistant2],
            False,
        ),
        ("reasoning", "reasoning", [user, thinking], False),
        ("user only", None, [user], False),
        ("user only, generation prompt", None, [user], True),
    ]
    with_tools = [
        ("tool call with content", "tool call", [user, call, tool, assistant2], False),
        (
            "tool call without content",
            "tool call without content",
            [user, bare_call, tool, tool2, assistant2],
            False,
        ),
        (
            "several tool calls",
            "several tool calls",
            [user, two_calls, tool, tool2, assistant2],
            False,
        ),
        ("ends with a tool result", None, [user, call, tool], False),
        ("ends with a tool result, generation prompt", None, [user, call, tool], True),
    ]
    return [Probe(n, ty, tuple(m), False, g) for n, ty, m, g in plain] + [
        Probe(n, ty, tuple(m), True, g) for n, ty, m, g in with_tools
    ]


def find_call(text: str, lo: int, name: str = FUNCTION, value: str = VALUE):
    """The character span of the tool call to `name` after `lo`: the JSON object around the
    name, or from the name through the argument `value` when no brace stands before it."""
    at = text.find(name, lo)
    if at < 0:
        return None
    start = text.rfind("{", lo, at)
    if start < 0:  # no JSON object: through the value and the tags closing it (GLM 4.5)
        end = text.find(value, at)
        if end < 0:
            return None
        closed = re.match(r"(\s*</[\w\-]+>)*", text[end + len(value) :])
        return at, end + len(value) + len(closed.group(0).rstrip())
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return start, end + 1
    return None


@contextlib.contextmanager
def _one_moment():
    """Templates that print the time (``strftime_now``) render every probe at one moment."""
    try:
        from transformers.utils import chat_template_utils
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    moment = datetime.datetime.now()

    class _Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return moment if tz is None else moment.astimezone(tz)

    saved = getattr(chat_template_utils, "datetime", None)
    chat_template_utils.datetime = _Frozen
    try:
        yield
    finally:
        chat_template_utils.datetime = saved


def render_probes(tokenizer: Any, template: str | None) -> dict[str, list[Rendering]]:
    """Every probe the template accepts, per probe name, one rendering per content shape.

    A tool probe is rendered with dict arguments, else with JSON-string arguments (a template
    that concatenates them); a bare call with ``content: None``, else with ``""``. A shape
    whose rendering is not the plain one with the contents replaced (a template that trims
    or edits contents) tells nothing more and is left out.
    """
    words = [*(w for ws in WORDS.values() for w in ws), CALL_CONTENT, REASONING]
    renderings: dict[str, list[Rendering]] = {}
    plain: dict[str, str] = {}
    with _one_moment():
        for shape, (lead, trail) in enumerate(SHAPES):
            styles = (probe_conversations(lead, trail), probe_conversations(lead, trail, True))
            for probes in zip(*styles):
                r = _render_probe(tokenizer, template, shape, probes)
                if r is None or (
                    r.type == "reasoning" and not any(a.kind == "reasoning" for a in r.anchors)
                ):
                    continue  # rejected, or reasoning not rendered
                if shape == 0:
                    plain[r.name] = r.text
                else:
                    expected = plain.get(r.name)
                    for word in words if expected is not None else ():
                        expected = expected.replace(word, lead + word + trail)
                    if r.text != expected:
                        continue
                renderings.setdefault(r.name, []).append(r)
    return renderings


def _render_probe(tokenizer: Any, template: str | None, shape: int, probes) -> Rendering | None:
    """The first of `probes` (one conversation, its calls' arguments as dicts, then as strings;
    a bare call's content None, then "") that renders with every tool call found, else the
    first that renders at all (a template that drops tool calls), else None."""
    rendered = []
    for probe in probes:
        variants = [list(probe.messages)]
        if any(m.get("tool_calls") and m["content"] is None for m in probe.messages):
            variants.append(
                [dict(m, content="") if m.get("tool_calls") else m for m in probe.messages]
            )
        for messages in variants:
            r = render(tokenizer, template, shape, probe, messages)
            if r is None:
                continue
            calls = sum(len(m.get("tool_calls") or ()) for m in messages)
            if sum(a.kind == "call" for a in r.anchors) == calls:
                return r
            rendered.append(r)
    return rendered[0] if rendered else None


def _name_and_value(tool_call: dict) -> tuple[str, str]:
    """A call's function name and the value of its first argument."""
    function = tool_call["function"]
    arguments = function["arguments"]
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    return function["name"], str(next(iter(arguments.values()), ""))


def render(
    tokenizer: Any,
    template: str | None,
    shape: int,
    probe: Probe,
    messages: list[dict] | None = None,
    tools: list | None = None,
) -> Rendering | None:
    """`probe` (or `messages` of its type) rendered and tokenized with its anchors, or None
    when the template rejects it."""
    messages = list(probe.messages) if messages is None else messages
    try:
        text = tokenizer.apply_chat_template(
            messages,
            tools=tools if tools is not None else PROBE_TOOLS if probe.tools else None,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=probe.generation_prompt,
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
        reasoning = message.get("reasoning_content")
        at = text.find(reasoning, lo) if reasoning else -1
        if at >= 0:
            spans.append((index, "reasoning", at, at + len(reasoning)))
            lo = at + len(reasoning)
        content = message.get("content")
        # where the template moved a content (Mistral puts the system message in the last
        # user turn), it is found out of order
        at = text.find(content, lo) if content else -1
        if at < 0 and content and text.count(content) == 1:  # moved, and found only there
            at = text.find(content)
        calls = message.get("tool_calls") or ()
        first_call = find_call(text, lo, *_name_and_value(calls[0])) if calls else None
        content_first = at >= 0 and (first_call is None or at < first_call[0])
        if content_first:  # most templates; some render the calls first (Gemma 4)
            spans.append((index, "content", at, at + len(content)))
            lo = at + len(content)
        for tool_call in message.get("tool_calls") or ():
            call = find_call(text, lo, *_name_and_value(tool_call))
            if call is None:
                break
            spans.append((index, "call", *call))
            lo = call[1]
        at = text.find(content, lo) if content and not content_first else -1
        if at >= 0:
            spans.append((index, "content", at, at + len(content)))
            lo = at + len(content)
    spans.sort(key=lambda span: span[2])
    anchors = []
    for index, kind, start, end in spans:
        first = next(i for i, (_, e) in enumerate(offsets) if e > start)
        stop = next((i for i in range(first, len(ids)) if offsets[i][0] >= end), len(ids))
        anchors.append(Anchor(index, messages[index]["role"], kind, start, end, first, stop))
    return Rendering(
        name=probe.name,
        type=probe.type,
        shape=shape,
        generation_prompt=probe.generation_prompt,
        messages=messages,
        primary=not probe.tools,
        text=text,
        ids=ids,
        offsets=offsets,
        anchors=anchors,
        invisible=set(range(len(messages))) - {a.message for a in anchors},
    )
