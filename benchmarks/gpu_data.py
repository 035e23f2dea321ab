"""Inputs of the GPU check: a ChatML-with-tools spec, planted chat streams, the suite's cases.

- :func:`chatml_tools_spec`: 7 markers (4 role headers of 3 tokens, `<|im_end|>`, and the
  `<tool_response>` ... `</tool_response>` masked span), ids in a 32,000-token vocabulary so
  the same batches feed a Llama-style model.
- :func:`chat_stream`: fresh random ids with those markers planted, made on any device with
  a few vectorised ops (so a timing loop can draw a new batch before every run): one turn
  per window of `TURN` positions, each turn `<|im_end|> \\n <|im_start|> role \\n` at a random
  offset, some assistant turns holding a tool response, the last turn of a row a reply. Roles
  repeat (consecutive assistant turns, tool turns between replies) and markers sit at any
  distance from row ends.
- :func:`random_cases`: the test suite's random cases (`masking_cases` of tests/strategies.py,
  loaded from its file, unchanged), drawn by Hypothesis in a fixed order.

    >>> import torch
    >>> ids, position_ids = chat_stream(2, 512, torch.int64, "cpu", seed=0, packed=True)
    >>> ids.shape, int(position_ids[0, 0])
    (torch.Size([2, 512]), 0)
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch

import gpumask

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32000
CONTENT = (100, 31000)  # content ids are drawn uniformly from this range
IM_START, IM_END, NEWLINE, TOOL_RESPONSE, TOOL_RESPONSE_END = 31990, 31991, 13, 31992, 31993
ROLE_IDS = {"system": 1587, "user": 1404, "assistant": 20255, "tool": 5780}
# Role of each turn, drawn uniformly from this table: replies often follow replies or tools.
ROLE_TABLE = ("system", "user", "user", "assistant", "assistant", "assistant", "tool", "tool")
N_MARKERS = len(ROLE_IDS) + 1 + 2  # headers, end of turn, span open and close
TURN = 128  # positions per turn window
PACK_EVERY = 8  # packed: on average one sequence start per this many turns


def chatml_tools_spec(**options: Any) -> gpumask.MaskSpec:
    """ChatML with tool turns and tool responses masked inside replies; `options` go to MaskSpec.

    >>> len(chatml_tools_spec().role_names)
    4
    """
    roles = {name: [IM_START, role, NEWLINE] for name, role in ROLE_IDS.items()}
    return gpumask.MaskSpec(
        roles=roles,
        end_of_turn=[IM_END],
        masked_spans=[([TOOL_RESPONSE], [TOOL_RESPONSE_END])],
        vocab_size=VOCAB,
        **options,
    )


def chat_stream(
    batch: int,
    length: int,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int | None = None,
    packed: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input_ids `[batch, length]`, position_ids or None): random ids with planted turns.

    With `packed`, position_ids restart at 0 at about one turn in `PACK_EVERY` (always at 0),
    each new sequence starting at a header. Give `seed` or a `generator` on `device`.
    """
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed or 0)
    kw = {"generator": generator, "device": device}
    ids = torch.randint(*CONTENT, (batch, length), dtype=torch.int64, **kw)
    turns = max(1, length // TURN)
    cut = torch.arange(turns, device=device) * TURN + torch.randint(
        0, TURN // 2, (batch, turns), **kw
    )
    pick = torch.randint(0, len(ROLE_TABLE), (batch, turns), **kw)
    role = _role_table(torch.device(device))[pick]
    role[:, -1] = ROLE_IDS["assistant"]  # every row ends with a reply, so every row trains
    planted = [IM_END, NEWLINE, IM_START, role, NEWLINE]
    for k, token in enumerate(planted):
        _plant(ids, cut + k, token)
    # A tool response inside some replies: open 5-20 tokens after the header, close 1-32 later.
    with_response = (role == ROLE_IDS["assistant"]) & (
        torch.randint(0, 4, (batch, turns), **kw) == 0
    )
    opens = cut + 5 + torch.randint(0, 16, (batch, turns), **kw)
    closes = opens + 1 + torch.randint(0, 32, (batch, turns), **kw)
    _plant(ids, torch.where(with_response, opens, -1), TOOL_RESPONSE)
    _plant(ids, torch.where(with_response, closes, -1), TOOL_RESPONSE_END)
    position_ids = None
    if packed:
        restart = torch.randint(0, PACK_EVERY, (batch, turns), **kw) == 0
        starts = torch.zeros(batch, length, dtype=torch.int64, device=device)
        at = torch.where(restart & (cut + 2 < length), cut + 2, 0)
        starts.scatter_(1, at, at)  # every write is 0 or its own position
        position_ids = torch.arange(length, device=device) - starts.cummax(1).values
    return ids.to(dtype), position_ids


@functools.cache
def _role_table(device: torch.device) -> torch.Tensor:
    return torch.tensor([ROLE_IDS[r] for r in ROLE_TABLE], device=device)


def _plant(ids: torch.Tensor, positions: torch.Tensor, token: int | torch.Tensor) -> None:
    """ids[b, positions[b, j]] = token (or token[b, j]) wherever 0 <= position < length.

    Turn windows never overlap, so no position is written twice with different values. No
    host-to-device copy: a timing loop that makes a batch before every run never waits.
    """
    length = ids.shape[1]
    inside = (positions >= 0) & (positions < length)
    values = token if isinstance(token, torch.Tensor) else torch.full_like(positions, token)
    current = ids.gather(1, positions.clamp(0, length - 1))
    ids.scatter_(1, positions.clamp(0, length - 1), torch.where(inside, values, current))


def _strategies():
    """tests/strategies.py, imported from its file (tests/ is not a package)."""
    path = ROOT / "tests" / "strategies.py"
    spec = importlib.util.spec_from_file_location("gpumask_test_strategies", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_cases(n: int) -> list[tuple[gpumask.MaskSpec, torch.Tensor, dict, int]]:
    """The first `n` cases (spec, input_ids, mask_labels kwargs, seed) that the test suite's
    `masking_cases()` strategy draws with a fixed seed: the same list in every process."""
    from hypothesis import HealthCheck, Phase, given, settings

    cases = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(_strategies().masking_cases())
    def draw(case):
        cases.append(case)

    draw()
    return cases[:n]
