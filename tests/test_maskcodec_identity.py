"""The encoder's bytes stay those of the encoder before the speed-ups of pruned-row masks.

tests/data/maskcodec_digests.json holds the sha256 of `encode_mask` for every mask of
`identity_cases`, written by the encoder of commit cdd101e (before its scans and kernels were
made faster); the encodings must not change, byte for byte.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bitsub import decode_mask, encode_mask

DIGESTS = Path(__file__).parent / "data" / "maskcodec_digests.json"


def identity_mask(kind: str, n: int, seed: int) -> np.ndarray:
    """A seeded mask of about n positions (its shape depends on the kind)."""
    rng = np.random.default_rng(seed)
    if kind.startswith("iid"):
        return rng.random(n) < float(kind[3:])
    if kind == "rows":
        # Rows pruned whole, the kept rows at some density; row length varies.
        width = int(rng.integers(1, 1500))
        rows = max(n // width, 1)
        keep = rng.random(rows) < rng.random()
        return keep[:, None] & (rng.random((rows, width)) < rng.uniform(0.05, 0.95))
    if kind == "blocks":
        size = int(rng.choice([2, 4, 8, 16, 32, 64]))
        return np.repeat(rng.random(n // size + 1) < rng.random(), size)[:n]
    if kind == "clustered":
        k = n // 10 + 4
        runs = np.empty(2 * k, dtype=np.int64)
        runs[0::2] = rng.geometric(1 / rng.uniform(1, 200), k)
        runs[1::2] = rng.geometric(1 / rng.uniform(1, 200), k)
        return np.repeat(np.arange(2 * k) % 2 == 1, runs)[:n]
    if kind == "alternating":
        return np.arange(n) % 2 == rng.integers(0, 2)
    # "longruns": a few very long runs of either value.
    cuts = np.sort(rng.integers(0, n + 1, int(rng.integers(0, 6))))
    return (np.searchsorted(cuts, np.arange(n), side="right") % 2).astype(bool)


KINDS = ["iid0.5", "iid0.3", "iid0.2", "iid0.1", "iid0.05", "iid0.01", "iid0.001", "iid0.97",
         "rows", "blocks", "clustered", "alternating", "longruns"]


def identity_cases() -> list[tuple[str, int, int]]:
    """(kind, n, seed): every kind at small sizes (n not a multiple of 8 among them), at the
    two-segment threshold and at bench sizes."""
    cases = []
    rng = np.random.default_rng(2026)
    for kind in KINDS:
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 32767, 32768, 32769]:
            cases.append((kind, n, len(cases)))
        for _ in range(12):
            cases.append((kind, int(rng.integers(1, 300_000)), len(cases)))
    for kind in ["rows", "blocks", "clustered", "iid0.3", "iid0.2", "iid0.1"]:
        for n in [1_000_000, 4_000_000]:
            cases.append((kind, n, len(cases)))
    return cases


def digest(kind: str, n: int, seed: int) -> str:
    return hashlib.sha256(encode_mask(identity_mask(kind, n, seed))).hexdigest()


def write_digests() -> None:
    """Regenerate the digest file (only with the encoder of the commit named above)."""
    DIGESTS.write_text(json.dumps({f"{k}-{n}-{s}": digest(k, n, s) for k, n, s in
                                   identity_cases()}, indent=0) + "\n")


@pytest.mark.parametrize("kind", KINDS)
def test_encodings_are_byte_identical_to_the_earlier_encoder(kind):
    want = json.loads(DIGESTS.read_text())
    cases = [c for c in identity_cases() if c[0] == kind]
    assert cases
    for k, n, s in cases:
        assert digest(k, n, s) == want[f"{k}-{n}-{s}"], (k, n, s)


def test_identity_masks_round_trip():
    for kind, n, seed in identity_cases()[::7]:
        mask = identity_mask(kind, n, seed)
        np.testing.assert_array_equal(decode_mask(encode_mask(mask), max_positions=mask.size), mask)
