"""The torch backend against the reference oracle on random formats, streams and layouts.

Eager CPU calls skip the runs of plain tokens (`mask_on_marker_runs`); compiled and GPU calls
run every token (`mask_every_token`). Both paths are checked here on the CPU.
"""

from unittest import mock

import torch
from hypothesis import given, settings
from strategies import masking_cases

from gpumask import mask_labels
from gpumask.padding import Batch
from gpumask.reference import mask_labels_reference
from gpumask.torch_backend import mask_every_token, tables


def on_every_token(input_ids, spec, attention_mask=None, position_ids=None, cu_seqlens=None,
                   generator=None, return_stats=False):  # fmt: skip
    """`mask_labels(..., backend="torch")` through the path compiled and GPU calls take."""
    uniforms = spec.draws(input_ids, generator)
    batch = Batch.of(input_ids, attention_mask, position_ids, cu_seqlens, uniforms)
    return mask_every_token(batch, spec, -100, return_stats)


def run_both(case, fn):
    spec, input_ids, kwargs, seed = case
    got = fn(
        input_ids, spec, generator=torch.Generator().manual_seed(seed), return_stats=True, **kwargs
    )
    want = mask_labels_reference(
        input_ids, spec, generator=torch.Generator().manual_seed(seed), return_stats=True, **kwargs
    )
    return got, want


def assert_same(got, want):
    (labels, stats), (ref_labels, ref_stats) = got, want
    assert labels.dtype == ref_labels.dtype
    assert labels.tolist() == ref_labels.tolist()
    assert stats["trained"].tolist() == ref_stats["trained"].tolist()
    assert stats["role_tokens"].tolist() == ref_stats["role_tokens"].tolist()
    assert stats["dropped_turns"].tolist() == ref_stats["dropped_turns"].tolist()


@settings(max_examples=2500, deadline=None, derandomize=True)
@given(masking_cases())
def test_torch_backend_matches_oracle(case):
    assert_same(*run_both(case, lambda *a, **k: mask_labels(*a, backend="torch", **k)))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(masking_cases(max_batch=2, max_length=300))
def test_torch_backend_matches_oracle_on_longer_rows(case):
    assert_same(*run_both(case, lambda *a, **k: mask_labels(*a, backend="torch", **k)))


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(masking_cases())
def test_torch_backend_on_every_token_matches_oracle(case):
    # As under torch.compile or on a GPU: no skipping of plain runs.
    assert_same(*run_both(case, on_every_token))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(masking_cases(max_batch=2, max_length=300))
def test_torch_backend_on_every_token_matches_oracle_on_longer_rows(case):
    assert_same(*run_both(case, on_every_token))


@settings(max_examples=500, deadline=None, derandomize=True)
@given(masking_cases())
def test_torch_backend_matches_oracle_with_bitmask_matching(case):
    # Specs whose window table would be too large match with per-offset bitmasks instead.
    with mock.patch("gpumask.torch_backend.MAX_WINDOW_TABLE", 0):
        got = run_both(case, lambda *a, **k: mask_labels(*a, backend="torch", **k))
    assert tables(case[0]).window_words is None
    assert_same(*got)


# --- rule 5: turns chosen by content (tool_call, tool_call_turns) ----------------------------


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(masking_cases(tool_calls=True))
def test_tool_call_turns_match_oracle(case):
    assert_same(*run_both(case, lambda *a, **k: mask_labels(*a, backend="torch", **k)))


@settings(max_examples=500, deadline=None, derandomize=True)
@given(masking_cases(tool_calls=True))
def test_tool_call_turns_on_every_token_match_oracle(case):
    assert_same(*run_both(case, on_every_token))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(masking_cases(max_batch=2, max_length=300, tool_calls=True))
def test_tool_call_turns_match_oracle_on_longer_rows(case):
    assert_same(*run_both(case, lambda *a, **k: mask_labels(*a, backend="torch", **k)))
