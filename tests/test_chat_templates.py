"""`MaskSpec.from_tokenizer`: what it reads off each family's chat template, and its errors.

The bundled tokenizers are Qwen2.5, Llama 3.1, SmolLM2 (each with its own template) and a
template-less SentencePiece Mistral-7B v0.1; the other families are templates from
`fixtures/templates/` applied to the tokenizer that fits them (Mistral's for Mistral, Zephyr,
`### Assistant:` and Phi-3, with the special tokens the model's own tokenizer adds; Llama 3's
for Gemma-style text tags and a Llama 3.1 template with an `ipython` tool role; Qwen2.5's for
a Qwen3-like template with `<think>`).
"""

import dataclasses
import functools
import os
import re

import pytest
import torch
from conftest import FIXTURES, TOKENIZERS
from transformers import AutoTokenizer

from gpumask import MaskSpec, MaskSpecError, mask_labels
from gpumask.chat_templates import detect_chat_format

TEMPLATES = os.path.join(FIXTURES, "templates")
MISTRAL_CONTROL = (
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
)
PHI3_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")


@dataclasses.dataclass(frozen=True)
class Family:
    """A chat family: its tokenizer and template, and what its conversations may hold.

    `eot` is the text that ends an assistant turn, `call_open` the text a tool call starts
    with, `reply_prefix` the text the template writes in front of every reply (Mistral v0.3's
    space): ground truth for the random-conversation test, written from the template.
    """

    name: str
    tokenizer: str
    template: str | None  # a file in fixtures/templates, or None: the tokenizer's own
    eot: str
    system: bool = True
    alternating: bool = False  # strict user/assistant alternation
    tools: str = ""  # "calls": tool calls and results; "results": tool messages only
    call_open: str = ""
    call_content: bool = True  # the template renders an assistant's content beside its calls
    max_calls: int = 2
    quotes_tool_results: bool = False  # tool results rendered as JSON strings
    inline_results: tuple[str, str] | None = None  # results inside the reply, wrapped in these
    trims: bool = False  # the template strips whitespace around contents
    reply_prefix: str = ""  # text the template puts before an assistant's content, as a reply's
    added_tokens: tuple[str, ...] = ()
    eos_token: str | None = None


FAMILIES = {
    f.name: f
    for f in [
        Family("qwen2_5", "qwen2_5", None, "<|im_end|>", tools="calls", call_open="<tool_call>"),
        Family("llama3_1", "llama3_1", None, "<|eot_id|>", tools="results", trims=True),
        Family("smollm2", "smollm2", None, "<|im_end|>", tools="results"),
        Family(
            "mistral_inst", "mistral7b_v01", "mistral_inst", "</s>", system=False, alternating=True
        ),
        Family("zephyr", "mistral7b_v01", "zephyr", "</s>"),
        Family("hash_assistant", "mistral7b_v01", "hash_assistant", "</s>"),
        Family("gemma", "llama3_1", "gemma", "<end_of_turn>", alternating=True, trims=True),
        Family(
            "phi3",
            "mistral7b_v01",
            "phi3",
            "<|end|>",
            added_tokens=PHI3_TOKENS,
            eos_token="<|endoftext|>",
        ),
        Family(
            "llama3_tools",
            "llama3_1",
            "llama3_tools",
            "<|eot_id|>",
            tools="calls",
            call_open='{"name"',
            call_content=False,
            max_calls=1,
            trims=True,
            quotes_tool_results=True,
        ),
        Family(  # strips newlines in front of the last reply
            "qwen3",
            "qwen2_5",
            "qwen3",
            "<|im_end|>",
            tools="calls",
            call_open="<tool_call>",
            trims=True,
        ),
        Family(
            "mistral_tools",
            "mistral7b_v01",
            "mistral_tools",
            "</s>",
            system=False,
            reply_prefix=" ",
            alternating=True,
            tools="calls",
            call_open="[TOOL_CALLS]",
            call_content=False,
            added_tokens=MISTRAL_CONTROL,
            trims=True,
        ),
        Family(
            "chatml_inline_tools",
            "qwen2_5",
            "chatml_inline_tools",
            "<|im_end|>",
            tools="calls",
            call_open="<tool_call>",
            inline_results=("<tool_response>", "</tool_response>"),
        ),
    ]
}


@functools.cache
def load_family(name: str):
    """The family's tokenizer with its template set (one shared instance: do not modify)."""
    family = FAMILIES[name]
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, family.tokenizer))
    if family.added_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(family.added_tokens)})
    if family.eos_token:
        tok.eos_token = family.eos_token
    if family.template:
        with open(os.path.join(TEMPLATES, family.template + ".jinja"), encoding="utf-8") as f:
            tok.chat_template = f.read()
    return tok


