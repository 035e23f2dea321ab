"""gpumask.DataCollatorForCompletionOnlyLM against the real trl 0.19.1 collator.

Random batches on which TRL is right must give identical outputs (every key, every dtype);
each documented difference is pinned by an exact-label test that also pins what TRL does.
"""

import random
import re
import warnings

import pytest
import torch
from conftest import TOKENIZERS
from transformers import AutoTokenizer
from trl import DataCollatorForCompletionOnlyLM as TrlCollator

from gpumask import DataCollatorForCompletionOnlyLM, MaskSpecError
from gpumask.collators import NoTrainedTokensWarning

IGNORE = -100
pytestmark = pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning")
WORDS = (
    "the cat sat on a mat hello world data token quick brown fox 42 yes no ok why "
    "because . , ! ? Hi there"
).split()


def load(name, pad_token=None):
    tok = AutoTokenizer.from_pretrained(f"{TOKENIZERS}/{name}")
    if pad_token is not None:
        tok.pad_token = pad_token
    return tok


# --- rendering random conversations -------------------------------------------------------

FORMATS = {
    # response text, instruction text, turn renderer, system renderer
    "chatml": (
        "<|im_start|>assistant\n",
        "<|im_start|>user\n",
        lambda role, text: f"<|im_start|>{role}\n{text}<|im_end|>\n",
        lambda text: f"<|im_start|>system\n{text}<|im_end|>\n",
    ),
    "hash": (
        "### Assistant:",
        "### Human:",
        lambda role, text: (
            {"user": "### Human:", "assistant": "### Assistant:"}[role] + f" {text}\n"
        ),
        lambda text: f"System: {text}\n",
    ),
}
# (tokenizer, format, pad token not in the text, system prompt always on, template ids context)
CONFIGS = [
    ("qwen2_5", "chatml", "<|endoftext|>", False),
    ("smollm2", "chatml", "<|endoftext|>", False),
    ("llama3_1", "hash", "<|end_of_text|>", False),
    # SentencePiece: "###" after "\n" is not "###" at the start of text; TRL's documented
    # workaround is to give the ids as they appear in context, so every template follows "\n".
    ("mistral7b_v01", "hash", "<unk>", True),
]


def content(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10)))


def friendly_roles(rng, mode):
    """Turn roles on which TRL is right: any order with a response template only, strictly
    alternating turns (starting with either role) with an instruction template."""
    n = rng.randint(1, 6)
    if mode == "response":
        roles = [rng.choice(("user", "assistant")) for _ in range(n)]
        return roles if "assistant" in roles else roles + ["assistant"]
    first = 0 if rng.random() < 0.8 else 1  # TRL drops rows with no instruction: keep one
    return [("user", "assistant")[(first + i) % 2] for i in range(max(n, 2))]


def render(rng, fmt, mode, system_always):
    _, _, turn, system = FORMATS[fmt]
    text = system(content(rng)) if system_always or rng.random() < 0.5 else ""
    return text + "".join(turn(role, content(rng)) for role in friendly_roles(rng, mode))


def trl_semantics(text, offsets, fmt, mode):
    """Which tokens TRL's rule trains, read off the characters: after the last response
    template (response only), or from each response template to the next instruction one."""
    response, instruction = FORMATS[fmt][:2]
    ends = [m.end() for m in re.finditer(re.escape(response), text)]
    starts = [m.start() for m in re.finditer(re.escape(instruction), text)]
    if mode == "response":
        spans = [(ends[-1], len(text))]
    else:
        spans = [(e, min([s for s in starts if s >= e], default=len(text))) for e in ends]
    return [any(a <= s and e <= b and e > s for a, b in spans) for s, e in offsets]


def make_collators(tok, fmt, mode, as_ids, ids_context, padding_free):
    response, instruction = FORMATS[fmt][:2]
    if as_ids:
        skip = len(tok.encode(ids_context, add_special_tokens=False)) if ids_context else 0

        def ids(t):
            return tok.encode(ids_context + t, add_special_tokens=False)[skip:]

        response, instruction = ids(response), ids(instruction)
    instruction = None if mode == "response" else instruction
    return (
        DataCollatorForCompletionOnlyLM(
            response, instruction, tokenizer=tok, padding_free=padding_free
        ),
        TrlCollator(response, instruction, tokenizer=tok, padding_free=padding_free),
    )


