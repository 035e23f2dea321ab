"""The template zoo (`zoo.py`): `from_tokenizer`'s outcome on each template, and its labels on
random conversations of every type the template renders, against the contents' characters.

The outcome is the SPEC's: a spec and no warning ("agree"); a spec and a `TemplateWarning`
naming the one conversation type it cannot tell apart ("partial"); a spec with no end of
turn and a warning saying so; or a `MaskSpecError`. A "partial" template's conversations hold
every type but the one its warning names.

The labels are checked as in `test_real_formats.py`: a token trains iff its characters
overlap an assistant *body* and no hole. A body runs from the message's own text (its
content; its reasoning block's opening text, ``<think>``, when one is rendered; its tool
call's opening text when no content is rendered beside the call), taking in the space or
other `reply_prefix` the template writes in front of a reply's content, through the end of
the end-of-turn text after it. With no end of turn, it runs through the whitespace before the
next header, whose first character is a hole (a token that merges a reply's last space with
the header is the header's). A reasoning block that is an assistant turn of its own
(harmony's analysis channel) is a body of its own, from its opening text. A tool result
inside a reply is a hole, with its wrapper; with ``train_thinking=False`` so is every
reasoning block, from its opening through its closing text. Reasoning is given both as
``reasoning_content`` and as ``thinking`` (templates read one or the other).
"""

import json
import random
import re
import warnings
from types import SimpleNamespace

import pytest
from test_real_formats import FUNCTIONS, TOOLS, WORDS, _text, assert_labels, labelled_batch
from zoo import ZOO, load_zoo

import gpumask
from gpumask import MaskSpec, mask_labels

CONVERSATIONS = 60
LABELLED = sorted(name for name, t in ZOO.items() if t.expected != "refused")
TRIMMED = SimpleNamespace(trims=True)  # reasoning texts: no whitespace at the edges


def _reply(rng: random.Random, t, types: set, **fields) -> dict:
    message = {"role": "assistant", "content": _text(rng, t), **fields}
    if "reasoning" in types and rng.random() < 0.5:
        # unique, so that a block the template drops is never found elsewhere
        reasoning = f"Plan {rng.randrange(10**6):06d}: " + _text(rng, TRIMMED)
        message |= {"reasoning_content": reasoning, "thinking": reasoning}
    return message


def _call(rng: random.Random, t, index: int) -> dict:
    arguments = {"city": rng.choice(WORDS)}
    if t.arguments == "string" or (t.arguments == "both" and rng.random() < 0.5):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": f"call{index:05d}",
        "type": "function",
        "function": {"name": rng.choice(FUNCTIONS), "arguments": arguments},
    }


def _conversation(rng: random.Random, t) -> tuple[list[dict], bool]:
    """Random messages of the types `t` renders, and whether they need the tool list."""
    types = set(t.types)
    calls_of = [kind for kind in ("tool call", "tool call without content") if kind in types]
    messages: list[dict] = []
    if "system prompt" in types and rng.random() < 0.5:
        messages.append({"role": "system", "content": _text(rng, t)})
    calls = 0
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": _text(rng, t)})
        if "consecutive user turns" in types and rng.random() < 0.2:
            messages.append({"role": "user", "content": _text(rng, t)})
        results = 0
        if calls_of and rng.random() < 0.5:
            results = rng.randint(1, t.max_calls) if "several tool calls" in types else 1
            call = _reply(
                rng, t, types, tool_calls=[_call(rng, t, calls + i) for i in range(results)]
            )
            if rng.choice(calls_of) == "tool call without content":
                call["content"] = None
            messages.append(call)
        elif t.tools == "results" and rng.random() < 0.3:
            messages.append(_reply(rng, t, types))
            results = rng.randint(1, 2)
        for i in range(results):
            result = {"role": "tool", "tool_call_id": f"call{calls + i:05d}"}
            messages.append(result | {"content": _text(rng, t)})
        calls += results if calls_of else 0
        if results and "reply after a tool result" not in types:
            continue
        messages.append(_reply(rng, t, types))
        if "consecutive replies" in types and rng.random() < 0.2:
            messages.append(_reply(rng, t, types))
    return messages, calls > 0


def _types_of(messages: list[dict]) -> set[str]:
    """The conversation types `messages` hold (to check that the generator covers them all)."""
    found = set()
    for previous, message in zip([{"role": None}, *messages], messages):
        roles = (previous["role"], message["role"])
        found |= {
            "system prompt": message["role"] == "system",
            "consecutive user turns": roles == ("user", "user"),
            "consecutive replies": roles == ("assistant", "assistant"),
            "reply after a tool result": roles == ("tool", "assistant"),
            "tool call": bool(message.get("tool_calls")) and message["content"] is not None,
            "tool call without content": bool(message.get("tool_calls"))
            and message["content"] is None,
            "several tool calls": len(message.get("tool_calls") or ()) > 1,
            "reasoning": "reasoning_content" in message,
        }.items()
    return {kind for kind, present in found if present}


