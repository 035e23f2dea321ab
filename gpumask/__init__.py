"""gpumask: completion-only training labels for chat fine-tuning, as batched tensor ops.

    >>> import torch, gpumask
    >>> spec = gpumask.MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
    >>> gpumask.mask_labels(torch.tensor([[1, 10, 5, 2, 1, 11, 6, 2]]), spec).tolist()
    [[-100, -100, -100, -100, -100, -100, 6, 2]]
"""

from gpumask.masking import mask_labels
from gpumask.spec import MaskSpec, MaskSpecError

__all__ = ["MaskSpec", "MaskSpecError", "mask_labels"]
__version__ = "0.1.0"
