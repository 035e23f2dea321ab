"""Cases that used to pass without a word: turns that train only their end-of-turn token (what
a template that drops `tool_calls` makes of a tool-calling turn), and a `mask_labels` batch in
which nothing trains."""

import os
import warnings

import numpy as np
import pytest
import torch
from conftest import TOKENIZERS
from families import BARE_CALL_CONVERSATION
from transformers import AutoTokenizer

from gpumask import CompletionCollator, MaskSpec, mask_labels
from gpumask.empty_turns import EmptyTurnWarning, count_empty_turns
from gpumask.masking import BatchTrainsNothingWarning

# user = [1, 10], assistant = [1, 11] or [1, 12, 13], end of turn = [2], masked span [7] ... [8]
SPEC = MaskSpec(
    roles={"user": [1, 10], "assistant": [[1, 11], [1, 12, 13]]},
    end_of_turn=[2],
    masked_spans=[([7], [8])],
)


def empty_turns(rows):
    ids = np.array(rows)
    trained = mask_labels(torch.tensor(rows), SPEC, return_stats=True)[0].numpy() != -100
    return count_empty_turns(ids, trained, SPEC).tolist()


@pytest.mark.parametrize(
    ("row", "count"),
    [
        ([1, 10, 5, 2, 1, 11, 2, 1, 11, 6, 2], 1),  # an empty reply, then a real one
        ([1, 11, 2, 1, 12, 13, 2, 9, 9, 9, 9], 2),  # both headers, both empty
        ([1, 10, 5, 2, 1, 11, 6, 2, 1, 11, 2], 1),  # the empty reply ends the row
        ([1, 10, 5, 2, 1, 11, 6, 2, 9, 9, 9], 0),  # a reply
        ([1, 11, 7, 5, 8, 2, 9, 9, 9, 9, 9], 0),  # a reply all in a masked span: not empty
        ([1, 10, 2, 1, 10, 2, 9, 9, 9, 9, 9], 0),  # empty user turns do not train
    ],
)
def test_empty_turns_are_a_trained_header_then_the_end_of_turn(row, count):
    assert empty_turns([row]) == [count]


def test_empty_turns_are_counted_per_row_in_a_padded_batch():
    rows = [[1, 11, 2, 0, 0, 0], [1, 11, 6, 2, 1, 11], [1, 10, 5, 2, 1, 11]]
    assert empty_turns(rows) == [1, 0, 0]
    spec = SPEC.replace(train_on_end_of_turn=False)  # an empty turn then trains nothing at all
    trained = mask_labels(torch.tensor(rows), spec, return_stats=True)[0].numpy() != -100
    assert count_empty_turns(np.array(rows), trained, spec).tolist() == [0, 0, 0]


def test_collator_warns_once_with_the_count_when_the_template_drops_tool_calls():
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "smollm2"))
    text = tok.apply_chat_template(BARE_CALL_CONVERSATION, tokenize=False)
    assert "<|im_start|>assistant\n<|im_end|>" in text  # SmolLM2's template drops tool_calls
    ids = tok.encode(text, add_special_tokens=False)
    collate = CompletionCollator(tok, MaskSpec.from_tokenizer(tok))
    with pytest.warns(EmptyTurnWarning) as caught:
        collate([ids, ids, ids[:5]])
    empty = [w for w in caught if w.category is EmptyTurnWarning]
    assert len(empty) == 1
    assert str(empty[0].message).startswith(
        "CompletionCollator: 2 turns train only the end-of-turn token, right after the header "
        "of a trained role (an empty reply), in row 0, row 1. If these were tool-calling turns"
    )


def test_collator_gives_no_empty_turn_warning_where_tool_calls_render():
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "qwen2_5"))
    text = tok.apply_chat_template(BARE_CALL_CONVERSATION, tokenize=False)
    collate = CompletionCollator(tok, MaskSpec.from_tokenizer(tok))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collate([tok.encode(text, add_special_tokens=False)])


def test_mask_labels_warns_when_no_token_of_the_batch_trains():
    ids = torch.tensor([[1, 10, 5, 2], [5, 6, 7, 2]])
    with pytest.warns(BatchTrainsNothingWarning) as caught:
        labels = mask_labels(ids, SPEC)
    assert labels.tolist() == [[-100] * 4] * 2
    assert str(caught[0].message).startswith(
        "mask_labels: no token of this [2, 4] batch trains (every label of all 2 rows is "
        "ignore_index=-100): "
        "no header of a trained role occurs"
    )
    assert caught[0].filename == __file__  # points at the caller


@pytest.mark.parametrize(
    "call",
    [
        lambda ids: mask_labels(ids, SPEC, return_stats=True),  # the counts say it
        lambda ids: mask_labels(torch.cat([ids, torch.tensor([[1, 11, 6, 2]])]), SPEC),
    ],
    ids=["return_stats", "one_row_trains"],
)
def test_mask_labels_is_quiet_with_stats_or_when_a_token_trains(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(torch.tensor([[1, 10, 5, 2]]))


def test_compiled_mask_labels_makes_no_check_and_no_graph_break():
    compiled = torch.compile(lambda x: mask_labels(x, SPEC), fullgraph=True, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchTrainsNothingWarning)
        assert compiled(torch.tensor([[1, 10, 5, 2]])).tolist() == [[-100] * 4]


def test_role_tokens_columns_are_spec_role_names_then_no_role():
    spec = MaskSpec(roles={"user": [1, 10], "tool": [1, 12], "assistant": [1, 11]}, end_of_turn=[2])
    assert spec.role_names == ("user", "tool", "assistant")
    ids = torch.tensor([[1, 10, 5, 2, 9, 1, 11, 6, 6, 2, 1, 12, 7, 2]])
    _, stats = mask_labels(ids, spec, return_stats=True)
    counts = dict(zip([*spec.role_names, "(no role)"], stats["role_tokens"][0].tolist()))
    assert counts == {"user": 4, "tool": 4, "assistant": 5, "(no role)": 1}
