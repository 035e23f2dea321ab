"""Hypothesis strategies for random chat formats and batches, shared by the differential tests.

Markers are 1-4 tokens from alphabets of 2-8 ids, so partial matches, overlaps and markers
inside markers are frequent; every layout (padding both sides, holes, position_ids,
cu_seqlens) and every option of MaskSpec is drawn (`tool_call` and `tool_call_turns` with
`tool_calls=True`).
"""

import torch
from hypothesis import strategies as st

from gpumask import MaskSpec

ROLE_NAMES = ("assistant", "user", "tool")


@st.composite
def masking_cases(draw, max_batch: int = 4, max_length: int = 40, tool_calls: bool = False):
    """(spec, input_ids, kwargs for mask_labels, generator seed)."""
    alphabet = draw(st.integers(2, 8))
    used: set[tuple[int, ...]] = set()

    def marker() -> list[int]:
        ids = draw(
            st.lists(st.integers(0, alphabet - 1), min_size=1, max_size=4)
            .map(tuple)
            .filter(lambda m: m not in used)
        )
        used.add(ids)
        return list(ids)

    roles = draw(st.integers(1, 3))
    names = ROLE_NAMES[:roles]
    headers = {name: [marker() for _ in range(draw(st.integers(1, 2)))] for name in names}
    end_of_turn = [marker() for _ in range(draw(st.integers(0, 2)))] or None
    spans = [(marker(), marker()) for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2])))]
    tools = {}
    if tool_calls:
        tools["tool_call"] = [marker() for _ in range(draw(st.integers(1, 2)))]
        tools["tool_call_turns"] = draw(st.sampled_from(["mask", "only", "mask", "only", "train"]))
    spec = MaskSpec(
        roles=headers,
        end_of_turn=end_of_turn,
        masked_spans=spans,
        train_roles=draw(st.lists(st.sampled_from(names), min_size=1, unique=True)),
        train_on_end_of_turn=draw(st.booleans()),
        last_turn_only=draw(st.booleans()),
        initial_role=draw(st.sampled_from((None,) + names)),
        ignore_token_ids=draw(st.lists(st.integers(0, alphabet - 1), max_size=2)),
        ignore_token_prob=draw(st.sampled_from([0.0, 0.5, 1.0])),
        **tools,
    )
    layout = draw(st.sampled_from(["plain", "padding", "position_ids", "cu_seqlens"]))
    batch = 1 if layout == "cu_seqlens" else draw(st.integers(1, max_batch))
    length = draw(st.integers(1, max_length))
    rows = draw(
        st.lists(
            st.lists(st.integers(0, alphabet - 1), min_size=length, max_size=length),
            min_size=batch,
            max_size=batch,
        )
    )
    input_ids = torch.tensor(rows, dtype=draw(st.sampled_from([torch.int32, torch.int64])))
    kwargs = {}
    if layout == "padding" or draw(st.booleans()):
        mask = torch.ones(batch, length, dtype=torch.int64)
        for b in range(batch):
            n = draw(st.integers(0, length))
            if draw(st.booleans()):
                mask[b, :n] = 0
            else:
                mask[b, length - n :] = 0
            if draw(st.booleans()):
                mask[b, draw(st.integers(0, length - 1))] = 0
        kwargs["attention_mask"] = mask.bool() if draw(st.booleans()) else mask
    if layout == "position_ids":
        restarts = draw(st.lists(st.booleans(), min_size=batch * length, max_size=batch * length))
        position_ids = torch.zeros(batch, length, dtype=torch.int64)
        for b in range(batch):
            p = 0
            for t in range(length):
                p = 0 if restarts[b * length + t] and draw(st.booleans()) else p
                position_ids[b, t] = p
                p += 1
        kwargs["position_ids"] = position_ids
    if layout == "cu_seqlens":
        cuts = sorted(draw(st.lists(st.integers(0, length), max_size=4)))
        first = draw(st.sampled_from([0, 0, 1]))
        last = draw(st.sampled_from([length, length, max(length - 1, 0)]))
        offsets = sorted([min(first, last)] + [min(max(c, first), last) for c in cuts] + [last])
        kwargs["cu_seqlens"] = torch.tensor(offsets, dtype=torch.int32)
    seed = draw(st.integers(0, 2**31 - 1))
    return spec, input_ids, kwargs, seed
