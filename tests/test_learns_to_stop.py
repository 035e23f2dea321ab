"""benchmarks/learns_to_stop.py: what each arm trains, how replies are scored, a smoke run."""

import json
import math
import warnings

import pytest
import torch

from benchmarks import learns_to_stop as experiment
from benchmarks.chat_task import make_conversations, tool_call_text

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "What is the price of fig?"},
    {"role": "assistant", "content": tool_call_text("fig")},
    {"role": "tool", "content": '{"result": 42}'},
    {"role": "assistant", "content": "42"},
    {"role": "user", "content": "Is 7 greater than 4?"},
    {"role": "assistant", "content": "Yes"},
]
RENDERED = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
    "<|im_start|>assistant\n5<|im_end|>\n"
    "<|im_start|>user\nWhat is the price of fig?<|im_end|>\n"
    "<|im_start|>assistant\n<tool_call>price fig</tool_call><|im_end|>\n"
    '<|im_start|>tool\n{"result": 42}<|im_end|>\n'
    "<|im_start|>assistant\n42<|im_end|>\n"
    "<|im_start|>user\nIs 7 greater than 4?<|im_end|>\n"
    "<|im_start|>assistant\nYes<|im_end|>\n"
)
TRAINED = {
    "every_token": RENDERED,
    # pad == <|im_end|>: every end of turn dropped; after the tool turn, TRL pairs the
    # second user header with the second reply header, so the tool turn, the headers and
    # the last question all train.
    "trl": (
        "5\n<tool_call>price fig</tool_call>\n"
        '<|im_start|>tool\n{"result": 42}\n<|im_start|>assistant\n42\n'
        "<|im_start|>user\nIs 7 greater than 4?\n<|im_start|>assistant\nYes\n"
    ),
    "gpumask": "5<|im_end|><tool_call>price fig</tool_call><|im_end|>42<|im_end|>Yes<|im_end|>",
    "gpumask_step": (
        "5<|im_end|><tool_call>price fig</tool_call><|im_end|>42<|im_end|>Yes<|im_end|>"
    ),
}


@pytest.fixture(scope="module")
def tok():
    return experiment.load_tokenizer()


def test_conversation_renders_with_the_smollm2_template(tok):
    assert tok.decode(experiment.encode(tok, CONVERSATION)) == RENDERED


@pytest.mark.parametrize("arm", experiment.ARMS)
def test_each_arm_trains_what_its_collator_gives(tok, arm):
    example = {"input_ids": experiment.encode(tok, CONVERSATION)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # trl: pad equals eos (the point of the arm)
        made = experiment.make_arm(arm)
    assert experiment.trained_text(made, tok, example) == TRAINED[arm]


def test_trl_arm_is_the_setup_trl_warns_about():
    with pytest.warns(UserWarning, match="pad_token_id and eos_token_id values .* identical"):
        experiment.make_arm("trl")


@pytest.mark.parametrize(
    "generated, expected",
    [
        ("8<|im_end|>", dict(accuracy=True, begins_right=True, stops=True, exact=True)),
        ("9<|im_end|>", dict(stops=True)),
        ("87<|im_end|>", dict(begins_right=True, stops=True)),
        ("8 <|im_end|>", dict(accuracy=True, begins_right=True, stops=True)),
        (
            "8\n<|im_start|>user\nWhat",
            dict(accuracy=True, begins_right=True, runs_on=True, no_end_of_turn=True),
        ),
        ("8\n\n\n", dict(accuracy=True, begins_right=True, no_end_of_turn=True)),
        ("8 greater than 2?", dict(begins_right=True, writes_question=True, no_end_of_turn=True)),
        ('8\n{"result": 3}<|im_end|>', dict(accuracy=True, begins_right=True, runs_on=True)),
        ("88user\n8", dict(begins_right=True, runs_on=True, no_end_of_turn=True)),
    ],
)
def test_score_reads_answer_stop_and_run_on(generated, expected):
    assert experiment.score(generated, "8") == {
        m: expected.get(m, False) for m in experiment.METRICS
    }


def test_compact_lm_maps_ids_in_and_out():
    config = experiment.Config(hidden_size=16, layers=1, heads=2)
    torch.manual_seed(0)
    model = experiment.CompactLM([2, 1, 520, 9531, 198], config)
    ids = torch.tensor([[1, 520, 9531, 198, 2]])
    labels = torch.tensor([[-100, -100, -100, 198, 2]])
    rows = torch.tensor([[0, 3, 4, 2, 1]])  # vocabulary sorted: 1, 2, 198, 520, 9531
    loss = model(input_ids=ids, labels=labels).loss
    row_labels = torch.tensor([[-100, -100, -100, 2, 1]])
    assert torch.equal(loss, model.lm(input_ids=rows, labels=row_labels).loss)
    (continuation,) = model.generate([[1, 520, 9531, 198]], eos_id=2, max_new_tokens=6)
    assert set(continuation) <= {1, 2, 198, 520, 9531}
    assert 2 not in continuation[:-1]


def test_smoke_run_trains_evaluates_and_writes(tmp_path):
    results = experiment.main(["--smoke", "--out", str(tmp_path)])
    (arm,) = results["arms"]
    config = experiment.SMOKE
    held_out = make_conversations(config.eval_conversations, config.seed + 1)
    assert arm["arm"] == "gpumask_step"
    assert len(arm["loss"]) == config.steps and all(math.isfinite(x) for x in arm["loss"])
    assert 0 < sum(arm["trained_tokens"]) < sum(arm["real_tokens"])
    assert arm["summary"]["all"]["n"] == sum(len(c.replies) for c in held_out)
    assert [g["reply"] for g in arm["generations"]] == [r.text for c in held_out for r in c.replies]
    saved = json.loads((tmp_path / "learns_to_stop.json").read_text())
    assert saved["arms"][0]["summary"] == arm["summary"]
    assert "gpumask mask_on" in (tmp_path / "learns_to_stop.md").read_text()
    assert (tmp_path / "learns_to_stop.png").stat().st_size > 0
    assert all(math.isfinite(x) for x in arm["held_out_loss"].values())
