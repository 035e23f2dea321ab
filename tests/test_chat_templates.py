"""`MaskSpec.from_tokenizer`: what it reads off each family's chat template, and its errors.

The bundled tokenizers are Qwen2.5, Llama 3.1, SmolLM2 (each with its own template) and a
template-less SentencePiece Mistral-7B v0.1; the other families are templates from
`fixtures/templates/` applied to the tokenizer that fits them (Mistral's for Mistral, Zephyr,
`### Assistant:` and Phi-3, with the special tokens the model's own tokenizer adds; Llama 3's
for Gemma-style text tags and a Llama 3.1 template with an `ipython` tool role; Qwen2.5's for
a Qwen3-like template with `<think>`).
"""

import os
import re
import sys

import pytest
from conftest import TOKENIZERS
from families import (
    FAMILIES,
    TEMPLATES,
    TOOL_CONVERSATION,
    WEATHER_TOOL,
    decoded,
    load_family,
    trained_text,
)
from transformers import AutoTokenizer

from gpumask import MaskSpec, MaskSpecError, TemplateWarning
from gpumask.chat_templates import detect_chat_format

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
from which_tokens import README_SECTION, readme_section  # noqa: E402


def _pieces(tok, alts) -> list[list[str]]:
    return [tok.convert_ids_to_tokens(list(ids)) for ids in alts]


