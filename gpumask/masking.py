"""`mask_labels`, the public entry point: validate, lay out padding and packing, draw, dispatch.

Example::

    >>> import torch, gpumask
    >>> spec = gpumask.MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> ids = torch.tensor([[1, 10, 5, 2, 1, 11, 6, 7, 2, 0]])
    >>> gpumask.mask_labels(ids, spec, attention_mask=torch.tensor([[1] * 9 + [0]])).tolist()
    [[-100, -100, -100, -100, -100, -100, 6, 7, 2, -100]]
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from gpumask.padding import Batch
from gpumask.spec import MaskSpec
from gpumask.torch_backend import mask_labels_torch
from gpumask.torch_backend import tables as torch_tables

BACKENDS = ("auto", "torch", "triton")


class BatchTrainsNothingWarning(UserWarning):
    """`mask_labels` gave a batch in which no token trains (every label is `ignore_index`)."""


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


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


def _check_offsets_increase(cu_seqlens: torch.Tensor) -> None:
    """Offsets must not decrease. Checked where that needs no host sync (CPU tensors, eager
    calls); on a GPU, or under `torch.compile`, decreasing offsets are the caller's bug."""
    if not cu_seqlens.is_cpu or torch.compiler.is_compiling():
        return
    down = (cu_seqlens[1:] < cu_seqlens[:-1]).nonzero()
    if down.numel():
        i = int(down[0, 0])
        raise ValueError(
            f"cu_seqlens: offsets must not decrease, got {cu_seqlens.tolist()} "
            f"({int(cu_seqlens[i])} then {int(cu_seqlens[i + 1])} at index {i + 1})"
        )


def _check_fits(name: str, values, dtype: torch.dtype) -> None:
    """Every value in `values` (ints) fits `dtype`, the ids' dtype."""
    info = torch.iinfo(dtype)
    bad = [v for v in values if not info.min <= v <= info.max]
    if bad:
        raise ValueError(
            f"{name}: {bad[0]} does not fit input_ids' dtype {dtype} ([{info.min}, {info.max}])"
        )


def check_ignore_index(ignore_index: int, dtype: torch.dtype = torch.int64) -> None:
    """`ignore_index` is an int that fits the ids' dtype (int64 for the collators' batches)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
    _check_fits("ignore_index", [ignore_index], dtype)


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
        _check_offsets_increase(cu_seqlens)
    check_ignore_index(ignore_index, input_ids.dtype)
    _check_fits("spec.ignore_token_ids", spec.ignore_token_ids, input_ids.dtype)
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


def _chosen_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    return backend


def prepare(spec: MaskSpec, device: torch.device | str = "cpu", backend: str = "auto") -> None:
    """Build the tables `mask_labels` reads for `spec` on `device`, now, outside any compiled
    region. The first call on a device builds them anyway; under `torch.compile` that build
    would be traced into the graph and the cache it fills would cost one recompile, so
    :func:`gpumask.attach` and the collators call this for you. Call it yourself before
    compiling a step that calls `mask_labels` directly (or make one eager call first).

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> prepare(spec, "cpu")
        >>> step = torch.compile(lambda ids: mask_labels(ids, spec), dynamic=True)
    """
    if not isinstance(spec, MaskSpec):
        raise TypeError(f"spec: expected a gpumask.MaskSpec, got {type(spec).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if _chosen_backend(backend, device) == "triton":
        from gpumask.triton_backend import tables as triton_tables

        triton_tables(spec, device)
    torch_tables(spec, device)  # the Triton backend falls back to the torch backend


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

    Runs where the tensors are, with no host-device synchronisation and static shapes (the
    torch backend picks faster paths for eager CPU calls, where neither matters; the labels
    are the same). `backend="auto"` takes the Triton kernel for CUDA tensors when Triton is
    installed, else the torch implementation; both give identical labels.

    With `return_stats=True` the result is `(labels, stats)`, never synchronised, int64 on
    the ids' device: `stats["trained"]` `[B]`, trained tokens per row;
    `stats["role_tokens"]` `[B, n_roles + 1]`, real tokens per role (header tokens count
    with the role they open; the last column counts tokens in no role);
    `stats["dropped_turns"]` `[B]`, turns of a trained role that `tool_call_turns` dropped
    (rule 5: with "mask" the turns that call a tool, with "only" the others; 0 with "train").
    Without `return_stats`, an eager call on CPU tensors in which no token trains warns
    (:class:`BatchTrainsNothingWarning`); CUDA and compiled calls are not checked, as that
    would need a host sync.

    `cu_seqlens` are offsets that never decrease (`[0, 3, 7]`). They are checked for CPU
    tensors in eager calls; on CUDA, or under `torch.compile`, checking would stop for the
    device, so decreasing offsets give undefined labels there.

    Example::

        >>> spec = MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
        >>> mask_labels(torch.tensor([[1, 11, 6, 2, 1, 11, 7, 2]]), spec).tolist()
        [[-100, -100, 6, 2, -100, -100, 7, 2]]
    """
    validate_inputs(
        input_ids, spec, attention_mask, position_ids, cu_seqlens, ignore_index, generator, backend
    )
    uniforms = spec.draws(input_ids, generator)
    batch = Batch.of(input_ids, attention_mask, position_ids, cu_seqlens, uniforms)
    if _chosen_backend(backend, input_ids.device) == "triton":
        from gpumask.triton_backend import mask_labels_triton as run
    else:
        run = mask_labels_torch
    labels, stats = run(batch, spec, ignore_index, return_stats)
    if return_stats:
        return labels, stats
    if input_ids.device.type == "cpu" and not torch.compiler.is_compiling():
        warn_if_nothing_trains(labels, ignore_index)
    return labels
