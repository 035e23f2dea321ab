"""``make demo`` (or ``python -m gpumask.demo``): what gpumask trains on a real chat.

1. Renders a multi-turn tool-calling conversation with a real tokenizer and chat template,
   reads the chat format off the template (:meth:`gpumask.MaskSpec.from_tokenizer`), masks it
   and prints it with the trained tokens highlighted and the tokens per role.
2. Collates two rows with :class:`gpumask.CompletionCollator`, one of them cut by
   `max_length` right after an assistant header, and shows the labels it returns and the
   warning about the row that trains nothing.

The tokenizer ships inside the package (``gpumask/demo_data``: SmolLM2's tokenizer with
Qwen2.5's chat template, which renders tool calls), so the demo runs from an installed
package, with no network and no GPU::

    python -m gpumask.demo [--no-color]

Timings are not part of it: ``make bench`` in a clone of the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from importlib import resources
from typing import Any

from gpumask import display
from gpumask.collators import CompletionCollator
from gpumask.spec import MaskSpec

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

CONVERSATION = [
    {"role": "system", "content": "You are a concise travel assistant."},
    {"role": "user", "content": "Is it warm enough in Lisbon to swim today?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Lisbon"}},
            }
        ],
    },
    {"role": "tool", "content": '{"air_c": 24, "sea_c": 18, "sky": "sunny"}'},
    {"role": "assistant", "content": "Sunny, 24 °C, but the sea is 18 °C: bracing, not warm."},
    {"role": "user", "content": "And in Nice?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Nice"}}}
        ],
    },
    {"role": "tool", "content": '{"air_c": 27, "sea_c": 23, "sky": "clear"}'},
    {"role": "assistant", "content": "Yes: 27 °C and a 23 °C sea. Go for it."},
]


def load_tokenizer() -> Any:
    """The tokenizer bundled in ``gpumask/demo_data`` (read from the installed package)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resources.files("gpumask") / "demo_data"))


def masked_conversation(tokenizer: Any) -> tuple[MaskSpec, display.MaskedRow]:
    """The demo conversation rendered, tokenized and masked with the tokenizer's own format."""
    spec = MaskSpec.from_tokenizer(tokenizer)
    return spec, display.mask_rows([conversation_ids(tokenizer)], spec)[0]


def conversation_ids(tokenizer: Any, messages: list = CONVERSATION, tools: list | None = TOOLS):
    """Token ids of `messages` rendered with the tokenizer's chat template."""
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def show_conversation(tokenizer: Any, color: bool) -> MaskSpec:
    spec, row = masked_conversation(tokenizer)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    print("1. A tool-calling conversation (Qwen2.5's chat template); the format read off it:")
    print(repr(spec))
    print(display.legend(color) + "\n")
    print(display.format_row(row, decode, color=color).rstrip("\n"))
    print()
    print(display.format_summary([row], ["the conversation"]))
    return spec


def _find(ids: list[int], marker: tuple[int, ...]) -> int:
    return next(p for p in range(len(ids)) if tuple(ids[p : p + len(marker)]) == marker)


def show_collator(tokenizer: Any, spec: MaskSpec) -> None:
    hello = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    short = conversation_ids(tokenizer, [CONVERSATION[0], *hello], tools=None)
    long = conversation_ids(tokenizer)
    header = spec.roles["assistant"][0]
    cut = _find(long, header) + len(header)  # right after the first assistant header
    collate = CompletionCollator(tokenizer, spec, max_length=cut)
    print(
        f"\n2. CompletionCollator(tokenizer, spec, max_length={cut}) on a {len(short)}-token "
        f"chat and on the conversation above ({len(long)} tokens: cut right after its first "
        "assistant header):"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = collate([{"input_ids": short}, {"input_ids": long}])
    for key, value in batch.items():
        print(f"   {key}: {value.dtype}, shape {tuple(value.shape)}")
    labels = batch["labels"][0]
    trained = tokenizer.decode(labels[labels != -100])
    print(f"   row 0 trains {trained!r}; row 1 trains nothing, and the collator says why:")
    for warning in caught:
        print(f"   {warning.category.__name__}: {warning.message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-color", action="store_true", help="mark trained text with [[ ]]")
    args = parser.parse_args(argv)
    color = not args.no_color and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    tokenizer = load_tokenizer()
    spec = show_conversation(tokenizer, color)
    show_collator(tokenizer, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
