"""The pipelines benchmark (benchmarks/pipelines.py) on a handful of conversations.

Runs in any environment: trl 1.x and unsloth_zoo run where they are installed (`.venv-trl1`
after `make setup-bench`) and are reported as skipped, with their install line, elsewhere
(the main .venv has trl 0.19.1 and no unsloth_zoo). What is checked exactly, everywhere:
gpumask's pipeline labels the tokens that character spans of the assistant replies cover, the
floor pads, the generation template renders Qwen2.5's text and marks what trl 1.x trains, and
the report has its fields.
"""

import doctest
import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from benchmarks import pipeline_data, pipelines
from benchmarks.pipeline_data import conversations

X = -100
HEADER, END = "<|im_start|>assistant", "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(pipelines.TOKENIZER))


@pytest.fixture(scope="module")
def report():
    return pipelines.run(6, measure_memory=False, with_levers=False, repeats=1)


def reply_spans(text: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Character spans of the assistant replies in `text`: from after the header's newline
    through the end of its `<|im_end|>`; each reply's content is checked to start there."""
    spans, cursor = [], 0
    for message in messages:
        if message["role"] != "assistant":
            continue
        start = text.index(HEADER, cursor) + len(HEADER) + 1
        end = text.index(END, start) + len(END)
        assert text[start - 1] == "\n" and text.startswith(message["content"], start)
        spans.append((start, end))
        cursor = end
    return spans


def span_labels(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation, a token trained iff it lies inside a reply's span."""
    text = tok.apply_chat_template(messages, tokenize=False)
    spans = reply_spans(text, messages)
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(s <= a and b <= e for s, e in spans) else X
        for token, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]
    return encoded["input_ids"], labels


def test_dataset_docstring_examples_hold():
    assert doctest.testmod(pipeline_data).failed == 0


def test_dataset_is_deterministic_and_rejects_a_bad_size():
    assert conversations(5, seed=1) == conversations(5, seed=1)
    assert conversations(5, seed=1) != conversations(5, seed=2)
    with pytest.raises(ValueError, match="n: expected a positive int"):
        conversations(0)


def test_gpumask_labels_are_the_tokens_of_the_assistant_replies(tok):
    chats = conversations(8)
    assert [pipeline_data.has_tool_call(c) for c in chats].count(True) == 2
    prepared = pipelines._gpumask(Dataset.from_dict({"messages": chats}), tok, None)
    batches = []
    pipelines.fetch_and_collate(prepared, lambda first, batch: batches.append(batch))
    (batch,) = batches
    for i, messages in enumerate(chats):
        ids, labels = span_labels(tok, messages)
        real = batch["attention_mask"][i].bool()
        assert batch["input_ids"][i][real].tolist() == ids
        assert batch["labels"][i][real].tolist() == labels
        assert (batch["labels"][i][~real] == X).all()


def test_floor_pads_tensors_and_masks_the_padding():
    rows = [{"input_ids": torch.tensor([5, 6, 7])}, {"input_ids": torch.tensor([8])}]
    batch = pipelines.pad_only(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_generation_template_renders_qwen2_5_and_marks_the_newlines_trl_trains(tok):
    template = pipelines.GENERATION_TEMPLATE.read_text()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for messages in conversations(6):
        for options in ({}, {"tools": tools}, {"add_generation_prompt": True}):
            ours = tok.apply_chat_template(
                messages, tokenize=False, chat_template=template, **options
            )
            assert ours == tok.apply_chat_template(messages, tokenize=False, **options)
    messages = [
        {"role": "user", "content": "Hi", "tool_calls": None},
        {"role": "assistant", "content": "Hello.", "tool_calls": None},
    ]
    out = tok.apply_chat_template(
        messages, chat_template=template, return_assistant_tokens_mask=True, return_dict=True
    )
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(marked) == "\nHello.<|im_end|>\n"


def test_report_has_every_pipeline_timed_or_skipped_with_its_install_line(report, tok):
    ran = {r["pipeline"]: r for r in report["pipelines"]}
    skipped = {s["pipeline"]: s["why"] for s in report["skipped"]}
    assert set(ran) | set(skipped) == {"gpumask", "trl", "unsloth", "floor"}
    assert {"gpumask", "floor"} <= set(ran)
    for key in skipped:
        assert pipelines.INSTALL[key] in skipped[key]
    gpumask_labels = ran["gpumask"]["labels"]
    assert gpumask_labels["differing_tokens"] == 0
    assert gpumask_labels["trained_tokens"] == gpumask_labels["trained_tokens_gpumask"] > 0
    assert "labels" not in ran["floor"]
    for result in ran.values():
        assert result["rows"] == 6 and result["same_ids_as_gpumask"]
        assert result["end_to_end_s"] == pytest.approx(
            result["prep_s"] + result["fetch_s"] + result["collate_s"]
        )
    if "trl" in ran:  # trl 1.x trains the newline after the header and after <|im_end|>
        kinds = {(d["token"], d["after"]) for d in ran["trl"]["labels"]["differences"]}
        assert kinds == {("\n", "assistant"), ("\n", END)}
    if "unsloth" in ran:
        assert ran["unsloth"]["labels"]["differing_tokens"] == 0
    tokens = sum(len(span_labels(tok, c)[0]) for c in conversations(6))
    assert report["data"] == {
        "conversations": 6,
        "with_tool_call": 2,
        "tokens": tokens,
        "batch_size": 64,
    }
    assert {"machine", "date", "load_before", "load_after", "versions"} <= set(report)
    json.dumps(report)
    text = pipelines.markdown(report)
    assert "| gpumask (tokenize + `CompletionCollator`) |" in text
    assert "labels equal to gpumask's on every row" in text


def test_child_reports_the_peak_resident_set_of_one_pipeline():
    memory = pipelines.child("floor", 2)
    assert memory["peak_rss_mib"] >= memory["start_rss_mib"] > 0