def _turn_end(text: str, at: int, t) -> tuple[int, int | None]:
    """Where a reply whose text reaches `at` ends, and the first character of the header
    that ends it when there is no end of turn (None when it runs to the end of the text)."""
    if t.eots:
        ends = [(text.find(eot, at), eot) for eot in t.eots]
        start, eot = min((i, eot) for i, eot in ends if i >= 0)
        return start + len(eot), None
    starts = [i for i in (text.find(header, at) for header in t.headers) if i >= 0]
    return (min(starts), min(starts)) if starts else (len(text), None)


def _bodies(text: str, messages: list[dict], t, thinking: bool = True) -> tuple[list, list]:
    """Character spans that train, and holes in them (see the module docstring; not
    `thinking`: every reasoning block, from its opening text through its closing text, is a
    hole). Every other content must be found after the previous one, so that a template that
    drops or moves one fails here."""
    bodies, holes, at = [], [], 0

    def add(start: int, reaches: int) -> int:
        end, header = _turn_end(text, reaches, t)
        bodies.append((start, end))
        if header is not None:
            holes.append((header, header + 1))
        return end

    for message in messages:
        content = message["content"] or ""
        if message["role"] != "assistant":
            found = text.find(content, at)
            if found >= 0:
                if message["role"] == "tool" and t.inline_results:
                    opens, closes = t.inline_results
                    end = text.index(closes, found + len(content)) + len(closes)
                    holes.append((text.rindex(opens, at, found), end))
                at = found + len(content)
            elif message["role"] == "tool" and t.quotes_tool_results:
                quoted = json.dumps(content, ensure_ascii=False)
                at = text.index(quoted, at) + len(quoted)
            else:
                raise AssertionError(f"{t.name}: {message} is not in {text!r}")
            continue
        start = None
        reasoning = message.get("reasoning_content")
        found = text.find(reasoning, at) if reasoning else -1
        if found >= 0:
            opens, closes = t.think
            start = text.rindex(opens, at, found)
            at = found + len(reasoning)
            if not thinking:
                holes.append((start, text.index(closes, at) + len(closes)))
            if t.reasoning_turns:
                add(start, at)
                start = None
        found = text.find(content, at) if content else -1
        if message.get("tool_calls") and (found < 0 or not t.call_content):
            found = text.find(t.call_open, at)
            reaches = found + len(t.call_open)
        else:
            reaches = found + len(content)
            if t.reply_prefix and text.endswith(t.reply_prefix, at, found):
                found -= len(t.reply_prefix)
        assert found >= 0, (t.name, message, text)
        add(found if start is None else start, reaches)
        at = reaches
    return bodies, holes


_SPECS: dict[str, MaskSpec] = {}  # what the outcome test got, reused by the label tests


def _detected(name: str) -> MaskSpec:
    if name not in _SPECS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SPECS[name] = MaskSpec.from_tokenizer(load_zoo(name))
    return _SPECS[name]


def _check(name: str, spec: MaskSpec, thinking: bool = True) -> None:
    """Labels of `spec` on random conversations of the template's types, against their bodies
    (reasoning blocks masked when not `thinking`)."""
    t, tok = ZOO[name], load_zoo(name)
    rng = random.Random(f"gpumask zoo {name}")
    texts, all_bodies, types = [], [], set()
    for _ in range(CONVERSATIONS):
        messages, with_tools = _conversation(rng, t)
        text = tok.apply_chat_template(
            messages, tools=TOOLS if with_tools else None, tokenize=False
        )
        texts.append(text)
        all_bodies.append(_bodies(text, messages, t, thinking))
        types |= _types_of(messages)
    assert types == set(t.types), "the generator must cover every type the template renders"
    encoded, input_ids, attention_mask, expected = labelled_batch(tok, texts, all_bodies)
    labels = mask_labels(input_ids, spec, attention_mask=attention_mask)
    if not thinking:  # a token shared by a reasoning block's close and the reply: either
        for row, (offsets, (_, holes)) in enumerate(zip(encoded["offset_mapping"], all_bodies)):
            for at, (s, e) in enumerate(offsets):
                if any(s < hi < e for _, hi in holes):
                    expected[row, at] = labels[row, at]
    assert_labels(name, spec, labels, expected, encoded, texts)
    assert int((expected != -100).sum()) > CONVERSATIONS  # the conversations do train


def test_the_zoo_covers_every_failure_class_of_issue_10():
    assert len(ZOO) >= 40
    assert sorted({c for t in ZOO.values() for c in t.classes}) == list(range(1, 13))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_outcome_is_the_one_the_spec_asks_for(name):
    t, tok = ZOO[name], load_zoo(name)
    if t.expected == "refused":
        with pytest.raises(gpumask.MaskSpecError, match=t.refusal):
            MaskSpec.from_tokenizer(tok)
        return
    if t.expected == "agree":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spec = MaskSpec.from_tokenizer(tok)
        assert [str(w.message) for w in caught if w.category.__name__ == "TemplateWarning"] == []
    else:
        match = "no end of turn" if t.expected == "no end of turn" else re.escape(t.excluded)
        with pytest.warns(gpumask.TemplateWarning, match=match):
            spec = MaskSpec.from_tokenizer(tok)
    assert bool(spec.end_of_turn) == (t.expected != "no end of turn")
    _SPECS[name] = spec


