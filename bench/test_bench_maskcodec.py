"""Mask codec: bitsub encode_mask / decode_mask beside zlib's Huffman-only mode, same run.

Run: ``.venv/bin/python -m pytest bench/test_bench_maskcodec.py -s --benchmark-columns=min,median``
(``-s`` prints the size and speed tables). ``BITSUB_BENCH_MASK_N`` sets the positions per mask,
comma-separated (default ``1000000,4000000``, the sizes of the mid-density bar; ``10000000`` is the
large size). The ratios use CPU time (``time.process_time``; both sides run on one thread),
so that time spent descheduled on a shared machine does not count.

Baseline: ``zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)`` on
``np.packbits(mask)``, the packing counted in the encode time and the unpacking back to a bool
array in the decode time. Sizes are also compared with zlib level 9 and zstd level 19 (when
zstandard is installed) and, for i.i.d. masks, with the entropy n * H(p); they go into each
benchmark's extra_info. Masks: i.i.d. densities 0.5, 0.3, 0.2, 0.1, 0.05, 0.01, and masks with
structure: rows pruned together, 16-position blocks pruned together, and clustered runs. Each
case runs bitsub and zlib alternately, round by round, so that both see the same load (60
rounds at 10^6 positions, 15 from 4 x 10^6).
"""

import os
import time
import zlib

import numpy as np
import pytest

from bitsub.codecs.maskcodec import decode_mask, encode_mask, mask_scheme

SIZES_N = [int(v) for v in os.environ.get("BITSUB_BENCH_MASK_N", "1000000,4000000").split(",")]
CASES = ["iid-0.5", "iid-0.3", "iid-0.2", "iid-0.1", "iid-0.05", "iid-0.01", "rows", "blocks16",
         "clustered"]
TIMES: dict[tuple, float] = {}
SIZES: dict[str, dict] = {}
_masks: dict[tuple, np.ndarray] = {}


def make_mask(case: str, N: int) -> np.ndarray:  # noqa: N803 (the size, as in the tables)
    """Seeded mask of about N positions for a case id."""
    if (case, N) in _masks:
        return _masks[(case, N)]
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
    _masks[(case, N)] = m
    return m


def entropy_bytes(mask: np.ndarray) -> float:
    """n H(q) of the mask's own density q, in bytes."""
    q = mask.mean()
    if q in (0, 1):
        return 0.0
    return mask.size * -(q * np.log2(q) + (1 - q) * np.log2(1 - q)) / 8


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
        if case.startswith("iid-"):
            row["n*H(p)"] = entropy_bytes(mask)
        SIZES[case] = row
    return SIZES[case]


def rounds_for(n: int) -> int:
    """Rounds of `alternate` for masks of n positions: more for small masks (60 at 10**6, 15
    from 4 x 10**6), whose min over a few rounds is noisy on a loaded machine."""
    return max(15, int(6e7 // max(n, 1)))


def alternate(fns: dict, rounds: int = 15) -> dict:
    """Min CPU time of each function over `rounds`, the functions run in turn in each round."""
    for fn in fns.values():
        fn()  # warm-up (and the JIT)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    return best


@pytest.mark.parametrize("N", SIZES_N)
@pytest.mark.parametrize("case", CASES)
def test_encode(benchmark, case, N):  # noqa: N803
    mask = make_mask(case, N)
    key = f"encode-{case}-{N}"
    benchmark.group = key
    benchmark.extra_info.update(sizes(f"{case}-{N}", mask))
    best = alternate({"bitsub": lambda: encode_mask(mask),
                      "zlib-huffman": lambda: zlib_huffman_encode(mask)}, rounds_for(N))
    out = benchmark.pedantic(encode_mask, args=(mask,), rounds=1, iterations=1)
    assert len(out) > 0
    benchmark.extra_info.update({f"min-{k}": v for k, v in best.items()})
    for impl, t in best.items():
        TIMES[(key, impl)] = t


@pytest.mark.parametrize("N", SIZES_N)
@pytest.mark.parametrize("case", CASES)
def test_decode(benchmark, case, N):  # noqa: N803
    mask = make_mask(case, N)
    key = f"decode-{case}-{N}"
    data = encode_mask(mask)
    zdata = zlib_huffman_encode(mask)
    benchmark.group = key
    benchmark.extra_info.update(sizes(f"{case}-{N}", mask))
    best = alternate({"bitsub": lambda: decode_mask(data),
                      "zlib-huffman": lambda: zlib_huffman_decode(zdata, mask.size)},
                     rounds_for(N))
    out = benchmark.pedantic(decode_mask, args=(data,), rounds=1, iterations=1)
    assert np.array_equal(out.reshape(mask.shape), mask)
    assert np.array_equal(zlib_huffman_decode(zdata, mask.size).reshape(mask.shape), mask)
    benchmark.extra_info.update({f"min-{k}": v for k, v in best.items()})
    for impl, t in best.items():
        TIMES[(key, impl)] = t


@pytest.fixture(scope="module", autouse=True)
def ratio_table():
    yield
    print("\nmask sizes: bytes, and each size / bitsub's (>1: bitsub smaller)")
    for case, row in SIZES.items():
        ours = row["bitsub"]
        others = "  ".join(
            f"{k} {v / ours:.4f}" for k, v in row.items() if k not in ("bitsub", "scheme")
        )
        print(f"{case:18s} {row['scheme']:6s} {ours:9d} B  {others}")
    print("speed: zlib-huffman time / bitsub time (>1: bitsub faster), min CPU time over"
          " rounds_for(n) alternating rounds")
    for key in sorted({c for c, _ in TIMES}):
        ours = TIMES.get((key, "bitsub"))
        base = TIMES.get((key, "zlib-huffman"))
        if ours and base:
            n = int(key.rsplit("-", 1)[1])
            print(f"{key:28s} {base / ours:6.2f}x   {n / ours / 1e6:8.1f} M positions/s")
