"""MaskSpec: markers from strings in context, identity, backend tables, repr."""

import os
import pickle

import pytest
import torch
from conftest import TOKENIZERS
from transformers import AutoTokenizer

from gpumask import MaskSpec, mask_labels
from gpumask.torch_backend import tables


@pytest.fixture(scope="module")
def mistral():
    return AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "mistral7b_v01"))


@pytest.fixture(scope="module")
def qwen():
    return AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "qwen2_5"))


def test_str_marker_is_matched_after_a_newline_a_space_and_a_letter(mistral):
    spec = MaskSpec(roles={"assistant": "### Assistant:", "user": "### User:"}, tokenizer=mistral)
    assert len(spec.roles["assistant"]) >= 2  # SentencePiece splits it differently in context
    for before in ["Hello.\n", "Hello. ", "Hello"]:
        text = f"### User: hi{before}### Assistant: fine"
        ids = mistral(text, add_special_tokens=False)["input_ids"]
        labels = mask_labels(torch.tensor([ids]), spec)[0].tolist()
        trained = [i for i, label in zip(ids, labels) if label != -100]
        assert mistral.decode(trained).strip() == "fine", before


def test_every_context_tokenization_is_an_alternative(mistral):
    spec = MaskSpec(roles={"assistant": "[/INST]"}, tokenizer=mistral)
    for before in ["", "\n", " ", "a"]:
        ids = mistral.encode(before + "[/INST]", add_special_tokens=False)
        assert any(tuple(ids[-len(alt) :]) == alt for alt in spec.roles["assistant"]), before


def test_str_marker_also_matches_where_its_last_token_merges_with_the_reply(qwen):
    spec = MaskSpec(
        roles={"assistant": "<|im_start|>assistant\n"}, end_of_turn="<|im_end|>", tokenizer=qwen
    )
    # "\n" + a reply starting with "\n" is one token "\n\n": the header without its "\n"
    assert spec.roles["assistant"] == ((151644, 77091, 198), (151644, 77091))
    assert spec.end_of_turn == ((151645,),)
    assert spec.end_of_turn == ((151645,),)
    assert spec.vocab_size == len(qwen)


def test_repr_shows_markers_decoded(qwen):
    spec = MaskSpec(
        roles={"assistant": "<|im_start|>assistant\n"}, end_of_turn="<|im_end|>", tokenizer=qwen
    )
    text = repr(spec)
    assert "role 'assistant': '<|im_start|>assistant\\n'=[151644, 77091, 198]" in text
    assert "end_of_turn: '<|im_end|>'=[151645]" in text


def test_equal_specs_hash_alike_and_replace_changes_one_option():
    a = MaskSpec(roles={"assistant": [1, 2]}, end_of_turn=[3])
    b = MaskSpec(roles={"assistant": [[1, 2]]}, end_of_turn=[[3]])
    assert a == b and hash(a) == hash(b)
    c = a.replace(last_turn_only=True)
    assert c != a and c.last_turn_only and c.roles == a.roles


def test_replace_keeps_a_spec_without_end_of_turn_or_tool_call():
    spec = MaskSpec(roles={"assistant": [1, 2]})
    assert spec.replace(last_turn_only=True).end_of_turn == ()
    assert spec.replace(last_turn_only=True).tool_call == ()


def test_backend_tables_are_cached_per_device():
    spec = MaskSpec(roles={"assistant": [1, 2], "user": [1, 3]}, end_of_turn=[4])
    assert tables(spec, "cpu") is tables(spec, torch.device("cpu"))
    compiled = tables(spec, "cpu")
    assert compiled.max_len == 2 and compiled.n_roles == 2
    # marker bit m at offset k: header [1, 2] and [1, 3] both accept id 1 first
    assert compiled.match_words[0, 1].item() == 0b011


def test_markers_are_sorted_longest_first():
    spec = MaskSpec(roles={"assistant": [1], "user": [1, 2, 3]}, end_of_turn=[4, 5])
    assert [len(m.ids) for m in spec.markers] == [3, 2, 1]


def test_pickled_spec_leaves_the_tokenizer_and_gives_the_same_labels_and_repr(qwen):
    spec = MaskSpec(
        roles={"user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"},
        end_of_turn="<|im_end|>",
        masked_spans=[("<tool_response>", "</tool_response>")],
        tokenizer=qwen,
    )
    text = (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello\n<tool_response>\nx\n"
        "</tool_response><|im_end|>\n"
    )
    ids = torch.tensor([qwen.encode(text)])
    labels = mask_labels(ids, spec)  # builds tables, which a pickle leaves too
    data = pickle.dumps(spec)
    assert len(data) < 100_000
    copy = pickle.loads(data)
    assert copy.tokenizer is None and copy == spec and hash(copy) == hash(spec)
    assert repr(copy) == repr(spec)
    assert "'<|im_end|>'=[151645]" in repr(copy)
    assert torch.equal(mask_labels(ids, copy), labels)
    assert qwen.decode(labels[labels != -100]) == "Hello\n<|im_end|>"


def _table_bytes(compiled) -> int:
    return sum(
        value.numel() * value.element_size()
        for value in vars(compiled).values()
        if isinstance(value, torch.Tensor)
    )


@pytest.mark.parametrize("big", [2**40, 10**7, 2**31 + 5])
def test_huge_marker_ids_cost_what_small_ones_cost(big):
    from gpumask.padding import Batch
    from gpumask.torch_backend import mask_every_token
    from gpumask.triton_backend import mask_labels_triton

    spec = MaskSpec(roles={"assistant": [big, 7], "user": [big, 8]}, end_of_turn=[[big + 1]])
    small = MaskSpec(roles={"assistant": [40, 7], "user": [40, 8]}, end_of_turn=[[41]])
    assert _table_bytes(tables(spec)) <= _table_bytes(tables(small)) < 2_000
    ids = torch.tensor([[big, 8, 5, big + 1, big, 7, 6, 6, big + 1, 0, 7 - 2**62]])
    expected = [[-100] * 6 + [6, 6, big + 1, -100, -100]]
    assert mask_labels(ids, spec).tolist() == expected
    assert mask_every_token(Batch(ids), spec, -100, False)[0].tolist() == expected
    assert mask_labels_triton(Batch(ids), spec, -100, False)[0].tolist() == expected


def test_a_long_marker_with_a_large_vocabulary_keeps_its_tables_small():
    long_marker = list(range(151_000, 151_255))  # 255 tokens, ids near a 151k vocabulary
    spec = MaskSpec(
        roles={"assistant": [151_600, 77], "user": long_marker},
        end_of_turn=[151_645],
        vocab_size=151_665,
    )
    compiled = tables(spec)
    assert compiled.match_words.shape == (255, 259)  # offsets x (distinct marker ids + 1)
    # per id: its class (4 bytes) and whether it is a marker id (1 byte); never K x V
    assert _table_bytes(compiled) < 1_100_000
    ids = torch.tensor([long_marker + [5, 151_645, 151_600, 77, 6, 151_645]])
    assert mask_labels(ids, spec)[0].tolist() == [-100] * 259 + [6, 151_645]
