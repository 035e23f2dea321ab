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

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gpumask.empty_turns import count_empty_turns_packed, warn_empty_turns
from gpumask.masking import check_ignore_index, prepare
from gpumask.padding import (
    Packed,
    Row,
    check_padding_options,
    cu_seq_lens,
    layout,
    not_a_target_at_starts,
    pad_joined,
    padded_length,
    row_lengths,
    sequence_starts,
    split_examples,
)
from gpumask.reports import NoTrainedTokensWarning, row_reasons, warn_untrained
from gpumask.spec import MaskSpec
from gpumask.torch_backend import PackedLabels, count_in_rows, mask_packed_rows

__all__ = ["CompletionCollator", "NoTrainedTokensWarning", "mask_packed"]

MASK_ON = ("batch", "step")


def mask_packed(
    packed: Packed,
    keep: np.ndarray,
    spec: MaskSpec,
    ignore_index: int,
    generator: torch.Generator | None = None,
) -> PackedLabels:
    """Labels of the rows of `packed` (`[N]`, end to end), the stats of
    :func:`gpumask.mask_labels` per row (trained tokens, tokens per role, dropped turns, to say
    why a row has no trained token), the trained tokens and where their runs start, as numpy
    arrays (:class:`gpumask.torch_backend.PackedLabels`): those of the padded batch of layout
    `keep` (:func:`gpumask.padding.layout`), computed on the rows' tokens alone. `generator`
    gives the draws of `spec.ignore_token_prob`, made over the padded batch as `mask_labels`
    makes them, so that the same seed drops the same tokens.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> packed = Packed.of([np.array([1, 11, 5, 2]), np.array([1, 10, 5])], None)
        >>> result = mask_packed(packed, layout([4, 3], 4, "right"), spec, -100)
        >>> result.labels.tolist(), result.stats["trained"].tolist()
        ([-100, -100, 5, 2, -100, -100, -100], [2, 0])
        >>> result.stats["role_tokens"].tolist(), result.run_starts.tolist()
        ([[0, 4, 0], [3, 0, 0]], [2])
    """
    keep_t = torch.from_numpy(keep)
    uniforms = spec.draws(keep_t, generator)
    return mask_packed_rows(
        torch.from_numpy(packed.ids),
        torch.from_numpy(packed.offsets),
        spec,
        ignore_index,
        None if packed.mask is None else torch.from_numpy(packed.real),
        None if uniforms is None else uniforms[keep_t],
    ).numpy()


