"""CompletionCollator: padding, input types, padding-free fields, mask_on, warnings, errors."""

import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TOKENIZERS
from transformers import AutoTokenizer

from gpumask import CompletionCollator, MaskSpec, mask_labels
from gpumask.collators import NoTrainedTokensWarning

X = -100
USER, ASSISTANT, END = [1, 5, 3], [1, 6, 3], [2]
SPEC = MaskSpec(roles={"user": USER, "assistant": ASSISTANT}, end_of_turn=END, vocab_size=64)
# user "20 21", assistant "30 31": trained 30 31 and the end of turn
ROW = USER + [20, 21] + END + [3] + ASSISTANT + [30, 31] + END + [3]
ROW_LABELS = [X] * 10 + [30, 31, 2, X]
SHORT = ASSISTANT + [40] + END  # a reply with no question
SHORT_LABELS = [X, X, X, 40, 2]


def tokenizer(**fields):
    base = dict(pad_token_id=0, eos_token_id=2, padding_side="right", truncation_side="right")
    return SimpleNamespace(**{**base, **fields})


def test_right_padding():
    batch = CompletionCollator(tokenizer(), SPEC)([ROW, SHORT])
    assert batch["input_ids"].tolist() == [ROW, SHORT + [0] * 9]
    assert batch["attention_mask"].tolist() == [[1] * 14, [1] * 5 + [0] * 9]
    assert batch["labels"].tolist() == [ROW_LABELS, SHORT_LABELS + [X] * 9]
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64


def test_left_padding_from_the_tokenizer_gives_the_same_labels_per_token():
    batch = CompletionCollator(tokenizer(padding_side="left"), SPEC)([ROW, SHORT])
    assert batch["input_ids"].tolist() == [ROW, [0] * 9 + SHORT]
    assert batch["attention_mask"].tolist() == [[1] * 14, [0] * 9 + [1] * 5]
    assert batch["labels"].tolist() == [ROW_LABELS, [X] * 9 + SHORT_LABELS]


def test_padding_side_argument_overrides_the_tokenizer():
    collate = CompletionCollator(tokenizer(padding_side="left"), SPEC, padding_side="right")
    assert collate([ROW, SHORT])["input_ids"][1].tolist() == SHORT + [0] * 9


def test_pad_id_falls_back_to_eos_then_zero_and_stays_masked():
    eos_pad = CompletionCollator(tokenizer(pad_token_id=None, eos_token_id=2), SPEC)
    batch = eos_pad([ROW, SHORT])
    assert batch["input_ids"][1].tolist() == SHORT + [2] * 9
    assert batch["labels"][1].tolist() == SHORT_LABELS + [X] * 9
    assert CompletionCollator(None, SPEC)([ROW, SHORT])["input_ids"][1, -1] == 0


@pytest.mark.parametrize(
    "convert",
    [
        list,
        tuple,
        np.array,
        lambda r: np.array(r, dtype=np.int32),
        torch.tensor,
        lambda r: torch.tensor(r, dtype=torch.int32),
    ],
    ids=["list", "tuple", "numpy", "numpy-int32", "tensor", "tensor-int32"],
)
def test_lists_numpy_arrays_and_tensors_give_the_same_batch(convert):
    expected = CompletionCollator(None, SPEC)([ROW, SHORT])
    for examples in (
        [convert(ROW), convert(SHORT)],
        [{"input_ids": convert(ROW)}, {"input_ids": convert(SHORT)}],
    ):
        batch = CompletionCollator(None, SPEC)(examples)
        assert batch.keys() == expected.keys()
        for key in batch:
            assert torch.equal(batch[key], expected[key]), key


def test_tensors_of_several_dtypes_lists_and_tensor_masks_mix_in_one_batch():
    examples = [
        {
            "input_ids": torch.tensor(ROW, dtype=torch.int32),
            "attention_mask": torch.tensor([1] * 12 + [0, 0]),
        },
        {"input_ids": SHORT},
        {"input_ids": torch.tensor(SHORT, dtype=torch.uint8)},
    ]
    collate = CompletionCollator(tokenizer(padding_side="left"), SPEC, max_length=13)
    batch = collate(examples)
    assert batch["input_ids"].tolist() == [ROW[:13], [0] * 8 + SHORT, [0] * 8 + SHORT]
    assert batch["attention_mask"].tolist() == [[1] * 12 + [0], [0] * 8 + [1] * 5] + [
        [0] * 8 + [1] * 5
    ]
    assert batch["labels"].tolist() == [[X] * 10 + [30, 31, X]] + [[X] * 8 + SHORT_LABELS] * 2


