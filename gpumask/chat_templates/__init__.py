"""Read a chat format off a tokenizer's own chat template: `MaskSpec.from_tokenizer`.

The template is rendered on probe conversations whose contents are sentinels (strings like
``Vexquone`` that occur nowhere else and do not merge with their neighbours), the rendering
is tokenized with character offsets, and the markers are read as token ids *in context*:

- **end of turn** of a role: the tokens every turn of that role has right after its content
  (their common prefix), up to the first whitespace-only token; the ``\\n`` that ChatML puts
  after ``<|im_end|>`` lies between turns and belongs to no turn;
- **header** of a role: the tokens between the previous turn's end of turn (and any
  whitespace after it) and the content, e.g. ``<|im_start|>assistant\\n``. A template with no
  generation prompt and nothing that ends a user turn (Mistral ``[INST] q [/INST]reply</s>``)
  leads into the reply right after the user's content: that text (``[/INST]``) is the
  assistant's header. Every distinct context gives an alternative: the first header of a
  SentencePiece conversation has a leading ``▁``, Qwen3 puts an empty ``<think>`` block in the
  last assistant turn only, Mistral's reply after a tool result follows ``[/TOOL_RESULTS]``;
- **tool calls**: the wrapper around the call's JSON (Qwen ``<tool_call>``...``</tool_call>``,
  Mistral ``[TOOL_CALLS]``); calls stay trained unless `train_tool_calls=False`, which masks
  them as a span (the wrapper needs an open and a close);
- **tool results**: a role of their own when their header is new (Llama 3 ``ipython``,
  Mistral ``[TOOL_RESULTS]``), or inside another role's turn when they follow that role's
  header (Qwen puts ``<tool_response>`` in a user turn), or inside the assistant's turn when no
  end of turn comes between the call and the result; inside a turn, their wrapper becomes a
  masked span.
  Text that a template wraps around a tool result's content (Mistral's ``{"content": ``...
  ``, "call_id": "..."}``, Llama 3.1's quotes) is the result's, not a marker's: a tool header
  ends before the first ``{`` or ``"``, a tool result's end of turn starts after the quotes and
  brackets that close it, and the text after a result with no end of turn belongs to it up to
  the first special token.

The BOS and a default system turn (SmolLM2, Qwen) in front of the first message are not part
of its header. A system message that the template folds into a user turn (Gemma, Mistral)
gives no system role. A header never holds an end of turn, a function name or a content; an
end of turn may follow whitespace (Llama 2's ``reply </s>``); a reply with no header after
tool results (DeepSeek) has their closer as its header; calls are read with dict arguments or
JSON-string ones, whichever the template renders; tokens added to the vocabulary count as
control tokens whether or not they are flagged special; probes are rendered at one moment
(``strftime_now``).

Never silently wrong: the format is checked (:mod:`.check`) on every probe and on a few random
conversations of each type. A type that fails is left out and reported: `from_tokenizer`
returns the spec for the rest and warns (:class:`TemplateWarning`), naming the type and what
goes wrong there; replies with no end of turn give ``end_of_turn=None`` and a warning; a plain
exchange that fails raises :class:`MaskSpecError`. Probes the template rejects (strict
alternation, no system or tool role) are skipped. Results are cached per vocabulary and
template: a second call costs a dictionary lookup.

Example (the Qwen2.5 tokenizer and its own template)::

    >>> from transformers import AutoTokenizer
    >>> from gpumask import MaskSpec
    >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
    >>> spec = MaskSpec.from_tokenizer(tok)
    >>> spec.roles["assistant"]  # '<|im_start|>assistant\\n', and without the '\\n' it can merge
    ((151644, 77091, 198), (151644, 77091))
    >>> spec.end_of_turn  # '<|im_end|>'
    ((151645,),)
    >>> fmt = detect_chat_format(tok)
    >>> fmt.tool_results, tok.decode(fmt.masked_spans[0][0][0])
    ("inside role 'user'", '<tool_response>\\n')
    >>> fmt.tool_call  # '<tool_call>' ... '</tool_call>', trained unless train_tool_calls=False
    (((151657,),), ((151658,),))
"""

from __future__ import annotations

import hashlib
import os
import warnings
import weakref
from typing import Any

from gpumask.chat_templates.format import ChatFormat, TemplateWarning, detect_chat_format
from gpumask.spec import MaskSpec, MaskSpecError


