"""Test set-up. Triton's interpreter runs kernels on CPU tensors, but only when
TRITON_INTERPRET=1 is set before triton is first imported, so it is set here, first thing,
on machines without an NVIDIA GPU."""

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOKENIZERS = os.path.join(FIXTURES, "tokenizers")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
