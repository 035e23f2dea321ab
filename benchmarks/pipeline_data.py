"""Synthetic multi-turn chats for the pipelines benchmark, as `messages` lists.

`conversations(2000)` is the benchmark's dataset: each conversation has a system prompt and 2
to 8 user/assistant exchanges; 570 of them (28.5%) also call a tool: an assistant turn with
`tool_calls` (and no text, or a short preface), a `tool` turn with the result, and the
assistant's answer. About 5.0M tokens under the Qwen2.5 tokenizer (2,500 a conversation on
average, from about 400 to 5,400). Deterministic: the same `n` and `seed` give the same
conversations.

Every message has the same keys (`role`, `content`, `tool_calls`: None where there is none)
and every tool call the same argument names, so a `datasets.Dataset` stores them without
adding keys, and the rows render as they were written.

    >>> chats = conversations(2, seed=0)
    >>> [m["role"] for m in chats[1]][7:11]
    ['user', 'assistant', 'tool', 'assistant']
    >>> chats[1][8]["content"], chats[1][8]["tool_calls"][0]["function"]
    ('', {'name': 'lookup_order', 'arguments': {'query': 'All man', 'limit': 11}})
    >>> chats[1][9]["content"][:13]
    '{"results": ['
    >>> sum(has_tool_call(c) for c in conversations(2000))
    570
"""

from __future__ import annotations

import json
import random
from typing import Any

TOOL_SHARE = 0.285
TOOLS = ("search_docs", "get_weather", "lookup_order", "convert_units", "run_query")
WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has when who will "
    "more no if out so said what up its about into than them can only other new some could "
    "time these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "model data training token loss batch layer memory kernel tensor gradient sequence "
    "answer question result value function request server client config schema record"
).split()


def conversations(n: int = 2000, seed: int = 0) -> list[list[dict[str, Any]]]:
    """`n` conversations (lists of messages); about 570 in 2,000 call a tool."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    rng = random.Random(seed)
    with_tool = set(rng.sample(range(n), round(n * TOOL_SHARE)))
    return [_conversation(rng, i in with_tool) for i in range(n)]


def has_tool_call(messages: list[dict[str, Any]]) -> bool:
    """Whether a conversation has an assistant turn with `tool_calls`."""
    return any(m["tool_calls"] for m in messages)


def _conversation(rng: random.Random, tool: bool) -> list[dict[str, Any]]:
    messages = [_message("system", _text(rng, 20, 120))]
    exchanges = rng.randint(2, 8)
    call_at = rng.randrange(exchanges) if tool else -1
    for i in range(exchanges):
        messages.append(_message("user", _text(rng, 18, 180)))
        if i == call_at:
            messages += _tool_call(rng)
        messages.append(_message("assistant", _text(rng, 70, 565, paragraphs=True)))
    return messages


def _tool_call(rng: random.Random) -> list[dict[str, Any]]:
    name = rng.choice(TOOLS)
    arguments = {"query": _text(rng, 2, 8).rstrip("."), "limit": rng.randint(1, 20)}
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    preface = "" if rng.random() < 0.5 else _text(rng, 4, 12)
    results = [{"id": rng.randint(1, 99999), "text": _text(rng, 8, 40)} for _ in range(3)]
    return [
        _message("assistant", preface, tool_calls=[call]),
        _message("tool", json.dumps({"results": results})),
    ]


def _message(role: str, content: str, tool_calls: list | None = None) -> dict[str, Any]:
    return {"role": role, "content": content, "tool_calls": tool_calls}


def _text(rng: random.Random, low: int, high: int, paragraphs: bool = False) -> str:
    """Sentences of `low` to `high` words in all; with `paragraphs`, blank lines between some."""
    words = rng.choices(WORDS, k=rng.randint(low, high))
    out, sentence = [], []
    for word in words:
        sentence.append(word)
        if len(sentence) >= rng.randint(6, 18):
            out.append(_sentence(sentence))
            if paragraphs and rng.random() < 0.2:
                out.append("\n\n")
            sentence = []
    if sentence:
        out.append(_sentence(sentence))
    return " ".join(out).replace(" \n\n ", "\n\n").strip()


def _sentence(words: list[str]) -> str:
    return " ".join(words).capitalize() + "."
