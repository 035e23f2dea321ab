"""gpumask.display: which tokens train, shown as text, ANSI, HTML and counts per role."""

import os

import pytest
from conftest import TOKENIZERS
from transformers import AutoTokenizer

from gpumask import MaskSpec, display
from gpumask.display import (
    MaskedRow,
    format_row,
    format_summary,
    html_page,
    legend,
    mask_rows,
    row_heading,
    segments,
    token_roles,
)

# user = [1, 10], assistant = [1, 11], end of turn = [2], masked span [7] ... [8]
SPEC = MaskSpec(
    roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2], masked_spans=[([7], [8])]
)
QA = [1, 10, 5, 2, 1, 11, 6, 2]


def brackets(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def test_mask_rows_gives_trained_tokens_and_tokens_per_role():
    rows = mask_rows([QA, [1, 11, 6, 6, 2, 9]], SPEC)
    assert rows[0].trained == (False,) * 6 + (True, True)
    assert rows[0].role_tokens == {"user": 4, "assistant": 4, "(no role)": 0}
    assert rows[0].n_trained == 2 and rows[0].reason is None
    assert rows[1].trained == (False, False, True, True, True, False)
    assert rows[1].role_tokens == {"user": 0, "assistant": 5, "(no role)": 1}


def test_rows_of_different_lengths_are_masked_as_if_alone():
    long_row = QA + [1, 11, 5, 5, 5, 2]
    together = mask_rows([[1, 11, 6, 2], long_row], SPEC)
    assert together[0] == mask_rows([[1, 11, 6, 2]], SPEC)[0]
    assert together[1] == mask_rows([long_row], SPEC)[0]
    assert len(together[0].trained) == 4


def test_rows_are_masked_in_chunks_with_the_same_result(monkeypatch):
    rows = [QA, [1, 11, 6, 2], [1, 10, 5, 2], QA + QA, [1, 11, 7, 6, 8, 6, 2]]
    whole = mask_rows(rows, SPEC)
    monkeypatch.setattr(display, "CHUNK_TOKENS", 16)
    calls = []
    batch = display._mask_batch
    monkeypatch.setattr(display, "_mask_batch", lambda r, s: calls.append(len(r)) or batch(r, s))
    assert mask_rows(rows, SPEC) == whole
    assert calls == [2, 1, 1, 1]


@pytest.mark.parametrize(
    ("row", "spec", "reason"),
    [
        ([1, 10, 5, 2], SPEC, "no header of a trained role ('assistant') found"),
        ([], SPEC, "empty row"),
        (
            [1, 10, 5, 2, 1, 11],
            SPEC,
            "every 'assistant' turn is empty: the row may be truncated right after a header",
        ),
        ([1, 11, 7, 6, 6, 2], SPEC, "every 'assistant' token lies inside a masked span"),
        (
            [1, 11, 6, 6, 2],
            SPEC.replace(ignore_token_ids=[6, 2]),
            "every 'assistant' token is in ignore_token_ids",
        ),
        (
            [1, 11, 2],
            SPEC.replace(train_on_end_of_turn=False),
            "the 'assistant' turns hold only their end-of-turn token (train_on_end_of_turn=False)",
        ),
    ],
)
def test_rows_with_no_trained_token_say_why(row, spec, reason):
    (masked,) = mask_rows([row], spec)
    assert masked.n_trained == 0
    assert masked.reason == reason


def test_format_row_without_color_brackets_trained_runs():
    (row,) = mask_rows([QA + [1, 11, 6, 7, 9, 8, 6, 2]], SPEC)
    assert format_row(row, brackets, color=False) == (
        "<1><10><5><2><1><11>[[<6><2>]]<1><11>[[<6>]]<7><9><8>[[<6><2>]]"
    )


def test_format_row_with_color_styles_each_line_and_resets():
    row = MaskedRow((1, 2, 3), (False, True, True), {}, None)
    text = {1: "a\n", 2: "b\nc", 3: "\n"}
    decode = lambda ids: "".join(text[i] for i in ids)  # noqa: E731
    assert format_row(row, decode, color=True) == (
        "\x1b[2ma\x1b[0m\n\x1b[1;30;42mb\x1b[0m\n\x1b[1;30;42mc\x1b[0m\n"
    )
    assert legend(color=False) == "trained tokens: between [[ and ]]"


def test_segments_keep_sentencepiece_leading_spaces():
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "mistral7b_v01"))
    ids = tok.encode("Hello world again", add_special_tokens=False)
    assert len(ids) == 3

    def decode(x):
        return tok.decode(x)

    assert segments(ids, [False, True, False], decode) == [
        ("Hello", False),
        (" world", True),
        (" again", False),
    ]


