"""Slow, obvious references for every fast kernel. Fast code is compared against these in tests.

Each section belongs to one module of bitsub; keep them simple enough to be right by inspection.
"""

from __future__ import annotations

import numpy as np  # noqa: F401

# ---------------------------------------------------------------- bit fields (bitsub.bitfield)

# ---------------------------------------------------------------- Huffman masks (bitsub.maskcodec)

# ---------------------------------------------------------------- K-Means (bitsub.kmeans)

# ---------------------------------------------------------------- packed model (bitsub.packed)

# ---------------------------------------------------------------- matmul (bitsub.matmul)
