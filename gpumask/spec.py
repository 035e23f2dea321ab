"""`MaskSpec`: the validated, immutable description of a chat format.

A chat format is a set of *markers* (token-id sequences): the header of each role, the
end-of-turn token(s), and optional masked spans (open, close) such as tool results. The rules
that turn markers into labels are written out in :mod:`gpumask.reference`.

Example (ChatML, ids given directly)::

    >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> spec.train_roles
    ('assistant',)

With a tokenizer, markers may be strings; each is encoded as it appears in context (at the
start of text, after a newline, after a space, after a letter), every distinct tokenization
becoming an alternative::

    spec = MaskSpec(roles={"assistant": "<|im_start|>assistant\\n", "user": "<|im_start|>user\\n"},
                    end_of_turn="<|im_end|>", tokenizer=tok)

`MaskSpec.compile(device)` turns the spec into the tensors the backends read
(:class:`CompiledSpec`); it is cached per device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

# Marker kinds, as stored in CompiledSpec.kinds.
HEADER, END_OF_TURN, SPAN_OPEN, SPAN_CLOSE = 0, 1, 2, 3
KIND_NAMES = ("header", "end of turn", "masked-span open", "masked-span close")

# The markers of one compiled spec live in the bits of one int64 (bit 63 is left alone).
MAX_MARKERS = 62
MAX_MARKER_LEN = 255
# Largest window table (entries) the torch backend matches with; beyond it, bitmask tables.
MAX_WINDOW_TABLE = 1 << 16

# Text that may stand before a marker inside a rendered conversation.
CONTEXTS = ("", "\n", " ", "a")

MarkerLike = str | Sequence[int] | Sequence[str | Sequence[int]]


class MaskSpecError(ValueError):
    """A chat-format description that cannot be used; the message names the marker and why."""


@dataclasses.dataclass(frozen=True)
class Marker:
    """One marker alternative: its token ids, its kind and what it refers to.

    `arg` is the role index for a header, the span index for an open or close, 0 otherwise.
    """

    ids: tuple[int, ...]
    kind: int
    arg: int
    name: str  # e.g. "header of role 'assistant'", used in error messages and repr

    @property
    def word(self) -> int:
        """The marker packed as the backends read it: `length | (kind + 1) << 8 | arg << 11`."""
        return len(self.ids) | (self.kind + 1) << 8 | self.arg << 11


@dataclasses.dataclass(frozen=True)
class CompiledSpec:
    """The tensors the backends read, all on one device.

    Markers are sorted longest first, so bit `m` of a match word is marker `m` and the lowest
    set bit of a word is the longest marker that matches there.

    - `match_words` `[K, V + 1]` (int32 when the markers fit in 31 bits, else int64): bit m
      of `match_words[k, v]` is set when marker m accepts token v at offset k (its k-th id
      is v, or it is shorter than k + 1). Column V stands for every id that no marker uses,
      and for padding.
    - `ids` `[M, K]` int64 (padded with -1), `lengths`, `kinds`, `args` `[M]` int64.
    - `length_ok` `[K + 1]` int64: bits of markers no longer than r, for r tokens left.
    - `train_role` `[R + 1]` bool: which role codes train (code R is "no role").
    - `ignore_ids` `[I]`: ids in `ignore_token_ids`.
    - `token_class` `[V + 1]` int32: 1 + the rank of each id among the ids markers use, 0 for
      the others; `window_words` `[n_classes ** K]` int32 (None when larger than
      `MAX_WINDOW_TABLE`): the word (as in `key_words`) of the longest marker that starts a
      window of K token classes, indexed by `sum(class[p + k] * n_classes ** (K - 1 - k))`.
    - `marker_token` `[V + 2]` bool, shifted by one: `marker_token[v + 1]` is whether some
      marker uses id v (index 0 stands for negative ids, V + 1 for ids >= V), so ids need
      one clamp and no fix-up before an `index_select`.
    - `can_overlap`: whether two occurrences can overlap at all (a marker starting inside
      another's span); when not, every match is kept.
    - `key_words` `[67]` int32, indexed by `key = lowest set bit % 67` (2**m % 67 is
      distinct for every m < 64): the marker's `length | (kind + 1) << 8 | arg << 11`,
      0 for keys that name no marker (key 0: nothing matches).
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    kinds: torch.Tensor
    args: torch.Tensor
    length_ok: torch.Tensor
    train_role: torch.Tensor
    ignore_ids: torch.Tensor
    n_roles: int
    n_spans: int
    max_len: int
    initial_role: int
    train_on_end_of_turn: bool
    last_turn_only: bool
    ignore_token_prob: float
    match_words: torch.Tensor
    key_words: torch.Tensor
    train_role_bits: int  # bit r set when role code r trains
    token_class: torch.Tensor
    n_classes: int
    marker_token: torch.Tensor
    window_words: torch.Tensor | None
    can_overlap: bool


def _is_id_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    )


