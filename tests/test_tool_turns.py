"""Rule 5 on real formats (the README section "Train tool use only / do not train reasoning"):
Qwen2.5's own template with a tool call, a Qwen3-style template with a reasoning block, and
the options through the collators, the TRL drop-in and `gpumask show`'s display."""

import warnings

import pytest
import torch
from families import TOOL_CONVERSATION, WEATHER_TOOL, load_family, trained_text

from gpumask import CompletionCollator, DataCollatorForCompletionOnlyLM, MaskSpec, mask_labels
from gpumask.collators import NoTrainedTokensWarning
from gpumask.display import format_row, mask_rows, row_heading

HEADERS = {
    "system": "<|im_start|>system\n",
    "user": "<|im_start|>user\n",
    "assistant": "<|im_start|>assistant\n",
}
CALL = (
    'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Nice"}}\n</tool_call>'
)
MESSAGES = [{"role": "user", "content": "Weather in Nice?"}, *TOOL_CONVERSATION[1:]]


@pytest.fixture(scope="module")
def qwen():
    return load_family("qwen2_5")


def tool_spec(tok, mode: str, **options) -> MaskSpec:
    return MaskSpec(roles=HEADERS, end_of_turn="<|im_end|>", tool_call="<tool_call>",
                    tool_call_turns=mode, tokenizer=tok, **options)  # fmt: skip


def encode(tok, messages):
    text = tok.apply_chat_template(messages, tools=WEATHER_TOOL, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("train", [CALL + "<|im_end|>", "It is 27 C.<|im_end|>"]),
        ("only", [CALL + "<|im_end|>"]),
        ("mask", ["It is 27 C.<|im_end|>"]),
    ],
)
def test_qwen25_tool_call_turns_choose_the_replies(qwen, mode, expected):
    # The system prompt's tool instructions hold a <tool_call> too: outside any reply, so the
    # second reply does not count as calling.
    runs = trained_text(qwen, tool_spec(qwen, mode), MESSAGES, tools=WEATHER_TOOL)
    assert runs == expected


def test_qwen3_style_reasoning_block_as_a_masked_span_trains_the_answer_only():
    tok = load_family("qwen3")
    spec = MaskSpec(roles=HEADERS, end_of_turn="<|im_end|>",
                    masked_spans=[("<think>\n", "</think>\n\n")], tokenizer=tok)  # fmt: skip
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "reasoning_content": "Easy: 2+2=4.", "content": "4."},
    ]
    assert "<think>\nEasy: 2+2=4.\n</think>\n\n4." in tok.apply_chat_template(
        messages, tokenize=False
    )
    assert trained_text(tok, spec, messages) == ["4.<|im_end|>"]


def test_completion_collator_masks_by_the_spec_and_names_rows_whose_turns_were_dropped(qwen):
    spec = tool_spec(qwen, "only")
    calling = encode(qwen, MESSAGES)
    plain = encode(qwen, [MESSAGES[0], {"role": "assistant", "content": "Sunny."}])
    collate = CompletionCollator(qwen, spec)
    with pytest.warns(NoTrainedTokensWarning) as record:
        batch = collate([calling, plain])
    expected = mask_labels(torch.tensor([calling]), spec)[0]
    assert batch["labels"][0].tolist() == expected.tolist()
    assert (batch["labels"][1] == -100).all()
    message = str(record[0].message)
    assert "1 of 2 rows" in message
    assert "row 1: tool_call_turns='only' dropped 1 'assistant' turn without a tool call" in message


def test_trl_drop_in_takes_tool_call_and_tool_call_turns(qwen):
    # As in TRL, a reply runs to the next instruction template: the newline after it trains.
    ids = encode(qwen, MESSAGES)
    for mode, expected in (("only", CALL + "<|im_end|>\n"), ("mask", "It is 27 C.<|im_end|>\n")):
        collate = DataCollatorForCompletionOnlyLM(
            "<|im_start|>assistant\n", ["<|im_start|>user\n", "<|im_start|>system\n"],
            tokenizer=qwen, tool_call="<tool_call>", tool_call_turns=mode,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("error", NoTrainedTokensWarning)
            labels = collate([{"input_ids": ids}])["labels"][0]
        trained = [i for i, label in zip(ids, labels.tolist()) if label != -100]
        assert qwen.decode(trained) == expected, mode


def test_trl_drop_in_reports_rows_whose_replies_were_all_dropped(qwen):
    collate = DataCollatorForCompletionOnlyLM(
        "<|im_start|>assistant\n", "<|im_start|>user\n", tokenizer=qwen,
        tool_call="<tool_call>", tool_call_turns="only",
    )  # fmt: skip
    ids = encode(qwen, [MESSAGES[0], {"role": "assistant", "content": "Sunny."}])
    with pytest.warns(NoTrainedTokensWarning, match="dropped 1 'response' turn without a tool"):
        collate([{"input_ids": ids}])


def test_display_strikes_through_the_dropped_turns_and_says_why(qwen):
    spec = tool_spec(qwen, "mask")
    (row,) = mask_rows([encode(qwen, MESSAGES)], spec)
    text = format_row(row, qwen.decode, color=False)
    assert f"~~{CALL}<|im_end|>~~" in text
    assert "[[It is 27 C.<|im_end|>]]" in text
    assert row_heading(row, "row 0").endswith(
        "tool_call_turns='mask' dropped 1 'assistant' turn with a tool call"
    )
    assert "\x1b[9;31m" in format_row(row, qwen.decode, color=True)
    (plain,) = mask_rows([encode(qwen, MESSAGES)], tool_spec(qwen, "train"))
    assert plain.dropped == () and plain.dropped_note is None


def test_display_explains_a_row_in_which_every_turn_was_dropped(qwen):
    spec = tool_spec(qwen, "only")
    (row,) = mask_rows([encode(qwen, [MESSAGES[0], {"role": "assistant", "content": "No."}])], spec)
    assert row.reason == "tool_call_turns='only' dropped 1 'assistant' turn without a tool call"
