"""A synthetic multi-turn chat task with short, checkable replies, for `learns_to_stop.py`.

Each conversation has a short system prompt, then three or four questions, each of one kind:

- ``add``: "What is 3 + 5?" -> "8" (one-digit numbers);
- ``compare``: "Is 7 greater than 4?" -> "Yes" or "No";
- ``lookup``: "What color is a lime?" -> "green" (a fixed table of ten items);
- ``tool``: "What is the price of fig?" -> a tool call naming the item (``tool_call`` reply),
  then a tool turn with a price drawn for this conversation, then that price (``tool_answer``
  reply): it can only be answered by reading the tool result.

Every assistant turn is a reply to check: the prompt is the conversation up to it (earlier
replies as written here) and the reply is its text.

Example::

    >>> import random
    >>> conversation = make_conversation(random.Random(0))
    >>> [message["role"] for message in conversation.messages][:3]
    ['system', 'user', 'assistant']
    >>> reply = conversation.replies[0]
    >>> conversation.messages[reply.index]["content"] == reply.text
    True
"""

from __future__ import annotations

import dataclasses
import random

COLORS = {
    "apple": "red",
    "pear": "green",
    "plum": "purple",
    "fig": "brown",
    "lime": "green",
    "kiwi": "brown",
    "date": "brown",
    "peach": "orange",
    "lemon": "yellow",
    "mango": "orange",
}
ITEMS = tuple(COLORS)
SYSTEM_PROMPT = "Be brief."
KINDS = ("add", "compare", "lookup", "tool")
REPLY_KINDS = ("add", "compare", "lookup", "tool_call", "tool_answer")
TOOL_RESULT_KEY = '"result"'  # in every tool turn, in no reply: its trace in a generation


@dataclasses.dataclass(frozen=True)
class Reply:
    """An assistant turn to check: `messages[index]`, whose content is `text`."""

    index: int
    kind: str
    text: str


@dataclasses.dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, str]]
    replies: list[Reply]


def tool_call_text(item: str) -> str:
    return f"<tool_call>price {item}</tool_call>"


def make_conversation(rng: random.Random) -> Conversation:
    """One conversation: the system prompt, then 3 or 4 questions."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    replies: list[Reply] = []

    def say(role: str, content: str, kind: str | None = None) -> None:
        if kind is not None:
            replies.append(Reply(len(messages), kind, content))
        messages.append({"role": role, "content": content})

    for _ in range(rng.choice((3, 4))):
        kind = rng.choice(KINDS)
        if kind == "add":
            a, b = rng.randrange(10), rng.randrange(10)
            say("user", f"What is {a} + {b}?")
            say("assistant", str(a + b), "add")
        elif kind == "compare":
            a, b = rng.sample(range(10), 2)
            say("user", f"Is {a} greater than {b}?")
            say("assistant", "Yes" if a > b else "No", "compare")
        elif kind == "lookup":
            item = rng.choice(ITEMS)
            say("user", f"What color is a {item}?")
            say("assistant", COLORS[item], "lookup")
        else:
            item = rng.choice(ITEMS)
            price = rng.randrange(10, 100)
            say("user", f"What is the price of {item}?")
            say("assistant", tool_call_text(item), "tool_call")
            say("tool", f"{{{TOOL_RESULT_KEY}: {price}}}")
            say("assistant", str(price), "tool_answer")
    return Conversation(messages, replies)


def make_conversations(n: int, seed: int) -> list[Conversation]:
    rng = random.Random(seed)
    return [make_conversation(rng) for _ in range(n)]
