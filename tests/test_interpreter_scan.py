"""The tree scan given to Triton's interpreter (interpreter_scan.py) against a sequential scan."""

import itertools
import os

import numpy as np
import pytest
from interpreter_scan import tree_prefix


def compose(f_a, f_b, g_a, g_b):
    """Affine maps x -> a*x + b mod 97, "f then g": associative, not commutative."""
    return (f_a * g_a) % 97, (f_b * g_a + g_b) % 97


@pytest.mark.parametrize(
    "shape, axis", [((1,), 0), ((16,), 0), ((32,), 0), ((4, 8), 0), ((4, 8), 1)]
)
def test_tree_prefix_equals_sequential_scan(shape, axis):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 97, shape), rng.integers(0, 97, shape)
    got_a, got_b = tree_prefix([a, b], compose, axis)
    moved = [np.moveaxis(x, axis, -1).reshape(-1, shape[axis]) for x in (a, b)]
    for row, (ra, rb) in enumerate(zip(*moved)):
        want = list(itertools.accumulate(zip(ra, rb), lambda f, g: compose(*f, *g)))
        got = zip(np.moveaxis(got_a, axis, -1).reshape(-1, shape[axis])[row],
                  np.moveaxis(got_b, axis, -1).reshape(-1, shape[axis])[row])  # fmt: skip
        assert [tuple(map(int, x)) for x in got] == [tuple(map(int, x)) for x in want]


def test_tree_prefix_keeps_dtype_and_broadcasts_scalars():
    (out,) = tree_prefix([np.array([5, 1, 3, 2], dtype=np.int32)], lambda x, y: (7,), axis=0)
    assert out.dtype == np.int32 and out.tolist() == [5, 7, 7, 7]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="only the interpreter")
def test_installed_in_the_interpreter():
    from triton.runtime.interpreter import ScanOps

    assert ScanOps.generic_scan.__module__ == "interpreter_scan"