def _encode_in_context(tokenizer: Any, text: str) -> list[tuple[int, ...]]:
    """Every distinct tokenization of `text` as it appears after each of `CONTEXTS`.

    In a context, the marker is the shortest run of trailing tokens that decodes to text
    ending with `text` (a leading space or newline merged into its first token stays part
    of it, because that is how it appears in the data).
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
    return found


def _alternatives(value: Any, what: str, tokenizer: Any) -> list[tuple[int, ...]]:
    """Normalise one marker description (str, id list, or a list of these) to id tuples."""
    if isinstance(value, str) or _is_id_list(value):
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
            encoded = _encode_in_context(tokenizer, item)
            if not encoded:
                raise MaskSpecError(f"{what}: marker {item!r} encodes to no tokens")
            out.extend(e for e in encoded if e not in out)
        elif _is_id_list(item):
            if len(item) == 0:
                raise MaskSpecError(f"{what}: empty marker []")
            ids = tuple(int(i) for i in item)
            if ids not in out:
                out.append(ids)
        else:
            raise MaskSpecError(f"{what}: expected a str or a list of int token ids, got {item!r}")
    return out


def _can_overlap(markers: Sequence[Marker]) -> bool:
    """Whether some marker can start strictly inside an occurrence of another (or itself)."""
    for a in markers:
        for b in markers:
            for offset in range(1, len(a.ids)):
                overlap = min(len(a.ids) - offset, len(b.ids))
                if a.ids[offset : offset + overlap] == b.ids[:overlap]:
                    return True
    return False


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
        tokenizer: encodes `str` markers; also gives the vocabulary size for validation.
        vocab_size: the vocabulary size, when no tokenizer is given (ids must be below it).

    Example::

        >>> spec = MaskSpec(roles={"user": [[1, 10]], "assistant": [1, 11]}, end_of_turn=[[2]])
        >>> spec.roles["assistant"]
        ((1, 11),)
    """

    def __init__(
        self,
        roles: Mapping[str, MarkerLike],
        end_of_turn: MarkerLike | None = None,
        masked_spans: Iterable[tuple[MarkerLike, MarkerLike]] = (),
        *,
        train_roles: Iterable[str] = ("assistant",),
        train_on_end_of_turn: bool = True,
        last_turn_only: bool = False,
        initial_role: str | None = None,
        ignore_token_ids: Iterable[int] = (),
        ignore_token_prob: float = 1.0,
        tokenizer: Any = None,
        vocab_size: int | None = None,
    ) -> None:
        if not isinstance(roles, Mapping) or not roles:
            raise MaskSpecError(
                f"roles: expected a non-empty dict of role -> header marker(s), got {roles!r}"
            )
        role_names = tuple(roles)
        for name in role_names:
            if not isinstance(name, str) or not name:
                raise MaskSpecError(f"roles: role names must be non-empty str, got {name!r}")
        headers = {
            name: tuple(_alternatives(roles[name], f"roles[{name!r}]", tokenizer))
            for name in role_names
        }
        eots = (
            ()
            if end_of_turn is None
            else tuple(_alternatives(end_of_turn, "end_of_turn", tokenizer))
        )
        spans = []
        for i, pair in enumerate(masked_spans):
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise MaskSpecError(
                    f"masked_spans[{i}]: expected an (open, close) pair, got {pair!r}"
                )
            opens = tuple(_alternatives(pair[0], f"masked_spans[{i}] open", tokenizer))
            closes = tuple(_alternatives(pair[1], f"masked_spans[{i}] close", tokenizer))
            spans.append((opens, closes))

        if isinstance(train_roles, str):
            train_roles = (train_roles,)
        train_roles = tuple(train_roles)
        for role in train_roles:
            if role not in headers:
                raise MaskSpecError(
                    f"train_roles: unknown role {role!r}; roles are {list(role_names)}"
                )
        if initial_role is not None and initial_role not in headers:
            raise MaskSpecError(
                f"initial_role: unknown role {initial_role!r}; roles are {list(role_names)}"
            )
        if isinstance(ignore_token_prob, bool) or not isinstance(ignore_token_prob, int | float):
            raise MaskSpecError(f"ignore_token_prob: expected a number, got {ignore_token_prob!r}")
        if not 0.0 <= float(ignore_token_prob) <= 1.0:
            raise MaskSpecError(f"ignore_token_prob: must lie in [0, 1], got {ignore_token_prob}")
        ignore_ids = tuple(sorted({int(i) for i in ignore_token_ids}))

        if vocab_size is None and tokenizer is not None:
            vocab_size = len(tokenizer)
        self._roles = headers
        self._end_of_turn = eots
        self._masked_spans = tuple(spans)
        self._train_roles = train_roles
        self._train_on_end_of_turn = bool(train_on_end_of_turn)
        self._last_turn_only = bool(last_turn_only)
        self._initial_role = initial_role
        self._ignore_token_ids = ignore_ids
        self._ignore_token_prob = float(ignore_token_prob)
        self._vocab_size = vocab_size
        self._decode = tokenizer.decode if tokenizer is not None else None
        self._markers = self._collect_markers()
        self._compiled: dict[torch.device, CompiledSpec] = {}

    # --- read-only views -------------------------------------------------------------------
    roles = property(lambda self: dict(self._roles), doc="role -> header alternatives (ids)")
    end_of_turn = property(lambda self: self._end_of_turn, doc="end-of-turn alternatives")
    masked_spans = property(lambda self: self._masked_spans, doc="(opens, closes) per span")
    train_roles = property(lambda self: self._train_roles)
    train_on_end_of_turn = property(lambda self: self._train_on_end_of_turn)
    last_turn_only = property(lambda self: self._last_turn_only)
    initial_role = property(lambda self: self._initial_role)
    ignore_token_ids = property(lambda self: self._ignore_token_ids)
    ignore_token_prob = property(lambda self: self._ignore_token_prob)
    vocab_size = property(lambda self: self._vocab_size)
    markers = property(lambda self: self._markers, doc="all markers, longest first")

    @property
    def role_names(self) -> tuple[str, ...]:
        """Role names in order; role code i is `role_names[i]`, code len(role_names) is none."""
        return tuple(self._roles)

    def _collect_markers(self) -> tuple[Marker, ...]:
        markers: list[Marker] = []
        for r, (name, alts) in enumerate(self._roles.items()):
            markers += [Marker(ids, HEADER, r, f"header of role {name!r}") for ids in alts]
        markers += [Marker(ids, END_OF_TURN, 0, "end_of_turn") for ids in self._end_of_turn]
        for s, (opens, closes) in enumerate(self._masked_spans):
            markers += [Marker(ids, SPAN_OPEN, s, f"masked_spans[{s}] open") for ids in opens]
            markers += [Marker(ids, SPAN_CLOSE, s, f"masked_spans[{s}] close") for ids in closes]
        seen: dict[tuple[int, ...], Marker] = {}
        for marker in markers:
            bad = [i for i in marker.ids if i < 0 or (self._vocab_size and i >= self._vocab_size)]
            if bad:
                limit = f"[0, {self._vocab_size})" if self._vocab_size else "(ids are >= 0)"
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

    # --- identity ---------------------------------------------------------------------------
    def _key(self) -> tuple:
        return (
            tuple(self._roles.items()),
            self._end_of_turn,
            self._masked_spans,
            self._train_roles,
            self._train_on_end_of_turn,
            self._last_turn_only,
            self._initial_role,
            self._ignore_token_ids,
            self._ignore_token_prob,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def replace(self, **changes: Any) -> MaskSpec:
        """A copy with some options changed, e.g. `spec.replace(last_turn_only=True)`."""
        kwargs: dict[str, Any] = dict(
            roles={k: [list(a) for a in v] for k, v in self._roles.items()},
            end_of_turn=[list(a) for a in self._end_of_turn] or None,
            masked_spans=[
                ([list(a) for a in o], [list(a) for a in c]) for o, c in self._masked_spans
            ],
            train_roles=self._train_roles,
            train_on_end_of_turn=self._train_on_end_of_turn,
            last_turn_only=self._last_turn_only,
            initial_role=self._initial_role,
            ignore_token_ids=self._ignore_token_ids,
            ignore_token_prob=self._ignore_token_prob,
            vocab_size=self._vocab_size,
        )
        kwargs.update(changes)
        tokenizer = kwargs.pop("tokenizer", None)
        copy = MaskSpec(**kwargs, tokenizer=tokenizer)
        if copy._decode is None:
            copy._decode = self._decode
        return copy

    def __repr__(self) -> str:
        def show(ids: tuple[int, ...]) -> str:
            if self._decode is None:
                return str(list(ids))
            return f"{self._decode(list(ids))!r}={list(ids)}"

        def alts(items: tuple[tuple[int, ...], ...]) -> str:
            return " | ".join(show(ids) for ids in items)

        lines = ["MaskSpec("]
        lines += [f"  role {name!r}: {alts(a)}" for name, a in self._roles.items()]
        if self._end_of_turn:
            lines.append(f"  end_of_turn: {alts(self._end_of_turn)}")
        for opens, closes in self._masked_spans:
            lines.append(f"  masked span: {alts(opens)} ... {alts(closes)}")
        lines.append(
            f"  train_roles={self._train_roles}, "
            f"train_on_end_of_turn={self._train_on_end_of_turn}, "
            f"last_turn_only={self._last_turn_only}, initial_role={self._initial_role!r}"
        )
        if self._ignore_token_ids:
            lines.append(
                f"  ignore_token_ids={list(self._ignore_token_ids)} "
                f"(prob {self._ignore_token_prob})"
            )
        return "\n".join(lines) + "\n)"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **overrides: Any) -> MaskSpec:
        """Read the chat format off `tokenizer.chat_template` (:mod:`gpumask.chat_templates`).

        Args:
            tokenizer: a fast Hugging Face tokenizer with a chat template.
            **overrides: `chat_template=` (a Jinja template to read instead of the tokenizer's
                own), `train_tool_calls=False` (mask the assistant's tool calls), and any
                `MaskSpec` keyword argument, which replaces what was read, e.g.
                `last_turn_only=True` or `train_roles=("assistant", "tool")`.

        It checks its result on rendered probe conversations before returning, and raises
        :class:`MaskSpecError` naming the probe and what is missing when it cannot read the
        format. Example::

            >>> from transformers import AutoTokenizer
            >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
            >>> spec = MaskSpec.from_tokenizer(tok, last_turn_only=True)
            >>> spec.role_names, spec.last_turn_only
            (('system', 'user', 'assistant'), True)
        """
        from gpumask.chat_templates import spec_from_tokenizer

        return spec_from_tokenizer(tokenizer, **overrides)

    # --- compilation ------------------------------------------------------------------------
    def compile(self, device: torch.device | str = "cpu") -> CompiledSpec:
        """The tensors the backends read, on `device`; built once per device and cached."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        compiled = self._compiled.get(device)
        if compiled is None:  # a race only builds the same tensors twice
            compiled = self._compiled[device] = self._build(device)
        return compiled

    def _build(self, device: torch.device) -> CompiledSpec:
        markers = self._markers
        max_len = max(len(m.ids) for m in markers)
        vocab = max(max(m.ids) for m in markers) + 1
        tables = torch.zeros(max_len, vocab + 1, dtype=torch.int64)
        ids = torch.full((len(markers), max_len), -1, dtype=torch.int64)
        for bit, marker in enumerate(markers):
            for k in range(max_len):
                if k < len(marker.ids):
                    tables[k, marker.ids[k]] |= 1 << bit
                    ids[bit, k] = marker.ids[k]
                else:
                    tables[k, :] |= 1 << bit
        length_ok = torch.tensor(
            [
                sum(1 << b for b, m in enumerate(markers) if len(m.ids) <= r)
                for r in range(max_len + 1)
            ],
            dtype=torch.int64,
        )
        role_names = self.role_names
        train_role = torch.tensor(
            [name in self._train_roles for name in role_names] + [False], dtype=torch.bool
        )
        key_words = torch.zeros(67, dtype=torch.int32)
        for bit, marker in enumerate(markers):
            key_words[(1 << bit) % 67] = marker.word
        words = tables.to(torch.int32) if len(markers) <= 31 else tables
        marker_tokens = sorted({i for m in markers for i in m.ids})
        token_class = torch.zeros(vocab + 1, dtype=torch.int32)
        token_class[marker_tokens] = torch.arange(1, len(marker_tokens) + 1, dtype=torch.int32)
        n_classes = len(marker_tokens) + 1
        no = torch.zeros(1, dtype=torch.bool)
        window_words = None
        if n_classes**max_len <= MAX_WINDOW_TABLE:
            window_words = torch.zeros([n_classes] * max_len, dtype=torch.int32)
            for marker in reversed(markers):  # shortest first: the longest match is written last
                prefix = tuple(marker_tokens.index(i) + 1 for i in marker.ids)
                window_words[prefix] = marker.word
            window_words = window_words.flatten()
        initial = (
            len(role_names) if self._initial_role is None else role_names.index(self._initial_role)
        )
        return CompiledSpec(
            ids=ids.to(device),
            lengths=torch.tensor([len(m.ids) for m in markers], dtype=torch.int64).to(device),
            kinds=torch.tensor([m.kind for m in markers], dtype=torch.int64).to(device),
            args=torch.tensor([m.arg for m in markers], dtype=torch.int64).to(device),
            length_ok=length_ok.to(device),
            train_role=train_role.to(device),
            ignore_ids=torch.tensor(self._ignore_token_ids, dtype=torch.int64).to(device),
            n_roles=len(role_names),
            n_spans=len(self._masked_spans),
            max_len=max_len,
            initial_role=initial,
            train_on_end_of_turn=self._train_on_end_of_turn,
            last_turn_only=self._last_turn_only,
            ignore_token_prob=self._ignore_token_prob,
            match_words=words.to(device),
            key_words=key_words.to(device),
            token_class=token_class.to(device),
            n_classes=n_classes,
            marker_token=torch.cat([no, token_class[:vocab] != 0, no]).to(device),
            window_words=None if window_words is None else window_words.to(device),
            can_overlap=_can_overlap(markers),
            train_role_bits=sum(
                1 << r for r, name in enumerate(role_names) if name in self._train_roles
            ),
        )