def spec_from_tokenizer(
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    train_tool_calls: bool = True,
    train_thinking: bool = True,
    **overrides: Any,
) -> MaskSpec:
    """The `MaskSpec` of `tokenizer`'s chat template (see the module docstring).

    Args:
        tokenizer: a fast Hugging Face tokenizer with a chat template.
        chat_template: a Jinja template to read instead of `tokenizer.chat_template`.
        train_tool_calls: train the assistant's tool calls (default); False masks them as a
            span (needs a template that wraps calls in an open and a close marker).
        train_thinking: train the reasoning blocks of replies (default); False masks them as
            a span, from their opening text (``<think>``) through their close.
        **overrides: `MaskSpec` keyword arguments that replace what was detected, e.g.
            `last_turn_only=True`, `train_roles=("assistant", "tool")`, `masked_spans=[...]`.

    Example::

        >>> from transformers import AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained("tests/fixtures/tokenizers/qwen2_5")
        >>> spec = spec_from_tokenizer(tok, last_turn_only=True)
        >>> spec.roles["assistant"], spec.last_turn_only
        (((151644, 77091, 198), (151644, 77091)), True)
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        raise MaskSpecError(
            f"tokenizer: got the path {os.fspath(tokenizer)!r}, expected a loaded tokenizer; "
            f"pass AutoTokenizer.from_pretrained({os.fspath(tokenizer)!r})"
        )
    template = (
        chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    )
    key = (vocabulary_key(tokenizer), _hashable(template), chat_template is not None)
    chat_format = _FORMATS.get(key)
    if chat_format is None:
        try:
            chat_format = detect_chat_format(tokenizer, chat_template=chat_template)
        except MaskSpecError as error:
            chat_format = error
        if key[0] is not None:
            _FORMATS[key] = chat_format
    if isinstance(chat_format, MaskSpecError):
        raise MaskSpecError(str(chat_format))
    for message in chat_format.warnings:
        warnings.warn(message, TemplateWarning, stacklevel=3)
    spec_key = (key, train_tool_calls, train_thinking, _hashable(overrides))
    spec = _SPECS.get(spec_key)
    if spec is None:
        spec = chat_format.spec(
            tokenizer, train_tool_calls=train_tool_calls, train_thinking=train_thinking
        )
        if overrides:
            spec = spec.replace(tokenizer=tokenizer, **overrides)
        if key[0] is not None and spec_key[3] is not None:
            _SPECS[spec_key] = spec
    return spec


# Formats read (or refusals), per (vocabulary, template): the second `from_tokenizer` call on
# a tokenizer costs a dictionary lookup. A tokenizer's vocabulary is fingerprinted once per
# object (and again if tokens are added to it).
_FORMATS: dict[tuple, ChatFormat | MaskSpecError] = {}
_SPECS: dict[tuple, MaskSpec] = {}
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary_key(tokenizer: Any) -> tuple | None:
    """A fingerprint of `tokenizer`'s vocabulary and added tokens (None: cannot be taken)."""
    try:
        size = len(tokenizer)  # with the added tokens: adding one reads the format again
        cached = _FINGERPRINTS.get(tokenizer)
        if cached is not None and cached[0] == size:
            return cached[1]
        vocab = tokenizer.get_vocab()
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        digest = hashlib.sha256()
        for token, index in sorted(vocab.items(), key=lambda item: item[1]):
            digest.update(f"{index}\t{token}\n".encode("utf-8", "surrogatepass"))
        for index, token in sorted(added.items()):
            digest.update(f"{index}\t{token}\t{getattr(token, 'special', '')}\n".encode())
        key = (type(tokenizer).__name__, size, digest.hexdigest())
        _FINGERPRINTS[tokenizer] = (size, key)
        return key
    except (TypeError, AttributeError):  # not weak-referenceable, or no vocabulary to read
        return None


def _hashable(value: Any) -> Any:
    """`value` as a hashable key (dicts as sorted items, lists as tuples), or None."""
    if isinstance(value, dict):
        items = [(k, _hashable(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))]
        return None if any(v is None and value[k] is not None for k, v in items) else tuple(items)
    if isinstance(value, (list, tuple)):
        items = tuple(_hashable(v) for v in value)
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    try:
        hash(value)
    except TypeError:
        return None
    return value


__all__ = ["ChatFormat", "TemplateWarning", "detect_chat_format", "spec_from_tokenizer"]