def test_given_attention_mask_is_padded_and_masks_tokens():
    examples = [
        {"input_ids": ROW, "attention_mask": [1] * 12 + [0, 0]},
        {"input_ids": SHORT, "labels": [7] * 5, "text": "dropped"},
    ]
    batch = CompletionCollator(None, SPEC)(examples)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert batch["attention_mask"].tolist() == [[1] * 12 + [0, 0], [1] * 5 + [0] * 9]
    assert batch["labels"].tolist() == [[X] * 10 + [30, 31, X, X], SHORT_LABELS + [X] * 9]


def test_pad_to_multiple_of():
    batch = CompletionCollator(None, SPEC, pad_to_multiple_of=8)([ROW, SHORT])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["labels"][0].tolist() == ROW_LABELS + [X, X]


def test_padding_free_fields():
    batch = CompletionCollator(None, SPEC, padding_free=True)([ROW, SHORT])
    assert sorted(batch) == [
        "cu_seq_lens_k",
        "cu_seq_lens_q",
        "input_ids",
        "labels",
        "max_length_k",
        "max_length_q",
        "position_ids",
    ]
    assert batch["input_ids"].tolist() == [ROW + SHORT]
    assert batch["position_ids"].tolist() == [list(range(14)) + list(range(5))]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 14, 19]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 14
    assert batch["labels"].tolist() == [ROW_LABELS + SHORT_LABELS]


def test_padding_free_masks_the_first_token_of_each_sequence():
    spec = SPEC.replace(initial_role="assistant")  # a row that starts inside a reply
    batch = CompletionCollator(None, spec, padding_free=True)([[40, 41, 2], [42, 2]])
    assert batch["labels"].tolist() == [[X, 41, 2, X, 2]]


def test_padding_free_labels_match_mask_labels_on_the_packed_row():
    batch = CompletionCollator(None, SPEC, padding_free=True, mask_on="step")([ROW, SHORT, ROW])
    labels = mask_labels(batch["input_ids"], SPEC, position_ids=batch["position_ids"])
    assert labels.tolist() == [ROW_LABELS + SHORT_LABELS + ROW_LABELS]


def test_mask_on_step_returns_no_labels():
    step = CompletionCollator(None, SPEC, mask_on="step")([ROW, SHORT])
    assert sorted(step) == ["attention_mask", "input_ids"]
    labels = mask_labels(step["input_ids"], SPEC, attention_mask=step["attention_mask"])
    assert labels.tolist() == [ROW_LABELS, SHORT_LABELS + [X] * 9]


def test_ignore_index():
    batch = CompletionCollator(None, SPEC, ignore_index=-1)([SHORT])
    assert batch["labels"].tolist() == [[-1, -1, -1, 40, 2]]


def test_real_tokenizer_text_and_padding_side():
    tok = AutoTokenizer.from_pretrained(f"{TOKENIZERS}/qwen2_5")
    tok.padding_side = "left"
    spec = MaskSpec(
        roles={"user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"},
        end_of_turn="<|im_end|>",
        tokenizer=tok,
    )
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"
    batch = CompletionCollator(tok, spec)([tok(text), tok(text + text)])
    assert batch["input_ids"][0, 0] == tok.pad_token_id
    replies = [tok.decode(row[row != X]) for row in batch["labels"]]
    assert replies == ["Hello there<|im_end|>", "Hello there<|im_end|>" * 2]


# --- warnings -----------------------------------------------------------------------------


def collate_warning(collate, examples):
    with pytest.warns(NoTrainedTokensWarning) as record:
        collate(examples)
    (message,) = [str(w.message) for w in record]
    return message


def test_warns_with_row_index_and_reason():
    question_only = USER + [20] + END
    ends_at_header = USER + [20] + END + ASSISTANT
    message = collate_warning(CompletionCollator(None, SPEC), [ROW, question_only, ends_at_header])
    assert message == (
        "CompletionCollator: 2 of 3 rows have no trained token and add nothing to the loss: "
        "row 1: no header of a trained role ('assistant') found; row 2: a header of a trained "
        "role ('assistant') is there, but no token after it trains (empty reply, or all of it "
        "in a masked span or ignore_token_ids)"
    )


