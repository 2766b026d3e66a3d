import os

from hypothesis import settings

# CUDA kernels run on Numba's simulator when no GPU is present; must be set before numba.cuda loads.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# CI runs the same examples every time (reproducible); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
