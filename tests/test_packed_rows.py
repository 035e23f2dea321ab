"""The collators' path: rows masked packed end to end (no padding read), converted in one go.

`mask_packed_rows` must give, row by row, the labels and stats of `mask_labels` on the padded
batch (random formats and ragged rows, empty rows, attention masks with holes, the draws of
rule 7, several blocks); the collator must give the same batch whatever the rows are (lists,
int32/int64 arrays and tensors, masks of ones given or not) and wherever they are padded.
"""

import random
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import TOKENIZERS
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import masking_cases
from transformers import AutoTokenizer

from gpumask import (
    CompletionCollator,
    DataCollatorForCompletionOnlyLM,
    MaskSpec,
    mask_labels,
    torch_backend,
)
from gpumask.collators import mask_packed
from gpumask.empty_turns import _run_starts, count_empty_turns, count_empty_turns_packed
from gpumask.padding import Packed, layout, split_examples
from gpumask.torch_backend import mask_packed_rows

X = -100
SPEC = MaskSpec(roles={"user": [1, 5, 3], "assistant": [1, 6, 3]}, end_of_turn=[2], vocab_size=64)
ROW = [1, 5, 3, 20, 21, 2, 3, 1, 6, 3, 30, 31, 2, 3]
ROW_LABELS = [X] * 10 + [30, 31, 2, X]
SHORT = [1, 6, 3, 40, 2]
SHORT_LABELS = [X, X, X, 40, 2]


def ragged(case):
    """(spec, rows of ragged length (some empty, not the first), their masks or None, seed)."""
    spec, input_ids, kwargs, seed = case
    rng = random.Random(seed)
    mask = kwargs.get("attention_mask")
    rows, masks = [], []
    for b in range(input_ids.shape[0]):
        n = rng.choice([0, input_ids.shape[1], rng.randrange(input_ids.shape[1] + 1)])
        n = n or (input_ids.shape[1] if b == 0 else 0)  # (the collators refuse only empty rows)
        rows.append(input_ids[b, :n].long())
        masks.append(None if mask is None else mask[b, :n].long())
    return spec, rows, None if mask is None else masks, seed


def padded_labels(spec, rows, masks, seed, padding_side):
    """`mask_labels` on the padded batch: (labels at the row tokens, stats)."""
    length = max(1, max(len(r) for r in rows))
    keep = torch.from_numpy(layout([len(r) for r in rows], length, padding_side))
    ids = torch.zeros(keep.shape, dtype=torch.int64)
    ids[keep] = torch.cat(rows)
    real = keep.clone()
    if masks is not None:
        real[keep] = torch.cat(masks) != 0
    labels, stats = mask_labels(
        ids, spec, attention_mask=real, generator=torch.Generator().manual_seed(seed),
        return_stats=True,
    )  # fmt: skip
    return labels[keep], stats, keep


def assert_packed_matches_padded(case, padding_side="right"):
    spec, rows, masks, seed = ragged(case)
    want, want_stats, keep = padded_labels(spec, rows, masks, seed, padding_side)
    packed = Packed.of(rows, masks)
    result = mask_packed(packed, keep.numpy(), spec, X, torch.Generator().manual_seed(seed))
    got, stats = result.labels, result.stats
    assert got.tolist() == want.tolist()
    assert result.trained.tolist() == (want != X).tolist()  # (no id is X here)
    if result.run_starts is not None:  # the runs found by the masking: those of `trained`
        assert result.run_starts.tolist() == _run_starts(result.trained, packed.offsets).tolist()
    else:
        assert spec.ignore_token_ids and spec.ignore_token_prob > 0
    for key in ("trained", "role_tokens"):
        assert stats[key].tolist() == want_stats[key].tolist(), key
    # Turns dropped by rule 5 are counted on the rows' tokens: as in the right-padded batch,
    # but with no turn made of padding alone (left padding, an empty row, when `initial_role`
    # trains), which the padded batch counts at its t = 0.
    right = padded_labels(spec, rows, masks, seed, "right")[1]["dropped_turns"].tolist()
    right = [0 if len(row) == 0 else n for row, n in zip(rows, right)]
    assert stats["dropped_turns"].tolist() == right


@settings(max_examples=600, deadline=None, derandomize=True)
@given(masking_cases(tool_calls=True), st.sampled_from(["right", "left"]))
def test_packed_rows_give_the_labels_and_stats_of_the_padded_batch(case, padding_side):
    assert_packed_matches_padded(case, padding_side)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(masking_cases(max_batch=4, max_length=60))