def test_warns_on_truncation_inside_a_header_and_after_it():
    collate = CompletionCollator(None, SPEC, max_length=9)
    cut_in_header = USER + [20, 21, 22] + END + ASSISTANT + [30]  # keeps ... 2, 1, 6
    cut_after_header = USER + [20, 21] + END + ASSISTANT + [30, 31]  # keeps ... 2, 1, 6, 3
    message = collate_warning(collate, [cut_in_header, cut_after_header, SHORT])
    assert message == (
        "CompletionCollator: 2 of 3 rows have no trained token and add nothing to the loss: "
        "row 0: truncated to max_length=9 (from 11 tokens) inside a header of 'assistant'; "
        "row 1: truncated to max_length=9 (from 11 tokens), nothing of the reply left after "
        "the header"
    )


def test_left_truncation_keeps_the_end_and_says_so():
    collate = CompletionCollator(tokenizer(truncation_side="left"), SPEC, max_length=4)
    batch = CompletionCollator(tokenizer(truncation_side="left"), SPEC, max_length=4, warn=False)(
        [ROW]
    )
    assert batch["input_ids"].tolist() == [[30, 31, 2, 3]]
    assert batch["labels"].tolist() == [[X] * 4]  # the header was cut: nothing says "reply"
    message = collate_warning(collate, [ROW])
    assert message.endswith(
        "row 0: truncated to max_length=4 (from 14 tokens) on the left, "
        "no header of a trained role ('assistant') left"
    )


