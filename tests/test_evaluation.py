"""Evaluation when labels are made in the step (`mask_on="step"`): the README's recipe
(`attach(..., training_only=False)` and `TrainingArguments(label_names=["input_ids"])`) gives
`Trainer.evaluate()` the same `eval_loss` as masking in the collator, before and after training."""

import random

from test_integration import SPEC, conversation, tiny_llama
from transformers import Trainer, TrainingArguments

import gpumask
from gpumask import CompletionCollator


def _evaluate_train_evaluate(tmp_path, mask_on: str) -> tuple[dict, dict]:
    rng = random.Random(0)
    train = [conversation(rng) for _ in range(8)]
    evaluation = [conversation(rng) for _ in range(10)]  # 3 batches, the last one short
    model = tiny_llama()
    extra = {}
    if mask_on == "step":
        gpumask.attach(model, SPEC, training_only=False)
        extra["label_names"] = ["input_ids"]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        seed=0,
        **extra,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=CompletionCollator(None, SPEC, mask_on=mask_on),
    )
    before = trainer.evaluate()
    trainer.train()
    return before, trainer.evaluate()


def test_step_mode_evaluation_gives_the_eval_loss_of_batch_mode(tmp_path):
    batch_before, batch_after = _evaluate_train_evaluate(tmp_path / "batch", "batch")
    step_before, step_after = _evaluate_train_evaluate(tmp_path / "step", "step")
    assert "eval_loss" in step_before and "eval_loss" in step_after
    assert step_before["eval_loss"] == batch_before["eval_loss"]
    assert step_after["eval_loss"] == batch_after["eval_loss"]
    assert step_after["eval_loss"] != step_before["eval_loss"]  # it did train in between


def test_without_the_recipe_step_mode_evaluation_has_no_loss(tmp_path):
    model = tiny_llama()
    gpumask.attach(model, SPEC)
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, remove_unused_columns=False
    )
    evaluation = [conversation(random.Random(1)) for _ in range(4)]
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=evaluation,
        data_collator=CompletionCollator(None, SPEC, mask_on="step"),
    )
    assert "eval_loss" not in trainer.evaluate()
