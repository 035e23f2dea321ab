"""`MaskSpec`: the validated, immutable description of a chat format.

A chat format is a set of *markers* (token-id sequences): the header of each role, the
end-of-turn token(s), optional masked spans (open, close) such as tool results, and optional
tool-call markers, which choose turns by content (`tool_call_turns`). The rules
that turn markers into labels are written out in :mod:`gpumask.reference`; each backend builds
its own tables from `spec.markers` and caches them on the spec (:meth:`MaskSpec.cached`).

Example (ChatML, ids given directly)::

    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> spec.train_roles
    ('assistant',)

With a tokenizer, markers may be strings; each is encoded as it appears in context (at the
start of text, after a newline, after a space, after a letter), every distinct tokenization
becoming an alternative::

    spec = MaskSpec(roles={"assistant": "<|im_start|>assistant\\n", "user": "<|im_start|>user\\n"},
                    end_of_turn="<|im_end|>", tokenizer=tok)
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch

# Marker kinds.
HEADER, END_OF_TURN, SPAN_OPEN, SPAN_CLOSE, TOOL_CALL = 0, 1, 2, 3, 4
# What `tool_call_turns` does with the turns of a trained role that contain a tool call.
TOOL_CALL_TURNS = ("train", "mask", "only")

# A marker packed in one int, as both backends read it (:attr:`Marker.word`): bits 0-7 its
# length, bits 8-10 its kind + 1 (0 where no marker is), bits 11-16 its arg.
LENGTH_MASK = (1 << 8) - 1
KIND_SHIFT = 8
KIND_MASK = 7 << KIND_SHIFT
ARG_SHIFT = 11
WORD_BITS = ARG_SHIFT + 6
MAX_MARKER_LEN = LENGTH_MASK
# The markers of one spec live in the bits of one int64 (bit 63 is left alone); so do the
# role codes (arg < 62 < 2**6).
MAX_MARKERS = 62

# Text that may stand before a marker inside a rendered conversation, and after it.
CONTEXTS = ("", "\n", " ", "a")
RIGHT_CONTEXTS = ("\n", " ", "a", "{", "(")

MarkerLike = str | Sequence[int] | Sequence[str | Sequence[int]]
# No marker: None as given, or () as normalised (so that `replace` takes a spec's own fields).
_NONE = (None, ())
Ids = tuple[int, ...]
T = TypeVar("T")


def tag(kind: int) -> int:
    """A marker kind as it stands in a marker word: `(kind + 1) << KIND_SHIFT`."""
    return (kind + 1) << KIND_SHIFT


class MaskSpecError(ValueError):
    """A chat-format description that cannot be used; the message names the marker and why."""


@dataclasses.dataclass(frozen=True)
class Marker:
    """One marker alternative: its token ids, its kind and what it refers to.

    `arg` is the role index for a header, the span index for an open or close, 0 otherwise.
    """

    ids: Ids
    kind: int
    arg: int
    name: str  # e.g. "header of role 'assistant'", used in error messages and repr

    @property
    def word(self) -> int:
        """The marker packed as the backends read it: `length | tag(kind) | arg << ARG_SHIFT`."""
        return len(self.ids) | tag(self.kind) | self.arg << ARG_SHIFT


class Roles(Mapping[str, tuple[Ids, ...]]):
    """Role name -> header alternatives, in the order given (role code i is the i-th role).

    Immutable and hashable; equal to another `Roles` only with the same roles in the same order.
    """

    def __init__(self, items: Iterable[tuple[str, tuple[Ids, ...]]]) -> None:
        self._items = dict(items)

    def __getitem__(self, name: str) -> tuple[Ids, ...]:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Roles):
            return tuple(self._items.items()) == tuple(other._items.items())
        return Mapping.__eq__(self, other)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


def is_id_list(value: Any) -> bool:
    """A sequence of integer token ids (a marker given as ids), not a str or a list of them."""
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value)
    )


def encode_in_context(tokenizer: Any, text: str) -> list[tuple[int, ...]]:
    """Every distinct tokenization of `text` as it appears after each of `CONTEXTS`, and
    before each of `RIGHT_CONTEXTS`.

    After a context, the marker is the shortest run of trailing tokens that decodes to text
    ending with `text` (a leading space or newline merged into its first token stays part
    of it, because that is how it appears in the data). Before a context that merges with
    its last character (``"assistant\\n"`` before a reply that starts with ``"\\n"``), the
    marker is its tokens that end inside it, if at least two do or the one is an added token.
    """
    found: list[tuple[int, ...]] = []
    for context in CONTEXTS:
        ids = tokenizer.encode(context + text, add_special_tokens=False)
        for start in range(len(ids) - 1, -1, -1):
            if tokenizer.decode(ids[start:]).endswith(text):
                candidate = tuple(int(i) for i in ids[start:])
                if candidate and candidate not in found:
                    found.append(candidate)
                break
    added = set(getattr(tokenizer, "added_tokens_decoder", None) or ())
    for context in RIGHT_CONTEXTS:
        try:
            encoded = tokenizer(
                text + context, add_special_tokens=False, return_offsets_mapping=True
            )
        except (NotImplementedError, TypeError, ValueError):  # a slow tokenizer: no offsets
            break
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        inside = tuple(int(i) for i, (_, end) in zip(ids, offsets) if end <= len(text))
        if len(inside) < len(ids) and offsets[len(inside)][0] < len(text):  # merged
            if len(inside) > 1 or (inside and inside[0] in added):
                if inside not in found:
                    found.append(inside)
    return found


def _alternatives(value: Any, what: str, tokenizer: Any) -> list[tuple[int, ...]]:
    """Normalise one marker description (str, id list, or a list of these) to id tuples."""
    if isinstance(value, str) or is_id_list(value):
        items = [value]
    elif isinstance(value, Sequence) and value:
        items = list(value)
    else:
        raise MaskSpecError(
            f"{what}: expected a str, a list of token ids or a list of these, got {value!r}"
        )
    out: list[tuple[int, ...]] = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise MaskSpecError(f"{what}: empty marker ''")
            if tokenizer is None:
                raise MaskSpecError(
                    f"{what}: marker {item!r} is a str; pass tokenizer= to "
                    "encode it, or give token ids"
                )
            encoded = encode_in_context(tokenizer, item)
            if not encoded:
                raise MaskSpecError(f"{what}: marker {item!r} encodes to no tokens")
            out.extend(e for e in encoded if e not in out)
        elif is_id_list(item):
            if len(item) == 0:
                raise MaskSpecError(f"{what}: empty marker []")
            ids = tuple(int(i) for i in item)
            if ids not in out:
                out.append(ids)
        else:
            raise MaskSpecError(f"{what}: expected a str or a list of int token ids, got {item!r}")
    return out


def _ignore_ids(value: Any) -> Ids:
    """`ignore_token_ids` as sorted distinct ints; each must be an int (not a bool or a float)
    that fits int64, the widest ids' dtype."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise MaskSpecError(
            f"ignore_token_ids: expected a list of int token ids, got {type(value).__name__} "
            f"{value!r}"
        )
    ids = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise MaskSpecError(
                f"ignore_token_ids: expected int token ids, got {type(item).__name__} {item!r}"
            )
        if not -(2**63) <= int(item) < 2**63:
            raise MaskSpecError(f"ignore_token_ids: id {int(item)} does not fit int64")
        ids.add(int(item))
    return tuple(sorted(ids))


