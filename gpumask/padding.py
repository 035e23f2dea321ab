"""Padding and packing, in one place: rows to a padded batch, a padded batch to a padding-free
one, where packed sequences start, the rule that the first token of a packed sequence is not a
target (it follows another sequence), and :class:`Batch`, a batch as the backends read it.

Example::

    >>> ids, keep = pad_rows([np.array([5, 6, 7]), np.array([8])], 4, fill=0, padding_side="left")
    >>> ids.tolist(), first_tokens(keep).tolist()
    ([[0, 5, 6, 7], [0, 0, 0, 8]], [[False, True, False, False], [False, False, False, True]])
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

_TENSOR_ID_TYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


Row = np.ndarray | torch.Tensor  # 1-D, integer


def _as_row(value: Any, index: int, key: str | None = None) -> Row:
    """`examples[index][key]` (or `examples[index]`): token ids as a 1-D int64 array, from a
    list or numpy array; a 1-D integer tensor is kept as it is (:func:`pad_rows` joins
    tensors in one `torch.cat`)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 1 and value.dtype in _TENSOR_ID_TYPES:  # (never requires grad)
            return value
        value = value.detach().cpu().numpy()
    elif type(value) in (list, tuple) and not (value and isinstance(value[0], bool)):
        # Python ints straight into int64 bytes (twice as fast as array.array or numpy, which
        # infers the type first); any other item (float, str, None, too large) raises, and
        # numpy below says what it is.
        try:
            return np.frombuffer(struct.pack(f"{len(value)}q", *value), dtype=np.int64)
        except struct.error:
            pass
    where = f"examples[{index}]" if key is None else f"examples[{index}][{key!r}]"
    if isinstance(value, Mapping):
        field = "" if key is None else f"[{key!r}]"
        raise TypeError(
            f"{where}: expected a sequence of token ids, got a {type(value).__name__} with keys "
            f"{list(value)} (a tokenizer's output?); pass the tokenizer's output itself as the "
            f"example, or its ['input_ids'] as examples[{index}]{field}"
        )
    if isinstance(value, str | bytes):
        raise TypeError(
            f"{where}: expected a sequence of token ids, got {type(value).__name__} "
            f"{value[:40]!r}; tokenize the text first (e.g. tokenizer(text))"
        )
    try:
        row = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{where}: expected a sequence of token ids, got {type(value).__name__}"
        ) from error
    if row.ndim != 1:
        raise ValueError(
            f"{where}: expected a 1-D sequence of token ids, got shape {tuple(row.shape)}"
        )
    if row.size == 0:
        return np.zeros(0, dtype=np.int64)
    if row.dtype.kind not in "iub" or row.dtype == np.bool_:
        raise TypeError(f"{where}: expected integer token ids, got dtype {row.dtype}")
    return row.astype(np.int64, copy=False)


def _all_ones(mask: Any, row: Row) -> bool:
    """Whether `mask` is a list of int ones as long as `row` (what a tokenizer returns for a
    row it did not pad): the same as no mask, read with one `list.count`, not converted."""
    return (
        type(mask) is list
        and len(mask) == row.shape[0]
        and (not mask or type(mask[0]) is int)
        and mask.count(1) == len(mask)
    )


def split_examples(examples: Sequence[Any]) -> tuple[list[Row], list[Row] | None]:
    """(input_ids rows, attention_mask rows or None) from dicts or bare id sequences; None also
    when every given mask is a list of ones (a tokenizer's unpadded rows), which reads the same.

    Example::

        >>> rows, masks = split_examples([{"input_ids": [5, 6], "attention_mask": [1, 1]}])
        >>> rows[0].tolist(), masks
        ([5, 6], None)
    """
    if isinstance(examples, Mapping) or isinstance(examples, str | bytes):
        raise TypeError(f"examples: expected a list of examples, got {type(examples).__name__}")
    if len(examples) == 0:
        raise ValueError("examples: empty batch")
    if not isinstance(examples[0], Mapping):
        return [_as_row(example, i) for i, example in enumerate(examples)], None
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping) or "input_ids" not in example:
            raise ValueError(
                f"examples[{i}]: expected a dict with 'input_ids', got "
                f"{type(example).__name__} with keys "
                f"{list(example) if isinstance(example, Mapping) else None}"
            )
    rows = [_as_row(example["input_ids"], i, "input_ids") for i, example in enumerate(examples)]
    masks = [example.get("attention_mask") for example in examples]
    if all(mask is None or _all_ones(mask, rows[i]) for i, mask in enumerate(masks)):
        return rows, None
    for i, mask in enumerate(masks):
        if mask is None:
            masks[i] = np.ones(rows[i].shape[0], dtype=np.int64)
            continue
        masks[i] = mask = _as_row(mask, i, "attention_mask")
        if mask.shape[0] != rows[i].shape[0]:
            raise ValueError(
                f"examples[{i}]['attention_mask']: length {mask.shape[0]} does "
                f"not match input_ids length {rows[i].shape[0]}"
            )
    return rows, masks


