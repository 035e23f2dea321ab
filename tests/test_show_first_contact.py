"""`gpumask show` where a newcomer got no word, or a wrong one: tool calls that the template
drops, an empty file, a truncated line, one conversation; and `gpumask --version`."""

import json
import os

import pytest
from conftest import TOKENIZERS
from families import BARE_CALL_CONVERSATION

import gpumask
from gpumask.cli import main

TOOL_CALL = {"messages": BARE_CALL_CONVERSATION}
HELLO = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}


def run(tmp_path, capsys, lines, tokenizer="smollm2", *options):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    code = main(
        ["show", "--no-color", "--tokenizer", os.path.join(TOKENIZERS, tokenizer), *options]
        + [str(path)]
    )
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("tokenizer", ["smollm2", "llama3_1"])
def test_a_template_that_drops_tool_calls_is_named_with_the_count(tmp_path, capsys, tokenizer):
    code, out, _ = run(tmp_path, capsys, [TOOL_CALL, HELLO, TOOL_CALL], tokenizer)
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: the chat template does not render `tool_calls`: 2 conversations (line 1, 3) "
        "lose their tool calls; a turn that held only tool calls trains only its end-of-turn "
        "token",
        "warning: 2 turns train only the end-of-turn token, right after the header of a trained "
        "role (an empty reply), in line 1, line 3. If these were tool-calling turns, the chat "
        "template drops `tool_calls` (Llama 3.1's, SmolLM2's and Zephyr's do): render them with "
        "a template that writes tool calls, or leave those turns out",
    ]


def test_a_template_that_renders_tool_calls_gets_no_warning(tmp_path, capsys):
    code, out, _ = run(tmp_path, capsys, [TOOL_CALL, HELLO], "qwen2_5")
    assert code == 0 and "warning:" not in out


def test_an_empty_reply_is_counted_without_tool_calls(tmp_path, capsys):
    empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    _, out, _ = run(tmp_path, capsys, [HELLO, empty], "qwen2_5")
    assert out.count("warning: ") == 1
    assert "warning: 1 turn trains only the end-of-turn token, right after the header of a " in out
    assert "(an empty reply), in line 2. If these" in out


def test_an_empty_file_is_an_error_not_a_clean_summary(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    code = main(["show", "--tokenizer", os.path.join(TOKENIZERS, "smollm2"), str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (
        f"gpumask show: {path}: no conversations (the file is empty or all blank lines)\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"messages": [{"role": "user"',
            "Expecting ',' delimiter, at the end of the line: truncated?",
        ),
        (
            '{"messages": [{"role": "user"\n',
            "Expecting ',' delimiter, at the end of the line: truncated?",
        ),
        ('{"messages": [{"role": "user" x]}\n', "Expecting ',' delimiter, column 31"),
    ],
)
def test_a_bad_line_reports_the_column_on_that_line(tmp_path, capsys, text, message):
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(HELLO) + "\n" + text, encoding="utf-8")
    code = main(["show", "--tokenizer", os.path.join(TOKENIZERS, "smollm2"), str(path)])
    assert code == 2
    assert capsys.readouterr().err == f"gpumask show: {path}:2: not valid JSON ({message})\n"


def test_one_conversation_is_singular(tmp_path, capsys):
    _, out, _ = run(tmp_path, capsys, [HELLO, HELLO], "qwen2_5", "--max-rows", "1")
    assert out.splitlines()[0].endswith(
        "chats.jsonl: 2 conversations, tokenizer " + os.path.join(TOKENIZERS, "qwen2_5")
    )
    assert "(1 more conversation not shown; --max-rows)" in out
    _, out, _ = run(tmp_path, capsys, [HELLO], "qwen2_5")
    assert ": 1 conversation, tokenizer" in out.splitlines()[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"gpumask {gpumask.__version__}\n"
