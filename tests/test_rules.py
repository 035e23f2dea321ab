"""Hand-written cases for every consequence of SPEC section 2, with exact labels.

Each case is checked against the torch backend and the reference oracle alike.
"""

import pytest
import torch
from chatml import CALL, IGNORE, IM_END, TC_CLOSE, TC_OPEN, TR_CLOSE, TR_OPEN, parse, spec

from gpumask import MaskSpec, mask_labels
from gpumask.reference import mask_labels_reference

BACKENDS = [mask_labels, mask_labels_reference]


def labels_of(ids, chat_spec, fn=mask_labels, **kwargs):
    return fn(ids, chat_spec, **kwargs)[0].tolist()


def check(text: str, chat_spec=None, **kwargs) -> None:
    ids, expected = parse(text)
    chat_spec = chat_spec or spec()
    for fn in BACKENDS:
        assert labels_of(ids, chat_spec, fn, **kwargs) == expected, fn.__name__


def test_reply_and_its_end_of_turn_train_and_the_newline_after_does_not():
    check("@user q E nl @assistant *a *b *E nl")


def test_system_prompt_and_user_turn_are_masked():
    check("@system s t E nl @user q E nl @assistant *a *E nl")


def test_consecutive_assistant_turns_train_both_contents_and_neither_header():
    check("@user q E nl @assistant *a *E nl @assistant *b *c *E nl")


def test_second_user_turn_between_replies_is_masked():
    check("@user q E nl @assistant *a *E nl @user r E nl @user s E nl @assistant *b *E nl")


def test_tool_turn_between_replies_is_masked():
    check("@user q E nl @assistant *a *E nl @tool x y E nl @assistant *b *E nl")


def test_system_user_reply_two_tool_turns_reply():
    check(
        "@system s E nl @user q E nl @assistant *a *E nl @tool x E nl @tool y E nl "
        "@assistant *b *E nl"
    )


def test_end_of_turn_not_trained_when_disabled():
    check("@user q E nl @assistant *a *b E nl", spec(train_on_end_of_turn=False))


def test_end_of_turn_outside_any_turn_is_not_trained():
    check("@user q E nl E E @assistant *a *E E nl")


def test_masked_span_inside_reply_is_masked_markers_included():
    check("@assistant *a <tr> x y </tr> *b *E nl", spec(masked_spans=[([TR_OPEN], [TR_CLOSE])]))


def test_unclosed_span_runs_to_end_of_turn_its_end_of_turn_included():
    check(
        "@assistant *a <tr> x E nl @user q E nl @assistant *b *E nl",
        spec(masked_spans=[([TR_OPEN], [TR_CLOSE])]),
    )


def test_header_ends_an_open_span():
    check("@assistant *a <tr> x @assistant *b *E", spec(masked_spans=[([TR_OPEN], [TR_CLOSE])]))


def test_spans_do_not_nest_and_stray_close_is_ignored():
    # The second open is inside the span: ignored, so the first close ends the span.
    # The second close has no open span: ignored, so it trains as content.
    check(
        "@assistant *a <tr> x <tr> y </tr> *b *</tr> *c *E",
        spec(masked_spans=[([TR_OPEN], [TR_CLOSE])]),
    )


def test_close_of_another_span_kind_does_not_end_the_open_span():
    spans = [([TR_OPEN], [TR_CLOSE]), ([TC_OPEN], [TC_CLOSE])]
    check(
        "@assistant *a <tr> x </tc> y </tr> *b <tc> z <tr> w </tr> v </tc> *c *E",
        spec(masked_spans=spans),
    )


def test_longest_marker_wins_at_one_start():
    chat = MaskSpec(roles={"assistant": [20], "user": [20, 21]})
    for fn in BACKENDS:
        assert labels_of(torch.tensor([[20, 21, 5, 20, 6]]), chat, fn) == [
            IGNORE,
            IGNORE,
            IGNORE,
            IGNORE,
            6,
        ]


def test_occurrence_inside_an_ignored_occurrence_is_ignored_too():
    # assistant [1,2] at 0 is kept; user [2,3] at 1 starts inside it (ignored); the end of
    # turn [3,4] at 2 starts inside the ignored user header, so it is ignored as well.
    chat = MaskSpec(roles={"assistant": [1, 2], "user": [2, 3]}, end_of_turn=[3, 4])
    for fn in BACKENDS:
        assert labels_of(torch.tensor([[1, 2, 3, 4, 5]]), chat, fn) == [IGNORE, IGNORE, 3, 4, 5]


