"""gpumask: completion-only training labels for chat fine-tuning, as batched tensor ops.

>>> import torch, gpumask
>>> spec = gpumask.MaskSpec(roles={"user": [1, 10], "assistant": [1, 11]}, end_of_turn=[2])
>>> gpumask.mask_labels(torch.tensor([[1, 10, 5, 2, 1, 11, 6, 2]]), spec).tolist()
[[-100, -100, -100, -100, -100, -100, 6, 2]]
"""

import importlib

from gpumask.masking import mask_labels, prepare
from gpumask.spec import MaskSpec, MaskSpecError

# Imported on first use, so that `import gpumask` does not pull in transformers.
_LAZY = {
    "CompletionCollator": "gpumask.collators",
    "DataCollatorForCompletionOnlyLM": "gpumask.trl_compat",
    "attach": "gpumask.hook",
    "detach": "gpumask.hook",
    "TemplateWarning": "gpumask.chat_templates",
}

__all__ = ["MaskSpec", "MaskSpecError", "mask_labels", "prepare", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpumask' has no attribute {name!r}")