def test_packed_rows_masked_in_several_blocks_give_the_same(case):
    with mock.patch.object(torch_backend, "CPU_BLOCK_TOKENS", 7):
        assert_packed_matches_padded(case)


def test_blocks_are_whole_rows_and_empty_rows_count_nothing():
    ids = torch.tensor(ROW + SHORT + ROW)
    offsets = torch.tensor([0, 0, 14, 14, 19, 33, 33])
    whole = mask_packed_rows(ids, offsets, SPEC, X)
    with mock.patch.object(torch_backend, "CPU_BLOCK_TOKENS", 4):
        blocked = mask_packed_rows(ids, offsets, SPEC, X)
    for result in (whole, blocked):
        labels, stats = result.labels, result.stats
        assert labels.tolist() == ROW_LABELS + SHORT_LABELS + ROW_LABELS
        assert stats["trained"].tolist() == [0, 3, 0, 2, 3, 0]
        assert stats["role_tokens"].tolist() == [
            [0, 0, 0], [6, 6, 2], [0, 0, 0], [0, 5, 0], [6, 6, 2], [0, 0, 0]
        ]  # fmt: skip


@settings(max_examples=400, deadline=None, derandomize=True)
@given(masking_cases())
def test_empty_turns_counted_on_packed_rows_as_on_the_padded_batch(case):
    spec, rows, _, _ = ragged(case)
    lengths = [len(r) for r in rows]
    length = max(1, max(lengths))
    keep = layout(lengths, length, "right")
    packed = Packed.of(rows, None)
    trained = np.random.default_rng(case[3]).random(packed.ids.shape[0]) < 0.5
    ids, padded_trained = np.zeros(keep.shape, np.int64), np.zeros(keep.shape, bool)
    ids[keep], padded_trained[keep] = packed.ids, trained
    got = count_empty_turns_packed(packed.ids, trained, packed.offsets, spec)
    assert got.tolist() == count_empty_turns(ids, padded_trained, spec).tolist()


def test_empty_turns_do_not_run_across_rows():
    # row 0 ends in an assistant header, row 1 starts with a trained end of turn: no empty turn
    ids = np.array([1, 6, 3, 2, 7])
    trained = np.array([0, 0, 0, 1, 1], dtype=bool)
    assert count_empty_turns_packed(ids, trained, np.array([0, 3, 5]), SPEC).tolist() == [0, 0]
    trained = np.array([0, 0, 0, 1, 0], dtype=bool)  # one row: the end of turn trains alone
    assert count_empty_turns_packed(ids, trained, np.array([0, 5]), SPEC).tolist() == [1]


# --- the collator ---------------------------------------------------------------------------

EXAMPLES = [ROW, [], SHORT, ROW[:9]]


@pytest.mark.parametrize(
    "convert",
    [
        list,
        lambda r: np.array(r, dtype=np.int32),
        lambda r: np.array(r, dtype=np.int64),
        lambda r: torch.tensor(r, dtype=torch.int32),
        lambda r: torch.tensor(r, dtype=torch.int64),
    ],
    ids=["list", "numpy-int32", "numpy-int64", "tensor-int32", "tensor-int64"],
)
@pytest.mark.parametrize(
    "options",
    [{}, {"padding_side": "left"}, {"pad_to_multiple_of": 8}, {"padding_free": True}],
    ids=["right", "left", "multiple-of-8", "padding-free"],
)
def test_every_row_type_gives_the_exact_batch(convert, options):
    batch = CompletionCollator(None, SPEC, warn=False, **options)(
        [{"input_ids": convert(row)} for row in EXAMPLES]
    )
    rows = [ROW_LABELS, [], SHORT_LABELS, [X] * 9]
    if options.get("padding_free"):
        assert batch["input_ids"].tolist() == [ROW + SHORT + ROW[:9]]
        assert batch["labels"].tolist() == [ROW_LABELS + [X] + SHORT_LABELS[1:] + [X] * 9]
        assert batch["position_ids"].tolist() == [[*range(14), *range(5), *range(9)]]
        assert batch["cu_seq_lens_q"].tolist() == [0, 14, 14, 19, 28]
        return
    length = 16 if options.get("pad_to_multiple_of") else 14
    left = options.get("padding_side") == "left"

    def pad(row, fill):
        return [fill] * (length - len(row)) + row if left else row + [fill] * (length - len(row))

    assert batch["input_ids"].tolist() == [pad(row, 0) for row in EXAMPLES]
    assert batch["attention_mask"].tolist() == [pad([1] * len(row), 0) for row in EXAMPLES]
    assert batch["labels"].tolist() == [pad(labels, X) for labels in rows]
    assert {t.dtype for t in batch.values()} == {torch.int64}


