"""Does completion-only masking fix the model? A small training run, four collators, one task.

A tiny Llama-style causal LM with random weights (no hub) learns the synthetic chat task of
:mod:`benchmarks.chat_task` (sums, comparisons, a lookup in a fixed table, a tool call whose
result the next reply must use), rendered with the bundled SmolLM2 tokenizer and its
chat template. Four arms see the same conversations in the same order, from the same initial
weights, for the same number of steps; only the collator changes:

- ``every_token``: transformers' ``DataCollatorForLanguageModeling(mlm=False)``: loss on every
  token. Its tokenizer pads with ``<|endoftext|>``, so that "every token" includes the end of
  turn (with the bundled pad, ``<|im_end|>``, it would drop every end of turn).
- ``trl``: trl 0.19.1's ``DataCollatorForCompletionOnlyLM`` as its docs show it for
  conversations (a response template, an instruction template, ``mlm=False``), with the
  tokenizer as bundled: its pad token is its end-of-turn token, ``<|im_end|>``.
- ``gpumask``: ``gpumask.CompletionCollator(tok, MaskSpec.from_tokenizer(tok))``, same tokenizer.
- ``gpumask_step``: ``CompletionCollator(..., mask_on="step")`` and ``gpumask.attach``: the
  model makes its own labels in the forward call.

Then greedy generation on the replies of held-out conversations (each prompt is the
conversation up to the reply, ending with the assistant header) measures: answer accuracy,
the share of replies that end with ``<|im_end|>`` right after the answer, and the share that
go on to write a role header (``<|im_start|>``) or a tool result.

The model's embedding has one row per token id that occurs in the data (63 here, not
SmolLM2's 49,152): collators and the gpumask hook (attached to the :class:`CompactLM`) see the
tokenizer's real ids, and :class:`CompactLM` maps them in and out around the model. That keeps
a training step near a tenth of a CPU second and changes nothing in what any collator trains.

    python benchmarks/learns_to_stop.py            # all arms: results/learns_to_stop.{json,md,png}
    python benchmarks/learns_to_stop.py --smoke    # one arm, a few steps, a tiny model (CI)
    python benchmarks/learns_to_stop.py --arms every_token --steps 1200 --out /tmp/longer
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
)

import gpumask  # noqa: E402
from benchmarks.chat_task import (  # noqa: E402
    REPLY_KINDS,
    TOOL_RESULT_KEY,
    Conversation,
    make_conversations,
)

TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "smollm2"
RESULTS = ROOT / "benchmarks" / "results"
END_OF_TURN = "<|im_end|>"
HEADER_START = "<|im_start|>"
ANSWER_END = re.compile(r"<\|im_end\|>|<\|im_start\|>|\n")
ROLE_HEADER = re.compile(r"<\|im_start\|>|(system|user|assistant|tool)\n")
DISTINCT_PAD = "<|endoftext|>"
RESPONSE_TEMPLATE = "<|im_start|>assistant\n"
INSTRUCTION_TEMPLATE = "<|im_start|>user\n"
ARMS = ("every_token", "trl", "gpumask", "gpumask_step")
ARM_LABELS = {
    "every_token": "every token (DataCollatorForLanguageModeling)",
    "trl": "trl 0.19.1 DataCollatorForCompletionOnlyLM, pad = <|im_end|>",
    "gpumask": "gpumask CompletionCollator",
    "gpumask_step": 'gpumask mask_on="step" + attach',
}
METRICS = (
    "accuracy",
    "begins_right",
    "stops",
    "runs_on",
    "writes_question",
    "no_end_of_turn",
    "exact",
)
METRIC_LABELS = {
    "accuracy": "answer correct",
    "begins_right": "begins with the right answer",
    "stops": "ends with <|im_end|> right after the answer",
    "runs_on": "writes a role header or a tool result",
    "writes_question": "writes a question mark (user-turn text)",
    "no_end_of_turn": "no <|im_end|> within the token limit",
    "exact": "exact reply (correct answer, then <|im_end|>)",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; the same for every arm."""

    train_conversations: int = 3000
    eval_conversations: int = 60
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    max_new_tokens: int = 40
    seed: int = 0


SMOKE = Config(
    train_conversations=32,
    eval_conversations=3,
    steps=3,
    batch_size=8,
    hidden_size=32,
    layers=1,
    heads=2,
    max_new_tokens=8,
)


# --- data ---------------------------------------------------------------------------------