def test_row_without_trained_token_is_all_ignored_and_counted():
    ids, expected = parse("@user q r E nl @user s E")
    for fn in BACKENDS:
        labels, stats = fn(ids, spec(), return_stats=True)
        assert labels[0].tolist() == expected == [IGNORE] * ids.shape[1]
        assert stats["trained"].tolist() == [0]


def test_stats_count_trained_tokens_and_tokens_per_role():
    ids, _ = parse("@system s E nl @user q r E nl @assistant a b E nl")
    for fn in BACKENDS:
        _, stats = fn(ids, spec(), return_stats=True)
        assert stats["trained"].tolist() == [3]
        # columns: system, user, assistant, tool, none; headers count with their role
        assert stats["role_tokens"].tolist() == [[5, 6, 6, 0, 3]]


def test_truncated_header_at_row_end_trains_nothing():
    ids, _ = parse("@user q E nl @assistant *a *E nl")
    truncated = torch.cat([ids, torch.tensor([[1, 6]])], dim=1)
    expected = parse("@user q E nl @assistant *a *E nl")[1] + [IGNORE, IGNORE]
    for fn in BACKENDS:
        assert labels_of(truncated, spec(), fn) == expected


def test_row_starting_inside_a_reply_needs_initial_role():
    check("a b E nl @user q E nl @assistant *c *E")
    check("*a *b *E nl @user q E nl @assistant *c *E", spec(initial_role="assistant"))


def test_last_turn_only_trains_the_final_reply():
    check(
        "@user q E nl @assistant a E nl @user r E nl @assistant *b *E nl", spec(last_turn_only=True)
    )


def test_last_turn_only_counts_consecutive_turns_separately():
    check("@user q E nl @assistant a E nl @assistant *b *E nl", spec(last_turn_only=True))


def test_train_roles_can_include_tool():
    check(
        "@user q E nl @assistant *a *E nl @tool *x *E nl", spec(train_roles=("assistant", "tool"))
    )


def test_padding_is_masked_by_attention_mask_and_pad_equal_to_eos_still_trains():
    ids, expected = parse("@user q E nl @assistant *a *E")
    padded = torch.cat([ids, torch.full((1, 3), IM_END)], dim=1)  # pad token == end of turn
    mask = torch.tensor([[1] * ids.shape[1] + [0, 0, 0]])
    for fn in BACKENDS:
        assert labels_of(padded, spec(), fn, attention_mask=mask) == expected + [IGNORE] * 3


def test_left_and_right_padding_give_the_same_labels():
    ids, expected = parse("@user q E nl @assistant *a *b *E")
    length = ids.shape[1]
    right = torch.cat([ids, torch.zeros(1, 4, dtype=torch.int64)], dim=1)
    left = torch.cat([torch.zeros(1, 4, dtype=torch.int64), ids], dim=1)
    right_mask = (torch.arange(length + 4) < length).long()[None]
    left_mask = right_mask.flip(1)
    for fn in BACKENDS:
        assert labels_of(right, spec(), fn, attention_mask=right_mask) == expected + [IGNORE] * 4
        assert labels_of(left, spec(), fn, attention_mask=left_mask) == [IGNORE] * 4 + expected


def test_masked_hole_in_the_middle_breaks_a_marker():
    ids, _ = parse("@user q E nl @assistant a b E")
    mask = torch.ones_like(ids)
    mask[0, 7] = 0  # the "assistant" token of the header
    for fn in BACKENDS:
        assert labels_of(ids, spec(), fn, attention_mask=mask) == [IGNORE] * ids.shape[1]


ROWS = ["@user q E nl @assistant *a *E nl", "*b *E nl @assistant *c", "@assistant *d *e *E"]


def _packed():
    parsed = [parse(row) for row in ROWS]
    ids = torch.cat([p[0] for p in parsed], dim=1)
    expected = sum((p[1] for p in parsed), [])
    lengths = [p[0].shape[1] for p in parsed]
    return ids, expected, lengths


def test_packed_row_by_position_ids_equals_its_sequences_one_by_one():
    ids, _, lengths = _packed()
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    chat = spec(initial_role="assistant")
    alone = sum((labels_of(parse(row)[0], chat) for row in ROWS), [])
    for fn in BACKENDS:
        assert labels_of(ids, chat, fn, position_ids=position_ids) == alone


def test_packed_row_by_cu_seqlens_equals_its_sequences_one_by_one():
    ids, _, lengths = _packed()
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    chat = spec(last_turn_only=True)
    alone = sum((labels_of(parse(row)[0], chat) for row in ROWS), [])
    for fn in BACKENDS:
        assert labels_of(ids, chat, fn, cu_seqlens=cu_seqlens) == alone


