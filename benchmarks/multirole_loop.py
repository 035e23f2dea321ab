"""A loop-based multi-role completion collator: the algorithm proposed for TRL, in our own code.

NOT TRL CODE. This is our implementation, for benchmarking only, of the algorithm described
in huggingface/trl pull request #3224 ("Support multi-role & consecutive turns in
DataCollatorForCompletionOnlyLM", closed unmerged): `instruction_template` becomes a list
(user, tool, system ...), and each row is masked by Python loops over the occurrences of
every template, which handles consecutive turns (Q A A, Q A Q Q A) and tool turns. It is
written from that description, not copied, and keeps the same cost structure as TRL 0.19.1:
padding by the parent `DataCollatorForLanguageModeling`, then, per row, `np.where` on each
template's first token and a list compare at every candidate.

Per row: collect (start, end, is_response) for every occurrence of the response template
and of each instruction template, sort them by position, and train from the end of each
response template up to the start of the next template occurrence (or the end of the row).

    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
    >>> collate = MultiRoleLoopCollator([151644, 77091, 198], [[151644, 872, 198]], tokenizer=tok)
    >>> ids = [151644, 872, 198, 9, 151645, 151644, 77091, 198, 7, 151645]
    >>> collate([{"input_ids": ids}])["labels"].tolist()
    [[-100, -100, -100, -100, -100, -100, -100, -100, 7, 151645]]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling


class MultiRoleLoopCollator(DataCollatorForLanguageModeling):
    """Loop-based completion masking with a list of instruction templates (see module doc)."""

    def __init__(
        self,
        response_template: Sequence[int],
        instruction_templates: Sequence[Sequence[int]],
        *args: Any,
        mlm: bool = False,
        ignore_index: int = -100,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, mlm=mlm, **kwargs)
        self.response_token_ids = list(response_template)
        self.instruction_token_ids = [list(t) for t in instruction_templates]
        self.ignore_index = ignore_index

    @staticmethod
    def _occurrences(row: torch.Tensor, template: list[int]) -> list[int]:
        found = []
        for idx in np.where(row == template[0])[0]:
            if template == row[idx : idx + len(template)].tolist():
                found.append(int(idx))
        return found

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        labels = batch["labels"]
        for i in range(len(examples)):
            row = labels[i]
            size = len(self.response_token_ids)
            events = [(p, p + size, True) for p in self._occurrences(row, self.response_token_ids)]
            if not events:
                warnings.warn(f"row {i}: response template not found; row ignored", stacklevel=2)
                labels[i, :] = self.ignore_index
                continue
            for template in self.instruction_token_ids:
                events += [(p, p + len(template), False) for p in self._occurrences(row, template)]
            events.sort()
            keep = torch.zeros(row.shape[0], dtype=torch.bool)
            for k, (_, end, is_response) in enumerate(events):
                if is_response:
                    stop = events[k + 1][0] if k + 1 < len(events) else row.shape[0]
                    keep[end:stop] = True
            labels[i, ~keep] = self.ignore_index
        return batch
