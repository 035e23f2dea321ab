"""Bad input gets a clear exception naming the argument and the reason, before any work."""

import pytest
import torch
from chatml import parse, spec

from gpumask import MaskSpec, MaskSpecError, mask_labels

IDS, _ = parse("@user q E nl @assistant a E")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(roles={"assistant": []}), r"roles\['assistant'\]: empty marker \[\]"),
        (dict(roles={"assistant": ""}), r"roles\['assistant'\]: empty marker ''"),
        (dict(roles={"assistant": [1]}, end_of_turn=[[]]), r"end_of_turn: empty marker"),
        (dict(roles={"assistant": "<a>"}), r"marker '<a>' is a str; pass tokenizer="),
        (
            dict(roles={"assistant": [1, 99]}, vocab_size=50),
            r"header of role 'assistant': token id 99 of marker \[1, 99\] is outside the "
            r"vocabulary \[0, 50\)",
        ),
        (dict(roles={"assistant": [-3]}), r"token id -3 .* outside the vocabulary"),
        (
            dict(roles={"assistant": [1]}, train_roles=("gpt",)),
            r"train_roles: unknown role 'gpt'; roles are \['assistant'\]",
        ),
        (dict(roles={"assistant": [1]}, initial_role="bot"), r"initial_role: unknown role 'bot'"),
        (
            dict(roles={"assistant": [1]}, ignore_token_prob=1.5),
            r"ignore_token_prob: must lie in \[0, 1\], got 1.5",
        ),
        (dict(roles={"assistant": [1]}, ignore_token_prob=-0.1), r"ignore_token_prob"),
        (
            dict(roles={"assistant": [1], "user": [1]}),
            r"header of role 'user': marker \[1\] is also the header of role 'assistant'",
        ),
        (dict(roles={}), r"roles: expected a non-empty dict"),
        (
            dict(roles={"assistant": [1]}, masked_spans=[([5],)]),
            r"masked_spans\[0\]: expected an \(open, close\) pair",
        ),
        (dict(roles={"assistant": [1.5]}), r"roles\['assistant'\]: expected a str or a list"),
        (dict(roles={"assistant": [[i] for i in range(70)]}), r"too many markers: 70"),
        (
            dict(roles={"assistant": list(range(300))}),
            r"header of role 'assistant': marker of 300 tokens; at most 255",
        ),
        (
            dict(roles={"assistant": [1]}, tool_call=[7], tool_call_turns="drop"),
            r"tool_call_turns: expected one of \('train', 'mask', 'only'\), got 'drop'",
        ),
        (
            dict(roles={"assistant": [1]}, tool_call_turns="only"),
            r"tool_call_turns='only': needs tool_call=",
        ),
        (dict(roles={"assistant": [1]}, tool_call=[]), r"tool_call: empty marker \[\]"),
        (
            dict(roles={"assistant": [1]}, tool_call=[1]),
            r"tool_call: marker \[1\] is also the header of role 'assistant'",
        ),
    ],
)
def test_bad_spec_is_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(MaskSpecError, match=message):
        MaskSpec(**kwargs)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((IDS.tolist(), spec()), {}, TypeError, r"input_ids: expected a torch.Tensor, got list"),
        ((IDS[0], spec()), {}, ValueError, r"input_ids: expected shape \[batch, length\]"),
        ((IDS.float(), spec()), {}, TypeError, r"input_ids: expected int32 or int64"),
        ((IDS, {"roles": {}}), {}, TypeError, r"spec: expected a gpumask.MaskSpec, got dict"),
        (
            (IDS, spec()),
            dict(attention_mask=torch.ones(1, 3)),
            ValueError,
            r"attention_mask: shape \(1, 3\) does not match input_ids \(1, 11\)",
        ),
        (
            (IDS, spec()),
            dict(attention_mask=torch.ones_like(IDS, dtype=torch.float32)),
            TypeError,
            r"attention_mask: expected a bool or integer tensor, got torch.float32",
        ),
        (
            (IDS, spec()),
            dict(attention_mask=torch.ones_like(IDS, device="meta")),
            ValueError,
            r"attention_mask: on meta, but input_ids is on cpu",
        ),
        (
            (IDS, spec()),
            dict(position_ids=torch.ones_like(IDS).bool()),
            TypeError,
            r"position_ids: expected a integer tensor",
        ),
        (
            (IDS, spec()),
            dict(position_ids=IDS, cu_seqlens=torch.tensor([0, 11])),
            ValueError,
            r"cu_seqlens: give either position_ids or cu_seqlens, not both",
        ),
        (
            (IDS.repeat(2, 1), spec()),
            dict(cu_seqlens=torch.tensor([0, 11])),
            ValueError,
            r"cu_seqlens: needs a flattened batch of shape \[1, N\]",
        ),
        (
            (IDS, spec()),
            dict(cu_seqlens=torch.tensor([11])),
            ValueError,
            r"cu_seqlens: expected a 1-D tensor of at least 2 offsets",
        ),
        (
            (IDS, spec()),
            dict(cu_seqlens=torch.tensor([0.0, 11.0])),
            TypeError,
            r"cu_seqlens: expected int32 or int64",
        ),
        ((IDS, spec()), dict(ignore_index=-100.0), TypeError, r"ignore_index: expected an int"),
        (
            (IDS.to("meta"), spec()),
            dict(generator=torch.Generator()),
            ValueError,
            r"generator: on cpu, but input_ids is on meta",
        ),
        (
            (IDS, spec()),
            dict(backend="cuda"),
            ValueError,
            r"backend: expected one of \('auto', 'torch', 'triton'\), got 'cuda'",
        ),
        ((IDS[:, :0], spec()), {}, ValueError, r"input_ids: length 0"),
    ],
)
def test_bad_call_is_rejected_with_a_clear_message(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        mask_labels(*args, **kwargs)
