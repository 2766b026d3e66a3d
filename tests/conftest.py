import os

# CUDA kernels run on Numba's simulator when no GPU is present; must be set before numba.cuda loads.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