# family -> (headers per role, end of turn, masked spans, tool results, tool call), decoded
DETECTED = {
    "qwen2_5": (
        {
            "system": ["<|im_start|>system\n", "<|im_start|>system"],
            "user": ["<|im_start|>user\n", "<|im_start|>user"],
            "assistant": ["<|im_start|>assistant\n", "<|im_start|>assistant"],
        },
        ["<|im_end|>"],
        [
            (
                ["<tool_response>\n", "<tool_response>\n\n", "<tool_response>\n\n\n"],
                ["</tool_response>", "</tool_response>\n"],
            )
        ],
        "inside role 'user'",
        (["<tool_call>"], ["</tool_call>"]),
    ),
    "llama3_1": (
        {
            "system": ["<|start_header_id|>system<|end_header_id|>\n\n"],
            "user": ["<|start_header_id|>user<|end_header_id|>\n\n"],
            "assistant": ["<|start_header_id|>assistant<|end_header_id|>\n\n"],
            "tool": ["<|start_header_id|>tool<|end_header_id|>\n\n"],
        },
        ["<|eot_id|>"],
        [],
        "role 'tool'",
        None,
    ),
    "smollm2": (
        {
            "system": ["<|im_start|>system\n", "<|im_start|>system"],
            "user": ["<|im_start|>user\n", "<|im_start|>user"],
            "assistant": ["<|im_start|>assistant\n", "<|im_start|>assistant"],
            "tool": ["<|im_start|>tool\n", "<|im_start|>tool"],
        },
        ["<|im_end|>"],
        [],
        "role 'tool'",
        None,
    ),
    "mistral_inst": (
        {"user": ["[INST]"], "assistant": ["[/INST]", "[/INST"]},
        ["</s>"],
        [],
        "not rendered",
        None,
    ),
    "zephyr": (
        {
            "system": ["<|system|>\n", "<|system|>\n"],
            "user": ["<|user|>\n", "<|user|>\n"],
            "assistant": ["<|assistant|>\n"],
        },
        ["</s>"],
        [],
        "not rendered",
        None,
    ),
    "hash_assistant": (
        {"user": ["### User:\n", "### User:\n"], "assistant": ["### Assistant:\n"]},
        ["</s>"],
        [],
        "not rendered",
        None,
    ),
    "gemma": (
        {"user": ["<start_of_turn>user\n"], "assistant": ["<start_of_turn>model\n"]},
        ["<end_of_turn>\n", "end_of_turn>\n"],
        [],
        "not rendered",
        None,
    ),
    "phi3": (
        {"system": ["<|system|> \n"], "user": ["<|user|> \n"], "assistant": ["<|assistant|> \n"]},
        ["<|end|>"],
        [],
        "not rendered",
        None,
    ),
    "llama3_tools": (
        {
            "system": ["<|start_header_id|>system<|end_header_id|>\n\n"],
            "user": ["<|start_header_id|>user<|end_header_id|>\n\n"],
            "assistant": ["<|start_header_id|>assistant<|end_header_id|>\n\n"],
            "tool": ["<|start_header_id|>ipython<|end_header_id|>"],
        },
        ["<|eot_id|>"],
        [],
        "role 'tool'",
        None,
    ),
    "qwen3": (
        {
            "system": ["<|im_start|>system\n"],
            "user": ["<|im_start|>user\n", "<|im_start|>user"],
            "assistant": [
                "<|im_start|>assistant\n<think>\n\n</think>\n\n",
                "<|im_start|>assistant\n",
                "<|im_start|>assistant",
            ],
        },
        ["<|im_end|>"],
        [
            (
                ["<tool_response>\n", "<tool_response>\n\n", "<tool_response>\n\n\n"],
                ["</tool_response>", "</tool_response>\n"],
            )
        ],
        "inside role 'user'",
        (["<tool_call>"], ["</tool_call>"]),
    ),
    "chatml_inline_tools": (
        {
            "system": ["<|im_start|>system\n", "<|im_start|>system"],
            "user": ["<|im_start|>user\n", "<|im_start|>user"],
            "assistant": ["<|im_start|>assistant\n", "<|im_start|>assistant"],
        },
        ["<|im_end|>"],
        [
            (
                ["<tool_response>\n", "<tool_response>\n\n", "<tool_response>\n\n\n"],
                [
                    "</tool_response>\n",
                    "</tool_response>\n\n",
                    "</tool_response>\n\n\n",
                    "</tool_response>",
                ],
            )
        ],
        "inside role 'assistant'",
        (["<tool_call>"], ["</tool_call>"]),
    ),
    "mistral_tools": (
        {
            "user": ["[INST]"],
            "assistant": ["[/INST]", "[/TOOL_RESULTS]"],
            "tool": ["[TOOL_RESULTS]"],
        },
        ["</s>"],
        [],
        "role 'tool'",
        (["[TOOL_CALLS]"], []),
    ),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_detected_format(name):
    tok = load_family(name)
    headers, eot, spans, tool_results, tool_call = DETECTED[name]
    fmt = detect_chat_format(tok)
    assert {role: decoded(tok, alts) for role, alts in fmt.headers.items()} == headers
    assert decoded(tok, fmt.end_of_turn) == eot
    assert [(decoded(tok, o), decoded(tok, c)) for o, c in fmt.masked_spans] == spans
    assert fmt.tool_results == tool_results
    call = fmt.tool_call and (decoded(tok, fmt.tool_call[0]), decoded(tok, fmt.tool_call[1]))
    assert call == tool_call
    spec = MaskSpec.from_tokenizer(tok)
    assert spec == fmt.spec(tok)
    assert spec.roles == fmt.headers and spec.role_names == tuple(headers)


def test_repr_shows_what_was_detected():
    spec = MaskSpec.from_tokenizer(load_family("llama3_1"))
    assert repr(spec) == (
        "MaskSpec(\n"
        "  role 'system': '<|start_header_id|>system<|end_header_id|>\\n\\n'"
        "=[128006, 9125, 128007, 271]\n"
        "  role 'user': '<|start_header_id|>user<|end_header_id|>\\n\\n'"
        "=[128006, 882, 128007, 271]\n"
        "  role 'assistant': '<|start_header_id|>assistant<|end_header_id|>\\n\\n'"
        "=[128006, 78191, 128007, 271]\n"
        "  role 'tool': '<|start_header_id|>tool<|end_header_id|>\\n\\n'"
        "=[128006, 14506, 128007, 271]\n"
        "  end_of_turn: '<|eot_id|>'=[128009]\n"
        "  train_roles=('assistant',), train_on_end_of_turn=True, last_turn_only=False, "
        "initial_role=None\n"
        ")"
    )
    spec = MaskSpec.from_tokenizer(load_family("mistral_tools"))
    assert repr(spec).splitlines()[1:5] == [
        "  role 'user': '[INST]'=[32000]",
        "  role 'assistant': '[/INST]'=[32001] | '[/TOOL_RESULTS]'=[32006]",
        "  role 'tool': '[TOOL_RESULTS]'=[32005]",
        "  end_of_turn: '</s>'=[2]",
    ]


def test_qwen_markers_are_exact_ids():
    fmt = detect_chat_format(load_family("qwen2_5"))
    assert fmt.headers["assistant"] == ((151644, 77091, 198), (151644, 77091))
    assert fmt.end_of_turn == ((151645,),)
    assert fmt.tool_call == (((151657,),), ((151658,),))


def test_mistral_without_assistant_header_reads_inst_markers_in_context():
    tok = load_family("mistral_inst")
    fmt = detect_chat_format(tok)
    assert _pieces(tok, fmt.headers["user"]) == [["▁[", "INST", "]"]]
    # "]" merges with a reply's first character ("]{" , "](") in SentencePiece
    assert _pieces(tok, fmt.headers["assistant"]) == [["▁[", "/", "INST", "]"], ["▁[", "/", "INST"]]
    spec = fmt.spec(tok)
    messages = [
        {"role": "user", "content": "Give JSON."},
        {"role": "assistant", "content": '{"a": 1}'},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Sure."},
    ]
    assert trained_text(tok, spec, messages) == [']{"a": 1}</s>', "Sure.</s>"]


def test_first_header_of_a_sentencepiece_conversation_is_its_own_alternative():
    tok = load_family("zephyr")
    fmt = detect_chat_format(tok)
    assert _pieces(tok, fmt.headers["user"]) == [
        ["<", "|", "user", "|", ">", "<0x0A>"],
        ["▁<", "|", "user", "|", ">", "<0x0A>"],
    ]
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye."},
    ]
    assert trained_text(tok, fmt.spec(tok), messages) == ["Hello!</s>", "Bye.</s>"]


