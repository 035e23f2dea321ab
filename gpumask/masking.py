"""`mask_labels`: the public entry point. Validates, prepares padding and packing, dispatches.

Example::

    >>> import torch, gpumask
    >>> spec = gpumask.MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> ids = torch.tensor([[1, 10, 5, 2, 1, 11, 6, 7, 2, 0]])
    >>> gpumask.mask_labels(ids, spec, attention_mask=torch.tensor([[1] * 9 + [0]])).tolist()
    [[-100, -100, -100, -100, -100, -100, 6, 7, 2, -100]]
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch

from gpumask.spec import MaskSpec
from gpumask.torch_backend import mask_labels_torch

BACKENDS = ("auto", "torch", "triton")


class BatchTrainsNothingWarning(UserWarning):
    """`mask_labels` gave a batch in which no token trains (every label is `ignore_index`)."""


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def eager_on_cpu(input_ids: torch.Tensor) -> bool:
    """CPU tensors outside torch.compile: where data-dependent shapes cost nothing, so the
    torch backend may skip the runs of plain tokens."""
    return input_ids.device.type == "cpu" and not torch.compiler.is_compiling()


def _check_companion(name: str, value, input_ids: torch.Tensor, *, bool_ok: bool) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.shape != input_ids.shape:
        raise ValueError(
            f"{name}: shape {tuple(value.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    if value.dtype not in _INTEGER_DTYPES and not (bool_ok and value.dtype == torch.bool):
        kinds = "bool or integer" if bool_ok else "integer"
        raise TypeError(f"{name}: expected a {kinds} tensor, got {value.dtype}")
    if value.device != input_ids.device:
        raise ValueError(f"{name}: on {value.device}, but input_ids is on {input_ids.device}")


def validate_inputs(
    input_ids, spec, attention_mask, position_ids, cu_seqlens, ignore_index, generator, backend
) -> None:
    """Raise a clear error for bad arguments, before any work."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids: expected a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape [batch, length], got {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"input_ids: expected int32 or int64, got {input_ids.dtype}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids: length 0; nothing to mask")
    if not isinstance(spec, MaskSpec):
        raise TypeError(f"spec: expected a gpumask.MaskSpec, got {type(spec).__name__}")
    if attention_mask is not None:
        _check_companion("attention_mask", attention_mask, input_ids, bool_ok=True)
    if position_ids is not None:
        _check_companion("position_ids", position_ids, input_ids, bool_ok=False)
    if cu_seqlens is not None:
        if position_ids is not None:
            raise ValueError("cu_seqlens: give either position_ids or cu_seqlens, not both")
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(f"cu_seqlens: expected a torch.Tensor, got {type(cu_seqlens).__name__}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(
                f"cu_seqlens: expected a 1-D tensor of at least 2 offsets, got "
                f"shape {tuple(cu_seqlens.shape)}"
            )
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens: expected int32 or int64, got {cu_seqlens.dtype}")
        if cu_seqlens.device != input_ids.device:
            raise ValueError(
                f"cu_seqlens: on {cu_seqlens.device}, but input_ids is on {input_ids.device}"
            )
        if input_ids.shape[0] != 1:
            raise ValueError(
                f"cu_seqlens: needs a flattened batch of shape [1, N], "
                f"input_ids has shape {tuple(input_ids.shape)}"
            )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator: expected a torch.Generator, got {type(generator).__name__}"
            )
        if generator.device.type != input_ids.device.type:
            raise ValueError(
                f"generator: on {generator.device}, but input_ids is on "
                f"{input_ids.device}; pass torch.Generator(device=...)"
            )
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def prepare_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(real, seq_start): which tokens are real, and where packed sequences start.

    None stands for "all real" and "one sequence per row", so the common case costs nothing.
    """
    real = attention_mask
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        real = attention_mask != 0
    seq_start = None
    if position_ids is not None:
        seq_start = position_ids == 0
    elif cu_seqlens is not None:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        offsets = cu_seqlens.long()
        starts = torch.zeros(length, dtype=torch.int64, device=input_ids.device)
        starts.scatter_add_(0, offsets[:-1].clamp(0, length - 1), (offsets[:-1] < length).long())
        seq_start = (starts > 0)[None]
        inside = ((positions >= offsets[0]) & (positions < offsets[-1]))[None]
        real = inside if real is None else real & inside
    return real, seq_start


# On the CPU, large batches are masked in blocks of rows of about this many tokens, so that
# every intermediate stays in reused memory instead of fresh pages (no effect on the labels).
CPU_BLOCK_TOKENS = 1 << 20


def _in_row_blocks(run, input_ids, compiled, real, seq_start, uniforms, ignore_index, stats):
    """`run` over blocks of whole rows on the CPU (one call elsewhere), results concatenated."""
    batch, length = input_ids.shape
    rows = max(1, CPU_BLOCK_TOKENS // length)
    if input_ids.device.type != "cpu" or batch <= rows:
        return run(input_ids, compiled, real, seq_start, uniforms, ignore_index, stats)

    def block(x, start):
        return None if x is None else x[start : start + rows]

    parts = [
        run(
            block(input_ids, i),
            compiled,
            block(real, i),
            block(seq_start, i),
            block(uniforms, i),
            ignore_index,
            stats,
        )
        for i in range(0, batch, rows)
    ]
    if not stats:
        return torch.cat([p[0] for p in parts]), None, None
    return tuple(torch.cat([p[k] for p in parts]) for k in range(3))


def warn_if_nothing_trains(labels: torch.Tensor, ignore_index: int) -> None:
    """Warn (:class:`BatchTrainsNothingWarning`) when no label of the batch trains.

    Reading the answer is a host sync, so :func:`mask_labels` calls this only where that costs
    nothing: eager calls on CPU tensors, without `return_stats` (whose counts say it already).
    On CUDA and under `torch.compile` or CUDA graphs nothing is checked; pass
    `return_stats=True` and log `stats["trained"]`.
    """
    if bool((labels != ignore_index).any()):
        return
    batch, length = labels.shape
    rows = "the row" if batch == 1 else f"all {batch} rows"
    warnings.warn(
        f"mask_labels: no token of this [{batch}, {length}] batch trains (every label of "
        f"{rows} is ignore_index={ignore_index}): no header of a trained role occurs, or "
        "every trained turn is empty or masked; print(spec) and compare its markers with the "
        "token ids, or pass return_stats=True for per-row counts",
        BatchTrainsNothingWarning,
        stacklevel=3,
    )


def mask_labels(
    input_ids: torch.Tensor,
    spec: MaskSpec,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    ignore_index: int = -100,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    return_stats: bool = False,
):
    """Completion-only labels for `input_ids` `[B, T]`, by the rules of :mod:`gpumask.reference`.

    Runs where the tensors are, with no host-device synchronisation and static shapes (eager
    calls on CPU tensors, where neither matters, run the rules on the marker tokens only and
    spread the result back; the labels are the same). `backend="auto"` takes the Triton
    kernel for CUDA tensors when Triton is installed, else the torch implementation; both
    give identical labels. With `return_stats=True` the result is `(labels, {"trained": [B],
    "role_tokens": [B, n_roles + 1]})`: the columns of `role_tokens` are `spec.role_names` in
    order, then one counting real tokens in no role (header tokens count with the role they
    open). Without `return_stats`, an eager call on CPU tensors in which no token trains
    warns (:class:`BatchTrainsNothingWarning`); CUDA and compiled calls are not checked, as
    that would need a host sync.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> mask_labels(torch.tensor([[1, 11, 6, 2, 1, 11, 7, 2]]), spec).tolist()
        [[-100, -100, 6, 2, -100, -100, 7, 2]]
    """
    validate_inputs(
        input_ids, spec, attention_mask, position_ids, cu_seqlens, ignore_index, generator, backend
    )
    compiled = spec.compile(input_ids.device)
    real, seq_start = prepare_layout(input_ids, attention_mask, position_ids, cu_seqlens)
    uniforms = None
    if spec.ignore_token_ids and 0.0 < spec.ignore_token_prob < 1.0:
        batch, length = input_ids.shape
        uniforms = torch.rand(batch, length, generator=generator, device=input_ids.device)
    if backend == "auto":
        backend = "triton" if input_ids.is_cuda and _triton_available() else "torch"
    if backend == "triton":
        from gpumask.triton_backend import mask_labels_triton as run
    elif eager_on_cpu(input_ids):
        run = functools.partial(mask_labels_torch, skip_plain_runs=True)
    else:
        run = mask_labels_torch
    labels, trained, role_tokens = _in_row_blocks(
        run, input_ids, compiled, real, seq_start, uniforms, ignore_index, return_stats
    )
    if not return_stats:
        if eager_on_cpu(input_ids):
            warn_if_nothing_trains(labels, ignore_index)
        return labels
    return labels, {"trained": trained, "role_tokens": role_tokens}