@pytest.mark.parametrize("mode", ["response", "instruction"])
@pytest.mark.parametrize(("name", "fmt", "pad", "system_always"), CONFIGS)
def test_same_batches_as_trl_where_trl_is_right(name, fmt, pad, system_always, mode):
    rng = random.Random(f"{name}-{mode}")
    tok = load(name, pad)
    # In context for the SentencePiece tokenizer ("\n" then the 2 tokens it encodes to).
    ids_context = "\n" if system_always else ""
    collators = {
        (as_ids, free): make_collators(tok, fmt, mode, as_ids, ids_context, free)
        for as_ids in (False, True)
        for free in (False, True)
        if as_ids or not system_always
    }
    conversations = []
    for _ in range(90):
        text = render(rng, fmt, mode, system_always)
        enc = tok(text, return_offsets_mapping=True)
        truth = trl_semantics(text, enc.pop("offset_mapping"), fmt, mode)
        conversations.append((dict(enc), truth))
    seen = set()
    for batch_index in range(70):
        as_ids, free = rng.choice(sorted(collators))
        ours, trl = collators[(as_ids, free)]
        tok.padding_side = rng.choice(("left", "right"))
        ours.pad_to_multiple_of = trl.pad_to_multiple_of = rng.choice((None, 8))
        picked = rng.sample(conversations, rng.randint(1, 6))
        examples = [dict(enc) for enc, _ in picked]
        if not free and rng.random() < 0.25:
            examples = [enc["input_ids"] for enc in examples]  # bare id lists
        elif rng.random() < 0.4:  # tensors, as from a dataset with format "torch"
            examples = [{k: torch.tensor(v) for k, v in enc.items()} for enc in examples]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = trl(examples)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NoTrainedTokensWarning)
            got = ours(examples)
        where = f"batch {batch_index} ({tok.padding_side} padding, padding_free={free})"
        assert set(expected) <= set(got), where
        if isinstance(examples[0], dict):
            assert list(got) == list(expected), where
        for key, value in expected.items():
            assert got[key].dtype == value.dtype, f"{where}: {key}"
            assert torch.equal(got[key], value), f"{where}: {key}"
        # TRL is right on these batches: the labels are those its rule means, row by row.
        seen.add((as_ids, free, tok.padding_side))
        for row, (enc, truth) in enumerate(picked):
            ids = enc["input_ids"]
            trained = [i for i, t in zip(ids, truth, strict=True) if t]
            if free:
                start = int(got["cu_seq_lens_q"][0, row])
                labels = got["labels"][0, start : start + len(ids)]
            else:
                labels = got["labels"][row]
            assert labels[labels != IGNORE].tolist() == trained, f"{where}, row {row}"
    assert seen == {(i, f, side) for i, f in collators for side in ("left", "right")}


# --- the documented differences, each with exact labels -----------------------------------


@pytest.fixture(scope="module")
def qwen():
    return load("qwen2_5")


def pieces(tok, *parts):
    """(ids, expected labels) from (text, trained) parts, each encoded on its own."""
    ids, labels = [], []
    for text, trained in parts:
        part = tok.encode(text, add_special_tokens=False)
        ids += part
        labels += part if trained else [IGNORE] * len(part)
    return ids, labels


USER, ASSISTANT, TOOL = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_start|>tool\n"
END = "<|im_end|>\n"