def test_default_system_prompt_and_bos_are_not_part_of_a_header():
    tok = load_family("smollm2")
    spec = MaskSpec.from_tokenizer(tok)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert trained_text(tok, spec, messages) == ["Hello!<|im_end|>"]
    tok = load_family("llama3_tools")  # BOS and a system turn with dates, always rendered
    assert trained_text(tok, MaskSpec.from_tokenizer(tok), messages) == ["Hello!<|eot_id|>"]


def test_think_block_of_the_last_turn_is_part_of_its_header():
    tok = load_family("qwen3")
    spec = MaskSpec.from_tokenizer(tok)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>" in tok.apply_chat_template(
        messages, tokenize=False
    )
    assert trained_text(tok, spec, messages) == ["Hello!<|im_end|>", "4<|im_end|>"]


def test_system_folded_into_a_user_turn_gives_no_system_role():
    for name in ("gemma", "mistral_tools"):
        assert "system" not in detect_chat_format(load_family(name)).headers, name
    tok = load_family("gemma")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert trained_text(tok, MaskSpec.from_tokenizer(tok), messages) == ["Hello!<end_of_turn>\n"]


def test_tool_calls_train_and_tool_results_are_masked():
    expected = {
        "qwen2_5": [
            'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
            '"Nice"}}\n</tool_call><|im_end|>',
            "It is 27 C.<|im_end|>",
        ],
        "llama3_tools": [
            '{"name": "get_weather", "parameters": {"city": "Nice"}}<|eot_id|>',
            "It is 27 C.<|eot_id|>",
        ],
        "mistral_tools": [
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Nice"}, '
            '"id": "abc123xyz"}]</s>',
            " It is 27 C.</s>",
        ],
        "chatml_inline_tools": [  # one turn: the result inside it is a masked span
            'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Nice"}}\n'
            "</tool_call>\n",
            "It is 27 C.<|im_end|>",
        ],
    }
    for name, runs in expected.items():
        tok = load_family(name)
        spec = MaskSpec.from_tokenizer(tok)
        assert trained_text(tok, spec, TOOL_CONVERSATION, tools=WEATHER_TOOL) == runs, name


def test_train_tool_calls_false_masks_the_call_wrapper():
    tok = load_family("qwen2_5")
    spec = MaskSpec.from_tokenizer(tok, train_tool_calls=False)
    assert decoded(tok, spec.masked_spans[-1][0]) == ["<tool_call>"]
    assert trained_text(tok, spec, TOOL_CONVERSATION, tools=WEATHER_TOOL) == [
        "Checking.\n",
        "<|im_end|>",
        "It is 27 C.<|im_end|>",
    ]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("mistral_tools", "opens tool calls but has no close marker"),
        ("llama3_tools", "wraps tool calls in no (open, close) pair"),
        ("llama3_1", "renders no tool call"),
    ],
)
def test_train_tool_calls_false_needs_a_wrapped_call(name, reason):
    with pytest.raises(
        MaskSpecError,
        match=re.escape(f"train_tool_calls=False: the template {reason}, so tool calls cannot be"),
    ):
        MaskSpec.from_tokenizer(load_family(name), train_tool_calls=False)