def _decoded(tok, alts) -> list[str]:
    return [tok.decode(list(ids)) for ids in alts]


def _pieces(tok, alts) -> list[list[str]]:
    return [tok.convert_ids_to_tokens(list(ids)) for ids in alts]


def _trained(tok, spec, messages, **kwargs) -> list[str]:
    """The rendered text of each run of trained tokens, by character offsets."""
    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = mask_labels(torch.tensor([encoded["input_ids"]]), spec)[0].tolist()
    runs, start, end = [], None, None
    for (s, e), label in zip(encoded["offset_mapping"], labels + [-100]):
        if label != -100:
            start = s if start is None else start
            end = e
        elif start is not None:
            runs.append(text[start:end])
            start = None
    if start is not None:
        runs.append(text[start:end])
    return runs


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
    assert {role: _decoded(tok, alts) for role, alts in fmt.headers.items()} == headers
    assert _decoded(tok, fmt.end_of_turn) == eot
    assert [(_decoded(tok, o), _decoded(tok, c)) for o, c in fmt.masked_spans] == spans
    assert fmt.tool_results == tool_results
    call = fmt.tool_call and (_decoded(tok, fmt.tool_call[0]), _decoded(tok, fmt.tool_call[1]))
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
    assert _trained(tok, spec, messages) == [']{"a": 1}</s>', "Sure.</s>"]


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
    assert _trained(tok, fmt.spec(tok), messages) == ["Hello!</s>", "Bye.</s>"]


def test_default_system_prompt_and_bos_are_not_part_of_a_header():
    tok = load_family("smollm2")
    spec = MaskSpec.from_tokenizer(tok)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert _trained(tok, spec, messages) == ["Hello!<|im_end|>"]
    tok = load_family("llama3_tools")  # BOS and a system turn with dates, always rendered
    assert _trained(tok, MaskSpec.from_tokenizer(tok), messages) == ["Hello!<|eot_id|>"]


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
    assert _trained(tok, spec, messages) == ["Hello!<|im_end|>", "4<|im_end|>"]


def test_system_folded_into_a_user_turn_gives_no_system_role():
    for name in ("gemma", "mistral_tools"):
        assert "system" not in detect_chat_format(load_family(name)).headers, name
    tok = load_family("gemma")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert _trained(tok, MaskSpec.from_tokenizer(tok), messages) == ["Hello!<end_of_turn>\n"]


TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Nice?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "abc123xyz",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Nice"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "abc123xyz", "content": "27 C"},
    {"role": "assistant", "content": "It is 27 C."},
]
WEATHER_TOOL = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


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
        assert _trained(tok, spec, TOOL_CONVERSATION, tools=WEATHER_TOOL) == runs, name


def test_train_tool_calls_false_masks_the_call_wrapper():
    tok = load_family("qwen2_5")
    spec = MaskSpec.from_tokenizer(tok, train_tool_calls=False)
    assert _decoded(tok, spec.masked_spans[-1][0]) == ["<tool_call>"]
    assert _trained(tok, spec, TOOL_CONVERSATION, tools=WEATHER_TOOL) == [
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


def test_tool_results_with_no_boundary_token_raise():
    with open(os.path.join(TEMPLATES, "mistral_tools.jinja"), encoding="utf-8") as f:
        tok = _mistral_with(f.read())  # Mistral v0.3's template, without its control tokens
    with pytest.raises(
        MaskSpecError,
        match=re.escape(
            "header after a tool result: the template puts no end of turn after a tool result "
            "and no special token before the next turn"
        ),
    ):
        MaskSpec.from_tokenizer(tok)


# --- the README section "Which tokens are trained", generated from the detected formats --------

README_SECTION = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "docs", "readme", "which_tokens_are_trained.md"
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6."},
]
SOURCES = {
    "qwen2_5": "Qwen2.5 tokenizer and its own template",
    "llama3_1": "Llama 3.1 tokenizer and its own template",
    "smollm2": "SmolLM2 tokenizer and its own template (default system prompt)",
    "mistral_inst": "Mistral `[INST]` template (with BOS) on the Mistral-7B v0.1 tokenizer",
    "zephyr": "Zephyr template on the Mistral-7B v0.1 tokenizer",
    "hash_assistant": "`### User:` / `### Assistant:` template on the Mistral-7B v0.1 tokenizer",
    "gemma": "Gemma-style template (text tags, system folded into the first user turn) on the "
    "Llama 3 tokenizer",
    "phi3": "Phi-3 template on the Mistral-7B v0.1 tokenizer with Phi-3's added tokens",
    "llama3_tools": "Llama 3.1-style template with tools (`ipython` role) on the Llama 3 tokenizer",
    "qwen3": "Qwen3-style template (`<think>` in the last reply) on the Qwen2.5 tokenizer",
    "chatml_inline_tools": "ChatML-style template in which a call, its results and the reply "
    "after them are one assistant turn, on the Qwen2.5 tokenizer",
    "mistral_tools": "Mistral v0.3-style template with tools on the Mistral-7B v0.1 tokenizer "
    "with v0.3's control tokens",
}