def test_marker_across_a_sequence_boundary_does_not_match():
    # "<|im_start|> assistant" ends sequence 1; "\n" starts sequence 2: no header there.
    ids = torch.tensor([[1, 5, 3, 120, 1, 6, 3, 121]])
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1]])
    for fn in BACKENDS:
        assert labels_of(ids, spec(), fn, position_ids=position_ids) == [IGNORE] * 8


def test_tokens_past_cu_seqlens_end_are_padding():
    ids, expected = parse("@assistant *a *b")
    padded = torch.cat([ids, torch.tensor([[120, 121]])], dim=1)
    cu = torch.tensor([0, ids.shape[1]])
    for fn in BACKENDS:
        assert labels_of(padded, spec(), fn, cu_seqlens=cu) == expected + [IGNORE, IGNORE]


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_ignore_token_ids_with_probability_zero_and_one(prob):
    ids, expected = parse("@assistant *a *b *a *E")
    dropped = 100 + ord("a")
    if prob == 1.0:
        expected = [IGNORE if x == dropped else x for x in expected]
    chat = spec(ignore_token_ids=[dropped], ignore_token_prob=prob)
    for fn in BACKENDS:
        assert labels_of(ids, chat, fn) == expected


def test_ignore_token_ids_with_probability_half_follow_the_seeded_draws():
    ids, expected = parse("@assistant " + " ".join(["*a *b"] * 20) + " *E")
    dropped = 100 + ord("a")
    draws = torch.rand(ids.shape, generator=torch.Generator().manual_seed(7))[0]
    expected = [IGNORE if x == dropped and u < 0.5 else x for x, u in zip(expected, draws)]
    assert IGNORE in expected[3::2] and dropped in expected  # some dropped, some kept
    chat = spec(ignore_token_ids=[dropped], ignore_token_prob=0.5)
    for fn in BACKENDS:
        generator = torch.Generator().manual_seed(7)
        assert labels_of(ids, chat, fn, generator=generator) == expected


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_labels_keep_the_ids_dtype_and_inputs_are_not_modified(dtype):
    ids, expected = parse("@user q E nl @assistant *a *E nl")
    ids = ids.to(dtype)
    before = ids.clone()
    mask = torch.ones_like(ids)
    labels = mask_labels(ids, spec(), attention_mask=mask)
    assert labels.dtype == dtype and labels[0].tolist() == expected
    assert torch.equal(ids, before) and torch.equal(mask, torch.ones_like(ids))


def test_custom_ignore_index():
    ids, expected = parse("@user q E nl @assistant *a *E nl")
    assert mask_labels(ids, spec(), ignore_index=-1)[0].tolist() == [
        -1 if x == IGNORE else x for x in expected
    ]


def test_batch_rows_are_independent():
    rows = ["@user q E nl @assistant *a *E nl", "@assistant *b *E nl @user d E nl"]
    parsed = [parse(r) for r in rows]
    ids = torch.cat([p[0] for p in parsed])
    for fn in BACKENDS:
        assert fn(ids, spec()).tolist() == [p[1] for p in parsed]


def test_last_turn_only_with_more_span_kinds_than_roles():
    chat = MaskSpec(
        roles={"assistant": [1]},
        masked_spans=[([2], [3]), ([4], [5]), ([6], [7])],
        last_turn_only=True,
    )
    for fn in BACKENDS:
        assert labels_of(torch.tensor([[1, 6, 8, 7, 9, 1, 10]]), chat, fn) == [
            IGNORE,
            IGNORE,
            IGNORE,
            IGNORE,
            IGNORE,
            IGNORE,
            10,
        ]


def test_many_roles_train_by_role_code_above_thirty_one():
    roles = {f"r{i}": [100 + i] for i in range(40)}
    chat = MaskSpec(roles=roles, train_roles=("r35",), end_of_turn=[2])
    ids = torch.tensor([[100, 5, 2, 135, 6, 2, 101, 7]])
    for fn in BACKENDS:
        assert labels_of(ids, chat, fn) == [IGNORE, IGNORE, IGNORE, IGNORE, 6, 2, IGNORE, IGNORE]


# --- rule 5: turns chosen by content, and rule 6 with it ------------------------------------

QA_CALL_T_A = "@user q E nl @assistant {a} {call} {b} {E} nl @tool x E nl @assistant {c} {E2} nl"


