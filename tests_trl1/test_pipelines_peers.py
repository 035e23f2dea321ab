"""The pipelines benchmark's peers (benchmarks/pipelines.py), run in the second environment
where trl 1.x and unsloth_zoo are installed (`make setup-bench`; `make test` does it).

What the README's pipelines table says about labels, checked on a few conversations: trl 1.x
trains exactly two tokens more per assistant reply than gpumask (the newline after
`<|im_start|>assistant` and the one after `<|im_end|>`), Unsloth's `train_on_responses_only`
trains exactly gpumask's tokens, and the benchmark's generation template marks what trl's own
training copy of Qwen2.5's template marks."""

import pytest
from transformers import AutoTokenizer
from trl.chat_template_utils import get_training_chat_template

from benchmarks import pipelines
from benchmarks.pipeline_data import conversations

N = 6


@pytest.fixture(scope="module")
def ran():
    report = pipelines.run(N, measure_memory=False, with_levers=False, repeats=1)
    assert report["skipped"] == []
    return {r["pipeline"]: r for r in report["pipelines"]}


def replies() -> int:
    return sum(m["role"] == "assistant" for c in conversations(N) for m in c)


def test_trl_1_trains_the_newline_after_the_header_and_after_each_reply(ran):
    labels = ran["trl"]["labels"]
    kinds = {(d["trained_by"], d["token"], d["after"]): d["count"] for d in labels["differences"]}
    assert kinds == {
        ("only this pipeline", "\n", "assistant"): replies(),
        ("only this pipeline", "\n", "<|im_end|>"): replies(),
    }
    assert labels["trained_tokens"] == labels["trained_tokens_gpumask"] + 2 * replies()
    assert ran["trl"]["same_ids_as_gpumask"]


def test_unsloth_trains_exactly_gpumask_tokens(ran):
    labels = ran["unsloth"]["labels"]
    assert labels["differing_tokens"] == 0 and labels["rows_differing"] == 0
    assert labels["trained_tokens"] == labels["trained_tokens_gpumask"] > 0
    assert ran["unsloth"]["same_ids_as_gpumask"]


def test_generation_template_marks_what_trls_training_copy_marks():
    tok = AutoTokenizer.from_pretrained(str(pipelines.TOKENIZER))
    ours, theirs = pipelines.GENERATION_TEMPLATE.read_text(), get_training_chat_template(tok)
    assert ours != theirs
    for messages in conversations(N):
        masks = [
            tok.apply_chat_template(
                messages, chat_template=t, return_assistant_tokens_mask=True, return_dict=True
            )
            for t in (ours, theirs)
        ]
        assert masks[0]["input_ids"] == masks[1]["input_ids"]
        assert masks[0]["assistant_masks"] == masks[1]["assistant_masks"]
