"""A tiny ChatML-like vocabulary for hand-written cases, written as text.

`parse("@user q E nl @assistant *a *E nl")` gives the ids and the expected labels: `@role`
is a three-token header (`<|im_start|>`, role, `\\n`), `E` is `<|im_end|>`, `nl` a newline,
`<tr>`/`</tr>` and `<tc>`/`</tc>` span markers, `<call>` a tool-call marker, and each single
letter a content token.
A `*` in front of a token means "trained".
"""

import torch

from gpumask import MaskSpec

IM_START, IM_END, NL = 1, 2, 3
ROLE_IDS = {"system": 4, "user": 5, "assistant": 6, "tool": 7}
TR_OPEN, TR_CLOSE, TC_OPEN, TC_CLOSE = 8, 9, 10, 11
CALL = 12
WORDS = {
    "E": IM_END,
    "nl": NL,
    "<tr>": TR_OPEN,
    "</tr>": TR_CLOSE,
    "<tc>": TC_OPEN,
    "</tc>": TC_CLOSE,
    "<s>": IM_START,
    "<call>": CALL,
}
IGNORE = -100


def header(role: str) -> list[int]:
    return [IM_START, ROLE_IDS[role], NL]


def spec(**options) -> MaskSpec:
    """ChatML with system, user, assistant and tool roles; options go to MaskSpec."""
    options.setdefault("end_of_turn", [IM_END])
    return MaskSpec(roles={role: header(role) for role in ROLE_IDS}, **options)


def parse(text: str) -> tuple[torch.Tensor, list[int]]:
    """(ids [1, T], expected labels) for a conversation written as above."""
    ids, labels = [], []
    for word in text.split():
        trained = word.startswith("*")
        word = word.lstrip("*")
        if word.startswith("@"):
            assert not trained, "headers never train"
            tokens = header(word[1:])
        elif word in WORDS:
            tokens = [WORDS[word]]
        else:
            assert len(word) == 1 and word.isalpha(), word
            tokens = [100 + ord(word)]
        ids += tokens
        labels += tokens if trained else [IGNORE] * len(tokens)
    return torch.tensor([ids]), labels
