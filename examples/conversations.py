"""Shared by the scale-out examples: a seeded set of chat conversations, tokenized.

Both examples build exactly this data, so their labels can be compared row for row.
"""

from __future__ import annotations

import os
import random

from gpumask import MaskSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(REPO, "tests", "fixtures", "tokenizers", "smollm2")
WORDS = "the cat sat on a mat why because yes no maybe data model token GPU loss".split()


def chatml_spec(tokenizer) -> MaskSpec:
    """The ChatML format of SmolLM2 and Qwen (or `MaskSpec.from_tokenizer(tokenizer)`)."""
    return MaskSpec(
        roles={role: f"<|im_start|>{role}\n" for role in ("system", "user", "assistant")},
        end_of_turn="<|im_end|>",
        tokenizer=tokenizer,
    )


def make_rows(tokenizer, n_rows: int, seed: int = 0) -> list[dict]:
    """`n_rows` random conversations (user and assistant turns, some consecutive replies),
    rendered with the tokenizer's chat template; each row is {"index", "input_ids"}."""
    rng = random.Random(seed)
    rows = []
    for index in range(n_rows):
        messages = []
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=5))})
            for _ in range(1 if rng.random() < 0.8 else 2):
                words = rng.choices(WORDS, k=rng.randint(1, 12))
                messages.append({"role": "assistant", "content": " ".join(words)})
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        rows.append({"index": index, "input_ids": list(ids)})
    return rows
