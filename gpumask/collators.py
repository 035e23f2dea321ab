"""`CompletionCollator`: pads a batch in one vectorised fill and masks it with gpumask.

With `mask_on="batch"` (default) the collator returns `labels`, computed on the CPU in the
data loader. With `mask_on="step"` it returns no labels: the training step computes them on
the GPU, through the hook of :func:`gpumask.attach`.

Example::

    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")  # Qwen2.5's own
    >>> spec = MaskSpec(roles={"user": "<|im_start|>user\\n",
    ...                        "assistant": "<|im_start|>assistant\\n"},
    ...                 end_of_turn="<|im_end|>", tokenizer=tok)
    >>> collate = CompletionCollator(tok, spec)
    >>> text = "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n"
    >>> batch = collate([tok(text), tok(text[:40])])
    >>> sorted(batch)
    ['attention_mask', 'input_ids', 'labels']
    >>> tok.decode(batch["labels"][0][batch["labels"][0] != -100])
    'Hello<|im_end|>'

The second row stops before the assistant header, so it trains nothing; the collator says so::

    NoTrainedTokensWarning: CompletionCollator: 1 of 2 rows has no trained token and adds
    nothing to the loss: row 1: no header of a trained role ('assistant') found
"""

from __future__ import annotations

import array
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gpumask.empty_turns import count_empty_turns, warn_empty_turns
from gpumask.masking import mask_labels
from gpumask.spec import MaskSpec

MASK_ON = ("batch", "step")


class NoTrainedTokensWarning(UserWarning):
    """Some rows of a batch have no trained token (their labels are all `ignore_index`)."""


# --- padding ------------------------------------------------------------------------------


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
        # Python ints straight into int64 (a third faster than numpy's type inference); any
        # other item (float, str, None, too large) raises, and numpy below says what it is.
        try:
            return np.frombuffer(array.array("q", value), dtype=np.int64)
        except (TypeError, OverflowError):
            pass
    where = f"examples[{index}]" if key is None else f"examples[{index}][{key!r}]"
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


def split_examples(examples: Sequence[Any]) -> tuple[list[Row], list[Row] | None]:
    """(input_ids rows, attention_mask rows or None) from dicts or bare id sequences."""
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
    if all(mask is None for mask in masks):
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


def _concatenate(rows: Sequence[Row]) -> np.ndarray:
    """The rows end to end, int64: one `torch.cat` when they are all CPU tensors."""
    if all(isinstance(row, torch.Tensor) and row.is_cpu for row in rows):
        return torch.cat(list(rows)).numpy().astype(np.int64, copy=False)
    return np.concatenate(
        [row.cpu().numpy() if isinstance(row, torch.Tensor) else row for row in rows]
    ).astype(np.int64, copy=False)


def pad_rows(
    rows: Sequence[Row], length: int, fill: int, padding_side: str
) -> tuple[np.ndarray, np.ndarray]:
    """(`[B, length]` int64 array of `rows` padded with `fill`, bool mask of the row tokens).

    One concatenation and one masked fill for the whole batch, in numpy (which, unlike torch's
    threaded CPU kernels, costs the same on a busy machine); no per-row writes.
    """
    lengths = np.array(row_lengths(rows), dtype=np.int64)
    positions = np.arange(length)
    if padding_side == "left":
        keep = positions[None, :] >= (length - lengths)[:, None]
    else:
        keep = positions[None, :] < lengths[:, None]
    out = np.full((len(rows), length), fill, dtype=np.int64)
    out[keep] = _concatenate(rows)
    return out, keep