def test_overrides_replace_what_was_detected():
    tok = load_family("llama3_tools")
    detected = MaskSpec.from_tokenizer(tok)
    spec = MaskSpec.from_tokenizer(tok, last_turn_only=True, train_roles=("assistant", "tool"))
    assert spec.last_turn_only and spec.train_roles == ("assistant", "tool")
    assert spec.roles == detected.roles and spec.end_of_turn == detected.end_of_turn
    assert "role 'tool'" in repr(spec)  # still decoded
    with pytest.raises(MaskSpecError, match="train_roles: unknown role 'tool'"):
        MaskSpec.from_tokenizer(load_family("qwen2_5"), train_roles=("assistant", "tool"))


def test_chat_template_argument_is_read_instead_of_the_tokenizers():
    plain = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "mistral7b_v01"))
    with open(os.path.join(TEMPLATES, "zephyr.jinja"), encoding="utf-8") as f:
        zephyr = f.read()
    assert MaskSpec.from_tokenizer(plain, chat_template=zephyr) == MaskSpec.from_tokenizer(
        load_family("zephyr")
    )


def test_named_templates_are_read_as_apply_chat_template_picks_them():
    plain = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "mistral7b_v01"))
    with open(os.path.join(TEMPLATES, "zephyr.jinja"), encoding="utf-8") as f:
        plain.chat_template = {"default": f.read()}
    assert MaskSpec.from_tokenizer(plain) == MaskSpec.from_tokenizer(load_family("zephyr"))


def _mistral_with(template: str | None):
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "mistral7b_v01"))
    tok.chat_template = template
    return tok


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (None, "tokenizer has no chat_template to read the chat format from"),
        (
            "{{ raise_exception('no chats here') }}",
            "the chat template rejects a plain user/assistant conversation "
            "(TemplateError: no chats here)",
        ),
        (
            "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}"
            "{% endfor %}",
            "the chat template renders no assistant content: [user, assistant] gave 'Vexquone'",
        ),
        (
            "{% for m in messages %}{{ '>> ' + m.content + eos_token }}{% endfor %}",
            "the user and assistant turns have the same header",
        ),
    ],
)
def test_unreadable_templates_raise_naming_what_is_missing(template, message):
    with pytest.raises(MaskSpecError, match=re.escape(message)):
        MaskSpec.from_tokenizer(_mistral_with(template))


def test_tool_results_with_no_boundary_token_are_a_partial_format():
    # Mistral v0.3's template without its control tokens: nothing marks where a tool result's
    # JSON wrapper ends and the reply starts, so the tool conversation types are left out
    with open(os.path.join(TEMPLATES, "mistral_tools.jinja"), encoding="utf-8") as f:
        tok = _mistral_with(f.read())
    with pytest.warns(TemplateWarning) as caught:
        spec = MaskSpec.from_tokenizer(tok)
    kinds = sorted(str(w.message).split(":")[0] for w in caught)
    assert kinds == ["several tool calls", "tool call", "tool call without content"]
    assert decoded(tok, spec.roles["assistant"])[:2] == ["[/INST]", "/INST]"]


def test_readme_section_is_generated_from_the_detected_formats():
    with open(README_SECTION, encoding="utf-8") as f:
        assert f.read() == readme_section(), "regenerate with python scripts/which_tokens.py"


def test_from_tokenizer_is_cached_per_vocabulary_and_template():
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, "qwen2_5"))
    first = MaskSpec.from_tokenizer(tok)
    assert MaskSpec.from_tokenizer(tok) is first  # read once
    assert MaskSpec.from_tokenizer(tok, last_turn_only=True).last_turn_only
    tok.add_tokens(["<|not_a_marker|>"])  # a new vocabulary is read again
    again = MaskSpec.from_tokenizer(tok)
    assert again is not first and again == first.replace(vocab_size=again.vocab_size)


def test_from_tokenizer_given_a_path_says_to_load_it():
    with pytest.raises(MaskSpecError, match=re.escape("tokenizer: got the path 'some/dir'")):
        MaskSpec.from_tokenizer("some/dir")
