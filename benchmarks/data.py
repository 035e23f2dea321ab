"""Synthetic chat batches for the benchmarks: ChatML-like token streams of many turns.

Two cases, as in the core issue:
- sparse: the templates start with a rare token (`<|im_start|>`, once per turn);
- dense: the templates start with a token that is 5% of all tokens (`\\n`).

Ids are Qwen2.5's, so the batches decode with the bundled tokenizer.

    >>> batch = chat_batch(batch=2, length=512, dense=False, seed=0)
    >>> batch.input_ids.shape
    torch.Size([2, 512])
"""

from __future__ import annotations

import dataclasses

import torch

import gpumask

IM_START, IM_END, NEWLINE, HASH, COLON = 151644, 151645, 198, 14374, 25
ASSISTANT, USER, SYSTEM, TOOL = 77091, 872, 8948, 14172

TEMPLATES = {
    # role -> header ids
    False: {
        "system": [IM_START, SYSTEM, NEWLINE],
        "user": [IM_START, USER, NEWLINE],
        "assistant": [IM_START, ASSISTANT, NEWLINE],
        "tool": [IM_START, TOOL, NEWLINE],
    },
    True: {
        "system": [NEWLINE, HASH, SYSTEM, COLON],
        "user": [NEWLINE, HASH, USER, COLON],
        "assistant": [NEWLINE, HASH, ASSISTANT, COLON],
        "tool": [NEWLINE, HASH, TOOL, COLON],
    },
}


@dataclasses.dataclass
class ChatBatch:
    input_ids: torch.Tensor  # [B, T] int64
    spec: gpumask.MaskSpec
    response_template: list[int]
    instruction_template: list[int]


def chat_batch(batch: int, length: int, dense: bool, seed: int = 0) -> ChatBatch:
    """`batch` rows of `length` tokens: a system turn, then user/assistant/tool turns."""
    g = torch.Generator().manual_seed(seed)
    headers = TEMPLATES[dense]
    ids = torch.empty(batch, length, dtype=torch.int64)
    for b in range(batch):
        row: list[int] = []
        roles = ["system"]
        while len(row) < length:
            role = (
                roles.pop()
                if roles
                else ["user", "assistant", "assistant", "tool"][
                    int(torch.randint(0, 4, (1,), generator=g))
                ]
            )
            n = int(torch.randint(20, 200, (1,), generator=g))
            content = torch.randint(1000, 100000, (n,), generator=g)
            if dense:  # "\n" is 5% of the content tokens
                content[torch.rand(n, generator=g) < 0.05] = NEWLINE
            row += headers[role] + content.tolist() + [IM_END, NEWLINE]
        ids[b] = torch.tensor(row[:length])
    spec = gpumask.MaskSpec(roles=headers, end_of_turn=[IM_END])
    return ChatBatch(ids, spec, headers["assistant"], headers["user"])


def collator_examples(
    batch: ChatBatch, as_tensors: bool, seed: int = 0
) -> list[dict[str, list[int] | torch.Tensor]]:
    """The rows of `batch` as a collator's input: `{"input_ids": ...}` dicts of ragged length.

    Row lengths are drawn uniformly from [T/2, T] (the first row keeps all T tokens, so the
    collated batch is `[B, T]` again); ids are Python lists, or int64 tensors with `as_tensors`.

        >>> rows = collator_examples(chat_batch(batch=2, length=512, dense=False), as_tensors=False)
        >>> len(rows[0]["input_ids"]), type(rows[1]["input_ids"]).__name__
        (512, 'list')
    """
    g = torch.Generator().manual_seed(seed)
    n, length = batch.input_ids.shape
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    lengths[0] = length
    rows = [batch.input_ids[i, : int(lengths[i])] for i in range(n)]
    if as_tensors:
        return [{"input_ids": row.clone()} for row in rows]
    return [{"input_ids": row.tolist()} for row in rows]
