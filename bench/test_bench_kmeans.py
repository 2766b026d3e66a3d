"""1-D K-Means: "auto" beside scikit-learn KMeans, "optimal" beside the ckmeans package.

Run: ``.venv/bin/python -m pytest bench/test_bench_kmeans.py -s --benchmark-columns=min,median``
(``-s`` shows the table printed at the end). ``BITSUB_BENCH_KMEANS_NMAX`` caps n for a quick run
(default 1000000).

Cases: N(0,1) and Laplace values (float32, seeded), n in {1e4, 1e5, 1e6}, k in
{2, 4, 8, 16, 256}. Rows per case: ``bitsub-auto``, ``bitsub-lloyd``, ``sklearn``
(``KMeans(n_clusters=k, n_init="auto", random_state=0)`` on the (n, 1) float64 array, one round:
it is the slow baseline) and ``bitsub-optimal`` (exact DP, one round; its SSE is the reference).
The table gives, per case, sklearn time / auto time and auto, lloyd and sklearn SSE / optimal
SSE. Bars: auto within 0.1% (k <= 16) or 1% (k = 256) of the optimum, >= 10x faster than
sklearn, SSE not above sklearn's.

``test_kmeans_cpu``: n = 1e4 in CPU time rather than wall time (a loaded machine stretches wall
times, and scikit-learn's OpenMP threads most): auto's thread CPU time, median of 15 calls,
against scikit-learn's process CPU time on one thread (threadpoolctl), min of 3.

``test_optimal_vs_ckmeans``: ``kmeans_1d(method="optimal")`` beside ``ckmeans.ckmeans``
(Ckmeans.1d.dp's dynamic program in Rust; it stops at k = 255) at n = 1e6 (capped by the
environment variable), k in {4, 16, 255}, on N(0,1), Laplace and tight clusters far from zero;
one round each. The table gives optimal time / ckmeans time (bar: <= 1.5) and the relative SSE
difference of the two partitions.
"""

import os
import time

import numpy as np
import pytest

from bitsub.quant.kmeans import kmeans_1d

sklearn_cluster = pytest.importorskip("sklearn.cluster")

NMAX = int(os.environ.get("BITSUB_BENCH_KMEANS_NMAX", "1000000"))
SIZES = [n for n in (10_000, 100_000, 1_000_000) if n <= NMAX]
KS = [2, 4, 8, 16, 256]
CK_KS = [4, 16, 255]
DISTS = ["normal", "laplace"]
CK_DISTS = ["normal", "laplace", "clusters"]
IMPLS = ["bitsub-optimal", "bitsub-auto", "bitsub-lloyd", "sklearn"]
TIMES: dict[tuple, float] = {}  # (case, impl) -> median seconds
CPU: dict[str, tuple] = {}  # case -> (auto CPU seconds, sklearn one-thread CPU seconds)
SSE: dict[tuple, float] = {}

_data: dict[tuple, np.ndarray] = {}


def values(dist, n):
    key = (dist, n)
    if key not in _data:
        _data.clear()
        rng = np.random.default_rng(1000 + n + (dist == "laplace"))
        if dist == "normal":
            x = rng.standard_normal(n)
        elif dist == "laplace":
            x = rng.laplace(size=n)
        else:  # 300 tight clusters (spread 1e-3) at 1e4 + 0.5 * j, unequal sizes
            centre = 1e4 + 0.5 * rng.integers(0, 300, n) ** 1.5
            x = centre + 1e-3 * rng.standard_normal(n)
        _data[key] = x.astype(np.float32)
    return _data[key]


def sse(x, centroids, codes):
    return float(((x.astype(np.float64) - centroids.astype(np.float64)[codes]) ** 2).sum())


def run_sklearn(x, k):
    km = sklearn_cluster.KMeans(n_clusters=k, n_init="auto", random_state=0)
    labels = km.fit_predict(x.astype(np.float64).reshape(-1, 1))
    return km.cluster_centers_.reshape(-1), labels


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dist", DISTS)
def test_kmeans(benchmark, dist, n, k, impl):
    x = values(dist, n)
    case = f"{dist}-n{n}-k{k}"
    benchmark.group = case
    if impl == "sklearn":
        fn = run_sklearn
        rounds = 1
    else:
        method = impl.split("-")[1]

        def fn(x, k):
            return kmeans_1d(x, k, method=method)

        kmeans_1d(x[:1000], k, method=method)  # warm the JIT
        rounds = 1 if method == "optimal" else 5
    centroids, codes = benchmark.pedantic(fn, args=(x, k), rounds=rounds, iterations=1)
    TIMES[(case, impl)] = benchmark.stats.stats.median
    SSE[(case, impl)] = sse(x, centroids, codes)
    benchmark.extra_info["sse"] = SSE[(case, impl)]
    if (case, "bitsub-optimal") in SSE:
        benchmark.extra_info["sse_vs_optimal"] = SSE[(case, impl)] / SSE[(case, "bitsub-optimal")]


