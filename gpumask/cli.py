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

from gpumask import __version__, display
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


def read_conversations(path: Path, tokenizer: Any) -> list[tuple[int, list[int]]]:
    """(line number, token ids) for each non-blank line of the JSONL file at `path`.

    Raises :class:`DataError` naming the line and the field of the first bad line, e.g.
    ``chats.jsonl:3: field 'messages[1].role': expected a non-empty string, got None``.
    """
    out = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}:"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{where} not valid JSON ({error.msg}, column {error.colno})"
                ) from None
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

    tokenizer = AutoTokenizer.from_pretrained(name)
    tokenizer.clean_up_tokenization_spaces = False  # show the text exactly as the tokens are
    if chat_template is not None:
        tokenizer.chat_template = chat_template.read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise MaskSpecError(
            f"tokenizer {name} has no chat template to read the chat format "
            "from; pass --chat-template FILE"
        )
    return tokenizer


def show(args: argparse.Namespace) -> int:
    """`gpumask show`: print the masked conversations, write the HTML page, print the summary."""
    tokenizer = _load_tokenizer(args.tokenizer, args.chat_template)
    conversations = read_conversations(args.data, tokenizer)
    spec = MaskSpec.from_tokenizer(tokenizer, **_spec_overrides(args))
    rows = display.mask_rows([ids for _, ids in conversations], spec)
    names = [f"line {number}" for number, _ in conversations]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    color = args.color or (
        not args.no_color and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    shown = len(rows) if args.max_rows is None else min(args.max_rows, len(rows))
    print(f"{args.data}: {len(rows)} conversations, tokenizer {args.tokenizer}")
    print(repr(spec))
    print(display.legend(color))
    for name, row in list(zip(names, rows, strict=True))[:shown]:
        print(f"\n--- {display.row_heading(row, name)}")
        text = display.format_row(row, decode, color=color)
        print(text, end="" if text.endswith("\n") else "\n")
        if row.reason:
            print(f"(no token trains: {row.reason})")
    if shown < len(rows):
        print(f"\n({len(rows) - shown} more conversations not shown; --max-rows)")
    print("\n--- summary")
    print(display.format_summary(rows, names))
    if args.html is not None:
        page = display.html_page(
            rows, decode, names, title=f"gpumask show: {args.data.name}", header=repr(spec)
        )
        args.html.write_text(page, encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


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
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gpumask` console script and of `python -m gpumask`."""
    args = parser().parse_args(argv)
    if args.max_rows is not None and args.max_rows < 0:
        print("gpumask show: --max-rows: expected a number >= 0", file=sys.stderr)
        return 2
    try:
        return show(args)
    except (DataError, MaskSpecError, OSError) as error:
        print(f"gpumask {args.command}: {error}", file=sys.stderr)
        return 2
