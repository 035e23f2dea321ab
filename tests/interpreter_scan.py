"""A parallel-prefix `tl.associative_scan` for Triton's interpreter, installed by conftest.py.

The interpreter scans a block with a custom combine function one lane at a time: a Python call
of the combine function per lane, which is most of the time of an interpreted kernel here. A
GPU scans in a tree instead, which is right only if the combine function is associative. This
replacement does what a GPU does: ceil(log2(n)) rounds, each combining every lane with the lane
`step` before it, on whole blocks (Hillis and Steele's scan). It is faster, and stricter than
the sequential scan: a combine function that is not associative gives different labels here,
as it would on a GPU.

    >>> import numpy as np
    >>> tree_prefix([np.array([3, 1, 4, 1, 5])], lambda a, b: (a + b,), axis=0)[0].tolist()
    [3, 4, 8, 9, 14]
    >>> tree_prefix([np.array([3, 1, 4, 1, 5])], lambda a, b: (a * 10 + b,), axis=0)[0].tolist()
    [3, 31, 44, 351, 185]

The second combine function is not associative: a sequential scan would give 31415 last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def tree_prefix(
    arrays: Sequence[np.ndarray], combine: Callable[..., tuple], axis: int
) -> list[np.ndarray]:
    """Inclusive prefix combinations of `arrays` (equal shapes) along `axis`: lane i holds
    combine(lane 0, ..., lane i), combined in a tree. `combine(*earlier, *later)` works on
    whole arrays and returns a tuple of as many arrays (or scalars)."""
    out = [np.asarray(a) for a in arrays]
    n = out[0].shape[axis]
    lane = np.arange(n).reshape([n if d == axis else 1 for d in range(out[0].ndim)])
    step = 1
    while step < n:
        # Full blocks (the interpreter takes power-of-two shapes only): lane i combines lane
        # i - step with itself; the first `step` lanes combine wrapped lanes and are not kept.
        earlier = [np.roll(a, step, axis=axis) for a in out]
        combined = combine(*earlier, *out)
        out = [np.where(lane >= step, np.broadcast_to(c, a.shape), a).astype(a.dtype)
               for a, c in zip(out, combined)]  # fmt: skip
        step *= 2
    return out


def install() -> bool:
    """Replace the interpreter's generic scan with `tree_prefix`; False (nothing replaced) where
    this Triton has no such interpreter method."""
    try:
        from triton.runtime.interpreter import ScanOps
    except ImportError:
        return False
    if not hasattr(ScanOps, "generic_scan"):
        return False

    def generic_scan(self, inputs):
        dtypes = [arg.dtype for arg in inputs]

        def combine(*arrays):
            tensors = [self.to_tensor(a, dtypes[i % len(dtypes)]) for i, a in enumerate(arrays)]
            result = self.combine_fn.fn(*tensors)
            result = result if isinstance(result, tuple) else (result,)
            return tuple(r.handle.data if hasattr(r, "handle") else r for r in result)

        data = [arg.handle.data for arg in inputs]
        return [
            self.to_tensor(a, dtype)
            for a, dtype in zip(tree_prefix(data, combine, self.axis), dtypes)
        ]

    ScanOps.generic_scan = generic_scan
    return True
