"""Test set-up: fixture paths, `cuda` tests skipped without a CUDA device, and Triton's
interpreter given a tree scan (see interpreter_scan.py). The environment (TRITON_INTERPRET,
HF_HUB_OFFLINE) is set by the conftest.py at the repository root."""

import os

import pytest
import torch
from interpreter_scan import install

if os.environ.get("TRITON_INTERPRET") == "1":
    install()

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOKENIZERS = os.path.join(FIXTURES, "tokenizers")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