def test_masks_of_ones_as_lists_give_the_batch_of_no_masks_and_are_not_converted():
    ones = [{"input_ids": r, "attention_mask": [1] * len(r)} for r in EXAMPLES]
    assert split_examples(ones)[1] is None
    tensor_ones = [{"input_ids": r, "attention_mask": torch.ones(len(r), dtype=torch.int64)}
                   for r in EXAMPLES]  # fmt: skip
    collate = CompletionCollator(None, SPEC, warn=False)
    expected = collate([{"input_ids": r} for r in EXAMPLES])
    for examples in (ones, tensor_ones):
        batch = collate(examples)
        assert all(torch.equal(batch[k], expected[k]) for k in expected)


def test_a_mask_list_with_a_zero_still_masks_its_token():
    collate = CompletionCollator(None, SPEC)
    batch = collate([{"input_ids": SHORT, "attention_mask": [1, 1, 1, 0, 1]}, {"input_ids": ROW}])
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 1] + [0] * 9
    assert batch["labels"][0].tolist() == [X, X, X, X, 2] + [X] * 9


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ([True] * 5, "expected integer token ids, got dtype bool"),
        ([1, 1, 1, 1], "length 4 does not match input_ids length 5"),
        ([1.0] * 5, "expected integer token ids, got dtype float64"),
    ],
)
def test_a_mask_list_that_is_no_int_mask_still_raises(mask, message):
    with pytest.raises((TypeError, ValueError), match=message):
        CompletionCollator(None, SPEC)([{"input_ids": SHORT, "attention_mask": mask}])


@pytest.mark.parametrize(
    "roles",
    [
        {"user": [0, 5], "assistant": [0, 6]},  # id 0 is a marker id: negative ids read past it
        {"user": [2**40, 5], "assistant": [2**40, 6]},  # too large for a table: searched
        {"user": [1, 5], "assistant": [1, 6]},
    ],
)
def test_packed_rows_read_negative_large_and_marker_ids_as_the_padded_batch(roles):
    spec = MaskSpec(roles=roles, end_of_turn=[2])
    h = roles["user"][0]
    rows = [
        torch.tensor([h, 5, -1, 7, 2, h, 6, -(2**63), 2**63 - 1, 2, h]),
        torch.tensor([h, 6, 7, 2]),
        torch.tensor([-1, h, 6, 2**62, 2, 5, -1, 6, 9]),  # -1 then 6 is no header
    ]
    want, want_stats, keep = padded_labels(spec, rows, None, 0, "right")
    result = mask_packed(Packed.of(rows, None), keep.numpy(), spec, X)
    got, stats = result.labels, result.stats
    assert got.tolist() == want.tolist()
    tail = [-(2**63), 2**63 - 1, 2, X]
    assert got.tolist() == [X] * 7 + tail + [X, X, 7, 2] + [X, X, X, 2**62, 2, X, X, X, X]
    for key in ("trained", "role_tokens", "dropped_turns"):
        assert stats[key].tolist() == want_stats[key].tolist(), key


def test_large_and_negative_ids_convert_exactly():
    ids = [2**62, -5, 0, 2**63 - 1]
    assert split_examples([ids])[0][0].tolist() == ids
    with pytest.raises(TypeError, match="expected integer token ids, got dtype object"):
        split_examples([[1, 2**64]])


def test_the_trl_drop_in_gives_the_same_labels_for_lists_tensors_and_masks_of_ones():
    tok = AutoTokenizer.from_pretrained(f"{TOKENIZERS}/qwen2_5")
    collate = DataCollatorForCompletionOnlyLM([1, 6, 3], [1, 5, 3], tokenizer=tok)
    lists = collate([{"input_ids": ROW}, {"input_ids": SHORT}])
    tensors = collate([{"input_ids": torch.tensor(ROW, dtype=torch.int32)},
                       {"input_ids": torch.tensor(SHORT)}])  # fmt: skip
    ones = collate([{"input_ids": r, "attention_mask": [1] * len(r)} for r in (ROW, SHORT)])
    # TRL's rule: a reply trains up to the next instruction template, the "3" after "2" too
    assert lists["labels"].tolist() == [[X] * 10 + [30, 31, 2, 3], SHORT_LABELS + [X] * 9]
    for batch in (tensors, ones):
        assert all(torch.equal(batch[k], lists[k]) for k in lists)