def load_tokenizer(pad_token: str | None = None):
    """The bundled SmolLM2 tokenizer (pad token `<|im_end|>` as shipped, unless given)."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    if pad_token is not None:
        tok.pad_token = pad_token
    return tok


def encode(tok, messages: Sequence[dict[str, str]], generation_prompt: bool = False) -> list[int]:
    ids = tok.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )["input_ids"]
    return list(ids)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A held-out reply to generate: the conversation up to it, and what it should say."""

    conversation: int
    kind: str
    ids: list[int]
    reply: str


def eval_prompts(tok, conversations: Sequence[Conversation]) -> list[Prompt]:
    return [
        Prompt(n, reply.kind, encode(tok, c.messages[: reply.index], True), reply.text)
        for n, c in enumerate(conversations)
        for reply in c.replies
    ]


def batch_order(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The example indices of every step, the same for every arm: shuffled epochs."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n_examples))
        rng.shuffle(epoch)
        order += epoch
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


# --- arms ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Arm:
    """A collator, and the gpumask spec to attach to the model when it masks in the step."""

    name: str
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    attach_spec: gpumask.MaskSpec | None = None


def make_arm(name: str) -> Arm:
    if name == "every_token":
        tok = load_tokenizer(pad_token=DISTINCT_PAD)
        return Arm(name, DataCollatorForLanguageModeling(tok, mlm=False))
    tok = load_tokenizer()
    if name == "trl":
        from trl import DataCollatorForCompletionOnlyLM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            collate = DataCollatorForCompletionOnlyLM(
                response_template=RESPONSE_TEMPLATE,
                instruction_template=INSTRUCTION_TEMPLATE,
                tokenizer=tok,
                mlm=False,
            )
        return Arm(name, collate)
    spec = gpumask.MaskSpec.from_tokenizer(tok)
    if name == "gpumask":
        return Arm(name, gpumask.CompletionCollator(tok, spec))
    if name == "gpumask_step":
        return Arm(name, gpumask.CompletionCollator(tok, spec, mask_on="step"), spec)
    raise ValueError(f"arm: expected one of {ARMS}, got {name!r}")


# --- the model ----------------------------------------------------------------------------


class CompactLM(torch.nn.Module):
    """A causal LM over `vocab` (the token ids the data uses), called with the real ids.

    `forward(input_ids, attention_mask, labels)` maps ids and labels (-100 stays) to rows of
    the small embedding; `generate` maps the prompt in and the tokens out.

        >>> model = CompactLM([0, 1, 2, 520], Config(hidden_size=16, layers=1, heads=2))
        >>> model(input_ids=torch.tensor([[1, 520, 2]]), labels=torch.tensor([[-100, 520, 2]])
        ...       ).loss.shape
        torch.Size([])
    """

    def __init__(self, vocab: Sequence[int], config: Config) -> None:
        super().__init__()
        vocab = sorted(set(vocab))
        table = torch.full((max(vocab) + 1,), -1, dtype=torch.long)
        table[torch.tensor(vocab)] = torch.arange(len(vocab))
        self.register_buffer("to_row", table, persistent=False)
        self.register_buffer("to_id", torch.tensor(vocab), persistent=False)
        self.lm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(vocab),
                hidden_size=config.hidden_size,
                intermediate_size=4 * config.hidden_size,
                num_hidden_layers=config.layers,
                num_attention_heads=config.heads,
                num_key_value_heads=config.heads,
                max_position_embeddings=1024,
                tie_word_embeddings=True,
            )
        )

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.to_row[ids]

    def label_rows(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels as rows; negative labels (ignored) stay as they are."""
        return torch.where(labels < 0, labels, self.to_row[labels.clamp(min=0)])

    def forward(self, input_ids, attention_mask=None, labels=None):
        if labels is not None:
            labels = self.label_rows(labels)
        return self.lm(
            input_ids=self.to_row[input_ids], attention_mask=attention_mask, labels=labels
        )

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], eos_id: int, max_new_tokens: int
    ) -> list[list[int]]:
        """Greedy continuations of `prompts` (left-padded in one batch), up to `eos_id`."""
        length = max(len(p) for p in prompts)
        eos_row = int(self.to_row[eos_id])
        ids = torch.full((len(prompts), length), eos_row, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, length - len(prompt) :] = self.rows(torch.tensor(prompt))
            mask[i, length - len(prompt) :] = 1
        out = self.lm.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_row,
            pad_token_id=eos_row,
        )[:, length:]
        continuations = []
        for row in self.to_id[out].tolist():
            end = row.index(eos_id) + 1 if eos_id in row else len(row)
            continuations.append(row[:end])
        return continuations


# --- training -----------------------------------------------------------------------------


def learning_rate(step: int, config: Config) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train(
    arm: Arm,
    model: CompactLM,
    examples: Sequence[dict[str, list[int]]],
    batches: Sequence[Sequence[int]],
    config: Config,
) -> dict[str, list[float]]:
    """Train `model` in place; per-step loss and trained-token counts."""
    hook = gpumask.attach(model, arm.attach_spec, stats=True) if arm.attach_spec else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    losses, trained, real = [], [], []
    model.train()
    for step, indices in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        batch = arm.collate([examples[i] for i in indices])
        loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch.get("labels"),
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))
        if hook is not None:
            trained.append(int(hook.last_stats["trained"].sum()))
        else:
            trained.append(int((batch["labels"] != -100).sum()))
        real.append(int(batch["attention_mask"].sum()))
    if hook is not None:
        gpumask.detach(model)
    model.eval()
    return {"loss": losses, "trained_tokens": trained, "real_tokens": real}


def trained_text(arm: Arm, tok, example: dict[str, list[int]]) -> str:
    """The tokens `arm` trains in `example`, decoded (in the step arm: what the hook makes)."""
    batch = arm.collate([example])
    labels = batch.get("labels")
    if labels is None:
        labels = gpumask.mask_labels(
            batch["input_ids"], arm.attach_spec, attention_mask=batch["attention_mask"]
        )
    return tok.decode(labels[0][labels[0] != -100])


# --- evaluation ---------------------------------------------------------------------------


def score(generated: str, reply: str) -> dict[str, bool]:
    """What a generated reply does (its text, special tokens kept) against the right `reply`.

    The answer is the text before the first end of turn, header or line break; `accuracy`:
    it is `reply` (spaces aside); `begins_right`: the text starts with `reply` (lenient: also
    "87" for "8"); `stops`: the end of turn comes right after the answer; `runs_on`: a role
    header (`<|im_start|>`, or a role name ending a line) or a tool result is written;
    `writes_question`: a "?", which only user turns have.

    >>> score("8<|im_end|>", "8")["stops"], score("8\\n<|im_start|>user\\n", "8")["runs_on"]
    (True, True)
    """
    answer = ANSWER_END.split(generated)[0]
    return {
        "accuracy": answer.strip() == reply,
        "begins_right": generated.startswith(reply),
        "stops": generated == answer + END_OF_TURN,
        "runs_on": ROLE_HEADER.search(generated) is not None or TOOL_RESULT_KEY in generated,
        "writes_question": "?" in generated,
        "no_end_of_turn": not generated.endswith(END_OF_TURN),
        "exact": generated == reply + END_OF_TURN,
    }


def evaluate(
    model: CompactLM, tok, prompts: Sequence[Prompt], config: Config, batch_size: int = 64
) -> list[dict[str, Any]]:
    """Greedy generations for every prompt, decoded and scored."""
    eos_id = tok.convert_tokens_to_ids(END_OF_TURN)
    records = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        outputs = model.generate([p.ids for p in chunk], eos_id, config.max_new_tokens)
        for prompt, output in zip(chunk, outputs):
            text = tok.decode(output, skip_special_tokens=False)
            records.append(
                {
                    "conversation": prompt.conversation,
                    "kind": prompt.kind,
                    "reply": prompt.reply,
                    "generated": text,
                    **score(text, prompt.reply),
                }
            )
    return records


@torch.no_grad()
def held_out_loss(model: CompactLM, batch: dict[str, torch.Tensor], eos_id: int) -> dict:
    """Teacher-forced cross-entropy on the held-out conversations, over gpumask's labels
    (every reply and its end of turn), and over their end-of-turn tokens alone."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), model.label_rows(targets), reduction="none"
    )
    trained = targets != -100
    return {
        "replies": round(losses[trained].mean().item(), 4),
        "end_of_turn": round(losses[targets == eos_id].mean().item(), 4),
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of replies with each metric, overall and per reply kind."""

    def shares(rows):
        return {"n": len(rows)} | {
            m: round(sum(r[m] for r in rows) / len(rows), 4) for m in METRICS
        }

    kinds = [k for k in REPLY_KINDS if any(r["kind"] == k for r in records)]
    return {
        "all": shares(records),
        "by_kind": {k: shares([r for r in records if r["kind"] == k]) for k in kinds},
    }


# --- a run --------------------------------------------------------------------------------


def run_arm(name: str, data: dict[str, Any], config: Config) -> dict[str, Any]:
    """Train one arm from the shared initial weights and evaluate it."""
    arm = make_arm(name)
    torch.manual_seed(config.seed)
    model = CompactLM(data["vocab"], config)
    start = time.perf_counter()
    history = train(arm, model, data["examples"], data["batches"], config)
    trained_s = time.perf_counter() - start
    records = evaluate(model, data["tokenizer"], data["prompts"], config)
    eos_id = data["tokenizer"].convert_tokens_to_ids(END_OF_TURN)
    return {
        "arm": name,
        "label": ARM_LABELS[name],
        "train_seconds": round(trained_s, 1),
        "eval_seconds": round(time.perf_counter() - start - trained_s, 1),
        "summary": summarize(records),
        "held_out_loss": held_out_loss(model, data["held_out_batch"], eos_id),
        "trained_text_of_example": trained_text(arm, data["tokenizer"], data["example"]),
        **history,
        "generations": records,
    }


def prepare(config: Config) -> dict[str, Any]:
    """Conversations, token ids, the batch order and the model's vocabulary, shared by arms."""
    tok = load_tokenizer()
    train_set = make_conversations(config.train_conversations, config.seed)
    held_out = make_conversations(config.eval_conversations, config.seed + 1)
    examples = [{"input_ids": encode(tok, c.messages)} for c in train_set]
    held_out_ids = [{"input_ids": encode(tok, c.messages)} for c in held_out]
    special = tok.convert_tokens_to_ids([DISTINCT_PAD, HEADER_START, END_OF_TURN])
    vocab = {i for e in examples + held_out_ids for i in e["input_ids"]} | set(special)
    spec = gpumask.MaskSpec.from_tokenizer(tok)
    with_tool = next((i for i, c in enumerate(train_set) if "tool_call" in kinds(c)), 0)
    return {
        "tokenizer": tok,
        "examples": examples,
        "example": examples[with_tool],
        "prompts": eval_prompts(tok, held_out),
        "held_out_batch": gpumask.CompletionCollator(tok, spec)(held_out_ids),
        "vocab": sorted(vocab),
        "batches": batch_order(len(examples), config.steps, config.batch_size, config.seed),
    }


def kinds(conversation: Conversation) -> list[str]:
    return [reply.kind for reply in conversation.replies]


# --- report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import transformers
    import trl

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def percent(share: float) -> str:
    return f"{100 * share:.0f}%"


def cell(text: str) -> str:
    """`text` in a markdown table cell (a `|` would end the cell)."""
    return text.replace("|", "\\|")


def example_prompt(results: dict[str, Any]) -> int:
    """The generation shown per arm: the first held-out tool call (the first reply if none)."""
    generations = results["arms"][0]["generations"]
    return next((i for i, g in enumerate(generations) if g["kind"] == "tool_call"), 0)


def markdown(results: dict[str, Any]) -> str:
    """The tables and one generation per arm, as the README quotes them."""
    arms = results["arms"]
    lines = [
        "| arm | "
        + " | ".join(cell(METRIC_LABELS[m]) for m in METRICS)
        + " | trained tokens | held-out loss: replies | held-out loss: end of turn |",
        "|:---|" + "---:|" * (len(METRICS) + 3),
    ]
    for arm in arms:
        shares = arm["summary"]["all"]
        trained = sum(arm["trained_tokens"]) / sum(arm["real_tokens"])
        lines.append(
            f"| {cell(arm['label'])} | "
            + " | ".join(percent(shares[m]) for m in METRICS)
            + f" | {percent(trained)} | {arm['held_out_loss']['replies']:.3f}"
            + f" | {arm['held_out_loss']['end_of_turn']:.3f} |"
        )
    kinds_seen = list(arms[0]["summary"]["by_kind"])
    counts = ", ".join(f"{k} {arms[0]['summary']['by_kind'][k]['n']}" for k in kinds_seen)
    lines += ["", f"Answer accuracy by reply kind ({counts} replies):", ""]
    lines += ["| arm | " + " | ".join(kinds_seen) + " |", "|:---|" + "---:|" * len(kinds_seen)]
    for arm in arms:
        by_kind = arm["summary"]["by_kind"]
        lines.append(
            f"| {cell(arm['label'])} | "
            + " | ".join(percent(by_kind[k]["accuracy"]) for k in kinds_seen)
            + " |"
        )
    index = example_prompt(results)
    first = arms[0]["generations"][index]
    lines += [
        "",
        f"Held-out conversation {first['conversation']}, a `{first['kind']}` reply; "
        f"the right reply is `{first['reply']}<|im_end|>`. Greedy generations "
        f"(at most {results['config']['max_new_tokens']} tokens, stopped at `<|im_end|>`):",
        "",
        "```text",
    ]
    for arm in arms:
        lines.append(f"{arm['arm']:<13} {arm['generations'][index]['generated']!r}")
    lines.append("```")
    return "\n".join(lines) + "\n"


PLOTTED = {
    "accuracy": "answer\ncorrect",
    "begins_right": "begins with\nthe right answer",
    "stops": "<|im_end|> right\nafter the answer",
    "runs_on": "writes a role header\nor a tool result",
    "writes_question": "writes user-turn\ntext (a '?')",
}


def plot(results: dict[str, Any], path: Path) -> None:
    """Bars: the shares of held-out replies, per arm; curves: each arm's training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    figure, (bars, curves) = plt.subplots(
        1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        values = [arm["summary"]["all"][m] for m in PLOTTED]
        xs = [i + (k - (len(arms) - 1) / 2) * width for i in range(len(PLOTTED))]
        bars.bar(xs, values, width, label=arm["label"])
        window = max(1, len(arm["loss"]) // 40)
        smooth = [
            sum(arm["loss"][max(0, i - window + 1) : i + 1]) / min(window, i + 1)
            for i in range(len(arm["loss"]))
        ]
        style = "--" if k == len(arms) - 1 else "-"
        curves.plot(smooth, style, label=arm["arm"])
    bars.set_xticks(range(len(PLOTTED)), list(PLOTTED.values()), fontsize=8)
    bars.set_ylim(0, 1.45)
    bars.set_yticks([0, 0.25, 0.5, 0.75, 1])
    bars.set_ylabel(f"share of {arms[0]['summary']['all']['n']} held-out replies")
    bars.legend(fontsize=7, loc="upper center", ncol=2)
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("training loss, over each arm's own trained tokens", fontsize=8)
    curves.legend(fontsize=7)
    config = results["config"]
    figure.suptitle(
        f"learns_to_stop: {config['steps']} steps x {config['batch_size']} conversations, "
        f"seed {config['seed']}, {results['machine']['cpus']}-core CPU, {results['date']}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "learns_to_stop.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "learns_to_stop.md").write_text(markdown(results))
    plot(results, out / "learns_to_stop.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one arm, 3 steps, a tiny model")
    parser.add_argument("--arms", nargs="+", choices=ARMS, help="default: all (smoke: step)")
    parser.add_argument(
        "--out", type=Path, help="results folder (default: benchmarks/results for a full run)"
    )
    parser.add_argument("--steps", type=int, help=f"training steps (default {Config.steps})")
    args = parser.parse_args(argv)
    config = SMOKE if args.smoke else Config()
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
    arms = args.arms or (["gpumask_step"] if args.smoke else list(ARMS))
    # Only the full run writes to benchmarks/results unless told: a partial one would replace it.
    full = not args.smoke and args.arms is None and args.steps is None
    out = args.out if args.out is not None else (RESULTS if full else None)
    torch.set_num_threads(1)  # reproducible, and on a shared 2-core machine as fast as two
    start = time.perf_counter()
    load_start = os.getloadavg()
    data = prepare(config)
    print(
        f"{len(data['examples'])} training conversations, {len(data['prompts'])} held-out "
        f"replies, vocabulary {len(data['vocab'])} ids; load average {load_start[0]:.2f}",
        flush=True,
    )
    runs = []
    for name in arms:
        runs.append(run_arm(name, data, config))
        summary = runs[-1]["summary"]["all"]
        print(
            f"{name:<13} trained {runs[-1]['train_seconds']:6.1f} s  "
            + "  ".join(f"{m} {percent(summary[m])}" for m in METRICS),
            flush=True,
        )
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "config": dataclasses.asdict(config),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "arms": runs,
    }
    if out is not None:
        write(results, out)
        print(f"wrote {out}/learns_to_stop.{{json,md,png}} in {results['wall_seconds']} s")
    return results


if __name__ == "__main__":
    main()