def pad_examples(
    rows: Sequence[Row], masks: Sequence[Row] | None, length: int, fill: int, padding_side: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, keep, real) of a batch padded to `length`: the ids padded
    with `fill`, the attention mask (int64: the given masks padded with 0, else 1 on every row
    token), the row tokens (bool), and what :func:`mask_batch` reads as real tokens: `keep`
    when no mask was given (bool, no conversion), else the attention mask (nonzero)."""
    input_ids, keep = pad_rows(rows, length, fill, padding_side)
    if masks is None:
        return input_ids, keep.astype(np.int64), keep, keep
    attention_mask, _ = pad_rows(masks, length, 0, padding_side)
    return input_ids, attention_mask, keep, attention_mask


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


# --- reports ------------------------------------------------------------------------------


def _header_cut_at_end(spec: MaskSpec, row_ids: Sequence[int]) -> str | None:
    """The trained role whose header the row ends in the middle of, if any."""
    for role in spec.train_roles:
        for header in spec.roles[role]:
            for k in range(1, min(len(header), len(row_ids) + 1)):
                if tuple(row_ids[-k:]) == header[:k]:
                    return role
    return None


def untrained_reason(
    spec: MaskSpec,
    row_ids: Sequence[int],
    role_tokens: Sequence[int],
    original_length: int | None = None,
    max_length: int | None = None,
    truncation_side: str = "right",
) -> str:
    """Why a row (its real tokens `row_ids`) has no trained token, in words.

    `role_tokens` is the row of `stats["role_tokens"]` from `mask_labels(..., return_stats=True)`;
    `original_length` is the row's length before truncation to `max_length`, if it was cut.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> untrained_reason(spec, [1, 10, 5, 2, 1], [4, 0, 1], original_length=9, max_length=5)
        "truncated to max_length=5 (from 9 tokens) inside a header of 'assistant'"
    """
    names = ", ".join(repr(r) for r in spec.train_roles)
    if len(row_ids) == 0:
        return "empty row"
    codes = [spec.role_names.index(r) for r in spec.train_roles]
    header_found = any(role_tokens[c] > 0 for c in codes)
    truncated = original_length is not None and original_length > len(row_ids)
    cut = f"truncated to max_length={max_length} (from {original_length} tokens)"
    if truncation_side == "left":
        cut += " on the left"
    if not header_found:
        if not truncated:
            return f"no header of a trained role ({names}) found"
        role = _header_cut_at_end(spec, row_ids) if truncation_side == "right" else None
        if role is not None:
            return f"{cut} inside a header of {role!r}"
        return f"{cut}, no header of a trained role ({names}) left"
    if truncated:
        return f"{cut}, nothing of the reply left after the header"
    return (
        f"a header of a trained role ({names}) is there, but no token after it trains "
        "(empty reply, or all of it in a masked span or ignore_token_ids)"
    )


def mask_batch(
    input_ids: np.ndarray, attention_mask: np.ndarray, spec: MaskSpec, ignore_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of a padded batch, trained tokens per row (`[B]`), and per-row token counts by
    role (`[B, R + 1]`, the last column for tokens in no role), to say why a row has no
    trained token. `attention_mask` is nonzero (or True: no conversion) at real tokens.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> ids = np.array([[1, 11, 5, 2], [1, 10, 5, 2]])
        >>> labels, trained, role_tokens = mask_batch(ids, np.ones_like(ids), spec, -100)
        >>> labels.tolist(), trained.tolist(), role_tokens.tolist()
        ([[-100, -100, 5, 2], [-100, -100, -100, -100]], [2, 0], [[0, 4, 0], [4, 0, 0]])
    """
    labels, stats = mask_labels(
        torch.from_numpy(input_ids),
        spec,
        attention_mask=torch.from_numpy(attention_mask),
        ignore_index=ignore_index,
        return_stats=True,
    )
    return labels.numpy(), stats["trained"].numpy(), stats["role_tokens"].numpy()


def warn_untrained(who: str, n_rows: int, reasons: dict[int, str], stacklevel: int = 4) -> None:
    """One `NoTrainedTokensWarning` naming every row without a trained token, and why."""
    if not reasons:
        return
    rows = "; ".join(f"row {i}: {reason}" for i, reason in sorted(reasons.items()))
    verbs = (
        "has no trained token and adds" if len(reasons) == 1 else "have no trained token and add"
    )
    warnings.warn(
        f"{who}: {len(reasons)} of {n_rows} rows {verbs} nothing to the loss: {rows}",
        NoTrainedTokensWarning,
        stacklevel=stacklevel,
    )


# --- the collator -------------------------------------------------------------------------


