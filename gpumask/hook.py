"""The forward hook: `attach(model, spec)` makes a model compute its own labels, on its device.

A forward pre-hook fills `labels` from `input_ids` (with `attention_mask`, and `position_ids`
or `cu_seq_lens_q` for padding-free batches) whenever a training forward call carries no
labels. So Hugging Face `Trainer`, TRL `SFTTrainer`, Accelerate and plain loops mask on the
GPU with one line, fed by a collator that only pads (`CompletionCollator(mask_on="step")`).

A plain loop::

    import torch, gpumask
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct").cuda()
    spec = gpumask.MaskSpec(roles={"user": "<|im_start|>user\\n",
                                   "assistant": "<|im_start|>assistant\\n"},
                            end_of_turn="<|im_end|>", tokenizer=tok)
    hook = gpumask.attach(model, spec, stats=True)
    collate = gpumask.CompletionCollator(tok, spec, mask_on="step")
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    for batch in loader:
        batch = {k: v.cuda() for k, v in batch.items()}
        loss = model(**batch).loss          # labels made on the GPU by the hook
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        trained = hook.last_stats["trained"]  # per-row counts, still on the GPU
    gpumask.detach(model)

With `Trainer`: `gpumask.attach(model, spec)`, then `Trainer(model=model,
data_collator=CompletionCollator(tok, spec, mask_on="step"), ...)`. The Trainer sees no labels
in the batch, so it does not count trained tokens across gradient-accumulation steps
(`num_items_in_batch`): each micro-batch loss is a mean over its own trained tokens. For an
`eval_loss`, attach with `training_only=False` and pass `TrainingArguments(label_names=
["input_ids"])`, so that Trainer computes the loss of evaluation batches, which carry no labels
(the README's "Evaluation in step mode").
"""

from __future__ import annotations

from typing import Any

import torch

from gpumask.masking import mask_labels, prepare
from gpumask.padding import not_a_target_at_starts, sequence_starts
from gpumask.spec import MaskSpec

_ATTRIBUTE = "_gpumask_hook"
_MASK_KWARGS = ("ignore_index", "generator", "backend")


class MaskingHook:
    """The forward pre-hook `attach` registers; `remove()` (or `detach(model)`) takes it off.

    `last_stats` holds the stats of the last masked call (`trained`, `role_tokens`,
    `dropped_turns`, as :func:`gpumask.mask_labels` gives them) when attached with
    `stats=True` (tensors on the model's device, never synchronised).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec: MaskSpec,
        stats: bool,
        training_only: bool,
        mask_kwargs: dict[str, Any],
    ) -> None:
        self.spec = spec
        self.stats = stats
        self.training_only = training_only
        self.mask_kwargs = mask_kwargs
        self.ignore_index = mask_kwargs.get("ignore_index", -100)
        self.last_stats: dict[str, torch.Tensor] | None = None
        parameter = next(model.parameters(), None)
        # Where the labels go: the model's (first) device; an offloaded "meta" weight says nothing.
        on_device = parameter is not None and parameter.device.type != "meta"
        self.device = parameter.device if on_device else None
        if self.device is not None:  # tables built here, not inside a compiled step
            prepare(spec, self.device, mask_kwargs.get("backend", "auto"))
        self._model = model
        self._handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def remove(self) -> None:
        """Take the hook off the model (idempotent)."""
        self._handle.remove()
        if getattr(self._model, _ATTRIBUTE, None) is self:
            delattr(self._model, _ATTRIBUTE)

    def __repr__(self) -> str:
        return f"MaskingHook(stats={self.stats}, training_only={self.training_only}, {self.spec!r})"

    def _companion(self, kwargs: dict, name: str, input_ids: torch.Tensor):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.shape == input_ids.shape:
            return value.to(input_ids.device, non_blocking=True)
        return None

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict):
        if kwargs.get("labels") is not None or (self.training_only and not module.training):
            return None
        input_ids = (
            kwargs["input_ids"]
            if kwargs.get("input_ids") is not None
            else (args[0] if args else None)
        )
        if not isinstance(input_ids, torch.Tensor):
            return None  # e.g. inputs_embeds only: nothing to read markers from
        if self.device is not None and input_ids.device != self.device:
            input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = self._companion(kwargs, "attention_mask", input_ids)
        position_ids = self._companion(kwargs, "position_ids", input_ids)
        cu_seqlens = None
        cu_seq_lens = kwargs.get("cu_seq_lens_q")
        if (
            position_ids is None
            and isinstance(cu_seq_lens, torch.Tensor)
            and (input_ids.shape[0] == 1)
        ):
            cu_seqlens = cu_seq_lens.flatten().to(input_ids.device, non_blocking=True)
        labels = mask_labels(
            input_ids,
            self.spec,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cu_seqlens=cu_seqlens,
            return_stats=self.stats,
            **self.mask_kwargs,
        )
        if self.stats:
            labels, self.last_stats = labels
        starts = sequence_starts(input_ids.shape[1], position_ids, cu_seqlens)
        labels = not_a_target_at_starts(labels, starts, self.ignore_index)
        return args, {**kwargs, "labels": labels}


def attach(
    model: torch.nn.Module,
    spec: MaskSpec,
    *,
    stats: bool = False,
    training_only: bool = True,
    **mask_kwargs: Any,
) -> MaskingHook:
    """Make `model` fill `labels` with :func:`gpumask.mask_labels` when a call carries none.

    Args:
        model: any module called with `input_ids=` (or `input_ids` first) and a `labels=`
            argument, e.g. a Hugging Face causal LM. Attach before wrapping it (DDP, compile).
        spec: the chat format.
        stats: keep the per-row counts of the last call in `hook.last_stats`.
        training_only: mask only in training mode (`model.train()`), so `generate` and
            evaluation without labels are untouched.
        mask_kwargs: `ignore_index`, `generator`, `backend`, passed to `mask_labels`.

    Attaching again replaces the earlier hook. Example::

        >>> import torch, gpumask
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16,
        ...     intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
        >>> spec = gpumask.MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]},
        ...                         end_of_turn=[2])
        >>> hook = gpumask.attach(model, spec)
        >>> model(input_ids=torch.tensor([[1, 10, 5, 2, 1, 11, 6, 7, 2]])).loss is not None
        True
        >>> gpumask.detach(model)
        True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(spec, MaskSpec):
        raise TypeError(f"spec: expected a gpumask.MaskSpec, got {type(spec).__name__}")
    unknown = sorted(set(mask_kwargs) - set(_MASK_KWARGS))
    if unknown:
        raise TypeError(
            f"attach: unexpected argument {unknown[0]!r}; mask_labels options are "
            f"{list(_MASK_KWARGS)} (the batch gives attention_mask and position_ids)"
        )
    detach(model)
    hook = MaskingHook(model, spec, stats, training_only, mask_kwargs)
    setattr(model, _ATTRIBUTE, hook)
    return hook


def detach(model: torch.nn.Module) -> bool:
    """Remove the hook `attach` put on `model`; True if there was one."""
    hook = getattr(model, _ATTRIBUTE, None)
    if hook is None:
        return False
    hook.remove()
    return True
