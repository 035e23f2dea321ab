"""Every chat family, hundreds of random conversations: labels against the contents' characters.

Each conversation is rendered with the family's chat template, tokenized with character
offsets, and masked with the spec that `MaskSpec.from_tokenizer` detected. The expected labels
come from the rendered text alone, not from the spec: an assistant message's *body* runs from
its content (for a tool call without content, from the call's opening text; with Mistral
v0.3's space in front of every reply) through the end of the end-of-turn text after it.

A token trains iff its characters overlap a body, so a token that straddles a content
boundary trains: one that merges a header's last character with the content's first (``]{``
after Mistral's ``[/INST]``), or the content's last character with the end of turn (``.<`` in
Gemma's ``text.<end_of_turn>`` on a byte-level vocabulary). Everything else (headers, system,
user and tool contents, text between turns, padding) is masked; a tool result inside a reply
is masked with its wrapper, and so is a token that it shares with the reply.
"""

import json
import random

import pytest
import torch
from families import FAMILIES, load_family

from gpumask import MaskSpec, mask_labels

CONVERSATIONS = 300
WORDS = (
    "apple river Paris blue quantum seven 42 3.14 cat's (maybe) über naïve 東京 ok, yes! "
    "well: stop. why? [x] <b> a-b x_y {k} 'q' \"w\" #5 @me 100% --flag $9 emoji🙂 tab\there"
).split(" ")
FUNCTIONS = ("get_weather", "search_flights", "convert")


def _text(rng: random.Random, family) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
    for i in range(1, len(words)):
        if rng.random() < 0.08:
            words[i] = "\n" + words[i]
    text = " ".join(words)
    if rng.random() < 0.5:
        text += rng.choice(".?!:)")
    if not family.trims and rng.random() < 0.1:  # whitespace at the edges
        text = rng.choice(["\n", " ", "\n\n"]) + text + rng.choice(["", "\n", " "])
    return text


def _call(rng: random.Random, index: int) -> dict:
    return {
        "id": f"call{index:05d}",
        "type": "function",
        "function": {"name": rng.choice(FUNCTIONS), "arguments": {"city": rng.choice(WORDS)}},
    }


def _conversation(rng: random.Random, family) -> tuple[list[dict], bool]:
    """Random messages the family's template accepts, and whether they need the tool list."""
    messages: list[dict] = []
    if family.system and rng.random() < 0.5:
        messages.append({"role": "system", "content": _text(rng, family)})
    calls = 0
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": _text(rng, family)})
        if not family.alternating and rng.random() < 0.15:
            messages.append({"role": "user", "content": _text(rng, family)})
        if family.tools == "calls" and rng.random() < 0.5:
            n = rng.randint(1, family.max_calls)
            content = _text(rng, family) if rng.random() < 0.5 else ""
            message = {
                "role": "assistant",
                "content": content,
                "tool_calls": [_call(rng, calls + i) for i in range(n)],
            }
            messages.append(message)
            for i in range(n):
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": f"call{calls + i:05d}",
                        "content": _text(rng, family),
                    }
                )
            calls += n
        messages.append({"role": "assistant", "content": _text(rng, family)})
        if family.tools == "results" and rng.random() < 0.3:
            for _ in range(rng.randint(1, 2)):
                messages.append({"role": "tool", "content": _text(rng, family)})
            messages.append({"role": "assistant", "content": _text(rng, family)})
        if not family.alternating and rng.random() < 0.2:
            messages.append({"role": "assistant", "content": _text(rng, family)})
    return messages, calls > 0


