"""Set-up for every pytest run here: the suite under tests/ and the docstring examples of
gpumask/ (`--doctest-modules`). Triton's interpreter runs kernels on CPU tensors, but only when
TRITON_INTERPRET=1 is set before triton is first imported, so it is set here, first thing, on
machines without an NVIDIA GPU; nothing is fetched from the model hub."""

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
