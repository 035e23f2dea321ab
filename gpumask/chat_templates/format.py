"""What a chat template is, as markers: `ChatFormat`, and `detect_chat_format` that reads it."""

from __future__ import annotations

import dataclasses
from typing import Any

from gpumask.chat_templates.probes import Ids, probe_message
from gpumask.chat_templates.reading import Reader, add_alt
from gpumask.spec import MaskSpec, MaskSpecError

ROLE_ORDER = ("system", "user", "assistant", "tool")
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

    Raises :class:`MaskSpecError` naming what could not be found.

    Example::

        >>> fmt = detect_chat_format(tok)   # Llama 3.1
        >>> [tok.decode(h) for h in fmt.headers["assistant"]]
        ['<|start_header_id|>assistant<|end_header_id|>\\n\\n']
    """
    d = Reader(tokenizer, chat_template)
    base = d.renderings.get("user, assistant")
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
    for r in base[:1]:
        rendered = {a.role for a in r.anchors}
        for role in MAIN_ROLES:
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
    eots["tool"] = eots[inside] if inside else d.end_of_turn("tool", known)
    headers = {role: list(alts) for role, alts in known.items()}
    for role, alts in d.headers(eots, known, inside, tools).items():
        for alt in alts:
            add_alt(headers.setdefault(role, []), alt)
    headers = _drop_folded(headers, tokenizer.decode)
    end_of_turn: list[Ids] = []
    for role in headers:
        for alt in eots.get(role, ()):
            add_alt(end_of_turn, alt)
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
    check_probes(d, chat_format)
    return chat_format


def check_probes(d: Reader, chat_format: ChatFormat) -> None:
    """Mask every probe with the detected format: the tokens of assistant contents and tool
    calls must train, every other role's content must not (a token that a content shares with
    a marker can go either way, by the marker: it is not checked)."""
    import torch

    from gpumask.masking import mask_labels

    spec = chat_format.spec(d.tokenizer)
    for r in d.all():
        labels = mask_labels(torch.tensor([r.ids]), spec, backend="torch")[0].tolist()
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
