r"""`DataCollatorForCompletionOnlyLM`: a drop-in for TRL's class (trl <= 0.19.1), masked by gpumask.

Change one import and keep the rest::

    # from trl import DataCollatorForCompletionOnlyLM
    from gpumask import DataCollatorForCompletionOnlyLM

    collator = DataCollatorForCompletionOnlyLM("<|im_start|>assistant\n",
                                               "<|im_start|>user\n", tokenizer=tok)

Same arguments, same output keys (`padding_free=True` included), same labels as trl 0.19.1
wherever TRL is right:

- response template only: everything after the last response template of each row trains;
- with instruction template(s): every reply trains, from the end of a response template to the
  start of the next instruction template.

It differs on purpose where TRL is wrong:

- `instruction_template` may be a list of templates (user, tool, system...);
- consecutive turns: in "Q A A" TRL trains the second response template, in "Q Q A" and
  "Q A Q Q A" it masks the replies after the doubled instruction; here each template switches;
- a row with a response but no instruction template trains its reply (TRL drops the row);
- padding is masked by the attention mask, not by `pad_token_id`, so a real EOS that is also
  the pad token keeps its label (TRL masks it, and cannot find templates that contain it);
- a `str` template is also matched as it tokenizes in context (after a newline, a space, a
  letter): the SentencePiece and BPE "response template not found" failure goes away;
- bare id lists get an `attention_mask` too, and padding labels are `ignore_index`.

Example::

    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")  # Qwen2.5's own
    >>> collate = DataCollatorForCompletionOnlyLM("<|im_start|>assistant\n",
    ...                                           "<|im_start|>user\n", tokenizer=tok)
    >>> text = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    ...         "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nCiao<|im_end|>\n")
    >>> labels = collate([tok(text)])["labels"][0]
    >>> tok.decode(labels[labels != -100])
    'Hello<|im_end|>\nCiao<|im_end|>\n'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gpumask import padding
from gpumask.collators import mask_packed
from gpumask.masking import check_ignore_index
from gpumask.reports import template_reason, warn_untrained
from gpumask.spec import MaskSpec, is_id_list

# Arguments of transformers' DataCollatorForLanguageModeling that only matter with mlm=True.
_MLM_ONLY = ("mlm_probability", "mask_replace_prob", "random_replace_prob", "seed")

Template = str | Sequence[int]


def _trl_ids(tokenizer: Any, template: Template) -> list[int]:
    """The ids TRL uses for a template: encoded without special tokens, or as given."""
    if isinstance(template, str):
        return tokenizer.encode(template, add_special_tokens=False)
    return [int(i) for i in template]


def _alternatives(tokenizer: Any, template: Template) -> list:
    """A template's markers: TRL's ids, plus its in-context encodings when it is a str."""
    if isinstance(template, str):
        return [template, _trl_ids(tokenizer, template)] if template else [template]
    return [[int(i) for i in template]]


class DataCollatorForCompletionOnlyLM:
    r"""Pads examples and masks every token that is not a completion; see the module docstring.

    Args:
        response_template: the text (or ids) that starts a response, e.g. "### Assistant:".
        instruction_template: the text (or ids) that starts an instruction, or a list of these;
            None trains everything after the last response template of each row.
        tokenizer: the tokenizer (also accepted as the first extra positional argument, as in
            TRL); gives the pad id and padding side, and encodes `str` templates.
        mlm: must be False (as in TRL, where True breaks the labels).
        ignore_index: the label of masked tokens.
        padding_free: return one `[1, N]` row with `position_ids`, `cu_seq_lens_q/k` and
            `max_length_q/k` instead of padding and `attention_mask`, as TRL does.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        return_tensors: "pt" only.
        tool_call: the text (or ids) that starts a tool call, or a list of these; with
            `tool_call_turns` ("mask" or "only") it chooses replies by content (an extension:
            TRL has no such option). See :class:`gpumask.MaskSpec`.
        tool_call_turns: "train" (default), "mask" (replies that call a tool do not train)
            or "only" (only those train).

    Example (a tool turn between replies, which TRL's single instruction template trains)::

        >>> from transformers import AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
        >>> collate = DataCollatorForCompletionOnlyLM(
        ...     "<|im_start|>assistant\n", ["<|im_start|>user\n", "<|im_start|>tool\n"],
        ...     tokenizer=tok)
        >>> text = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nLook<|im_end|>\n"
        ...         "<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\nIt is 42<|im_end|>")
        >>> labels = collate([tok(text)])["labels"][0]
        >>> tok.decode(labels[labels != -100])
        'Look<|im_end|>\nIt is 42<|im_end|>'
    """

    def __init__(
        self,
        response_template: Template,
        instruction_template: Template | Sequence[Template] | None = None,
        *args: Any,
        mlm: bool = False,
        ignore_index: int = -100,
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
        tokenizer: Any = None,
        return_tensors: str = "pt",
        whole_word_mask: bool = False,
        tool_call: Template | Sequence[Template] | None = None,
        tool_call_turns: str = "train",
        **kwargs: Any,
    ) -> None:
        if args:
            if tokenizer is not None or len(args) > 1:
                raise TypeError(
                    "DataCollatorForCompletionOnlyLM: the only extra positional "
                    "argument is the tokenizer; pass the others by keyword"
                )
            tokenizer = args[0]
        if tokenizer is None:
            raise TypeError(
                "tokenizer: required (DataCollatorForCompletionOnlyLM(response, "
                "instruction, tokenizer=tok))"
            )
        unknown = sorted(set(kwargs) - set(_MLM_ONLY))
        if unknown:
            raise TypeError(f"DataCollatorForCompletionOnlyLM: unexpected argument {unknown[0]!r}")
        if mlm or whole_word_mask:
            raise ValueError(
                "mlm: masked language modelling is not supported by a completion-only "
                "collator; leave mlm=False and whole_word_mask=False"
            )
        if return_tensors != "pt":
            raise ValueError(f"return_tensors: only 'pt' is supported, got {return_tensors!r}")
        check_ignore_index(ignore_index)
        padding_side = getattr(tokenizer, "padding_side", None) or "right"
        padding.check_padding_options(padding_side, pad_to_multiple_of)

        single = isinstance(instruction_template, str) or is_id_list(instruction_template)
        if instruction_template is None:
            instructions = []
        elif single:
            instructions = [instruction_template]
        else:
            instructions = list(instruction_template)
        roles = {"response": _alternatives(tokenizer, response_template)}
        if instructions:
            roles["instruction"] = [
                alt for template in instructions for alt in _alternatives(tokenizer, template)
            ]
        calls = None
        if tool_call is not None:
            single_call = isinstance(tool_call, str) or is_id_list(tool_call)
            calls = [
                alt
                for template in ([tool_call] if single_call else tool_call)
                for alt in _alternatives(tokenizer, template)
            ]
        self.spec = MaskSpec(
            roles,
            train_roles=("response",),
            last_turn_only=not instructions,
            tool_call=calls,
            tool_call_turns=tool_call_turns,
            tokenizer=tokenizer,
        )
        self.tokenizer = tokenizer
        self.response_template = response_template
        self.instruction_template = instruction_template
        self.response_token_ids = _trl_ids(tokenizer, response_template)
        if instruction_template is None:
            self.instruction_token_ids = None
        elif single:
            self.instruction_token_ids = _trl_ids(tokenizer, instruction_template)
        else:
            self.instruction_token_ids = [_trl_ids(tokenizer, t) for t in instructions]
        self.mlm = False
        self.ignore_index = ignore_index
        self.padding_free = bool(padding_free)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors

    def __repr__(self) -> str:
        return (
            f"DataCollatorForCompletionOnlyLM(response_template={self.response_template!r}, "
            f"instruction_template={self.instruction_template!r}, "
            f"padding_free={self.padding_free}, spec={self.spec!r})"
        )

    def __call__(self, examples: Sequence[Any], return_tensors: str | None = None) -> dict:
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors: only 'pt' is supported, got {return_tensors!r}")
        return self.torch_call(examples)

    def torch_call(self, examples: Sequence[Any]) -> dict[str, Any]:
        """The batch for `examples` (dicts with `input_ids`, or bare id sequences)."""
        rows, masks = padding.split_examples(examples)
        lengths = padding.row_lengths(rows)
        length = padding.padded_length(lengths, self.pad_to_multiple_of)
        if length == 0:
            raise ValueError("examples: every row is empty")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None and any(n != length for n in lengths):
            raise ValueError(
                "tokenizer: it has no pad token, and these examples need padding; "
                "set tokenizer.pad_token"
            )
        padding_side = getattr(self.tokenizer, "padding_side", None) or "right"
        packed = padding.Packed.of(rows, masks)
        keep = padding.layout(lengths, length, padding_side)
        masked = mask_packed(packed, keep, self.spec, self.ignore_index)
        labels, stats = masked.labels, masked.stats
        input_ids = padding.pad_joined(packed.ids, keep, 0 if pad_id is None else pad_id)
        if masks is None:
            attention_mask = keep.astype(np.int64)
        else:
            attention_mask = padding.pad_joined(packed.mask, keep, 0)
        labels = padding.pad_joined(labels, keep, self.ignore_index)
        found = stats["role_tokens"][:, self.spec.role_names.index("response")] > 0
        reasons = {
            i: template_reason(
                bool(found[i]),
                self.response_template,
                self.response_token_ids,
                self.instruction_template is not None,
                self.spec,
                int(stats["dropped_turns"][i]),
            )
            for i in np.flatnonzero(stats["trained"] == 0).tolist()
        }
        warn_untrained("DataCollatorForCompletionOnlyLM", len(labels), reasons, stacklevel=4)
        if not self.padding_free:
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
            return {k: torch.from_numpy(v) for k, v in batch.items()}
        keep = attention_mask.astype(bool)
        padding.not_a_target_at_starts(
            torch.from_numpy(labels),
            torch.from_numpy(padding.first_tokens(keep)),
            self.ignore_index,
        )
        input_ids, position_ids, labels, lengths = padding.flatten(input_ids, keep, labels)
        offsets = padding.cu_seq_lens(lengths[lengths > 0])[None]  # TRL skips empty rows
        max_length = torch.tensor([int(lengths.max())])
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "cu_seq_lens_q": offsets,
            "cu_seq_lens_k": offsets,
            "max_length_k": max_length,
            "max_length_q": max_length,
        }
