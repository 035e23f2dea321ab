"""``make demo``: what gpumask trains on a real chat, and how fast, in under a minute on a CPU.

1. Renders a multi-turn tool-calling conversation with the bundled Qwen2.5 tokenizer's own
   chat template, reads the chat format off it (:meth:`gpumask.MaskSpec.from_tokenizer`),
   masks it and prints it with the trained tokens highlighted and the tokens per role.
2. Times trl 0.19.1's ``DataCollatorForCompletionOnlyLM`` against gpumask on synthetic
   64-row batches (``benchmarks/run.py --quick``) and prints the table.

No network, no GPU::

    python -m gpumask.demo [--no-bench] [--no-color]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gpumask import display
from gpumask.spec import MaskSpec

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "qwen2_5"

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


def masked_conversation(tokenizer: Any) -> tuple[MaskSpec, display.MaskedRow]:
    """The demo conversation rendered, tokenized and masked with the tokenizer's own format."""
    text = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    spec = MaskSpec.from_tokenizer(tokenizer)
    return spec, display.mask_rows([ids], spec)[0]


def show_conversation(color: bool) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    spec, row = masked_conversation(tokenizer)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    print("1. A tool-calling conversation, Qwen2.5's chat template; the format it detected:")
    print(repr(spec))
    print(display.legend(color) + "\n")
    print(display.format_row(row, decode, color=color).rstrip("\n"))
    print()
    print(display.format_summary([row], ["the conversation"]))


def show_benchmark() -> None:
    if not (ROOT / "benchmarks" / "run.py").exists():
        print("\n2. Benchmark: benchmarks/ is not here (run the demo from a clone of the repo).")
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import run

    print(
        "\n2. Collating 64 rows of synthetic ChatML (ragged lengths up to T), "
        "median ms per batch; (Nx) = N times faster than trl 0.19.1:"
    )
    report = run.run(run.QUICK_GRID, run.implementations(cuda=False, quick=True))
    info = report["machine"]
    print(
        f"{info['label']}, {info['torch_threads']} torch thread (as in a DataLoader worker), "
        f"load average {report['load_before'][0]:.1f}"
    )
    print(run.table(report))
    print("Full grid, JSON and plot: make bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-bench", action="store_true", help="skip the timing table")
    parser.add_argument("--no-color", action="store_true", help="mark trained text with [[ ]]")
    args = parser.parse_args(argv)
    color = not args.no_color and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    show_conversation(color)
    if not args.no_bench:
        show_benchmark()
    return 0


if __name__ == "__main__":
    sys.exit(main())