def test_segments_keep_characters_split_over_byte_tokens_whole():
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "qwen2_5"))
    ids = tok.encode("ok 🦩!", add_special_tokens=False)
    first_bird = ids.index(tok.encode(" 🦩", add_special_tokens=False)[0])
    trained = [i >= first_bird for i in range(len(ids))]
    assert segments(ids, trained, tok.decode) == [("ok", False), (" 🦩!", True)]


def test_row_heading_counts_trained_tokens_and_roles():
    (row,) = mask_rows([QA], SPEC)
    assert row_heading(row, "line 3") == (
        "line 3: 2 of 8 tokens trained (25.0%); user 4, assistant 4"
    )


def test_summary_counts_roles_share_and_untrained_rows():
    rows = mask_rows([QA, [1, 10, 5, 2], [9, 9]], SPEC)
    assert format_summary(rows, ["line 1", "line 2", "line 4"]) == "\n".join(
        [
            "3 rows, 14 tokens, 2 trained (14.3%)",
            "role       tokens  share",
            "user            8  57.1%",
            "assistant       4  28.6%",
            "(no role)       2  14.3%",
            "2 rows with no trained token:",
            "  line 2: no header of a trained role ('assistant') found",
            "  line 4: no header of a trained role ('assistant') found",
        ]
    )
    assert format_summary(rows[:1]).splitlines()[-1] == "every row trains at least one token"


def test_html_page_escapes_text_and_highlights_trained_runs():
    decode = lambda ids: "".join("<b>" if i == 6 else f"<{i}>" for i in ids)  # noqa: E731
    rows = mask_rows([QA, [1, 10, 5]], SPEC)
    page = html_page(rows, decode, ["line 1", "line 2"], title="chats & more")
    assert "<title>chats &amp; more</title>" in page
    assert (
        "<pre><span class='r-none' title='no role'>&lt;1&gt;&lt;10&gt;&lt;5&gt;&lt;2&gt;&lt;1&gt;"
        "&lt;11&gt;</span><span class='r-none t' title='no role'>&lt;b&gt;&lt;2&gt;</span></pre>"
    ) in page
    assert (
        "<p class='why'>No token trains: no header of a trained role (&#x27;assistant&#x27;)"
        " found</p>" in page
    )
    assert page.count(" t'") == 1 and page.count("<span class='t'>") == 1  # one run, the legend


def test_html_page_with_spec_colours_each_role_and_has_a_legend():
    rows = mask_rows([QA + [3]], SPEC)
    page = html_page(rows, brackets, ["line 1"], spec=SPEC)
    assert (
        "<p class='legend'>Trained tokens are <span class='t'>highlighted</span>. "
        "<span class='r0'>user</span> <span class='r1'>assistant</span> "
        "<span class='r-none'>headers and between turns</span></p>"
    ) in page
    assert (
        "<pre><span class='r-none' title='no role'>&lt;1&gt;&lt;10&gt;</span>"
        "<span class='r0' title='user'>&lt;5&gt;&lt;2&gt;</span>"
        "<span class='r-none' title='no role'>&lt;1&gt;&lt;11&gt;</span>"
        "<span class='r1 t' title='assistant'>&lt;6&gt;&lt;2&gt;</span>"
        "<span class='r-none' title='no role'>&lt;3&gt;</span></pre>"
    ) in page
    assert ".r0{color:#1f5fbf}.r1{color:#8a3ffc}" in page


def test_token_roles_give_each_turn_its_role_even_when_masked():
    ids = [1, 10, 5, 7, 6, 8, 2, 1, 11, 6, 2, 3]
    assert token_roles(ids, SPEC.replace(last_turn_only=True)) == (
        (None, None) + ("user",) * 5 + (None, None) + ("assistant",) * 2 + (None,)
    )


def test_demo_conversation_trains_the_replies_and_tool_calls_only():
    from gpumask.demo import load_tokenizer, masked_conversation

    tok = load_tokenizer()
    _, row = masked_conversation(tok)
    runs = [text for text, trained in segments(row.ids, row.trained, tok.decode) if trained]
    assert runs == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>'
        "<|im_end|>",
        "Sunny, 24 °C, but the sea is 18 °C: bracing, not warm.<|im_end|>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Nice"}}\n</tool_call>'
        "<|im_end|>",
        "Yes: 27 °C and a 23 °C sea. Go for it.<|im_end|>",
    ]
    assert row.n_trained == 112
    assert row.role_tokens == {"system": 175, "user": 103, "assistant": 128, "(no role)": 9}
