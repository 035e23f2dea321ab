"""`gpumask check` and `check_template`: a template's labels on random conversations of every
type, against their contents; on a template that passes, one that is refused, one that is
partial, and a spec that is deliberately wrong."""

import os

import pytest
from conftest import TOKENIZERS
from transformers import AutoTokenizer
from zoo import ZOO, load_zoo

from gpumask import MaskSpec, TemplateWarning
from gpumask.chat_templates.check import check_template
from gpumask.cli import main

QWEN = os.path.join(TOKENIZERS, "qwen2_5")


def _table(out: str) -> dict[str, tuple[str, ...]]:
    """conversation type -> (status, agree, disagree) from the report's table."""
    lines = out.split("conversation type", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows = {}
    for line in lines:
        name, rest = line[:26].strip(), line[26:].split()
        rows[name] = tuple(rest)
    return rows


def test_check_passes_on_qwen_and_names_every_type(capsys):
    assert main(["check", "--tokenizer", QWEN, "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert _table(out) == {
        "exchange": ("agree", "4", "0"),
        "system prompt": ("agree", "4", "0"),
        "several exchanges": ("agree", "4", "0"),
        "consecutive replies": ("agree", "4", "0"),
        "consecutive user turns": ("agree", "4", "0"),
        "system in the middle": ("agree", "4", "0"),
        "tool call": ("agree", "4", "0"),
        "tool call without content": ("agree", "4", "0"),
        "several tool calls": ("agree", "4", "0"),
        "reasoning": ("not", "rendered"),
    }
    assert out.rstrip().endswith("OK: every accepted type agrees")


def test_check_reports_a_refused_template_with_exit_2(tmp_path, capsys):
    template = tmp_path / "echo.jinja"
    template.write_text("{% for m in messages %}{{ m.content + eos_token }}{% endfor %}")
    tok = os.path.join(TOKENIZERS, "mistral7b_v01")
    assert main(["check", "--tokenizer", tok, "--chat-template", str(template)]) == 2
    out = capsys.readouterr().out
    assert "refused: header of role 'user' not found" in out
    assert out.rstrip().endswith("FAILED")


def test_check_shows_the_partial_type_as_refused_and_passes():
    with pytest.warns(TemplateWarning, match="consecutive replies"):
        MaskSpec.from_tokenizer(load_zoo("phi3_mini"))
    report = check_template(load_zoo("phi3_mini"), n=3)
    statuses = {t.kind: t.status for t in report.types}
    assert statuses["consecutive replies"] == "refused"
    assert statuses["exchange"] == "agree"
    assert report.ok  # from_tokenizer warned about the one type it gets wrong
    assert any(w.startswith("consecutive replies:") for w in report.warnings)


def test_check_catches_a_deliberately_wrong_spec():
    tok = AutoTokenizer.from_pretrained(QWEN)
    right = MaskSpec.from_tokenizer(tok)
    swapped = {**right.roles, "user": right.roles["assistant"], "assistant": right.roles["user"]}
    report = check_template(tok, right.replace(roles=swapped), n=3)
    assert not report.ok
    first = next(t for t in report.types if t.status == "disagree")
    assert (first.kind, first.conversations, first.disagreeing) == ("exchange", 3, 3)
    problem, rendering = first.first.split("\n", 1)  # the first disagreement, trained text marked
    assert problem.startswith("token ") and problem.endswith("of the user's content would train")
    assert rendering.startswith("<|im_start|>system\n") and "[[" in rendering
    assert report.format().rstrip().endswith("FAILED")


def test_check_needs_a_positive_number_of_conversations(capsys):
    assert main(["check", "--tokenizer", QWEN, "-n", "0"]) == 2
    assert "-n: expected a number of conversations >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["deepseek_v3_tools", "gpt_oss_harmony", "command_r"])
def test_check_agrees_on_zoo_templates(name):
    assert ZOO[name].expected == "agree"
    report = check_template(load_zoo(name), n=5)
    assert report.ok, report.format()
    assert not report.warnings
