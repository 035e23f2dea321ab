"""The ``gpumask`` command line. ``gpumask show``: which tokens of your data train.

    gpumask show --tokenizer path/to/tokenizer data.jsonl
    python -m gpumask show --tokenizer path/to/tokenizer data.jsonl --html masks.html

Each line of the JSONL file is one conversation: ``{"messages": [{"role": ..., "content": ...},
...]}`` (rendered with the tokenizer's chat template; an optional ``"tools"`` list is passed to
it), or ``{"text": "..."}`` (already rendered, encoded as is, without added special tokens).
The chat format is read off the tokenizer with :meth:`gpumask.MaskSpec.from_tokenizer`; the
spec options below override what it detected. Every conversation is printed with its trained
tokens highlighted, then a summary: tokens per role, the trained share, and every row in which
nothing trains, with the reason.

Example (``chats.jsonl`` holds one line,
``{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}``)::

    $ gpumask show --tokenizer tests/fixtures/tokenizers/smollm2 --no-color chats.jsonl
    ...
    --- line 1: 3 of 35 tokens trained (8.6%); system 20, user 5, assistant 7, (no role) 3
    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    [[Hello!<|im_end|>]]
    ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpumask import __version__, display
from gpumask.empty_turns import count_empty_turns, empty_turns_message
from gpumask.spec import MaskSpec, MaskSpecError


class DataError(ValueError):
    """A line of the input file that cannot be used; the message names the line and field."""


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where} field 'messages': expected a non-empty list of "
            f"{{'role', 'content'}} objects, got {messages!r:.80}"
        )
    for i, message in enumerate(messages):
        field = f"{where} field 'messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(
                f"{field}': expected an object with 'role' and 'content', got {message!r:.80}"
            )
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise DataError(f"{field}.role': expected a non-empty string, got {role!r:.80}")
        content = message.get("content")
        if content is None and message.get("tool_calls"):
            continue
        if not isinstance(content, str):
            raise DataError(f"{field}.content': expected a string, got {content!r:.80}")


def drops_tool_calls(tokenizer: Any, messages: list[dict], tools: Any, text: str) -> bool:
    """Whether the chat template renders `messages` (which hold `tool_calls`) as `text` with
    or without their tool calls alike: then it drops them, as SmolLM2's and Zephyr's do."""
    if not any(m.get("tool_calls") for m in messages):
        return False
    bare = [
        {**{k: v for k, v in m.items() if k != "tool_calls"}, "content": m.get("content") or ""}
        for m in messages
    ]
    try:
        return tokenizer.apply_chat_template(bare, tools=tools, tokenize=False) == text
    except Exception:  # a template that needs the tool calls renders them
        return False


def read_conversations(
    path: Path, tokenizer: Any, dropped_tool_calls: list[int] | None = None
) -> list[tuple[int, list[int]]]:
    """(line number, token ids) for each non-blank line of the JSONL file at `path`.

    Raises :class:`DataError` naming the line and the field of the first bad line, e.g.
    ``chats.jsonl:3: field 'messages[1].role': expected a non-empty string, got None``.
    The numbers of the lines whose `tool_calls` the chat template does not render are
    appended to `dropped_tool_calls` when it is given.
    """
    out = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}:"
            line = line.rstrip("\r\n")  # a JSON error's column then counts on this line
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                at = (
                    "at the end of the line: truncated?"
                    if error.pos >= len(line.rstrip())
                    else f"column {error.colno}"
                )
                raise DataError(f"{where} not valid JSON ({error.msg}, {at})") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{where} expected a JSON object with 'messages' or 'text', "
                    f"got {type(record).__name__}"
                )
            if ("messages" in record) == ("text" in record):
                found = "both" if "messages" in record else f"neither (keys: {sorted(record)})"
                raise DataError(f"{where} expected a 'messages' or a 'text' field, found {found}")
            if "text" in record:
                text = record["text"]
                if not isinstance(text, str) or not text:
                    raise DataError(
                        f"{where} field 'text': expected a non-empty string, got {text!r:.80}"
                    )
            else:
                _check_messages(record["messages"], where)
                tools = record.get("tools")
                if tools is not None and not isinstance(tools, list):
                    raise DataError(f"{where} field 'tools': expected a list, got {tools!r:.80}")
                try:
                    text = tokenizer.apply_chat_template(
                        record["messages"], tools=tools, tokenize=False
                    )
                except Exception as error:  # jinja2 raises TemplateError, templates raise more
                    raise DataError(
                        f"{where} field 'messages': the chat template rejected it: {error}"
                    ) from None
                if dropped_tool_calls is not None and drops_tool_calls(
                    tokenizer, record["messages"], tools, text
                ):
                    dropped_tool_calls.append(number)
            out.append((number, tokenizer.encode(text, add_special_tokens=False)))
    return out


def _spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.train_roles:
        overrides["train_roles"] = tuple(r.strip() for r in args.train_roles.split(",") if r)
    if args.last_turn_only:
        overrides["last_turn_only"] = True
    if args.no_train_eot:
        overrides["train_on_end_of_turn"] = False
    if args.initial_role:
        overrides["initial_role"] = args.initial_role
    return overrides


def _load_tokenizer(name: str, chat_template: Path | None) -> Any:
    from transformers import AutoTokenizer

    folder = Path(name).expanduser()
    hint = (
        "pass a tokenizer folder (with tokenizer_config.json) or the name of a model in the "
        "local Hugging Face cache"
    )
    if folder.is_file():
        raise FileNotFoundError(f"--tokenizer {name}: a file, not a folder; {hint}")
    if not folder.is_dir() and (folder.is_absolute() or name.startswith((".", "~"))):
        raise FileNotFoundError(f"--tokenizer {name}: no such folder; {hint}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        if folder.is_dir():
            raise
        raise FileNotFoundError(
            f"--tokenizer {name}: no such folder, and no model of that name in the local "
            f"Hugging Face cache ({str(error).splitlines()[0]}); {hint}"
        ) from error
    tokenizer.clean_up_tokenization_spaces = False  # show the text exactly as the tokens are
    if chat_template is not None:
        tokenizer.chat_template = chat_template.read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise MaskSpecError(
            f"tokenizer {name} has no chat template to read the chat format "
            "from; pass --chat-template FILE"
        )
    return tokenizer


def _conversations(n: int, more: str = "") -> str:
    return f"{n} {more}conversation{'' if n == 1 else 's'}"


def _warnings(
    rows: list[display.MaskedRow], names: list[str], spec: MaskSpec, dropped: list[int]
) -> list[str]:
    """What the summary warns about: tool calls the template drops, turns that train only
    their end-of-turn token."""
    out = []
    if dropped:
        lines = ", ".join(str(n) for n in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
        out.append(
            f"the chat template does not render `tool_calls`: {_conversations(len(dropped))} "
            f"(line {lines}) {'loses its' if len(dropped) == 1 else 'lose their'} tool calls; "
            "a turn that held only tool calls trains only its end-of-turn token"
        )
    counts = np.array(
        [
            int(count_empty_turns(np.array([row.ids]), np.array([row.trained]), spec)[0])
            if row.ids
            else 0
            for row in rows
        ]
    )
    message = empty_turns_message(counts, names)
    if message is not None:
        out.append(message)
    return out


def show(args: argparse.Namespace) -> int:
    """`gpumask show`: print the masked conversations, write the HTML page, print the summary."""
    tokenizer = _load_tokenizer(args.tokenizer, args.chat_template)
    dropped: list[int] = []
    conversations = read_conversations(args.data, tokenizer, dropped)
    if not conversations:
        raise DataError(f"{args.data}: no conversations (the file is empty or all blank lines)")
    spec = MaskSpec.from_tokenizer(tokenizer, **_spec_overrides(args))
    rows = display.mask_rows([ids for _, ids in conversations], spec)
    names = [f"line {number}" for number, _ in conversations]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    color = args.color or (
        not args.no_color and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    shown = len(rows) if args.max_rows is None else min(args.max_rows, len(rows))
    print(f"{args.data}: {_conversations(len(rows))}, tokenizer {args.tokenizer}")
    print(repr(spec))
    print(display.legend(color))
    for name, row in list(zip(names, rows, strict=True))[:shown]:
        print(f"\n--- {display.row_heading(row, name)}")
        text = display.format_row(row, decode, color=color)
        print(text, end="" if text.endswith("\n") else "\n")
        if row.reason:
            print(f"(no token trains: {row.reason})")
    if shown < len(rows):
        print(f"\n({_conversations(len(rows) - shown, 'more ')} not shown; --max-rows)")
    print("\n--- summary")
    print(display.format_summary(rows, names))
    for warning in _warnings(rows, names, spec, dropped):
        print(f"warning: {warning}")
    if args.html is not None:
        page = display.html_page(
            rows,
            decode,
            names,
            title=f"gpumask show: {args.data.name}",
            header=repr(spec),
            spec=spec,
        )
        args.html.write_text(page, encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


def check(args: argparse.Namespace) -> int:
    """`gpumask check`: random conversations of every type against their contents' labels."""
    from gpumask.chat_templates.check import check_template

    if args.n < 1:
        raise MaskSpecError(f"-n: expected a number of conversations >= 1, got {args.n}")
    tokenizer = _load_tokenizer(args.tokenizer, args.chat_template)
    report = check_template(tokenizer, n=args.n, seed=args.seed)
    print(f"tokenizer {args.tokenizer}, {args.n} random conversations per type (seed {args.seed})")
    print(report.format())
    return 2 if report.refused else 0 if report.ok else 1