class CompletionCollator:
    """Pads examples and computes completion-only labels with :func:`gpumask.mask_labels`.

    Args:
        tokenizer: gives the pad id (`pad_token_id`, else `eos_token_id`, else 0: padding is
            masked by the attention mask, so its id does not matter), the padding side and, when
            `spec` is None, the chat format (`MaskSpec.from_tokenizer(tokenizer)`).
        spec: the chat format.
        mask_on: "batch" computes `labels` here; "step" returns no labels, for a model with
            :func:`gpumask.attach` that masks on its own device inside the forward call.
        padding_free: concatenate the rows into one `[1, N]` row with `position_ids` restarting
            at 0, `cu_seq_lens_q/k` (int32 offsets) and `max_length_q/k` (ints), no
            `attention_mask`; the first label of each sequence is `ignore_index`.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        max_length: truncate longer rows (on `tokenizer.truncation_side`, default right).
        ignore_index: the label of untrained tokens (Hugging Face losses skip -100 only).
        padding_side: "left" or "right"; default the tokenizer's, else right.
        warn: warn (mask_on="batch") on rows with no trained token (`NoTrainedTokensWarning`)
            and on turns that train only their end-of-turn token (`EmptyTurnWarning`: what a
            chat template that drops `tool_calls` makes of a tool-calling turn).

    Examples are dicts with `input_ids` (list, numpy array or tensor) and optionally
    `attention_mask`, or bare id sequences; other keys are dropped.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> collate = CompletionCollator(None, spec)
        >>> batch = collate([[1, 10, 5, 2, 1, 11, 6, 2], np.array([1, 11, 7, 2])])
        >>> batch["labels"].tolist()
        [[-100, -100, -100, -100, -100, -100, 6, 2], [-100, -100, 7, 2, -100, -100, -100, -100]]
    """

    def __init__(
        self,
        tokenizer: Any = None,
        spec: MaskSpec | None = None,
        *,
        mask_on: str = "batch",
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        ignore_index: int = -100,
        padding_side: str | None = None,
        warn: bool = True,
    ) -> None:
        if spec is None:
            if tokenizer is None:
                raise ValueError("spec: give a MaskSpec, or a tokenizer to read it from")
            spec = MaskSpec.from_tokenizer(tokenizer)
        if not isinstance(spec, MaskSpec):
            raise TypeError(f"spec: expected a gpumask.MaskSpec, got {type(spec).__name__}")
        if mask_on not in MASK_ON:
            raise ValueError(f"mask_on: expected one of {MASK_ON}, got {mask_on!r}")
        if padding_side is None:
            padding_side = getattr(tokenizer, "padding_side", None) or "right"
        check_padding_options(padding_side, pad_to_multiple_of)
        if padding_free and pad_to_multiple_of is not None:
            raise ValueError(
                "pad_to_multiple_of: a padding-free batch has no padding; "
                "leave it None with padding_free=True"
            )
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length: expected a positive int or None, got {max_length!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "eos_token_id", None)
        self.tokenizer = tokenizer
        self.spec = spec
        self.mask_on = mask_on
        self.padding_free = bool(padding_free)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length
        self.ignore_index = ignore_index
        self.padding_side = padding_side
        self.truncation_side = getattr(tokenizer, "truncation_side", None) or "right"
        self.pad_token_id = 0 if pad_id is None else int(pad_id)
        self.warn = warn

    def __repr__(self) -> str:
        return (
            f"CompletionCollator(mask_on={self.mask_on!r}, padding_free={self.padding_free}, "
            f"padding_side={self.padding_side!r}, max_length={self.max_length}, "
            f"spec={self.spec!r})"
        )

    def _truncate(self, rows: list[Row], masks: list[Row] | None):
        original = row_lengths(rows)
        limit = self.max_length
        if limit is None or max(original) <= limit:
            return rows, masks, None
        cut = slice(-limit, None) if self.truncation_side == "left" else slice(0, limit)
        rows = [row[cut] if row.shape[0] > limit else row for row in rows]
        if masks is not None:
            masks = [mask[cut] if mask.shape[0] > limit else mask for mask in masks]
        return rows, masks, original

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        rows, masks = split_examples(examples)
        rows, masks, original = self._truncate(rows, masks)
        length = padded_length(row_lengths(rows), self.pad_to_multiple_of)
        if length == 0:
            raise ValueError("examples: every row is empty")
        input_ids, attention_mask, keep, real = pad_examples(
            rows, masks, length, self.pad_token_id, self.padding_side
        )
        labels = None
        if self.mask_on == "batch":
            labels, trained, role_tokens = mask_batch(input_ids, real, self.spec, self.ignore_index)
            if self.padding_free:  # the first token of each sequence follows another sequence
                labels[keep & (keep.cumsum(1) == 1)] = self.ignore_index
                trained = (labels != self.ignore_index).sum(1)
            if self.warn:
                self._report(input_ids, real, trained, role_tokens, original)
                empty = count_empty_turns(input_ids, labels != self.ignore_index, self.spec)
                warn_empty_turns("CompletionCollator", empty)
        if self.padding_free:
            return self._flatten(input_ids, keep, labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return {k: torch.from_numpy(v) for k, v in batch.items() if v is not None}

    def _report(self, input_ids, real, trained, role_tokens, original) -> None:
        reasons = {
            i: untrained_reason(
                self.spec,
                input_ids[i][real[i] != 0].tolist(),
                role_tokens[i].tolist(),
                None if original is None else original[i],
                self.max_length,
                self.truncation_side,
            )
            for i in np.flatnonzero(trained == 0).tolist()
        }
        warn_untrained("CompletionCollator", len(trained), reasons)

    def _flatten(self, input_ids, keep, labels) -> dict[str, Any]:
        lengths = keep.sum(1)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        offsets[1:] = lengths.cumsum()
        cu_seq_lens = torch.from_numpy(offsets)
        batch = {
            "input_ids": torch.from_numpy(input_ids[keep][None]),
            "position_ids": torch.from_numpy(keep.cumsum(1)[keep][None] - 1),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": int(lengths.max()),
            "max_length_k": int(lengths.max()),
        }
        if labels is not None:
            batch["labels"] = torch.from_numpy(labels[keep][None])
        return batch