def _bodies(text: str, messages: list[dict], family) -> tuple[list, list]:
    """Character spans that train (each assistant message from its content or its call
    through the end of the end-of-turn text after it), and holes in them (tool results
    inside a reply, with their wrapper). Every other content must be found after the
    previous one, so that a template that drops or moves one fails here."""
    bodies, holes, at = [], [], 0
    for message in messages:
        content = message["content"]
        found = text.find(content, at) if content else -1
        if message["role"] == "assistant":
            if found < 0 or (message.get("tool_calls") and not family.call_content):
                found = text.find(family.call_open, at)
            elif text.endswith(family.reply_prefix, at, found):
                found -= len(family.reply_prefix)
            assert found >= 0, (family.name, message, text)
            end = text.index(family.eot, found) + len(family.eot)
            bodies.append((found, end))
            at = found + (len(content) if text.startswith(content, found) else 0)
        elif found >= 0:
            if message["role"] == "tool" and family.inline_results:
                opens, closes = family.inline_results
                end = text.index(closes, found + len(content)) + len(closes)
                holes.append((text.rindex(opens, at, found), end))
            at = found + len(content)
        elif message["role"] == "tool" and family.quotes_tool_results:
            at = text.index(json.dumps(content, ensure_ascii=False), at)
        else:
            raise AssertionError(f"{family.name}: {message} is not in {text!r}")
    return bodies, holes


def _expected(offsets: list[tuple[int, int]], bodies: list, holes: list) -> list[bool]:
    def overlaps(s, e, spans):
        return any(s < hi and (e > lo or (s == e and s >= lo)) for lo, hi in spans)

    return [overlaps(s, e, bodies) and not overlaps(s, e, holes) for s, e in offsets]


def labelled_batch(tok, texts: list[str], all_bodies: list) -> tuple:
    """(encoding, input_ids, attention_mask, expected labels) of rendered `texts`, padded, with
    the labels their (bodies, holes) call for."""
    encoded = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    length = max(len(ids) for ids in encoded["input_ids"])
    input_ids = torch.zeros(len(texts), length, dtype=torch.int64)
    attention_mask = torch.zeros(len(texts), length, dtype=torch.int64)
    expected = torch.full((len(texts), length), -100, dtype=torch.int64)
    for row, (ids, offsets, (bodies, holes)) in enumerate(
        zip(encoded["input_ids"], encoded["offset_mapping"], all_bodies)
    ):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        trained = torch.tensor(_expected(offsets, bodies, holes), dtype=torch.bool)
        expected[row, : len(ids)] = torch.where(trained, torch.tensor(ids), -100)
    return encoded, input_ids, attention_mask, expected


def assert_labels(name: str, spec, labels, expected, encoded, texts: list[str]) -> None:
    """Fail with the first wrong label in its context, and the spec."""
    wrong = (labels != expected).nonzero().tolist()
    if wrong:
        row, t = wrong[0]
        s, e = encoded["offset_mapping"][row][t]
        pytest.fail(
            f"{name}: {len(wrong)} wrong labels in {len({r for r, _ in wrong})} rows; first: "
            f"row {row}, token {t} {texts[row][s:e]!r} trains={labels[row, t] != -100} "
            f"expected={expected[row, t] != -100}, in context "
            f"{texts[row][max(0, s - 60) : s]!r} | {texts[row][s : e + 60]!r}\n{spec!r}"
        )


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_random_conversations_train_exactly_the_assistant_bodies(name):
    family = FAMILIES[name]
    tok = load_family(name)
    spec = MaskSpec.from_tokenizer(tok)
    rng = random.Random(f"gpumask {name}")
    texts, all_bodies = [], []
    for _ in range(CONVERSATIONS):
        messages, with_tools = _conversation(rng, family)
        text = tok.apply_chat_template(
            messages, tools=TOOLS if with_tools else None, tokenize=False
        )
        texts.append(text)
        all_bodies.append(_bodies(text, messages, family))
    encoded, input_ids, attention_mask, expected = labelled_batch(tok, texts, all_bodies)
    labels = mask_labels(input_ids, spec, attention_mask=attention_mask)
    assert_labels(name, spec, labels, expected, encoded, texts)
    assert int((expected != -100).sum()) > CONVERSATIONS  # the conversations do train


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name.replace('_', ' ')}.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    for name in FUNCTIONS
]
