import os

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