def both(tok, examples, response=ASSISTANT, instruction=USER, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trl = TrlCollator(
            response, instruction if isinstance(instruction, str) else None, tokenizer=tok, **kwargs
        )(examples)
        ours = DataCollatorForCompletionOnlyLM(response, instruction, tokenizer=tok, **kwargs)(
            examples
        )
    return ours, trl


def test_instruction_template_list_masks_tool_turns(qwen):
    ids, expected = pieces(
        qwen,
        (USER + "What is 6 x 7?" + END, False),
        (ASSISTANT, False),
        ("Let me check." + END, True),
        (TOOL + "42" + END, False),
        (ASSISTANT, False),
        ("It is 42." + END, True),
    )
    ours, _ = both(qwen, [ids], instruction=[USER, TOOL])
    assert ours["labels"][0].tolist() == expected
    # TRL takes one instruction template: with the user one, it trains the tool turn.
    _, trl = both(qwen, [ids])
    start = len(
        pieces(qwen, (USER + "What is 6 x 7?" + END + ASSISTANT + "Let me check." + END, False))[0]
    )
    tool_turn = qwen.encode(TOOL + "42" + END, add_special_tokens=False)
    assert trl["labels"][0, start : start + len(tool_turn)].tolist() == tool_turn


def test_consecutive_replies_train_both_contents_and_neither_header(qwen):
    ids, expected = pieces(
        qwen,
        (USER + "Hi" + END, False),
        (ASSISTANT, False),
        ("Hello." + END, True),
        (ASSISTANT, False),
        ("Anything else?" + END, True),
    )
    ours, trl = both(qwen, [ids])
    assert ours["labels"][0].tolist() == expected
    second_header = len(pieces(qwen, (USER + "Hi" + END + ASSISTANT + "Hello." + END, False))[0])
    trl_header = trl["labels"][0, second_header : second_header + 3].tolist()
    assert trl_header == qwen.encode(ASSISTANT, add_special_tokens=False)  # TRL trains it


@pytest.mark.parametrize("turns", ["QQA", "QAQQA"])
def test_doubled_instruction_keeps_the_reply_after_it(qwen, turns):
    parts = []
    for i, turn in enumerate(turns):
        if turn == "Q":
            parts.append((USER + f"question {i}" + END, False))
        else:
            parts += [(ASSISTANT, False), (f"answer {i}" + END, True)]
    ids, expected = pieces(qwen, *parts)
    ours, trl = both(qwen, [ids])
    assert ours["labels"][0].tolist() == expected
    last_answer = qwen.encode(f"answer {len(turns) - 1}" + END, add_special_tokens=False)
    assert ours["labels"][0, -len(last_answer) :].tolist() == last_answer
    assert (trl["labels"][0, -len(last_answer) :] == IGNORE).all()  # TRL masks the last reply


def test_reply_without_instruction_template_still_trains(qwen):
    ids, expected = pieces(
        qwen,
        ("<|im_start|>system\nBe brief." + END, False),
        (ASSISTANT, False),
        ("Hello." + END, True),
    )
    ours, trl = both(qwen, [ids])
    assert ours["labels"][0].tolist() == expected
    assert (trl["labels"] == IGNORE).all()  # TRL drops the row


def test_real_eos_equal_to_pad_token_stays_trained():
    tok = load("smollm2")  # pad_token == eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id
    long, expected = pieces(
        tok, (USER + "Hi" + END, False), (ASSISTANT, False), ("Hello there, friend." + END, True)
    )
    short, expected_short = pieces(
        tok, (USER + "Yo" + END, False), (ASSISTANT, False), ("Hey." + END, True)
    )
    ours, trl = both(tok, [long, short], instruction=None)
    pad = [IGNORE] * (len(long) - len(short))
    assert ours["labels"].tolist() == [expected, expected_short + pad]
    eos_at = len(long) - 2
    assert long[eos_at] == tok.eos_token_id
    assert trl["labels"][0, eos_at] == IGNORE  # TRL never trains the model to stop


def test_template_containing_the_pad_token_is_found():
    tok = load("smollm2")
    response = END + ASSISTANT  # holds "<|im_end|>", the pad token
    ids, expected = pieces(
        tok, ("<|im_start|>user\nHi", False), (response, False), ("Hello.", True)
    )
    ours, trl = both(tok, [ids], response=response, instruction=None)
    assert ours["labels"][0].tolist() == expected
    assert (trl["labels"] == IGNORE).all()


def test_str_template_is_matched_in_context():
    tok = load("mistral7b_v01")
    tok.pad_token = "<unk>"
    text = "You are helpful.\n### Human: Hi there\n### Assistant: Hello friend"
    ids = tok(text)["input_ids"]
    in_context = tok.encode("\n### Assistant:", add_special_tokens=False)[2:]
    assert in_context != tok.encode("### Assistant:", add_special_tokens=False)
    end = next(p for p in range(len(ids)) if ids[p - 3 : p] == in_context)
    ours, trl = both(tok, [{"input_ids": ids}], response="### Assistant:", instruction=None)
    assert ours["labels"][0].tolist() == [IGNORE] * end + ids[end:]
    assert (trl["labels"] == IGNORE).all()  # TRL: "Could not find response key"


def test_bare_id_lists_get_an_attention_mask(qwen):
    ids, expected = pieces(
        qwen, (USER + "Hi" + END, False), (ASSISTANT, False), ("Yes." + END, True)
    )
    qwen.padding_side = "left"
    ours, trl = both(qwen, [ids, ids[:-2]])
    assert "attention_mask" not in trl
    assert ours["attention_mask"].tolist() == [[1] * len(ids), [0, 0] + [1] * (len(ids) - 2)]
    assert torch.equal(ours["labels"], trl["labels"])
    qwen.padding_side = "right"


def test_padding_labels_are_ignore_index(qwen):
    ids, expected = pieces(
        qwen, (USER + "Hi" + END, False), (ASSISTANT, False), ("Yes." + END, True)
    )
    short = ids[:-1]
    ours, trl = both(qwen, [ids, short], instruction=None, ignore_index=-1)
    expected = [[-1 if e == IGNORE else e for e in expected]] * 2
    expected[1] = expected[1][:-1] + [-1]
    assert ours["labels"].tolist() == expected
    assert trl["labels"][1, -1] == IGNORE  # TRL leaves -100 on padding


# --- warnings, arguments, errors ---------------------------------------------------------


def test_warns_with_row_index_and_reason(qwen):
    good, _ = pieces(qwen, (USER + "Hi" + END + ASSISTANT + "Yes." + END, False))
    no_reply, _ = pieces(qwen, (USER + "Hi" + END, False))
    cut, _ = pieces(qwen, (USER + "Hi" + END + ASSISTANT, False))
    collate = DataCollatorForCompletionOnlyLM(ASSISTANT, tokenizer=qwen)
    with pytest.warns(NoTrainedTokensWarning) as record:
        collate([good, no_reply, cut])
    (message,) = [str(w.message) for w in record]
    assert message == (
        "DataCollatorForCompletionOnlyLM: 2 of 3 rows have no trained token and add nothing to "
        "the loss: row 1: response template '<|im_start|>assistant\\n' (ids [151644, 77091, "
        "198]) not found; row 2: nothing follows the last response template (truncated?)"
    )


def test_accepts_trl_call_styles(qwen):
    ids, expected = pieces(
        qwen, (USER + "Hi" + END, False), (ASSISTANT, False), ("Yes." + END, True)
    )
    positional = DataCollatorForCompletionOnlyLM(ASSISTANT, None, qwen, mlm=False)
    assert positional.tokenizer is qwen
    assert positional.response_token_ids == qwen.encode(ASSISTANT, add_special_tokens=False)
    assert positional([ids], return_tensors="pt")["labels"][0].tolist() == expected
    assert positional.torch_call([ids])["labels"][0].tolist() == expected
    with_ids = DataCollatorForCompletionOnlyLM(
        [151644, 77091, 198], [151644, 872, 198], tokenizer=qwen, mlm_probability=0.15
    )
    assert with_ids.instruction_token_ids == [151644, 872, 198]
    assert with_ids([ids])["labels"][0].tolist() == expected
    several = DataCollatorForCompletionOnlyLM(
        ASSISTANT, [USER, [151644, 14172, 198]], tokenizer=qwen
    )
    assert several.instruction_token_ids == [[151644, 872, 198], [151644, 14172, 198]]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mlm": True}, ValueError, "mlm: masked language modelling is not supported"),
        ({"whole_word_mask": True}, ValueError, "mlm: masked language modelling"),
        ({"return_tensors": "np"}, ValueError, "return_tensors: only 'pt'"),
        ({"colour": "red"}, TypeError, "unexpected argument 'colour'"),
        ({"pad_to_multiple_of": 0}, ValueError, "pad_to_multiple_of: expected a positive int"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index: expected an int"),
        ({"response_template": ""}, MaskSpecError, "empty marker"),
        ({"instruction_template": [[151644, 10**7]]}, MaskSpecError, "outside the vocabulary"),
    ],
)
def test_bad_arguments_raise_clearly(qwen, kwargs, error, message):
    kwargs = {"response_template": ASSISTANT, "tokenizer": qwen, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        DataCollatorForCompletionOnlyLM(**kwargs)


def test_missing_tokenizer_and_missing_pad_token_raise():
    with pytest.raises(TypeError, match="tokenizer: required"):
        DataCollatorForCompletionOnlyLM(ASSISTANT)
    tok = load("llama3_1")  # no pad token
    collate = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok)
    with pytest.warns(NoTrainedTokensWarning):  # no padding needed; no template either
        assert collate([[1, 2, 3], [4, 5, 6]])["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match="tokenizer: it has no pad token"):
        collate([[1, 2, 3], [4, 5]])
