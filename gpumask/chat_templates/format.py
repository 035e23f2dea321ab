"""What a chat template is, as markers: `ChatFormat`, and `detect_chat_format` that reads it."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import transformers

from gpumask.chat_templates.check import describe, disagreements, labels_of, random_renderings
from gpumask.chat_templates.probes import (
    ARGUMENT,
    CALL_ID,
    EXCHANGE,
    FUNCTION,
    SENTINEL,
    TYPES,
    VALUE,
    Ids,
    Rendering,
    probe_message,
)
from gpumask.chat_templates.reading import Reader, add_alt
from gpumask.spec import MaskSpec, MaskSpecError


class TemplateWarning(UserWarning):
    """`from_tokenizer` read a format that is right for most, not all, of the template: a
    conversation type no marker tells apart, or no end of turn."""


ROLE_ORDER = ("system", "user", "assistant", "tool")
SAMPLES = 3  # random conversations per type checked, beside the probes
# Before transformers 5, legacy SentencePiece tokenizers split text next to added tokens in
# ways 3 samples can miss (Metharme's template read right on the probes, wrong on 1 in 6
# random conversations); the 53-template zoo is validated on transformers 5.
SAMPLES_BEFORE_TRANSFORMERS_5 = 20
MAIN_ROLES = ("user", "assistant")


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """What :func:`detect_chat_format` read off a chat template, as token ids in context.

    `headers`: role -> header alternatives. `end_of_turn`: end-of-turn alternatives (all roles).
    `tool_call`: (opens, closes) wrapping a tool call, `None` when the template renders calls
    with no wrapper (or none at all); `closes` may be empty (Mistral's call ends with the turn).
    `tool_results`: where tool results live: ``"role 'tool'"``, ``"inside role 'user'"`` or
    ``"not rendered"``. `masked_spans`: (opens, closes) of tool-result wrappers inside another
    role's turn. `tool_calls_rendered`: whether the template renders tool calls at all.
    `reasoning`: (opens, closes, is a turn) around a reply's reasoning block (``<think>``...
    ``</think>``; harmony's analysis channel is a turn of its own, opened by its header), None
    when the template renders none. `unsupported`: (conversation type, what goes wrong)
    for the types the format gets wrong; `replies_end`: whether replies have an end of turn.
    """

    headers: dict[str, tuple[Ids, ...]]
    end_of_turn: tuple[Ids, ...]
    masked_spans: tuple[tuple[tuple[Ids, ...], tuple[Ids, ...]], ...]
    tool_call: tuple[tuple[Ids, ...], tuple[Ids, ...]] | None
    tool_calls_rendered: bool
    tool_results: str
    unsupported: tuple[tuple[str, str], ...] = ()
    replies_end: bool = True  # the assistant's turns have an end of turn of their own
    reasoning: tuple[tuple[Ids, ...], tuple[Ids, ...], bool] | None = None

    @property
    def warnings(self) -> list[str]:
        """What a user must know about this format: the conversation types whose labels it
        gets wrong (and how), and a missing end of turn."""
        out = [
            f"{kind}: the template renders it in a way no marker tells apart, so its labels "
            f"are wrong there ({what})"
            for kind, what in self.unsupported
        ]
        if not self.replies_end:
            out.append(
                "no end of turn: the template puts nothing after a reply but the next header, "
                "so a reply trains up to the next header and the model will not learn to stop; "
                "pass end_of_turn=... if the model has a stop token"
            )
        return out

    def spec(
        self, tokenizer: Any = None, *, train_tool_calls: bool = True, train_thinking: bool = True
    ) -> MaskSpec:
        """The `MaskSpec` of this format: tool calls masked as a span if not `train_tool_calls`
        (else their opening marks the turns that call, for `tool_call_turns`), reasoning blocks
        masked if not `train_thinking`."""
        spans = [([list(i) for i in o], [list(i) for i in c]) for o, c in self.masked_spans]
        if not train_thinking:
            if self.reasoning is None:
                raise MaskSpecError(
                    "train_thinking=False: the template renders no reasoning block between an "
                    "open and a close marker (probed with reasoning_content and thinking), so "
                    "there is nothing to mask; pass masked_spans=[(open, close)] by hand"
                )
            opens, closes, turn = self.reasoning
            if not turn:
                spans.append(([list(i) for i in opens], [list(i) for i in closes]))
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
        roles = {role: [list(i) for i in alts] for role, alts in self.headers.items()}
        if not train_thinking and self.reasoning[2]:  # reasoning turns: a role that never trains
            roles["reasoning"] = [list(i) for i in self.reasoning[0]]
        calls = self.tool_call[0] if self.tool_call and train_tool_calls else None
        return MaskSpec(
            roles=roles,
            tool_call=[list(i) for i in calls] if calls else None,
            end_of_turn=[list(i) for i in self.end_of_turn] or None,
            masked_spans=spans,
            tokenizer=tokenizer,
        )


def _drop_folded(headers: dict[str, list[Ids]], decode) -> dict[str, tuple[Ids, ...]]:
    """A role whose header is the user's or the assistant's (a system message folded into a
    user turn) loses it; a header made of another header and a header of its own role is not
    one (Mistral's `[/TOOL_RESULTS][TOOL_RESULTS]` is two)."""
    main = {alt: role for role in MAIN_ROLES for alt in headers.get(role, ())}
    for role in MAIN_ROLES:
        for alt in headers.get(role, ()):
            if main[alt] != role:
                raise MaskSpecError(
                    f"the user and assistant turns have the same header "
                    f"{decode(list(alt))!r}={list(alt)}; the chat format cannot tell them apart"
                )
    every = {alt for alts in headers.values() for alt in alts}
    out: dict[str, tuple[Ids, ...]] = {}
    for role in ROLE_ORDER:
        alts = [alt for alt in headers.get(role, ()) if role in MAIN_ROLES or alt not in main]
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

    The format read is checked on every probe conversation (:mod:`.check`). The conversation
    types that fail are left out and the format read again from the others, while that makes
    fewer types fail; the ones that still fail are reported in `ChatFormat.unsupported` with
    what goes wrong there. Raises :class:`MaskSpecError` naming
    what could not be found, or the first disagreement, when a plain exchange fails.

    Example::

        >>> from transformers import AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/llama3_1")
        >>> fmt = detect_chat_format(tok)
        >>> [tok.decode(h) for h in fmt.headers["assistant"]]
        ['<|start_header_id|>assistant<|end_header_id|>\\n\\n']
    """
    return read_format(Reader(tokenizer, chat_template), tokenizer, chat_template)


def samples(transformers_version: str | None = None) -> int:
    """Random conversations of each type that a format read off a template is checked on:
    `SAMPLES`, or more with a transformers older than 5 (the installed one by default).

        >>> samples("4.57.6"), samples("5.0.0")
        (20, 3)
    """
    version = transformers.__version__ if transformers_version is None else transformers_version
    return SAMPLES if int(version.split(".")[0]) >= 5 else SAMPLES_BEFORE_TRANSFORMERS_5


def read_format(reader: Reader, tokenizer: Any, chat_template: str | None) -> ChatFormat:
    """:func:`detect_chat_format` on probes already rendered (`reader`)."""
    _require_an_exchange(reader, tokenizer, chat_template)
    rng = random.Random(0)
    checked = reader.all() + [  # the probes, and a few realistic conversations of each type
        r
        for kind in TYPES
        for r in random_renderings(tokenizer, chat_template, reader, kind, samples(), rng) or ()
    ]
    left_out: set[str | None] = set()
    best = None
    for _ in range(4):
        chat_format = _read(reader.without(left_out), tokenizer)
        failing = _failures(chat_format, checked, tokenizer)
        if best is None or len(failing) < len(best[1]):
            best = chat_format, failing
        new = set(failing) - left_out
        if not new:
            break
        left_out |= new
    chat_format, failing = best
    essential = set(failing) & {EXCHANGE, "several exchanges", None}
    if essential:
        r, problems = failing[min(essential, key=str)]
        raise MaskSpecError(
            "the format read off the chat template does not reproduce its own rendering: "
            f"{describe(problems, r)}\n{chat_format.spec(tokenizer)!r}"
        )
    unsupported = tuple((kind, failing[kind][1][0]) for kind in sorted(failing, key=str))
    return dataclasses.replace(chat_format, unsupported=unsupported)


def _failures(
    chat_format: ChatFormat, renderings: list[Rendering], tokenizer: Any
) -> dict[str | None, tuple[Rendering, list[str]]]:
    """Conversation type -> its first rendering that disagrees with the format, and why."""
    spec = chat_format.spec(tokenizer)
    inline = chat_format.tool_results == "inside role 'assistant'"
    out: dict[str | None, tuple[Rendering, list[str]]] = {}
    for r in renderings:
        if r.type in out:
            continue
        problems = disagreements(spec, r, labels_of(spec, r.ids), inline)
        if problems:
            out[r.type] = (r, problems)
    return out


def _generic(alt: Ids, d: Reader) -> bool:
    """Whether a marker read off the probes holds nothing of the probes themselves (a function
    name, a call id, a content) and something to match on (a control token, a letter)."""
    text = d.tokenizer.decode(list(alt))
    if any(p in text for p in (FUNCTION, CALL_ID, ARGUMENT, VALUE, SENTINEL)):
        return False
    return any(i in d.control for i in alt) or any(c.isalnum() for c in text)


def _require_an_exchange(reader: Reader, tokenizer: Any, chat_template: str | None) -> None:
    base = reader.renderings.get("user, assistant")
    if not base:
        try:
            tokenizer.apply_chat_template(
                [probe_message("user", "Hi"), probe_message("assistant", "Hello")],
                chat_template=chat_template,
                tokenize=False,
            )
            error = "it renders no text"
        except Exception as e:  # noqa: BLE001 - reported to the user
            error = f"{type(e).__name__}: {e}"
        raise MaskSpecError(
            f"the chat template rejects a plain user/assistant conversation ({error})"
        )
    rendered = {a.role for a in base[0].anchors}
    for role in MAIN_ROLES:
        if role not in rendered:
            raise MaskSpecError(
                f"the chat template renders no {role} content: "
                f"[user, assistant] gave {base[0].text!r}"
            )


def _read(d: Reader, tokenizer: Any) -> ChatFormat:
    """The format read off the renderings of `d` (not yet checked)."""
    eots: dict[str, tuple[Ids, ...]] = {}
    known: dict[str, list[Ids]] = {}
    for _ in range(2):  # ends of turn, headers, then both again knowing the headers
        eots = {role: d.end_of_turn(role, known) for role in MAIN_ROLES}
        main = tuple({e for alts in eots.values() for e in alts})
        eots["system"] = d.end_of_turn("system", known, main)
        known = d.headers(eots, {}, None, d.all(primary=True))
    for role in MAIN_ROLES:
        if not known.get(role):
            raise MaskSpecError(
                f"header of role {role!r} not found: nothing stands between "
                f"the previous turn's end and the {role}'s content"
            )
    tools = d.all(primary=False)
    inside, result_open, result_close = d.tool_results(eots, known)
    result_span = d.wrapper_span(result_open, result_close) if inside else None
    tool_call = d.tool_call(eots, known, result_open if inside == "assistant" else None)
    main_eots = tuple({e for alts in eots.values() for e in alts})
    eots["tool"] = eots[inside] if inside else d.end_of_turn("tool", known, main_eots)
    headers = {role: list(alts) for role, alts in known.items()}
    for role, alts in d.headers(eots, known, inside, tools).items():
        for alt in alts:
            add_alt(headers.setdefault(role, []), alt)
    headers = _drop_folded(headers, tokenizer.decode)
    headers = {role: tuple(a for a in alts if _generic(a, d)) for role, alts in headers.items()}
    for role in MAIN_ROLES:
        if not headers.get(role):
            raise MaskSpecError(
                f"header of role {role!r} not found: what stands before the {role}'s content "
                "is only punctuation or the probe's own text"
            )
    headers = {role: alts for role, alts in headers.items() if alts}
    end_of_turn: list[Ids] = []
    for role in headers if eots["assistant"] else ():  # replies that never end: none at all
        for alt in eots.get(role, ()):
            add_alt(end_of_turn, alt)
    results = any(a.role == "tool" for r in tools for a in r.anchors)
    chat_format = ChatFormat(
        replies_end=bool(eots["assistant"]),
        headers=headers,
        end_of_turn=tuple(end_of_turn),
        masked_spans=(result_span,) if result_span else (),
        reasoning=d.reasoning_span(eots, known),
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
    return chat_format
