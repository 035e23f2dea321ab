"""gpumask with the current TRL (1.x) SFTTrainer. Run in the second environment (`.venv-trl1`,
`make test`), since the main one keeps trl 0.19.1 for the drop-in comparison.

What the README claims, checked here: `CompletionCollator` and `attach` train exactly gpumask's
labels under SFTTrainer; trl's `assistant_only_loss` trains the newline after the assistant
header and after `<|im_end|>` (gpumask does not), and works only with templates trl knows or
that carry `{% generation %}` tags (gpumask reads any template)."""

import os
import re

import pytest
import torch
import trl
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

import gpumask
from gpumask import CompletionCollator, MaskSpec

TOKENIZERS = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "tests", "fixtures", "tokenizers"
)
X = -100


def test_this_environment_runs_trl_1():
    assert int(trl.__version__.split(".")[0]) >= 1


def load(name: str):
    return AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, name))


def chats(n: int) -> Dataset:
    rows = [
        [
            {"role": "user", "content": f"What is {i}+{i}?"},
            {"role": "assistant", "content": f"{2 * i}."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You are welcome."},
        ]
        for i in range(n)
    ]
    return Dataset.from_dict({"messages": rows})


def tiny_llama(vocab_size: int):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def config(tmp_path, **overrides) -> SFTConfig:
    options = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    return SFTConfig(**{**options, **overrides})


class Recorder:
    """Forward hook (after gpumask's): the ids and labels each training call received."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        mask = kwargs.get("attention_mask")
        self.calls.append((kwargs["input_ids"], mask, kwargs.get("labels"), output.loss))


def assert_trained_on_gpumask_labels(recorder, spec):
    assert recorder.calls
    for input_ids, attention_mask, labels, loss in recorder.calls:
        expected = gpumask.mask_labels(input_ids, spec, attention_mask=attention_mask)
        assert torch.equal(labels, expected)
        assert (expected != X).any() and loss is not None


def test_sft_trainer_with_completion_collator_trains_gpumask_labels(tmp_path):
    tok = load("qwen2_5")
    spec = MaskSpec.from_tokenizer(tok)
    model = tiny_llama(len(tok))
    recorder = Recorder(model)
    trainer = SFTTrainer(
        model=model,
        args=config(tmp_path),
        train_dataset=chats(8),
        processing_class=tok,
        data_collator=CompletionCollator(tok, spec),
    )
    trainer.train()
    assert len(recorder.calls) == 2
    assert_trained_on_gpumask_labels(recorder, spec)
    for row in recorder.calls[0][2]:  # the rows come shuffled
        trained = tok.decode(row[row != X])
        assert re.fullmatch(r"\d+\.<\|im_end\|>You are welcome\.<\|im_end\|>", trained), trained


def test_sft_trainer_with_attach_masks_in_the_step(tmp_path):
    tok = load("qwen2_5")
    spec = MaskSpec.from_tokenizer(tok)
    model = tiny_llama(len(tok))
    hook = gpumask.attach(model, spec, stats=True)
    recorder = Recorder(model)  # registered after the hook: sees the labels it made
    collate = CompletionCollator(tok, spec, mask_on="step")
    trainer = SFTTrainer(
        model=model,
        args=config(tmp_path),
        train_dataset=chats(8),
        processing_class=tok,
        data_collator=collate,
    )
    assert "labels" in trainer.train_dataset.column_names  # trl's own, every token: not used
    trainer.train()
    assert_trained_on_gpumask_labels(recorder, spec)
    assert int(hook.last_stats["trained"].sum()) == int((recorder.calls[-1][2] != X).sum())
    gpumask.detach(model)


def test_attach_with_trl_default_collator_sees_trl_labels_and_does_not_mask(tmp_path):
    """Why the README says to pair `attach` with CompletionCollator(mask_on="step"): trl 1.x
    builds a `labels` column (every token) and its collator passes it on; a call that brings
    labels is left alone by the hook."""
    tok = load("qwen2_5")
    spec = MaskSpec.from_tokenizer(tok)
    model = tiny_llama(len(tok))
    gpumask.attach(model, spec)
    recorder = Recorder(model)
    trainer = SFTTrainer(
        model=model,
        args=config(tmp_path, max_steps=1),
        train_dataset=chats(4),
        processing_class=tok,
    )
    trainer.train()
    input_ids, attention_mask, labels, _ = recorder.calls[0]
    assert torch.equal(labels[attention_mask.bool()], input_ids[attention_mask.bool()])


def test_sft_trainer_step_mode_evaluation_recipe_gives_batch_mode_eval_loss(tmp_path):
    tok = load("qwen2_5")
    spec = MaskSpec.from_tokenizer(tok)
    losses = {}
    for mask_on in ("batch", "step"):
        model = tiny_llama(len(tok))
        extra = {}
        if mask_on == "step":
            gpumask.attach(model, spec, training_only=False)
            extra["label_names"] = ["input_ids"]
        trainer = SFTTrainer(
            model=model,
            args=config(tmp_path / mask_on, **extra),
            train_dataset=chats(8),
            eval_dataset=chats(6),
            processing_class=tok,
            data_collator=CompletionCollator(tok, spec, mask_on=mask_on),
        )
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        losses[mask_on] = (before, trainer.evaluate()["eval_loss"])
    assert losses["step"] == pytest.approx(losses["batch"], rel=1e-6)
    assert losses["step"][0] != losses["step"][1]


def test_assistant_only_loss_trains_newlines_gpumask_does_not(tmp_path):
    tok = load("qwen2_5")  # trl 1.x swaps in its own training template for Qwen2.5's
    trainer = SFTTrainer(
        model=tiny_llama(len(tok)),
        args=config(tmp_path, assistant_only_loss=True),
        train_dataset=chats(1),
        processing_class=tok,
    )
    row = trainer.train_dataset[0]
    ids, trl_labels = row["input_ids"], row["labels"]
    ours = gpumask.mask_labels(torch.tensor([ids]), MaskSpec.from_tokenizer(tok))[0].tolist()

    def trained(labels):
        return tok.decode([i for i, label in zip(ids, labels, strict=True) if label != X])

    assert trained(trl_labels) == "\n0.<|im_end|>\n\nYou are welcome.<|im_end|>\n"
    assert trained(ours) == "0.<|im_end|>You are welcome.<|im_end|>"
    only_trl = [p for p in range(len(ids)) if trl_labels[p] != X and ours[p] == X]
    assert [tok.decode([ids[p]]) for p in only_trl] == ["\n"] * 4
    assert ["<|im_start|>assistant" in tok.decode(ids[p - 2 : p]) for p in only_trl] == [
        True,
        False,
        True,
        False,
    ]  # after the header, then after <|im_end|>, twice
    assert all(ours[p] == X or trl_labels[p] != X for p in range(len(ids)))


def test_assistant_only_loss_refuses_a_template_without_generation_tags_gpumask_reads_it(
    tmp_path,
):
    tok = load("smollm2")  # SmolLM2's own template: no {% generation %}, not one trl patches
    with pytest.raises(ValueError, match="generation %}. markers"):
        SFTTrainer(
            model=tiny_llama(len(tok)),
            args=config(tmp_path, assistant_only_loss=True),
            train_dataset=chats(1),
            processing_class=tok,
        )
    spec = MaskSpec.from_tokenizer(tok)
    text = tok.apply_chat_template(chats(1)[0]["messages"], tokenize=False)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    labels = gpumask.mask_labels(ids, spec)[0]
    assert tok.decode(ids[0][labels != X]) == "0.<|im_end|>You are welcome.<|im_end|>"
