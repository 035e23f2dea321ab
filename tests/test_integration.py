"""In-step masking: gpumask.attach on a tiny Llama, trained through transformers.Trainer."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

import gpumask
from gpumask import CompletionCollator, MaskSpec
from gpumask.reference import mask_labels_reference

X = -100
IM_START, IM_END, NL = 1, 2, 3
ROLES = {"system": 4, "user": 5, "assistant": 6, "tool": 7}
SPEC = MaskSpec(
    roles={r: [IM_START, i, NL] for r, i in ROLES.items()}, end_of_turn=[IM_END], vocab_size=64
)


def conversation(rng):
    """A random ChatML-like row: system?, then user / assistant / tool turns in any order."""
    ids = []
    roles = (["system"] if rng.random() < 0.5 else []) + [
        rng.choice(("user", "assistant", "assistant", "tool")) for _ in range(rng.randint(1, 5))
    ]
    for role in roles:
        ids += [IM_START, ROLES[role], NL] + [
            rng.randrange(10, 64) for _ in range(rng.randint(1, 6))
        ]
        ids += [IM_END, NL]
    return {"input_ids": ids}


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


class Recorder:
    """Forward hook after gpumask's: what the model received and what it returned."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        keep = ("input_ids", "attention_mask", "position_ids", "labels")
        record = {k: kwargs.get(k) for k in keep}
        self.calls.append({**record, "logits": output.logits.detach(), "loss": output.loss})


def loss_on_trained_tokens(logits, input_ids, trained):
    """Mean next-token cross-entropy over the positions `trained` says train (shifted by one)."""
    targets = trained[:, 1:]
    return F.cross_entropy(logits[:, :-1][targets], input_ids[:, 1:][targets])


@pytest.mark.parametrize("padding_free", [False, True])
def test_trainer_with_hook_trains_on_exactly_the_trained_tokens(tmp_path, padding_free):
    rng = random.Random(padding_free)
    dataset = [conversation(rng) for _ in range(24)]
    model = tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    hook = gpumask.attach(model, SPEC, stats=True)
    recorder = Recorder(model)  # registered after the hook: sees the labels it made
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
    )
    collate = CompletionCollator(
        None, SPEC, mask_on="step", padding_free=padding_free, padding_side="left"
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    trainer.train()

    assert "labels" not in collate(dataset[:2])  # the batches come without labels
    assert len(recorder.calls) == 4
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    for call, logged_loss in zip(recorder.calls, logged, strict=True):
        input_ids = call["input_ids"]
        if padding_free:
            assert call["attention_mask"] is None and input_ids.shape[0] == 1
            expected = mask_labels_reference(input_ids, SPEC, position_ids=call["position_ids"])
            expected[call["position_ids"] == 0] = X  # a sequence's first token follows another
        else:
            expected = mask_labels_reference(input_ids, SPEC, attention_mask=call["attention_mask"])
        assert torch.equal(call["labels"], expected)
        trained = expected != X
        assert trained.any()
        by_hand = loss_on_trained_tokens(call["logits"], input_ids, trained)
        torch.testing.assert_close(call["loss"], by_hand, rtol=1e-5, atol=1e-6)
        assert logged_loss == pytest.approx(float(by_hand), abs=1e-4)
    assert torch.equal(hook.last_stats["trained"].sum(), (recorder.calls[-1]["labels"] != X).sum())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    gpumask.detach(model)


def test_hook_leaves_given_labels_and_eval_mode_alone():
    model = tiny_llama()
    gpumask.attach(model, SPEC)
    recorder = Recorder(model)
    ids = torch.tensor([[1, 5, 3, 20, 2, 3, 1, 6, 3, 30, 31, 2]])
    given = torch.full_like(ids, X)
    given[0, 4] = 2
    model.train()
    model(input_ids=ids, labels=given)
    assert recorder.calls[-1]["labels"] is given
    model(ids)  # positional input_ids
    assert recorder.calls[-1]["labels"].tolist() == [[X] * 9 + [30, 31, 2]]
    model.eval()
    assert model(input_ids=ids).loss is None


def test_detach_and_attach_again():
    model = tiny_llama().train()
    ids = torch.tensor([[1, 6, 3, 30, 31, 2]])
    first = gpumask.attach(model, SPEC)
    second = gpumask.attach(model, SPEC.replace(train_on_end_of_turn=False))
    assert first is not second  # the first one is gone: only one hook runs
    recorder = Recorder(model)
    model(input_ids=ids)
    assert recorder.calls[-1]["labels"].tolist() == [[X, X, X, 30, 31, X]]
    assert gpumask.detach(model) is True
    assert gpumask.detach(model) is False
    assert model(input_ids=ids).loss is None  # no labels, no loss


def test_cu_seqlens_batches_are_masked_per_sequence():
    model = tiny_llama().train()
    gpumask.attach(model, SPEC)
    recorder = Recorder(model)
    ids = torch.tensor([[1, 6, 3, 30, 2, 1, 6, 3, 40, 2]])
    model(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 5, 10], dtype=torch.int32))
    assert recorder.calls[-1]["labels"].tolist() == [[X, X, X, 30, 2, X, X, X, 40, 2]]


def test_bad_arguments_raise_clearly():
    model = tiny_llama()
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got str"):
        gpumask.attach("model", SPEC)
    with pytest.raises(TypeError, match="spec: expected a gpumask.MaskSpec, got dict"):
        gpumask.attach(model, {})
    with pytest.raises(TypeError, match="attach: unexpected argument 'attention_mask'"):
        gpumask.attach(model, SPEC, attention_mask=None)


def test_ddp_per_rank_labels_equal_dataset_map_labels(tmp_path):
    """examples/ddp_masking.py under torchrun (2 ranks, gloo) and examples/dataset_map.py
    (num_proc=2) write the same labels, and each is mask_labels on the row alone."""
    examples = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=300)
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            f"{examples}/ddp_masking.py",
            "--rows",
            "24",
            "--out",
            "ddp.json",
        ],
        **run,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    mapped = subprocess.run(
        [
            sys.executable,
            f"{examples}/dataset_map.py",
            "--rows",
            "24",
            "--num-proc",
            "2",
            "--out",
            "map.json",
        ],
        **run,
    )
    assert mapped.returncode == 0, mapped.stderr[-3000:]
    ddp_labels = json.loads((tmp_path / "ddp.json").read_text())["labels"]
    map_labels = json.loads((tmp_path / "map.json").read_text())["labels"]
    assert ddp_labels == map_labels
    assert list(ddp_labels) == [str(i) for i in range(24)]

    sys.path.insert(0, examples)
    try:
        from conversations import DEFAULT_TOKENIZER, chatml_spec, make_rows
    finally:
        sys.path.remove(examples)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER)
    spec = chatml_spec(tokenizer)
    for row in make_rows(tokenizer, 24):
        alone = gpumask.mask_labels(torch.tensor([row["input_ids"]]), spec)[0].tolist()
        assert ddp_labels[str(row["index"])] == alone
        assert any(label != X for label in alone)