def tools(mode: str, **options) -> MaskSpec:
    return spec(tool_call=[CALL], tool_call_turns=mode, masked_spans=[([TR_OPEN], [TR_CLOSE])],
                **options)  # fmt: skip


def test_tool_call_turns_train_trains_every_reply():
    check("@user q E nl @assistant *a *<call> *b *E nl @tool x E nl @assistant *c *E nl",
          tools("train"))  # fmt: skip


def test_tool_call_turns_mask_drops_the_whole_calling_turn_tokens_before_the_call_too():
    check("@user q E nl @assistant a <call> b E nl @tool x E nl @assistant *c *E nl",
          tools("mask"))  # fmt: skip


def test_tool_call_turns_only_trains_the_calling_turn_only():
    check("@user q E nl @assistant *a *<call> *b *E nl @tool x E nl @assistant c E nl",
          tools("only"))  # fmt: skip


def test_a_call_in_a_user_or_tool_turn_does_not_count():
    check("@user q <call> E nl @tool <call> E nl @assistant a E nl", tools("only"))
    check("@user q <call> E nl @tool <call> E nl @assistant *a *E nl", tools("mask"))


def test_a_call_between_turns_does_not_count():
    check("@assistant a E <call> nl @assistant b E", tools("only"))


def test_a_call_inside_a_masked_span_does_not_count():
    check("@assistant a <tr> <call> </tr> b E", tools("only"))
    check("@assistant *a <tr> <call> </tr> *b *E", tools("mask"))


def test_consecutive_replies_where_only_the_second_calls():
    check("@user q E nl @assistant a E nl @assistant *<call> *b *E nl", tools("only"))
    check("@user q E nl @assistant *a *E nl @assistant <call> b E nl", tools("mask"))


def test_a_header_ends_a_turn_that_has_no_end_of_turn():
    check("@user q E nl @assistant a @assistant *<call> *E", tools("only"))


@pytest.mark.parametrize(
    "mode, text",
    [
        ("train", "@user q E nl @assistant a <call> b E nl @tool x E nl @assistant *c *E nl"),
        ("mask", "@user q E nl @assistant a <call> b E nl @tool x E nl @assistant *c *E nl"),
        ("only", "@user q E nl @assistant *a *<call> *b *E nl @tool x E nl @assistant c E nl"),
    ],
)
def test_last_turn_only_takes_the_last_turn_that_rule_5_keeps(mode, text):
    check(text, tools(mode, last_turn_only=True))


def test_last_turn_only_counts_a_kept_turn_with_nothing_trained():
    # The row ends in an empty reply: kept by "train" and "mask", it is the last turn, so the
    # calling reply does not train; "only" drops it, and the calling reply is the last kept.
    check("@user q E nl @assistant a <call> E nl @assistant", tools("train", last_turn_only=True))
    check("@user q E nl @assistant a <call> E nl @assistant", tools("mask", last_turn_only=True))
    check("@user q E nl @assistant *a *<call> *E nl @assistant",
          tools("only", last_turn_only=True))  # fmt: skip


def test_packed_sequences_have_their_own_turns():
    ids, expected = parse("@assistant a b @assistant *<call> *E")
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]])
    # the call in the second sequence does not reach back into the first one's open turn
    assert ids.shape[1] == 10
    for fn in BACKENDS:
        assert labels_of(ids, tools("only"), fn, position_ids=position_ids) == expected


def test_left_padding_with_call_ids_takes_part_in_nothing():
    ids, expected = parse("<call> <call> @assistant *a *E")
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    for fn in BACKENDS:
        assert labels_of(ids, tools("mask"), fn, attention_mask=mask) == expected
        assert labels_of(ids, tools("only"), fn, attention_mask=mask) == [IGNORE] * 7


def test_stats_count_the_turns_rule_5_drops_per_row():
    first, _ = parse("@user q E nl @assistant a <call> E nl @assistant b E nl @assistant c E")
    second, _ = parse("@user q E nl @assistant a E nl @user r E nl @tool t u E")
    ids = torch.cat([first, second])
    for fn in BACKENDS:
        for mode, dropped in (("train", [0, 0]), ("mask", [1, 0]), ("only", [2, 1])):
            _, stats = fn(ids, tools(mode), return_stats=True)
            assert stats["dropped_turns"].tolist() == dropped, (fn.__name__, mode)


def test_the_examples_in_the_oracles_docstring_hold():
    import doctest

    from gpumask import reference

    result = doctest.testmod(reference)
    assert result.failed == 0 and result.attempted >= 15
