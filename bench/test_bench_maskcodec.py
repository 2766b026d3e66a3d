"""Mask codec: bitsub encode_mask / decode_mask beside zlib's Huffman-only mode, same run.

Run: ``.venv/bin/python -m pytest bench/test_bench_maskcodec.py -s --benchmark-columns=min,median``
(``-s`` prints the size and speed tables). ``BITSUB_BENCH_MASK_N`` sets the positions per mask
(default 10**7, as in issue 2). On a shared machine add ``--benchmark-timer=time.process_time``
so that time spent descheduled does not count (both sides run on one thread).

Baseline (issue 2): ``zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)`` on
``np.packbits(mask)``, the packing counted in the encode time and the unpacking back to a bool
array in the decode time. Sizes are also compared with zlib level 9 and zstd level 19 (when
zstandard is installed) and, for i.i.d. masks, with the entropy n * H(p); they go into each
benchmark's extra_info. Masks: i.i.d. densities 0.5, 0.2, 0.05, 0.01, and masks with structure:
rows pruned together, 16-position blocks pruned together, and clustered runs.
"""

import os
import zlib

import numpy as np
import pytest

from bitsub.codecs.maskcodec import decode_mask, encode_mask, mask_scheme

N = int(os.environ.get("BITSUB_BENCH_MASK_N", str(10**7)))
CASES = ["iid-0.5", "iid-0.2", "iid-0.05", "iid-0.01", "rows", "blocks16", "clustered"]
TIMES: dict[tuple, float] = {}
SIZES: dict[str, dict] = {}
_masks: dict[str, np.ndarray] = {}


def make_mask(case: str) -> np.ndarray:
    """Seeded mask of about N positions for a case id."""
    if case in _masks:
        return _masks[case]
    rng = np.random.default_rng(CASES.index(case))
    if case.startswith("iid-"):
        m = rng.random(N) < float(case[4:])
    elif case == "rows":
        # A (rows, 1000) layer: 60% of the rows pruned whole, the rest at density 0.3.
        rows = N // 1000
        keep = rng.random(rows) < 0.4
        m = keep[:, None] & (rng.random((rows, 1000)) < 0.3)
    elif case == "blocks16":
        # Blocks of 16 positions kept or pruned together, 25% kept.
        m = np.repeat(rng.random(N // 16) < 0.25, 16)
    else:
        # Alternating runs: zeros of mean length 60, ones of mean length 20.
        k = 2 * (N // 80) + 16
        runs = np.empty(2 * k, dtype=np.int64)
        runs[0::2] = rng.geometric(1 / 60, k)
        runs[1::2] = rng.geometric(1 / 20, k)
        values = np.arange(2 * k) % 2 == 1
        m = np.repeat(values, runs)[:N]
    _masks.clear()
    _masks[case] = m
    return m


def entropy_bytes(case: str) -> float | None:
    if not case.startswith("iid-"):
        return None
    p = float(case[4:])
    return N * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8


def zlib_huffman_encode(mask: np.ndarray) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return c.compress(np.packbits(mask)) + c.flush()


def zlib_huffman_decode(data: bytes, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(zlib.decompress(data), np.uint8), count=n).view(bool)


def sizes(case: str, mask: np.ndarray) -> dict:
    if case not in SIZES:
        packed = np.packbits(mask).tobytes()
        enc = encode_mask(mask)
        row = {
            "bitsub": len(enc),
            "scheme": mask_scheme(enc)[0],
            "zlib-huffman": len(zlib_huffman_encode(mask)),
            "zlib-9": len(zlib.compress(packed, 9)),
        }
        try:
            import zstandard

            row["zstd-19"] = len(zstandard.ZstdCompressor(level=19).compress(packed))
        except ImportError:
            pass
        if entropy_bytes(case):
            row["n*H(p)"] = entropy_bytes(case)
        SIZES[case] = row
    return SIZES[case]


@pytest.mark.parametrize("impl", ["bitsub", "zlib-huffman"])
@pytest.mark.parametrize("case", CASES)
def test_encode(benchmark, case, impl):
    mask = make_mask(case)
    fn = encode_mask if impl == "bitsub" else zlib_huffman_encode
    fn(mask[:1000])  # warm the JIT
    benchmark.group = f"encode-{case}"
    benchmark.extra_info.update(sizes(case, mask))
    out = benchmark.pedantic(fn, args=(mask,), rounds=7, iterations=1, warmup_rounds=1)
    assert len(out) > 0
    TIMES[(f"encode-{case}", impl)] = benchmark.stats.stats.min


@pytest.mark.parametrize("impl", ["bitsub", "zlib-huffman"])
@pytest.mark.parametrize("case", CASES)
def test_decode(benchmark, case, impl):
    mask = make_mask(case)
    if impl == "bitsub":
        data = encode_mask(mask)
        fn, args = decode_mask, (data,)
        decode_mask(encode_mask(mask[:1000]))  # warm the JIT
    else:
        data = zlib_huffman_encode(mask)
        fn, args = zlib_huffman_decode, (data, mask.size)
    benchmark.group = f"decode-{case}"
    benchmark.extra_info.update(sizes(case, mask))
    out = benchmark.pedantic(fn, args=args, rounds=7, iterations=1, warmup_rounds=1)
    assert np.array_equal(out.reshape(mask.shape), mask)
    TIMES[(f"decode-{case}", impl)] = benchmark.stats.stats.min


@pytest.fixture(scope="module", autouse=True)
def ratio_table():
    yield
    print(f"\nmask sizes, {N} positions: bytes, and each size / bitsub's (>1: bitsub smaller)")
    for case, row in SIZES.items():
        ours = row["bitsub"]
        others = "  ".join(
            f"{k} {v / ours:.4f}" for k, v in row.items() if k not in ("bitsub", "scheme")
        )
        print(f"{case:10s} {row['scheme']:6s} {ours:9d} B  {others}")
    print("speed: zlib-huffman time / bitsub time (>1: bitsub faster), min of 7 rounds")
    for key in sorted({c for c, _ in TIMES}):
        ours = TIMES.get((key, "bitsub"))
        base = TIMES.get((key, "zlib-huffman"))
        if ours and base:
            print(f"{key:20s} {base / ours:6.2f}x   {N / ours / 1e6:8.1f} M positions/s")