def _marked(tok, spec, messages, **kwargs) -> str:
    """The rendered conversation with `[[...]]` around every run of trained characters."""
    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    runs = _trained(tok, spec, messages, **kwargs)
    out, at = [], 0
    for run in runs:
        start = text.index(run, at)
        out += [text[at:start], "[[", run, "]]"]
        at = start + len(run)
    return "".join(out + [text[at:]])


def _show(tok, alts) -> str:
    """Distinct decoded alternatives as code, `|` escaped for a Markdown table."""
    shown: list[str] = []
    for text in _decoded(tok, alts):
        code = "`" + repr(text)[1:-1].replace("|", "\\|") + "`"
        if code not in shown:
            shown.append(code)
    extra = len(alts) - len(shown)
    return ", ".join(shown) + (f" ({len(alts)} tokenizations)" if extra else "")


def readme_section() -> str:
    lines = [
        "## Which tokens are trained",
        "",
        "`MaskSpec.from_tokenizer(tok)` renders probe conversations with the tokenizer's own",
        "chat template and reads every marker as token ids in context. Below, for each family",
        "tested in `tests/test_real_formats.py`, a short conversation rendered with its",
        "template, trained text between `[[` and `]]`: the assistant's replies, tool calls",
        "included, each with its end-of-turn token. Headers, system prompts (default ones",
        "too), user turns, tool results and the whitespace between turns are masked.",
        "Generated by `GPUMASK_WRITE_DOCS=1 pytest tests/test_chat_templates.py -k readme`.",
        "",
        "| Family | Headers read (role: markers) | End of turn | Masked spans |"
        " Tool calls | Tool results |",
        "|---|---|---|---|---|---|",
    ]
    note = [
        "",
        "A header shown without its last character (`[/INST`, `<|im_start|>assistant`) is",
        "the tokenization in which that character merges with the reply's first one (`]{`,",
        "`\\n\\n`); a marker with several tokenizations appears in several contexts (with a",
        "leading `▁` at the start of a SentencePiece text). Families other than Qwen2.5,",
        "Llama 3.1 and SmolLM2 are templates from `tests/fixtures/templates/` applied to a",
        "bundled tokenizer of the same kind.",
    ]
    examples = []
    for name, family in FAMILIES.items():
        tok = load_family(name)
        fmt = detect_chat_format(tok)
        spec = fmt.spec(tok)
        headers = "<br>".join(f"{role}: {_show(tok, alts)}" for role, alts in fmt.headers.items())
        spans = "<br>".join(f"{_show(tok, o)} ... {_show(tok, c)}" for o, c in fmt.masked_spans)
        if fmt.tool_call:
            closes = _show(tok, fmt.tool_call[1]) if fmt.tool_call[1] else "end of turn"
            calls = f"trained; {_show(tok, fmt.tool_call[0])} ... {closes}"
        else:
            calls = "trained (no wrapper)" if fmt.tool_calls_rendered else "not rendered"
        lines.append(
            f"| {name} | {headers} | {_show(tok, fmt.end_of_turn)} | {spans or '-'} | {calls} "
            f"| {fmt.tool_results} |"
        )
        messages = CHAT if family.system and name != "smollm2" else CHAT[1:]
        kwargs = {}
        if family.tools == "calls":
            messages = [*messages[:-2], *TOOL_CONVERSATION]
            kwargs = {"tools": WEATHER_TOOL}
        examples += [
            f"**{name}**: {SOURCES[name]}.",
            "",
            "```text",
            _marked(tok, spec, messages, **kwargs).rstrip("\n"),
            "```",
            "",
        ]
    return "\n".join([*lines, *note, "", *examples]).rstrip("\n") + "\n"


def test_readme_section_is_generated_from_the_detected_formats():
    section = readme_section()
    if os.environ.get("GPUMASK_WRITE_DOCS"):
        os.makedirs(os.path.dirname(README_SECTION), exist_ok=True)
        with open(README_SECTION, "w", encoding="utf-8") as f:
            f.write(section)
    with open(README_SECTION, encoding="utf-8") as f:
        assert f.read() == section, "regenerate with GPUMASK_WRITE_DOCS=1"
