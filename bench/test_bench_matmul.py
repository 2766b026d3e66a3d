"""Packed sparse matmul against dense and sparse baselines, all in the same run.

Run: ``.venv/bin/python -m pytest bench/test_bench_matmul.py -s --benchmark-columns=min,median``
(``-s`` shows the ratio table printed at the end). ``BITSUB_BENCH_N`` shrinks the square layer
(default 4096) for a quick run. The 4096 x 4096 cases run at 1 and at 2 threads (``t1``/``t2`` in
the case name): numpy's BLAS and torch limited with threadpoolctl / ``torch.set_num_threads``,
bitsub's engine threads (:mod:`bitsub.threads`) set to the same number. Every case is seeded;
the JIT is warmed before timing.

Cases: batch 1, N x N, 4-bit codes, task density 10/20/50/100% against numpy dense
float32 (pre-decoded weights), torch dense, scipy.sparse CSR and torch sparse_csr; a STREAM-like
read of a 64 MiB array (the read bandwidth; the bitsub row reports plan bytes per call over that
bandwidth, the distance to the physical limit); batch 64 and 256 against numpy dense and torch
sparse_csr; MLP shapes (100x784, 100x100, 10x100) at batch 1 and 256 against numpy dense.
"""

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bitsub.kernels.matmul import matmul
from bitsub.kernels.plan import build_plan

torch = pytest.importorskip("torch")

N = int(os.environ.get("BITSUB_BENCH_N", "4096"))
THREADS = 2  # the MLP shapes and the stream read
THREAD_CASES = [1, 2]
DENSITIES = [0.1, 0.2, 0.5, 1.0]
RESULTS: dict[tuple, tuple[float, float]] = {}  # (case, impl) -> (median, min) seconds
BYTES: dict[tuple, int] = {}



def make_layer(out, n_in, density, seed, bits=4):
    rng = np.random.default_rng(seed)
    mask = rng.random((out, n_in)) < density
    source = np.where(mask, 0, -1).astype(np.int32)
    codebook = np.sort(rng.standard_normal(1 << bits)).astype(np.float32)
    codes = rng.integers(0, 1 << bits, (out, n_in)).astype(np.uint32)
    plan = build_plan(mask, source, codes, {0: codebook})
    dense = np.where(mask, codebook[codes], np.float32(0)).astype(np.float32)
    return plan, dense


_layers: dict[tuple, tuple] = {}


def layer(out, n_in, density):
    key = (out, n_in, density)
    if key not in _layers:
        _layers.clear()  # keep one big layer alive at a time
        plan, dense = make_layer(out, n_in, density, seed=int(density * 1000) + out)
        csr = sp.csr_matrix(dense)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: "sparse CSR support is in beta"
            tcsr = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                           torch.from_numpy(csr.indices.astype(np.int64)),
                                           torch.from_numpy(csr.data), size=dense.shape)
        _layers[key] = (plan, dense, torch.from_numpy(dense), csr, tcsr)
    return _layers[key]


def impls(out, n_in, density, batch):
    plan, dense, tdense, csr, tcsr = layer(out, n_in, density)
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, n_in) if batch > 1 else n_in).astype(np.float32)
    tx = torch.from_numpy(x)
    xt = np.ascontiguousarray(x.T) if batch > 1 else x
    txt = torch.from_numpy(xt)
    return plan, {
        "bitsub": lambda: matmul(plan, x),
        "numpy-dense": lambda: x @ dense.T,
        "torch-dense": lambda: tx @ tdense.T,
        "scipy-csr": lambda: csr @ xt,
        "torch-sparse-csr": lambda: tcsr @ txt,
    }


@contextlib.contextmanager
def n_threads(n):
    """Every pool at n threads: BLAS (threadpoolctl), torch and bitsub's engine threads."""
    engine, torch_n = numba.config.NUMBA_NUM_THREADS, torch.get_num_threads()
    numba.config.NUMBA_NUM_THREADS = n  # what bitsub.threads.engine_threads() reads
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n, user_api="blas"):
            yield
    finally:
        numba.config.NUMBA_NUM_THREADS = engine
        torch.set_num_threads(torch_n)


def _run(benchmark, case, impl, fn, threads=THREADS):
    with n_threads(threads):
        fn()  # warm the JIT and caches
        benchmark.group = case
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            benchmark(fn)
    RESULTS[(case, impl)] = (benchmark.stats.stats.median, benchmark.stats.stats.min)