@pytest.mark.parametrize("impl", ["bitsub-optimal", "ckmeans"])
@pytest.mark.parametrize("k", CK_KS)
@pytest.mark.parametrize("dist", CK_DISTS)
def test_optimal_vs_ckmeans(benchmark, dist, k, impl):
    ckmeans = pytest.importorskip("ckmeans")
    n = max(SIZES)
    x = values(dist, n)
    case = f"ck-{dist}-n{n}-k{k}"
    benchmark.group = case
    if impl == "ckmeans":
        def fn():
            return ckmeans.ckmeans(x, k)

        clusters = benchmark.pedantic(fn, rounds=1, iterations=1)
        err = sum(float(((c - c.mean()) ** 2).sum()) for c in clusters)
    else:
        kmeans_1d(x[:1000], k, method="optimal")  # warm the JIT
        centroids, codes = benchmark.pedantic(kmeans_1d, args=(x, k), kwargs={"method": "optimal"},
                                              rounds=1, iterations=1)
        err = sse(x, centroids, codes)
    TIMES[(case, impl)] = benchmark.stats.stats.median
    SSE[(case, impl)] = err


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dist", DISTS)
def test_kmeans_cpu(dist, k):
    """n = 1e4 in CPU time, which load barely moves: auto's thread CPU time (median of 15)
    against scikit-learn's process CPU time on one thread (threadpoolctl; min of 3)."""
    from threadpoolctl import threadpool_limits

    x = values(dist, 10_000)
    kmeans_1d(x, k)  # warm the JIT
    ours = []
    for _ in range(15):
        t = time.thread_time()
        kmeans_1d(x, k)
        ours.append(time.thread_time() - t)
    theirs = []
    with threadpool_limits(1):
        for _ in range(3):
            t = time.process_time()
            run_sklearn(x, k)
            theirs.append(time.process_time() - t)
    CPU[f"{dist}-n10000-k{k}"] = (float(np.median(ours)), min(theirs))


@pytest.fixture(scope="module", autouse=True)
def ratio_table():
    yield
    if CPU:
        print("\ncase: sklearn one-thread CPU time / auto CPU time (n = 1e4)")
    for case, (ours, theirs) in CPU.items():
        print(f"{case:22s} cpu {theirs / ours:7.1f}x (auto {ours * 1e3:6.3f} ms, sklearn "
              f"{theirs * 1e3:7.1f} ms)")
    ck = sorted({c for c, i in TIMES if i == "ckmeans"})
    if ck:
        print("\ncase: bitsub optimal time / ckmeans time; "
              "(SSE optimal - SSE ckmeans) / SSE ckmeans")
    for case in ck:
        if (case, "bitsub-optimal") in TIMES:
            t_ratio = TIMES[(case, "bitsub-optimal")] / TIMES[(case, "ckmeans")]
            ours, theirs = SSE[(case, "bitsub-optimal")], SSE[(case, "ckmeans")]
            print(f"{case:26s} time {t_ratio:5.2f}x (optimal "
                  f"{TIMES[(case, 'bitsub-optimal')]:7.2f} s, ckmeans "
                  f"{TIMES[(case, 'ckmeans')]:7.2f} s)  SSE {(ours - theirs) / theirs:+.2e}")
    print("\ncase: sklearn/auto time; SSE / optimal SSE for auto, lloyd, sklearn; auto <= sklearn")
    def order(case):
        dist, n, k = case.split("-")
        return dist, int(n[1:]), int(k[1:])

    for case in sorted({c for c, _ in TIMES if not c.startswith("ck-")}, key=order):
        t_auto = TIMES.get((case, "bitsub-auto"))
        t_sk = TIMES.get((case, "sklearn"))
        opt = SSE.get((case, "bitsub-optimal"))
        if t_auto is None or t_sk is None or opt is None:
            continue
        rel = {i: SSE.get((case, i), float("nan")) / opt
               for i in ("bitsub-auto", "bitsub-lloyd", "sklearn")}
        not_above = SSE[(case, "bitsub-auto")] <= SSE[(case, "sklearn")]
        print(
            f"{case:22s} time {t_sk / t_auto:7.1f}x (auto {t_auto * 1e3:8.2f} ms, optimal "
            f"{TIMES[(case, 'bitsub-optimal')] * 1e3:9.1f} ms)  SSE/opt auto "
            f"{rel['bitsub-auto']:.6f} lloyd {rel['bitsub-lloyd']:.6f} sklearn "
            f"{rel['sklearn']:.6f}  auto<=sklearn {not_above}"
        )
