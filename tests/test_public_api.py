"""The public surface: pinned names, and `import bitsub` touches neither torch nor CUDA."""

import subprocess
import sys

import bitsub


def test_all_is_sorted_and_importable():
    assert list(bitsub.__all__) == sorted(bitsub.__all__)
    for name in bitsub.__all__:
        assert hasattr(bitsub, name), name


def test_import_bitsub_imports_neither_torch_nor_cuda():
    code = (
        "import sys, bitsub\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')"
        " or m.startswith('numba.cuda')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