def _check_draws(seed: int | None, generator: torch.Generator | None, mask_on: str) -> None:
    if seed is not None and generator is not None:
        raise ValueError("seed: give either seed or generator, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed: expected an int >= 0 or None, got {seed!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator: expected a torch.Generator, got {type(generator).__name__}"
            )
        if generator.device.type != "cpu":
            raise ValueError(
                f"generator: on {generator.device}; the collator draws on the CPU, "
                "pass torch.Generator()"
            )
    if mask_on == "step" and (seed is not None or generator is not None):
        what = "seed" if seed is not None else "generator"
        raise ValueError(
            f"{what}: with mask_on='step' the collator draws nothing; pass "
            "generator= to gpumask.attach, which masks in the step"
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
        seed: seeds the draws of `spec.ignore_token_prob` (a probability between 0 and 1), so
            the dropped tokens are the same run after run. In DataLoader workers each worker
            draws its own stream, seeded from (`seed`, its worker id); see below.
        generator: a `torch.Generator` (CPU) for those draws instead of `seed`; default the
            global RNG. In DataLoader workers every worker starts from a copy of it in the
            same state, so workers repeat each other's draws: use `seed` there.

    DataLoader workers (`num_workers > 0`) each hold a copy of the collator. With `seed`, the
    collator seeds a stream on its first call in each worker from `seed` and
    `torch.utils.data.get_worker_info().id`: distinct for every worker, the same in every
    run, and restarted each epoch unless `persistent_workers=True` (a shuffled loader still
    gives each batch new draws). For a stream that also changes with the epoch, seed it from
    the loader's per-epoch worker seed in `worker_init_fn`, e.g.
    `collate.generator.manual_seed(torch.utils.data.get_worker_info().seed)` (with fork,
    where the collator the worker calls is the one `worker_init_fn` sees).

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
        seed: int | None = None,
        generator: torch.Generator | None = None,
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
        check_ignore_index(ignore_index)
        _check_draws(seed, generator, mask_on)
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
        self.seed = seed
        self.generator = generator
        self._seeded_for: int | None = None  # the worker id `generator` was seeded for
        if mask_on == "batch":
            prepare(spec, "cpu", "torch")

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

    def _pack(self, examples: Sequence[Any]) -> tuple[Packed, list[int] | None]:
        """(the rows, truncated, end to end; their lengths before truncation, None if none was
        cut). The per-row arrays are freed on return, before the batch is allocated."""
        rows, masks = split_examples(examples)
        rows, masks, original = self._truncate(rows, masks)
        if max(row_lengths(rows)) == 0:
            raise ValueError("examples: every row is empty")
        return Packed.of(rows, masks), original

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        packed, original = self._pack(examples)
        lengths = np.diff(packed.offsets)
        keep = layout(lengths, padded_length(lengths, self.pad_to_multiple_of), self.padding_side)
        labels = None
        if self.mask_on == "batch":
            masked = mask_packed(packed, keep, self.spec, self.ignore_index, self._generator())
            labels, stats, trained, run_starts = (
                masked.labels, masked.stats, masked.trained, masked.run_starts
            )  # fmt: skip
            if self.padding_free:
                offsets = torch.from_numpy(packed.offsets)
                starts = sequence_starts(len(labels), None, offsets)
                not_a_target_at_starts(torch.from_numpy(labels)[None], starts, self.ignore_index)
                trained &= ~starts[0].numpy()
                stats["trained"] = count_in_rows(torch.from_numpy(trained), offsets).numpy()
                run_starts = None  # (a row's first token no longer trains)
            if self.warn:
                reasons = row_reasons(
                    self.spec, packed, stats, original, self.max_length, self.truncation_side
                )
                warn_untrained("CompletionCollator", len(lengths), reasons, stacklevel=3)
                empty = count_empty_turns_packed(
                    packed.ids, trained, packed.offsets, self.spec, run_starts
                )
                warn_empty_turns("CompletionCollator", empty)
        if self.padding_free:
            return self._flatten(packed, labels)
        if packed.mask is None:
            attention_mask = keep.astype(np.int64)
        else:
            attention_mask = pad_joined(packed.mask, keep, 0)
        batch = {
            "input_ids": pad_joined(packed.ids, keep, self.pad_token_id),
            "attention_mask": attention_mask,
            "labels": None if labels is None else pad_joined(labels, keep, self.ignore_index),
        }
        return {k: torch.from_numpy(v) for k, v in batch.items() if v is not None}

    def _generator(self) -> torch.Generator | None:
        """The generator of this process's draws: with `seed`, one seeded from (seed, worker
        id) on the first call in each DataLoader worker (-1 outside workers)."""
        if self.seed is None:
            return self.generator
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else info.id
        if self._seeded_for != worker:
            state = np.random.SeedSequence([self.seed, worker + 1]).generate_state(1, np.uint64)
            self.generator = torch.Generator().manual_seed(int(state[0]) >> 1)
            self._seeded_for = worker
        return self.generator

    def _flatten(self, packed: Packed, labels: np.ndarray | None) -> dict[str, Any]:
        lengths = np.diff(packed.offsets)  # (int64: cu_seq_lens and max_length_q read them)
        positions = np.arange(packed.ids.shape[0]) - np.repeat(packed.offsets[:-1], lengths)
        offsets = cu_seq_lens(lengths)
        batch = {
            "input_ids": torch.from_numpy(packed.ids[None]),
            "position_ids": torch.from_numpy(positions[None]),
            "cu_seq_lens_q": offsets,
            "cu_seq_lens_k": offsets,
            "max_length_q": int(lengths.max()),
            "max_length_k": int(lengths.max()),
        }
        if labels is not None:
            batch["labels"] = torch.from_numpy(labels[None])
        return batch
