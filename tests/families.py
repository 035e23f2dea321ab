"""The chat families the tests render conversations with: each one's tokenizer, template and
what its conversations may hold (ground truth written from the template), and helpers to
render and mask them. Used by test_chat_templates.py, test_real_formats.py and
scripts/which_tokens.py (the README section "Which tokens are trained")."""

import dataclasses
import functools
import os

import torch
from transformers import AutoTokenizer

from gpumask import mask_labels

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOKENIZERS = os.path.join(FIXTURES, "tokenizers")
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


def decoded(tok, alts) -> list[str]:
    """Each alternative (id tuple) decoded."""
    return [tok.decode(list(ids)) for ids in alts]


def trained_text(tok, spec, messages, **kwargs) -> list[str]:
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
# A call with no content and no id, as a template that drops calls leaves it: an empty turn.
BARE_CALL_CONVERSATION = [
    {"role": "user", "content": "Weather in Nice?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Nice"}}}
        ],
    },
    {"role": "tool", "content": "27 C"},
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