@dataclasses.dataclass(frozen=True, repr=False)
class MaskSpec:
    """Which markers start and end turns, and which tokens train. Immutable; hashable.

    Args:
        roles: role name -> header marker(s). A marker is a `str` (needs `tokenizer`), a list
            of token ids, or a list of these (alternatives).
        end_of_turn: marker(s) that end a turn, or None.
        masked_spans: (open, close) marker pairs masked wherever they occur.
        train_roles: roles whose content trains (default: assistant).
        train_on_end_of_turn: train the end-of-turn token of a trained turn (default True).
        last_turn_only: train only the last trained-role turn of each sequence.
        initial_role: the role at the start of every sequence (default: none).
        ignore_token_ids: ids that never train (each dropped with `ignore_token_prob`).
        ignore_token_prob: probability in [0, 1] of dropping each such token.
        tool_call: marker(s) that start a tool call, e.g. `"<tool_call>"`; they take part in
            matching like the others but change no role or span.
        tool_call_turns: "train" (default) trains turns whatever they hold; "mask" masks every
            turn of a trained role that contains a tool call (tokens before the call too);
            "only" trains only such turns. A call inside a masked span does not count.
        vocab_size: the vocabulary size (ids must be below it); default `len(tokenizer)`.
        tokenizer: encodes `str` markers and decodes them for `repr` (`marker_text`); not
            part of equality, and not pickled (a pickled spec keeps `marker_text`).

    After construction every field holds its normalised form: `roles` a :class:`Roles` of id
    tuples, `end_of_turn` and `tool_call` tuples of id tuples, `masked_spans` a tuple of
    (opens, closes), `train_roles` and `ignore_token_ids` tuples; `markers` holds every
    marker, longest first. `spec.replace(**changes)` is :func:`dataclasses.replace`.

    Example::

        >>> spec = MaskSpec(roles={"user": [[1, 10]], "assistant": [1, 11]}, end_of_turn=[[2]])
        >>> spec.roles["assistant"]
        ((1, 11),)
        >>> spec.replace(last_turn_only=True).last_turn_only
        True
    """

    roles: Mapping[str, MarkerLike]
    end_of_turn: MarkerLike | None = None
    masked_spans: Iterable[tuple[MarkerLike, MarkerLike]] = ()
    _: dataclasses.KW_ONLY
    train_roles: Iterable[str] = ("assistant",)
    train_on_end_of_turn: bool = True
    last_turn_only: bool = False
    initial_role: str | None = None
    ignore_token_ids: Iterable[int] = ()
    ignore_token_prob: float = 1.0
    tool_call: MarkerLike | None = None
    tool_call_turns: str = "train"
    vocab_size: int | None = None
    tokenizer: Any = dataclasses.field(default=None, compare=False)
    markers: tuple[Marker, ...] = dataclasses.field(init=False, compare=False)
    marker_text: Mapping[Ids, str] = dataclasses.field(init=False, compare=False)
    _cache: dict = dataclasses.field(init=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        roles, tokenizer = self.roles, self.tokenizer
        if not isinstance(roles, Mapping) or not roles:
            raise MaskSpecError(
                f"roles: expected a non-empty dict of role -> header marker(s), got {roles!r}"
            )
        for name in roles:
            if not isinstance(name, str) or not name:
                raise MaskSpecError(f"roles: role names must be non-empty str, got {name!r}")
        headers = Roles(
            (name, tuple(_alternatives(alts, f"roles[{name!r}]", tokenizer)))
            for name, alts in roles.items()
        )
        eots = (
            ()
            if self.end_of_turn in _NONE
            else tuple(_alternatives(self.end_of_turn, "end_of_turn", tokenizer))
        )
        spans = []
        for i, pair in enumerate(self.masked_spans):
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise MaskSpecError(
                    f"masked_spans[{i}]: expected an (open, close) pair, got {pair!r}"
                )
            opens = tuple(_alternatives(pair[0], f"masked_spans[{i}] open", tokenizer))
            closes = tuple(_alternatives(pair[1], f"masked_spans[{i}] close", tokenizer))
            spans.append((opens, closes))

        train_roles = self.train_roles
        train_roles = (train_roles,) if isinstance(train_roles, str) else tuple(train_roles)
        for role in train_roles:
            if role not in headers:
                raise MaskSpecError(
                    f"train_roles: unknown role {role!r}; roles are {list(headers)}"
                )
        if self.initial_role is not None and self.initial_role not in headers:
            raise MaskSpecError(
                f"initial_role: unknown role {self.initial_role!r}; roles are {list(headers)}"
            )
        prob = self.ignore_token_prob
        if isinstance(prob, bool) or not isinstance(prob, int | float):
            raise MaskSpecError(f"ignore_token_prob: expected a number, got {prob!r}")
        if not 0.0 <= float(prob) <= 1.0:
            raise MaskSpecError(f"ignore_token_prob: must lie in [0, 1], got {prob}")
        calls = (
            ()
            if self.tool_call in _NONE
            else tuple(_alternatives(self.tool_call, "tool_call", tokenizer))
        )
        if self.tool_call_turns not in TOOL_CALL_TURNS:
            raise MaskSpecError(
                f"tool_call_turns: expected one of {TOOL_CALL_TURNS}, got {self.tool_call_turns!r}"
            )
        if self.tool_call_turns != "train" and not calls:
            raise MaskSpecError(
                f"tool_call_turns={self.tool_call_turns!r}: needs tool_call= (the marker(s) "
                "that start a tool call) to tell which turns hold one"
            )
        vocab_size = self.vocab_size
        if vocab_size is None and tokenizer is not None:
            vocab_size = len(tokenizer)

        normalised = dict(
            roles=headers,
            end_of_turn=eots,
            masked_spans=tuple(spans),
            train_roles=train_roles,
            train_on_end_of_turn=bool(self.train_on_end_of_turn),
            last_turn_only=bool(self.last_turn_only),
            ignore_token_ids=_ignore_ids(self.ignore_token_ids),
            ignore_token_prob=float(prob),
            tool_call=calls,
            vocab_size=vocab_size,
        )
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "markers", self._collect_markers())
        decode = None if tokenizer is None else tokenizer.decode
        texts = {} if decode is None else {m.ids: decode(list(m.ids)) for m in self.markers}
        object.__setattr__(self, "marker_text", texts)

    def __getstate__(self) -> dict[str, Any]:
        """A pickle keeps what masking needs and the markers' text (for `repr`), not the
        tokenizer (megabytes, for each DataLoader worker) nor the tables built on devices."""
        dropped = ("tokenizer", "_cache")
        return {k: v for k, v in self.__dict__.items() if k not in dropped}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, tokenizer=None, _cache={})

    @property
    def role_names(self) -> tuple[str, ...]:
        """Role names in order; role code i is `role_names[i]`, code len(role_names) is none."""
        return tuple(self.roles)

    @property
    def initial_code(self) -> int:
        """The role code at the start of every sequence (`len(role_names)`: none)."""
        if self.initial_role is None:
            return len(self.roles)
        return self.role_names.index(self.initial_role)

    @property
    def train_role_bits(self) -> int:
        """Bit r set when role code r trains."""
        return sum(1 << r for r, name in enumerate(self.roles) if name in self.train_roles)

    @property
    def max_marker_len(self) -> int:
        return max(len(m.ids) for m in self.markers)

    def replace(self, **changes: Any) -> MaskSpec:
        """A copy with some fields changed, e.g. `spec.replace(last_turn_only=True)`; str
        markers among the changes need `tokenizer=` (or the spec's own tokenizer)."""
        return dataclasses.replace(self, **changes)

    def cached(self, name: str, build: Callable[[MaskSpec, torch.device], T], device: Any) -> T:
        """`build(self, device)`, built once per (name, device) and kept on the spec: how each
        backend caches its tables (`name`: the backend's). A race only builds them twice."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (name, device)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = build(self, device)
        return found

    def draws(self, input_ids: torch.Tensor, generator: torch.Generator | None):
        """The uniforms of rule 7 (ignored ids dropped with a probability strictly between 0
        and 1): `torch.rand(B, T)` where the ids are, from `generator`; None otherwise."""
        if not self.ignore_token_ids or not 0.0 < self.ignore_token_prob < 1.0:
            return None
        batch, length = input_ids.shape
        return torch.rand(batch, length, generator=generator, device=input_ids.device)

    def _collect_markers(self) -> tuple[Marker, ...]:
        markers: list[Marker] = []
        for r, (name, alts) in enumerate(self.roles.items()):
            markers += [Marker(ids, HEADER, r, f"header of role {name!r}") for ids in alts]
        markers += [Marker(ids, END_OF_TURN, 0, "end_of_turn") for ids in self.end_of_turn]
        for s, (opens, closes) in enumerate(self.masked_spans):
            markers += [Marker(ids, SPAN_OPEN, s, f"masked_spans[{s}] open") for ids in opens]
            markers += [Marker(ids, SPAN_CLOSE, s, f"masked_spans[{s}] close") for ids in closes]
        markers += [Marker(ids, TOOL_CALL, 0, "tool_call") for ids in self.tool_call]
        vocab = self.vocab_size
        seen: dict[Ids, Marker] = {}
        for marker in markers:
            bad = [i for i in marker.ids if i < 0 or (vocab and i >= vocab)]
            if bad:
                limit = f"[0, {vocab})" if vocab else "(ids are >= 0)"
                raise MaskSpecError(
                    f"{marker.name}: token id {bad[0]} of marker "
                    f"{list(marker.ids)} is outside the vocabulary {limit}"
                )
            if marker.ids in seen:
                raise MaskSpecError(
                    f"{marker.name}: marker {list(marker.ids)} is also the "
                    f"{seen[marker.ids].name}; a marker can mean one thing only"
                )
            seen[marker.ids] = marker
        too_long = [m for m in markers if len(m.ids) > MAX_MARKER_LEN]
        if too_long:
            raise MaskSpecError(
                f"{too_long[0].name}: marker of {len(too_long[0].ids)} tokens; "
                f"at most {MAX_MARKER_LEN}"
            )
        if len(markers) > MAX_MARKERS:
            raise MaskSpecError(
                f"too many markers: {len(markers)} alternatives in all, at most {MAX_MARKERS}"
            )
        return tuple(sorted(markers, key=lambda m: -len(m.ids)))

    def __repr__(self) -> str:
        def show(ids: Ids) -> str:
            text = self.marker_text.get(ids)
            return str(list(ids)) if text is None else f"{text!r}={list(ids)}"

        def alts(items: tuple[Ids, ...]) -> str:
            return " | ".join(show(ids) for ids in items)

        lines = ["MaskSpec("]
        lines += [f"  role {name!r}: {alts(a)}" for name, a in self.roles.items()]
        if self.end_of_turn:
            lines.append(f"  end_of_turn: {alts(self.end_of_turn)}")
        for opens, closes in self.masked_spans:
            lines.append(f"  masked span: {alts(opens)} ... {alts(closes)}")
        if self.tool_call:
            lines.append(
                f"  tool_call: {alts(self.tool_call)}, tool_call_turns={self.tool_call_turns!r}"
            )
        lines.append(
            f"  train_roles={self.train_roles}, "
            f"train_on_end_of_turn={self.train_on_end_of_turn}, "
            f"last_turn_only={self.last_turn_only}, initial_role={self.initial_role!r}"
        )
        if self.ignore_token_ids:
            lines.append(
                f"  ignore_token_ids={list(self.ignore_token_ids)} (prob {self.ignore_token_prob})"
            )
        return "\n".join(lines) + "\n)"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **overrides: Any) -> MaskSpec:
        """Read the chat format off `tokenizer.chat_template` (:mod:`gpumask.chat_templates`).

        Args:
            tokenizer: a fast Hugging Face tokenizer with a chat template.
            **overrides: `chat_template=` (a Jinja template to read instead of the tokenizer's
                own), `train_tool_calls=False` (mask the assistant's tool calls),
                `train_thinking=False` (mask reasoning blocks), and any `MaskSpec` keyword
                argument, which replaces what was read, e.g. `last_turn_only=True` or
                `train_roles=("assistant", "tool")`.

        It checks its result on rendered probe conversations and a few random ones before
        returning. A conversation type it cannot tell apart is left out with a
        :class:`~gpumask.TemplateWarning` naming it (as is a format whose replies have no end
        of turn); it raises :class:`MaskSpecError` naming the probe and what is missing when
        it cannot read the format at all. Example::

            >>> from transformers import AutoTokenizer
            >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
            >>> spec = MaskSpec.from_tokenizer(tok, last_turn_only=True)
            >>> spec.role_names, spec.last_turn_only
            (('system', 'user', 'assistant'), True)
        """
        from gpumask.chat_templates import spec_from_tokenizer

        return spec_from_tokenizer(tokenizer, **overrides)