def _tokenizer_arguments(cmd: argparse.ArgumentParser) -> None:
    """--tokenizer and --chat-template, which every subcommand takes."""
    cmd.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="tokenizer folder (or a model name in the local Hugging Face cache)",
    )
    cmd.add_argument(
        "--chat-template",
        type=Path,
        metavar="FILE",
        help="a Jinja chat template to use instead of the tokenizer's own",
    )


def parser() -> argparse.ArgumentParser:
    """The argument parser of the `gpumask` command."""
    top = argparse.ArgumentParser(prog="gpumask", description="Completion-only label masking.")
    top.add_argument("--version", action="version", version=f"gpumask {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmd = commands.add_parser(
        "show",
        help="print conversations with their trained tokens highlighted",
        description="Print each conversation of a JSONL file with its trained tokens "
        "highlighted, and a summary (tokens per role, trained share, rows in which "
        'nothing trains and why). Each line: {"messages": [{"role", '
        '"content"}, ...]} or {"text": "..."}.',
    )
    cmd.add_argument("data", type=Path, help="the JSONL file, one conversation per line")
    _tokenizer_arguments(cmd)
    cmd.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML page")
    colors = cmd.add_mutually_exclusive_group()
    colors.add_argument(
        "--color", action="store_true", help="ANSI colours even when the output is not a terminal"
    )
    colors.add_argument(
        "--no-color",
        action="store_true",
        help="no ANSI colours (the default when piped, or with NO_COLOR set): "
        "trained text is printed between [[ and ]]",
    )
    cmd.add_argument(
        "--max-rows",
        type=int,
        metavar="N",
        help="print only the first N conversations (the summary counts all)",
    )
    spec = cmd.add_argument_group("spec options (override what the tokenizer's template gives)")
    spec.add_argument(
        "--train-roles", metavar="ROLE[,ROLE]", help="roles whose turns train (default: assistant)"
    )
    spec.add_argument(
        "--last-turn-only",
        action="store_true",
        help="train only the last trained turn of each conversation",
    )
    spec.add_argument(
        "--no-train-eot",
        action="store_true",
        help="do not train the end-of-turn token of trained turns",
    )
    spec.add_argument(
        "--initial-role",
        metavar="ROLE",
        help="the role a conversation starts in, before any header",
    )
    cmd = commands.add_parser(
        "check",
        help="test that gpumask reads your chat template right, on random conversations",
        description="Render random conversations of every type the chat template accepts "
        "(exchanges, system prompts, consecutive turns, tool calls...), mask them with the "
        "spec MaskSpec.from_tokenizer reads, and compare the trained tokens with the "
        "contents: a table per type, the first disagreement shown with trained text between "
        "[[ and ]]. Exit status 1 on any disagreement, 2 when the template is refused.",
    )
    _tokenizer_arguments(cmd)
    cmd.add_argument("-n", type=int, default=20, help="conversations per type (default 20)")
    cmd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gpumask` console script and of `python -m gpumask`."""
    args = parser().parse_args(argv)
    if args.command == "show" and args.max_rows is not None and args.max_rows < 0:
        print("gpumask show: --max-rows: expected a number >= 0", file=sys.stderr)
        return 2
    try:
        return check(args) if args.command == "check" else show(args)
    except (DataError, MaskSpecError, OSError) as error:
        print(f"gpumask {args.command}: {error}", file=sys.stderr)
        return 2