BATCH1 = ["bitsub", "numpy-dense", "torch-dense", "scipy-csr", "torch-sparse-csr"]


@pytest.mark.parametrize("impl", BATCH1)
@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: f"d{int(d * 100)}")
@pytest.mark.parametrize("threads", THREAD_CASES, ids=lambda t: f"t{t}")
def test_batch1(benchmark, threads, density, impl):
    plan, fns = impls(N, N, density, 1)
    case = f"b1-{N}x{N}-d{int(density * 100)}-t{threads}"
    read = ((plan.lut_codes, plan.lut_mask) if plan.layout != "sell" else
            (plan.slice_ptr, plan.slice_len, plan.cols, plan.codes))  # what the b1 kernel reads
    BYTES[case] = sum(a.nbytes for a in read) + plan.codebook.nbytes + 4 * (N + N)
    _run(benchmark, case, impl, fns[impl], threads)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _sum(a):
    s = np.float32(0.0)
    for i in range(a.size):  # a loop from 0 (a range from lo does not vectorize)
        s += a[i]
    return s


def test_stream_read(benchmark):
    a = np.ones(64 * 2**20 // 4, np.float32)
    step = -(-a.size // THREADS)
    pool = ThreadPoolExecutor(max(1, THREADS - 1))

    def read():  # THREADS threads, each summing its part (the kernel releases the GIL)
        parts = [pool.submit(_sum, a[lo: lo + step]) for lo in range(step, a.size, step)]
        return _sum(a[:step]) + sum(f.result() for f in parts)

    _run(benchmark, "stream-read-64MiB", "numba-sum", read)
    BYTES["stream-read-64MiB"] = a.nbytes
    pool.shutdown()


@pytest.mark.parametrize("impl", ["bitsub", "numpy-dense", "torch-sparse-csr"])
@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: f"d{int(d * 100)}")
@pytest.mark.parametrize("batch", [64, 256], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("threads", THREAD_CASES, ids=lambda t: f"t{t}")
def test_batched(benchmark, threads, batch, density, impl):
    _, fns = impls(N, N, density, batch)
    _run(benchmark, f"b{batch}-{N}x{N}-d{int(density * 100)}-t{threads}", impl, fns[impl],
         threads)


@pytest.mark.parametrize("impl", ["bitsub", "numpy-dense"])
@pytest.mark.parametrize("density", [0.2, 1.0], ids=lambda d: f"d{int(d * 100)}")
@pytest.mark.parametrize("batch", [1, 256], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("shape", [(100, 784), (100, 100), (10, 100)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_mlp(benchmark, shape, batch, density, impl):
    _, fns = impls(shape[0], shape[1], density, batch)
    _run(benchmark, f"mlp-{shape[0]}x{shape[1]}-b{batch}-d{int(density * 100)}", impl,
         fns[impl])


@pytest.fixture(scope="module", autouse=True)
def ratio_table():
    yield
    bw = None
    if ("stream-read-64MiB", "numba-sum") in RESULTS:
        bw = BYTES["stream-read-64MiB"] / RESULTS[("stream-read-64MiB", "numba-sum")][0]
        print(f"\nread bandwidth (64 MiB, {THREADS} threads, median): {bw / 1e9:.1f} GB/s")
    print("case: bitsub median (min); baseline time / bitsub time, medians (mins); >1: faster")
    for case in sorted({c for c, _ in RESULTS}):
        ours = RESULTS.get((case, "bitsub"))
        if ours is None:
            continue
        parts = []
        for (c, impl), (med, low) in sorted(RESULTS.items()):
            if c == case and impl != "bitsub":
                parts.append(f"{impl} {med / ours[0]:.2f}x ({low / ours[1]:.2f}x)")
        line = f"{case}: {ours[0] * 1e3:.3f} ms ({ours[1] * 1e3:.3f}); " + ", ".join(parts)
        if bw and case in BYTES:
            limit = BYTES[case] / bw
            line += (f"; reads {BYTES[case] / 2**20:.1f} MiB/call, at the measured bandwidth "
                     f"{limit * 1e3:.3f} ms = {limit / ours[0]:.2f} of our time")
        print(line)
