"""`gpumask show`: hand-written JSONL files, one per bundled tokenizer, and bad input."""

import json
import os

import pytest
from conftest import TOKENIZERS
from transformers import AutoTokenizer

from gpumask.cli import DataError, main, read_conversations

QWEN = os.path.join(TOKENIZERS, "qwen2_5")


def write_jsonl(tmp_path, lines, name="chats.jsonl"):
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def trained_runs(out: str) -> list[str]:
    """The text between [[ and ]] in `gpumask show --no-color` output (after the legend)."""
    runs, rest = [], out.split("trained tokens: between [[ and ]]\n", 1)[1]
    while "[[" in rest:
        start = rest.index("[[") + 2
        end = rest.index("]]", start)
        runs.append(rest[start:end])
        rest = rest[end + 2 :]
    return runs


def summary(out: str) -> str:
    return out.split("--- summary\n", 1)[1]


# --- bad input: the error names the line and the field --------------------------------------


@pytest.fixture(scope="module")
def qwen():
    return AutoTokenizer.from_pretrained(QWEN)


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "{not json",
            "chats.jsonl:2: not valid JSON (Expecting property name enclosed in "
            "double quotes, column 2)",
        ),
        ("[1, 2]", "chats.jsonl:2: expected a JSON object with 'messages' or 'text', got list"),
        (
            {"prompt": "x"},
            "chats.jsonl:2: expected a 'messages' or a 'text' field, found "
            "neither (keys: ['prompt'])",
        ),
        (
            {"text": "a", "messages": []},
            "chats.jsonl:2: expected a 'messages' or a 'text' field, found both",
        ),
        ({"text": ""}, "chats.jsonl:2: field 'text': expected a non-empty string, got ''"),
        (
            {"messages": []},
            "chats.jsonl:2: field 'messages': expected a non-empty list of "
            "{'role', 'content'} objects, got []",
        ),
        (
            {"messages": ["hi"]},
            "chats.jsonl:2: field 'messages[0]': expected an object with "
            "'role' and 'content', got 'hi'",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"content": "b"}]},
            "chats.jsonl:2: field 'messages[1].role': expected a non-empty string, got None",
        ),
        (
            {"messages": [{"role": "user", "content": 42}]},
            "chats.jsonl:2: field 'messages[0].content': expected a string, got 42",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "tools": "x"},
            "chats.jsonl:2: field 'tools': expected a list, got 'x'",
        ),
    ],
)
def test_bad_line_names_the_line_and_the_field(tmp_path, qwen, line, message):
    path = write_jsonl(tmp_path, [GOOD, line])
    with pytest.raises(DataError) as error:
        read_conversations(path, qwen)
    assert str(error.value) == f"{tmp_path}/{message}"


def test_template_error_names_the_line(tmp_path, qwen):
    qwen = AutoTokenizer.from_pretrained(QWEN)
    qwen.chat_template = "{{ raise_exception('roles must alternate') }}"
    path = write_jsonl(tmp_path, ["", GOOD])
    with pytest.raises(
        DataError,
        match=r"chats.jsonl:2: field 'messages': the chat template "
        r"rejected it: roles must alternate",
    ):
        read_conversations(path, qwen)


def test_blank_lines_are_skipped_and_text_is_encoded_as_is(tmp_path, qwen):
    path = write_jsonl(tmp_path, ["", {"text": "<|im_start|>user\nHi"}, "  "])
    assert read_conversations(path, qwen) == [(2, [151644, 872, 198, 13048])]


def test_show_reports_bad_file_on_stderr_with_exit_code_2(tmp_path, capsys):
    path = write_jsonl(tmp_path, [GOOD, {"messages": [{"role": 1, "content": "x"}]}])
    assert main(["show", "--tokenizer", QWEN, str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"gpumask show: {path}:2: field 'messages[0].role': expected a non-empty string, got 1\n"
    )


def test_show_without_chat_template_asks_for_one(tmp_path, capsys):
    path = write_jsonl(tmp_path, [GOOD])
    assert main(["show", "--tokenizer", os.path.join(TOKENIZERS, "mistral7b_v01"), str(path)]) == 2
    assert "has no chat template to read the chat format from; pass --chat-template FILE" in (
        capsys.readouterr().err
    )


def test_missing_tokenizer_folder_is_named_with_what_to_pass(tmp_path, capsys):
    data = tmp_path / "chats.jsonl"
    data.write_text("{}\n")
    missing = str(tmp_path / "nope")
    assert main(["show", "--tokenizer", missing, str(data)]) == 2
    assert capsys.readouterr().err == (
        f"gpumask show: --tokenizer {missing}: no such folder; pass a tokenizer folder "
        "(with tokenizer_config.json) or the name of a model in the local Hugging Face cache\n"
    )
    assert main(["check", "--tokenizer", str(data)]) == 2
    assert f"--tokenizer {data}: a file, not a folder; pass" in capsys.readouterr().err


def test_missing_file_is_reported(tmp_path, capsys):
    assert main(["show", "--tokenizer", QWEN, str(tmp_path / "nope.jsonl")]) == 2
    assert "No such file or directory" in capsys.readouterr().err


# --- one hand-written file per bundled tokenizer ------------------------------------------

# The bundled Mistral tokenizer has no template: Mistral-7B-Instruct-v0.1's, as a fixture.
MISTRAL_TEMPLATE = os.path.join(os.path.dirname(TOKENIZERS), "templates", "mistral_inst.jinja")
SYSTEM = {"role": "system", "content": "You are terse."}
ONE_ROUND = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]
TWO_ROUNDS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4."},
]
TOOL_TURN = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "tool", "content": "3 C"},
    {"role": "assistant", "content": "3 degrees."},
]
QUESTION_ONLY = {  # a rendered conversation cut before the reply: nothing trains
    "qwen2_5": "<|im_start|>user\nOnly a question<|im_end|>\n",
    "smollm2": "<|im_start|>user\nOnly a question<|im_end|>\n",
    "llama3_1": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nOnly a question",
    "mistral7b_v01": "<s>[INST] Only a question [/INST]",
}