@pytest.mark.parametrize("name", LABELLED)
def test_random_conversations_train_exactly_the_assistant_bodies(name):
    _check(name, _detected(name))


@pytest.mark.parametrize("name", [name for name in LABELLED if ZOO[name].think])
def test_train_thinking_false_masks_every_reasoning_block(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spec = MaskSpec.from_tokenizer(load_zoo(name), train_thinking=False)
    _check(name, spec, thinking=False)


def test_hand_written_str_markers_match_where_the_reply_merges_with_the_header():
    # "<|im_start|>assistant\n" before a reply that starts with "\n" tokenizes as
    # "...assistant" + "\n\n": the str marker must be encoded with right contexts too
    tok = load_zoo("chatml_qwen2_5_tools")
    spec = MaskSpec(
        roles={
            "system": "<|im_start|>system\n",
            "user": "<|im_start|>user\n",
            "assistant": "<|im_start|>assistant\n",
        },
        end_of_turn="<|im_end|>",
        tokenizer=tok,
    )
    _check("chatml_qwen2_5_tools", spec)


# Specs written by hand (markers as token ids, alternatives where a marker's last token merges
# with the text after it): the bodies the harness expects are reachable, for templates that
# exercise each of its rules (no end of turn, a partial template, tool results inside a reply,
# a reply with no header after tool results, reasoning turns of their own, a text end of turn).
HAND_WRITTEN = {
    "falcon": (
        {"system": ["System:"], "user": ["User:"], "assistant": ["Falcon:"]},
        [],
        [],
    ),
    "llava": ({"user": ["USER:", " USER:"], "assistant": ["ASSISTANT:", " ASSISTANT:"]}, [], []),
    "alpaca": (
        {
            "user": ["### Instruction:\n", "### Instruction"],
            "assistant": ["### Response:\n", "### Response"],
        },
        [],
        [],
    ),
    "glm4_5_tools": (
        {
            "system": ["<|system|>\n", "<|system|>"],
            "user": ["<|user|>\n", "<|user|>"],
            "assistant": ["<|assistant|>\n<think></think>\n", "<|assistant|>\n"],
            "tool": ["<|observation|>"],
        },
        [],
        [],
    ),
    "phi3_mini": (
        {"user": ["<|user|>\n", "<|user|>"], "assistant": ["<|assistant|>\n", "<|assistant|>"]},
        ["<|end|>"],
        [],
    ),
    "gemma4_tools": (
        {"system": ["<|turn>system\n"], "user": ["<|turn>user\n"], "assistant": ["<|turn>model\n"]},
        ["<turn|>"],
        [(["<|tool_response>"], ["<tool_response|>"])],
    ),
    "deepseek_v3_tools": (
        {
            "user": ["<｜User｜>"],
            "assistant": ["<｜Assistant｜>", "<｜tool▁outputs▁end｜>"],
            "tool": ["<｜tool▁outputs▁begin｜>"],
        },
        ["<｜end▁of▁sentence｜>"],
        [],
    ),
    "llama2_inst_sys": ({"user": ["[INST]"], "assistant": ["[/INST]"]}, ["</s>"], []),
    "command_a_tools": (
        {
            "system": ["<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"],
            "user": ["<|START_OF_TURN_TOKEN|><|USER_TOKEN|>"],
            "assistant": [
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>",
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_THINKING|>",
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
            ],
        },
        ["<|END_OF_TURN_TOKEN|>"],
        [],
    ),
    "gpt_oss_harmony": (
        {
            "system": ["<|start|>system<|message|>"],
            "developer": ["<|start|>developer<|message|>"],
            "user": ["<|start|>user<|message|>"],
            "assistant": ["<|start|>assistant<|channel|>final<|message|>", "<|start|>assistant"],
        },
        ["<|end|>", "<|return|>"],
        [],
    ),
    "dolly": (
        {
            "user": ["### Instruction:\n", "### Instruction"],
            "assistant": ["### Response:\n", "### Response"],
        },
        ["### End"],
        [],
    ),
    "olmo2": (
        {
            "system": ["<|system|>\n", "<|system|"],
            "user": ["<|user|>\n", "<|user|"],
            "assistant": ["<|assistant|>\n", "<|assistant|"],
            "tool": ["<|tool|>\n", "<|tool|"],
        },
        ["<|endoftext|>"],
        [],
    ),
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_the_expected_bodies_are_what_a_hand_written_spec_trains(name):
    tok = load_zoo(name)
    roles, end_of_turn, spans = HAND_WRITTEN[name]

    def ids(texts: list[str]) -> list[list[int]]:
        return [tok.encode(text, add_special_tokens=False) for text in texts]

    spec = MaskSpec(
        roles={role: ids(alternatives) for role, alternatives in roles.items()},
        end_of_turn=ids(end_of_turn) or None,
        masked_spans=[(ids(opens), ids(closes)) for opens, closes in spans],
    )
    _check(name, spec)