def padded_length(lengths: Sequence[int], pad_to_multiple_of: int | None) -> int:
    """The batch length: the longest row, rounded up to a multiple of `pad_to_multiple_of`."""
    length = max(lengths)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return length


def row_lengths(rows: Sequence[Row]) -> list[int]:
    return [row.shape[0] for row in rows]


def join_rows(rows: Sequence[Row]) -> np.ndarray:
    """The rows end to end, int64: one `torch.cat` when they are all CPU tensors."""
    if all(isinstance(row, torch.Tensor) and row.is_cpu for row in rows):
        return torch.cat(list(rows)).numpy().astype(np.int64, copy=False)
    return np.concatenate(
        [row.cpu().numpy() if isinstance(row, torch.Tensor) else row for row in rows]
    ).astype(np.int64, copy=False)


def layout(lengths: Sequence[int], length: int, padding_side: str) -> np.ndarray:
    """Where the tokens of rows of `lengths` lie in a batch padded to `length` (bool `[B,
    length]`): the first or last `lengths[i]` positions of row i.

    Example::

        >>> layout([2, 3], 3, "left").astype(int).tolist()
        [[0, 1, 1], [1, 1, 1]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    positions = np.arange(length)
    if padding_side == "left":
        return positions[None, :] >= (length - lengths)[:, None]
    return positions[None, :] < lengths[:, None]


def pad_joined(joined: np.ndarray, keep: np.ndarray, fill: int) -> np.ndarray:
    """`joined`, rows end to end, written where `keep` is True (row-major), `fill` elsewhere:
    one `np.full` and one masked write for the whole batch, no per-row writes."""
    out = np.full(keep.shape, fill, dtype=joined.dtype)
    out[keep] = joined
    return out


def pad_rows(
    rows: Sequence[Row], length: int, fill: int, padding_side: str
) -> tuple[np.ndarray, np.ndarray]:
    """(`[B, length]` int64 array of `rows` padded with `fill`, bool mask of the row tokens).

    In numpy (which, unlike torch's threaded CPU kernels, costs the same on a busy machine).
    """
    keep = layout(row_lengths(rows), length, padding_side)
    return pad_joined(join_rows(rows), keep, fill), keep


@dataclasses.dataclass(frozen=True)
class Packed:
    """Rows end to end, as the collators mask them: `ids` `[N]` int64, `mask` `[N]` int64 (the
    attention masks, None: every token is real) and `offsets` `[B + 1]` int64 (row i is
    `ids[offsets[i]:offsets[i + 1]]`).

    Example::

        >>> p = Packed.of([np.array([5, 6, 7]), np.array([8])], None)
        >>> p.ids.tolist(), p.offsets.tolist(), p.real_ids(1)
        ([5, 6, 7, 8], [0, 3, 4], [8])
    """

    ids: np.ndarray
    mask: np.ndarray | None
    offsets: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[Row], masks: Sequence[Row] | None) -> Packed:
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(row_lengths(rows), out=offsets[1:])
        return cls(join_rows(rows), None if masks is None else join_rows(masks), offsets)

    @property
    def real(self) -> np.ndarray | None:
        """Bool `[N]`: the real tokens (attention mask nonzero); None when all are real."""
        return None if self.mask is None else self.mask != 0

    def real_ids(self, i: int) -> list[int]:
        """The real tokens of row i."""
        ids = self.ids[self.offsets[i] : self.offsets[i + 1]]
        if self.mask is not None:
            ids = ids[self.mask[self.offsets[i] : self.offsets[i + 1]] != 0]
        return ids.tolist()


def check_padding_options(padding_side: str, pad_to_multiple_of: int | None) -> None:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    if pad_to_multiple_of is not None and (
        isinstance(pad_to_multiple_of, bool)
        or not isinstance(pad_to_multiple_of, int)
        or pad_to_multiple_of < 1
    ):
        raise ValueError(
            f"pad_to_multiple_of: expected a positive int or None, got {pad_to_multiple_of!r}"
        )


def first_tokens(keep: np.ndarray) -> np.ndarray:
    """The first kept token of each row (bool `[B, T]`): where its sequence starts once the
    rows are packed into one (:func:`flatten`)."""
    return keep & (keep.cumsum(1) == 1)


def sequence_starts(
    length: int, position_ids: torch.Tensor | None, cu_seqlens: torch.Tensor | None
) -> torch.Tensor | None:
    """Where packed sequences start (bool `[B, T]`, or `[1, T]` from `cu_seqlens`), or None
    for one sequence per row: `position_ids` restarting at 0, or the offsets in `cu_seqlens`
    (those at or past `length` start nothing).

    Example::

        >>> sequence_starts(5, None, torch.tensor([0, 2, 5])).tolist()
        [[True, False, True, False, False]]
    """
    if position_ids is not None:
        return position_ids == 0
    if cu_seqlens is None:
        return None
    offsets = cu_seqlens[:-1].long()
    starts = torch.zeros(length, dtype=torch.int64, device=cu_seqlens.device)
    starts.scatter_add_(0, offsets.clamp(0, length - 1), (offsets < length).long())
    return (starts > 0)[None]


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch as the backends read it (made by :func:`gpumask.mask_labels`): `input_ids`
    `[B, T]`; `real` (bool `[B, T]`, None: all real) marks real tokens; `seq_start` (bool
    `[B, T]`, None: only t = 0) marks where packed sequences start; `uniforms` are the draws
    of rule 7 (:meth:`gpumask.MaskSpec.draws`) or None."""

    input_ids: torch.Tensor
    real: torch.Tensor | None = None
    seq_start: torch.Tensor | None = None
    uniforms: torch.Tensor | None = None

    @classmethod
    def of(
        cls,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        uniforms: torch.Tensor | None = None,
    ) -> Batch:
        """The batch of validated `mask_labels` arguments. None stands for "all real" and
        "one sequence per row", so the common case costs nothing.

        Example::

            >>> b = Batch.of(torch.tensor([[5, 6, 7]]), cu_seqlens=torch.tensor([0, 1, 2]))
            >>> b.real.tolist(), b.seq_start.tolist()
            ([[True, True, False]], [[True, True, False]])
        """
        real = attention_mask
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            real = attention_mask != 0
        length = input_ids.shape[1]
        if cu_seqlens is not None:  # positions at or past the last offset are padding
            positions = torch.arange(length, device=input_ids.device)
            inside = ((positions >= cu_seqlens[0]) & (positions < cu_seqlens[-1]))[None]
            real = inside if real is None else real & inside
        return cls(input_ids, real, sequence_starts(length, position_ids, cu_seqlens), uniforms)

    def rows(self, start: int, stop: int) -> Batch:
        """Rows `start:stop` of the batch."""
        parts = (getattr(self, f.name) for f in dataclasses.fields(self))
        return Batch(*(None if x is None else x[start:stop] for x in parts))


def not_a_target_at_starts(
    labels: torch.Tensor, starts: torch.Tensor | None, ignore_index: int
) -> torch.Tensor:
    """`labels` with `ignore_index` at every packed sequence start, in place: the first token of
    a packed sequence follows another sequence, so predicting it is no target."""
    return labels if starts is None else labels.masked_fill_(starts, ignore_index)


def flatten(
    input_ids: np.ndarray, keep: np.ndarray, labels: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, np.ndarray]:
    """A padded batch as one padding-free row: (input_ids `[1, N]`, position_ids `[1, N]`
    restarting at 0 for each row, labels `[1, N]` or None, the kept tokens of each row)."""
    position_ids = keep.cumsum(1)[keep][None] - 1
    flat_labels = None if labels is None else torch.from_numpy(labels[keep][None])
    return (
        torch.from_numpy(input_ids[keep][None]),
        torch.from_numpy(position_ids),
        flat_labels,
        keep.sum(1),
    )


def cu_seq_lens(lengths: np.ndarray) -> torch.Tensor:
    """Offsets of sequences of `lengths` end to end (int32, `[len(lengths) + 1]`)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(lengths)
    return torch.from_numpy(offsets)
