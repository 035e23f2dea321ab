"""Random conversations of each conversation type, for checking a template (`gpumask check`).

Contents are drawn from words with the characters that trip tokenizers up (punctuation that
merges with markup, digits, non-Latin scripts, emoji, inner newlines); they never start or end
with whitespace and hold no quote or backslash, so that a template that trims contents or
writes them as JSON strings still renders them verbatim. Tool results are single-line.

Example::

    >>> import random
    >>> messages, tools = conversation("tool call", random.Random(0))
    >>> [m["role"] for m in messages], len(tools)
    (['user', 'assistant', 'tool', 'assistant'], 2)
"""

from __future__ import annotations

import json
import random
from typing import Any

WORDS = (
    "apple river Paris blue quantum seven 42 3.14 cat's (maybe) über naïve 東京 ok, yes! well: "
    "stop. why? [x] <b> a-b x_y {k} #5 @me 100% --flag $9 emoji🙂 tab\there Москва done."
).split(" ")
VALUES = tuple(w for w in WORDS if w.isalnum() and w.isascii())
FUNCTIONS = ("get_weather", "search_flights", "convert_units")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name.replace('_', ' ').capitalize()}.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to look up."}},
                "required": ["query"],
            },
        },
    }
    for name in FUNCTIONS[:2]
]


def text(rng: random.Random, lines: bool = True) -> str:
    """A random content: 2 to 14 words, sometimes over several lines."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
    out = words[0]
    for word in words[1:]:
        out += ("\n" if lines and rng.random() < 0.08 else " ") + word
    return out


def _call(rng: random.Random, n: int, string_arguments: bool) -> dict:
    arguments = {"query": rng.choice(VALUES)}  # ASCII: as JSON, written as it is
    return {
        "id": f"call{n:05d}",
        "type": "function",
        "function": {
            "name": rng.choice(FUNCTIONS[:2]),
            "arguments": json.dumps(arguments) if string_arguments else arguments,
        },
    }


def conversation(
    kind: str, rng: random.Random, string_arguments: bool = False, bare_content: Any = None
) -> tuple[list[dict], list | None]:
    """(messages, tools or None) of a random conversation of type `kind` (see `probes.TYPES`).

    `string_arguments`: tool-call arguments as a JSON string; `bare_content`: the content of
    an assistant message that only calls (None, or "" for templates that need a string).
    """

    used: list[str] = []

    def fresh(lines: bool = True) -> str:
        """A content that neither holds nor is held by an earlier one (found where it is)."""
        while True:
            out = text(rng, lines)
            if not any(out in u or u in out for u in used):
                used.append(out)
                return out

    def msg(role: str, content: Any = None, **extra: Any) -> dict:
        return {"role": role, "content": fresh() if content is None else content, **extra}

    def exchange() -> list[dict]:
        return [msg("user"), msg("assistant")]

    def calls(n: int, with_content: bool) -> list[dict]:
        made = [_call(rng, i, string_arguments) for i in range(n)]
        content = fresh() if with_content else bare_content
        results = [
            {
                "role": "tool",
                "content": fresh(lines=False),
                "tool_call_id": c["id"],
                "name": c["function"]["name"],
            }
            for c in made
        ]
        return [{"role": "assistant", "content": content, "tool_calls": made}, *results]

    tools = None
    if kind == "exchange":
        messages = exchange()
    elif kind == "system prompt":
        messages = [msg("system"), *exchange(), *(exchange() if rng.random() < 0.5 else [])]
    elif kind == "several exchanges":
        messages = [m for _ in range(rng.randint(2, 4)) for m in exchange()]
    elif kind == "consecutive replies":
        messages = [*exchange(), msg("assistant")]
    elif kind == "consecutive user turns":
        messages = [msg("user"), *exchange()]
    elif kind == "system in the middle":
        messages = [*exchange(), msg("system"), *exchange()]
    elif kind == "reasoning":
        thought = fresh()
        reply = msg("assistant", reasoning_content=thought, thinking=thought)
        messages = [msg("user"), reply]
    elif kind in ("tool call", "tool call without content", "several tool calls"):
        n = 2 if kind == "several tool calls" else 1
        messages = [msg("user"), *calls(n, kind != "tool call without content"), msg("assistant")]
        tools = TOOLS
    else:
        raise ValueError(f"kind: unknown conversation type {kind!r}")
    return messages, tools
