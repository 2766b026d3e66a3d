import os

import numpy as np
import pytest
from hypothesis import settings

# CUDA kernels run on Numba's simulator when no GPU is present; must be set before numba.cuda loads.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# The same CPU kernels as bitsub's commands (AVX2 on any x86-64 machine that has it), so a test
# computes what it computed on the machine it was written on; set before torch's first operation.
from bitsub_torch.cpukernels import pin_cpu_kernels  # noqa: E402

pin_cpu_kernels()

# CI runs the same examples every time (reproducible); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """Random uint8 images in Fashion-MNIST's IDX files (120 training, 40 test; labels cycling
    through the 10 classes), made the Fashion-MNIST scenarios' default directory."""
    from bitsub_torch.data import scenarios

    rng = np.random.default_rng(0)
    fm = tmp_path / "fm"
    fm.mkdir()
    for split, n in (("train", 120), ("t10k", 40)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                          ("labels-idx1", np.arange(n) % 10)):
            header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
            (fm / f"{split}-{kind}-ubyte").write_bytes(
                header + np.ascontiguousarray(arr, dtype=">u1").tobytes())
    monkeypatch.setattr(scenarios, "FASHION_MNIST_DEFAULT_DIR", fm)
    return fm
