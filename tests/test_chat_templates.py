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

from conftest import FIXTURES, TOKENIZERS
from transformers import AutoTokenizer

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
    drops_system: bool = False
    reply_prefix: str = ""  # text the template puts before an assistant's content, as a reply's
    added_tokens: tuple[str, ...] = ()
    eos_token: str | None = None


FAMILIES = {
    f.name: f
    for f in [
        Family("qwen2_5", "qwen2_5", None, "<|im_end|>", tools="calls", call_open="<tool_call>"),
        Family("llama3_1", "llama3_1", None, "<|eot_id|>", tools="results"),
        Family("smollm2", "smollm2", None, "<|im_end|>", tools="results"),
        Family(
            "mistral_inst", "mistral7b_v01", "mistral_inst", "</s>", system=False, alternating=True
        ),
        Family("zephyr", "mistral7b_v01", "zephyr", "</s>"),
        Family("hash_assistant", "mistral7b_v01", "hash_assistant", "</s>"),
        Family("gemma", "llama3_1", "gemma", "<end_of_turn>", alternating=True),
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
        ),
        Family("qwen3", "qwen2_5", "qwen3", "<|im_end|>", tools="calls", call_open="<tool_call>"),
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