def test_empty_row_is_reported_and_warn_false_is_silent():
    message = collate_warning(CompletionCollator(None, SPEC), [SHORT, []])
    assert message.endswith(
        "1 of 2 rows has no trained token and adds nothing to the loss: row 1: empty row"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CompletionCollator(None, SPEC, warn=False)([SHORT, []])
        CompletionCollator(None, SPEC, mask_on="step")([SHORT, []])


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mask_on": "epoch"}, ValueError, "mask_on: expected one of ('batch', 'step')"),
        ({"spec": "chatml"}, TypeError, "spec: expected a gpumask.MaskSpec, got str"),
        ({"spec": None}, ValueError, "spec: give a MaskSpec, or a tokenizer to read it from"),
        ({"padding_side": "middle"}, ValueError, "padding_side: expected 'left' or 'right'"),
        ({"pad_to_multiple_of": -8}, ValueError, "pad_to_multiple_of: expected a positive int"),
        (
            {"padding_free": True, "pad_to_multiple_of": 8},
            ValueError,
            "pad_to_multiple_of: a padding-free batch has no padding",
        ),
        ({"max_length": 0}, ValueError, "max_length: expected a positive int or None"),
        ({"ignore_index": "-100"}, TypeError, "ignore_index: expected an int"),
    ],
)
def test_bad_arguments_raise_clearly(kwargs, error, message):
    kwargs = {"spec": SPEC, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        CompletionCollator(None, **kwargs)


@pytest.mark.parametrize(
    ("examples", "error", "message"),
    [
        ([], ValueError, "examples: empty batch"),
        ({"input_ids": ROW}, TypeError, "examples: expected a list of examples, got dict"),
        ([[1.0, 2.0]], TypeError, "examples[0]: expected integer token ids, got dtype float64"),
        ([[1, 2.5]], TypeError, "examples[0]: expected integer token ids, got dtype float64"),
        ([(1, "a")], TypeError, "examples[0]: expected integer token ids, got dtype <U21"),
        ([[1], [1, None]], TypeError, "examples[1]: expected integer token ids, got dtype object"),
        (
            [[[1, 2], [3, 4]]],
            ValueError,
            "examples[0]: expected a 1-D sequence of token ids, got shape (2, 2)",
        ),
        (
            [{"input_ids": ROW}, {"ids": SHORT}],
            ValueError,
            "examples[1]: expected a dict with 'input_ids'",
        ),
        (
            [{"input_ids": ROW, "attention_mask": [1, 1]}],
            ValueError,
            "examples[0]['attention_mask']: length 2 does not match input_ids length 14",
        ),
        ([[], []], ValueError, "examples: every row is empty"),
        ([[True, False]], TypeError, "examples[0]: expected integer token ids, got dtype bool"),
        (
            [{"input_ids": {"input_ids": ROW, "attention_mask": [1] * 14}}],
            TypeError,
            "examples[0]['input_ids']: expected a sequence of token ids, got a dict with keys "
            "['input_ids', 'attention_mask'] (a tokenizer's output?); pass the tokenizer's "
            "output itself as the example, or its ['input_ids'] as examples[0]['input_ids']",
        ),
        (
            [{"input_ids": "Hello there"}],
            TypeError,
            "examples[0]['input_ids']: expected a sequence of token ids, got str 'Hello there'; "
            "tokenize the text first",
        ),
    ],
)
def test_bad_examples_raise_clearly(examples, error, message):
    with pytest.raises(error, match=re.escape(message)):
        CompletionCollator(None, SPEC)(examples)


def test_a_batch_encoding_inside_a_dict_says_what_to_pass():
    tok = AutoTokenizer.from_pretrained(f"{TOKENIZERS}/qwen2_5")
    with pytest.raises(TypeError, match=re.escape("got a BatchEncoding with keys ['input_ids'")):
        CompletionCollator(tok, SPEC)([{"input_ids": tok("Hello")}])


def test_spec_defaults_to_the_tokenizers_chat_template():
    tok = AutoTokenizer.from_pretrained(f"{TOKENIZERS}/qwen2_5")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    row = tok.apply_chat_template(messages, tokenize=True, return_dict=True)
    collate = CompletionCollator(tok)
    assert collate.spec == MaskSpec.from_tokenizer(tok)
    labels = collate([row])["labels"][0]
    assert tok.decode(labels[labels != X]) == "Hello.<|im_end|>"


# --- reproducible draws of ignore_token_prob ------------------------------------------------

NOISY = SPEC.replace(ignore_token_ids=[30, 31], ignore_token_prob=0.5)
MANY = [ROW * 8 for _ in range(8)]  # 32 ignorable tokens a row, 256 a batch


def drops(batch) -> list[int]:
    """Where a trained-looking reply token (30 or 31) lost its label."""
    ids, labels = batch["input_ids"], batch["labels"]
    return ((labels == X) & ((ids == 30) | (ids == 31))).flatten().nonzero().flatten().tolist()


def test_seed_gives_the_same_draws_every_run_and_others_for_another_seed():
    first = drops(CompletionCollator(None, NOISY, seed=7)(MANY))
    assert first == drops(CompletionCollator(None, NOISY, seed=7)(MANY))
    assert first != drops(CompletionCollator(None, NOISY, seed=8)(MANY))
    assert 0 < len(first) < 256


def test_generator_gives_the_draws_of_mask_labels_with_that_generator():
    batch = CompletionCollator(None, NOISY, generator=torch.Generator().manual_seed(3))(MANY)
    expected = mask_labels(
        batch["input_ids"], NOISY, attention_mask=batch["attention_mask"],
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert torch.equal(batch["labels"], expected)


def _loader_drops(collate, workers: int) -> list[list[int]]:
    loader = torch.utils.data.DataLoader(
        [MANY[0]] * 8, batch_size=2, num_workers=workers, collate_fn=collate
    )
    return [drops(batch) for batch in loader]


def test_dataloader_workers_draw_distinct_streams_that_repeat_run_after_run():
    collate = CompletionCollator(None, NOISY, seed=11)
    run = _loader_drops(collate, workers=2)
    assert run == _loader_drops(CompletionCollator(None, NOISY, seed=11), workers=2)
    # batches 0 and 1 go to workers 0 and 1: each its own stream, not a copy of one
    assert run[0] != run[1]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seed": 1, "generator": torch.Generator()}, ValueError, "seed: give either seed or"),
        ({"seed": -1}, ValueError, "seed: expected an int >= 0 or None, got -1"),
        ({"seed": "1"}, ValueError, "seed: expected an int >= 0 or None, got '1'"),
        ({"generator": 3}, TypeError, "generator: expected a torch.Generator, got int"),
        (
            {"seed": 1, "mask_on": "step"},
            ValueError,
            "seed: with mask_on='step' the collator draws nothing; pass generator= to "
            "gpumask.attach",
        ),
    ],
)
def test_bad_draw_arguments_raise_clearly(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        CompletionCollator(None, NOISY, **kwargs)
