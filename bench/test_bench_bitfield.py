"""pack_bits / unpack_bits beside a NumPy packbits/unpackbits baseline, in the same run.

Run: ``.venv/bin/python -m pytest bench/test_bench_bitfield.py -s --benchmark-columns=min,median``
(``-s`` prints the ratio table). ``BITSUB_BENCH_BITFIELD_N`` sets the number of codes
(default 4194304).

Baseline: codes -> an (n, bits) 0/1 matrix by shifts -> ``np.packbits``; and back with
``np.unpackbits`` and a weighted sum of the bit columns. Both produce the same MSB-first bytes.
"""

import os

import numpy as np
import pytest

from bitsub.codecs.bitfield import pack_bits, unpack_bits

N = int(os.environ.get("BITSUB_BENCH_BITFIELD_N", str(1 << 22)))
BITS = [1, 2, 3, 4, 5, 8, 12, 16]
TIMES: dict[tuple, float] = {}


def numpy_pack(codes, bits):
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    matrix = ((codes.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(matrix.reshape(-1))


def numpy_unpack(data, bits, count):
    matrix = np.unpackbits(data, count=count * bits).reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint32)
    out = matrix @ weights
    return out.astype(np.uint8 if bits <= 8 else np.uint16)


def codes_for(bits):
    rng = np.random.default_rng(bits)
    return rng.integers(0, 1 << bits, N).astype(np.uint8 if bits <= 8 else np.uint16)


@pytest.mark.parametrize("impl", ["bitsub", "numpy"])
@pytest.mark.parametrize("bits", BITS)
def test_pack(benchmark, bits, impl):
    codes = codes_for(bits)
    fn = pack_bits if impl == "bitsub" else numpy_pack
    fn(codes[:100], bits)  # warm the JIT
    benchmark.group = f"pack-{bits}bit"
    out = benchmark.pedantic(fn, args=(codes, bits), rounds=5, iterations=1, warmup_rounds=1)
    assert out.size == (N * bits + 7) // 8
    TIMES[(f"pack-{bits}bit", impl)] = benchmark.stats.stats.median


@pytest.mark.parametrize("impl", ["bitsub", "numpy"])
@pytest.mark.parametrize("bits", BITS)
def test_unpack(benchmark, bits, impl):
    codes = codes_for(bits)
    data = pack_bits(codes, bits)
    fn = unpack_bits if impl == "bitsub" else numpy_unpack
    fn(data[:100], bits, 8)  # warm the JIT
    benchmark.group = f"unpack-{bits}bit"
    out = benchmark.pedantic(fn, args=(data, bits, N), rounds=5, iterations=1, warmup_rounds=1)
    assert np.array_equal(out, codes)
    TIMES[(f"unpack-{bits}bit", impl)] = benchmark.stats.stats.median


def test_same_bytes_as_baseline():
    for bits in BITS:
        codes = codes_for(bits)[:10001]
        assert np.array_equal(pack_bits(codes, bits), numpy_pack(codes, bits))


@pytest.fixture(scope="module", autouse=True)
def ratio_table():
    yield
    print(f"\n{N} codes: numpy time / bitsub time (>1: bitsub faster); bitsub codes per second")
    def order(case):
        op, bits = case.split("-")
        return op, int(bits[:-3])

    for case in sorted({c for c, _ in TIMES}, key=order):
        ours = TIMES.get((case, "bitsub"))
        base = TIMES.get((case, "numpy"))
        if ours and base:
            print(f"{case:12s} {base / ours:7.1f}x   {N / ours / 1e6:8.1f} M codes/s")