def show_file(tmp_path, name, lines, *options):
    path = write_jsonl(tmp_path, lines)
    args = ["show", "--tokenizer", os.path.join(TOKENIZERS, name), "--no-color", str(path)]
    if name == "mistral7b_v01":
        args += ["--chat-template", MISTRAL_TEMPLATE]
    return main([*args, *options]), path


def hand_written(name):
    first = ONE_ROUND if name == "mistral7b_v01" else [SYSTEM, *ONE_ROUND]
    lines = [{"messages": first}, {"messages": TWO_ROUNDS}, "", {"text": QUESTION_ONLY[name]}]
    if name in ("qwen2_5", "llama3_1"):
        lines.append({"messages": TOOL_TURN})
    return lines


EXPECTED = {
    "qwen2_5": (
        ["Paris.<|im_end|>", "Hello!<|im_end|>", "4.<|im_end|>", "3 degrees.<|im_end|>"],
        [
            "line 1: 3 of 25 tokens trained (12.0%); system 8, user 8, assistant 6, (no role) 3",
            "line 2: 6 of 50 tokens trained (12.0%); system 20, user 13, assistant 12, (no role) 5",
            "line 4: 0 of 8 tokens trained (0.0%); user 7, (no role) 1",
            "line 5: 4 of 54 tokens trained (7.4%); system 20, user 23, assistant 7, (no role) 4",
        ],
        [
            "4 rows, 137 tokens, 13 trained (9.5%)",
            "role       tokens  share",
            "system         48  35.0%",
            "user           51  37.2%",
            "assistant      25  18.2%",
            "(no role)      13   9.5%",
            "1 row with no trained token:",
            "  line 4: no header of a trained role ('assistant') found",
        ],
    ),
    "llama3_1": (
        ["Paris.<|eot_id|>", "Hello!<|eot_id|>", "4.<|eot_id|>", "3 degrees.<|eot_id|>"],
        [
            "line 1: 3 of 26 tokens trained (11.5%); system 9, user 9, assistant 7, (no role) 1",
            "line 2: 6 of 30 tokens trained (20.0%); user 15, assistant 14, (no role) 1",
            "line 4: 0 of 8 tokens trained (0.0%); user 7, (no role) 1",
            "line 5: 4 of 25 tokens trained (16.0%); user 9, assistant 8, tool 7, (no role) 1",
        ],
        [
            "4 rows, 89 tokens, 13 trained (14.6%)",
            "role       tokens  share",
            "system          9  10.1%",
            "user           40  44.9%",
            "assistant      29  32.6%",
            "tool            7   7.9%",
            "(no role)       4   4.5%",
            "1 row with no trained token:",
            "  line 4: no header of a trained role ('assistant') found",
        ],
    ),
    "smollm2": (
        ["Paris.<|im_end|>", "Hello!<|im_end|>", "4.<|im_end|>"],
        [
            "line 1: 3 of 27 tokens trained (11.1%); system 9, user 8, assistant 7, (no role) 3",
            "line 2: 6 of 52 tokens trained (11.5%); system 20, user 13, assistant 14, (no role) 5",
            "line 4: 0 of 8 tokens trained (0.0%); user 7, (no role) 1",
        ],
        [
            "3 rows, 87 tokens, 9 trained (10.3%)",
            "role       tokens  share",
            "system         29  33.3%",
            "user           28  32.2%",
            "assistant      21  24.1%",
            "tool            0   0.0%",
            "(no role)       9  10.3%",
            "1 row with no trained token:",
            "  line 4: no header of a trained role ('assistant') found",
        ],
    ),
    "mistral7b_v01": (
        ["Paris.</s>", "Hello!</s>", "4.</s>"],
        [
            "line 1: 4 of 16 tokens trained (25.0%); user 7, assistant 8, (no role) 1",
            "line 2: 6 of 27 tokens trained (22.2%); user 12, assistant 14, (no role) 1",
            "line 4: 0 of 11 tokens trained (0.0%); user 6, assistant 4, (no role) 1",
        ],
        [
            "3 rows, 54 tokens, 10 trained (18.5%)",
            "role       tokens  share",
            "user           25  46.3%",
            "assistant      26  48.1%",
            "(no role)       3   5.6%",
            "1 row with no trained token:",
            "  line 4: every 'assistant' turn is empty: the row may be truncated right after a "
            "header",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_show_highlights_replies_and_counts_roles(tmp_path, capsys, name):
    runs, headings, summary_lines = EXPECTED[name]
    code, _ = show_file(tmp_path, name, hand_written(name))
    out = capsys.readouterr().out
    assert code == 0
    assert trained_runs(out) == runs
    assert [line[4:] for line in out.splitlines() if line.startswith("--- line")] == headings
    assert summary(out).splitlines() == summary_lines


def test_show_prints_the_rendered_conversation_with_trained_text_marked(tmp_path, capsys):
    show_file(tmp_path, "qwen2_5", [{"messages": [SYSTEM, *ONE_ROUND]}])
    out = capsys.readouterr().out
    block = out.split("--- line 1: ", 1)[1].split("\n", 1)[1].split("\n--- summary")[0]
    assert block == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nCapital of France?"
        "<|im_end|>\n<|im_start|>assistant\n[[Paris.<|im_end|>]]\n"
    )


def test_show_with_color_highlights_trained_text_in_ansi(tmp_path, capsys):
    path = write_jsonl(tmp_path, [{"messages": ONE_ROUND}])
    assert main(["show", "--tokenizer", QWEN, "--color", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b[2m<|im_start|>assistant\x1b[0m\n\x1b[1;30;42mParis.<|im_end|>\x1b[0m\n" in out
    assert "[[" not in out


@pytest.mark.parametrize(
    ("options", "runs"),
    [
        (["--last-turn-only"], ["4.<|im_end|>"]),
        (["--no-train-eot"], ["Hello!", "4."]),
        (
            ["--train-roles", "user,assistant"],
            ["Hi<|im_end|>", "Hello!<|im_end|>", "2+2?<|im_end|>", "4.<|im_end|>"],
        ),
    ],
)
def test_spec_options_override_what_the_template_gives(tmp_path, capsys, options, runs):
    code, _ = show_file(tmp_path, "qwen2_5", [{"messages": TWO_ROUNDS}], *options)
    assert code == 0
    assert trained_runs(capsys.readouterr().out) == runs


def test_initial_role_trains_text_before_any_header(tmp_path, capsys):
    lines = [{"text": "Just a reply<|im_end|>\n<|im_start|>user\nOk<|im_end|>"}]
    show_file(tmp_path, "qwen2_5", lines)
    assert trained_runs(capsys.readouterr().out) == []
    show_file(tmp_path, "qwen2_5", lines, "--initial-role", "assistant")
    assert trained_runs(capsys.readouterr().out) == ["Just a reply<|im_end|>"]


def test_unknown_role_in_train_roles_is_an_error(tmp_path, capsys):
    code, _ = show_file(tmp_path, "qwen2_5", [{"messages": TWO_ROUNDS}], "--train-roles", "bot")
    assert code == 2
    assert "train_roles: unknown role 'bot'" in capsys.readouterr().err


def test_html_page_shows_each_conversation_and_the_summary(tmp_path, capsys):
    page = tmp_path / "masks.html"
    code, path = show_file(tmp_path, "llama3_1", [{"messages": ONE_ROUND}], "--html", str(page))
    assert code == 0
    assert capsys.readouterr().out.endswith(f"wrote {page}\n")
    html = page.read_text()
    assert "<span class='r2 t' title='assistant'>Paris.&lt;|eot_id|&gt;</span>" in html
    assert "<span class='r2'>assistant</span>" in html  # the legend: role colours
    assert "1 row, 17 tokens, 3 trained (17.6%)" in html
    assert html.count("<h2>") == 1


def test_max_rows_limits_the_printed_conversations_not_the_summary(tmp_path, capsys):
    code, _ = show_file(tmp_path, "smollm2", hand_written("smollm2"), "--max-rows", "1")
    out = capsys.readouterr().out
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("--- line")] == [
        "--- line 1: 3 of 27 tokens trained (11.1%); system 9, user 8, assistant 7, (no role) 3"
    ]
    assert "(2 more conversations not shown; --max-rows)" in out
    assert summary(out).startswith("3 rows, 87 tokens, 9 trained (10.3%)")


def test_python_dash_m_gpumask_runs_show(tmp_path):
    import subprocess
    import sys

    path = write_jsonl(tmp_path, [{"messages": ONE_ROUND}])
    result = subprocess.run(
        [sys.executable, "-m", "gpumask", "show", "--tokenizer", QWEN, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert "[[Paris.<|im_end|>]]" in result.stdout  # piped: no colours
