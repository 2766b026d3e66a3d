"""Fork safety: after large engine calls in the parent, a forked child repeats them and finishes.

Engine pools whose threads do not exist in a forked child would make the child wait forever;
:mod:`bitsub.threads` re-creates them after fork. The child runs under a timeout and reports
its results through a pipe, compared bit for bit with the parent's.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys

import numpy as np
import pytest

import bitsub
import bitsub.model.packed
from bitsub import threads

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

N = 2048  # the bar: a 2048 x 2048 layer
TIMEOUT_S = 120


def _model() -> bitsub.PackedModel:
    rng = np.random.default_rng(0)
    pm = bitsub.PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", (N, N))
    w = rng.standard_normal((N, N)).astype(np.float32)
    mask = rng.random((N, N)) < 0.5
    pm.add_task({"fc": bitsub.TaskLayer(mask, write=mask, values=w, bits=4)})
    return pm


def _calls(pm: bitsub.PackedModel, path: str | None) -> dict[str, np.ndarray]:
    """Large calls that split over the engine's threads: matmul at batch 1 and 64, decode, load."""
    rng = np.random.default_rng(1)
    out = {
        "y1": pm.matmul(0, "fc", rng.standard_normal(N).astype(np.float32)),
        "y64": pm.matmul(0, "fc", rng.standard_normal((64, N)).astype(np.float32)),
        "w": pm.weights(0, "fc"),
    }
    if path is not None:
        out["loaded"] = bitsub.load(path).weights(0, "fc")
    return out


def _in_child(fn, *args) -> dict[str, np.ndarray]:
    """Run fn(*args) in a forked child; its pickled result comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 0
        try:
            os.close(r)
            data = pickle.dumps(fn(*args))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:  # noqa: BLE001 (report anything, then leave without cleanup)
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    import select

    chunks = []
    with os.fdopen(r, "rb") as f:
        while True:
            ready, _, _ = select.select([f], [], [], TIMEOUT_S)
            if not ready:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child hung for {TIMEOUT_S} s")
            chunk = os.read(f.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"
    return pickle.loads(b"".join(chunks))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_child_repeats_matmul_and_decode_after_fork():
    pm = _model()
    parent = _calls(pm, None)
    _assert_same(_in_child(_calls, pm, None), parent)
    _assert_same(_calls(pm, None), parent)  # and the parent's pool still works


def test_child_repeats_load_after_fork(tmp_path):
    pm = _model()
    path = str(tmp_path / "model.h5")
    pm.save(path)
    parent = _calls(pm, path)
    _assert_same(_in_child(_calls, pm, path), parent)


def test_child_hashes_words_after_the_parent_did():
    words = np.arange(1 << 22, dtype=np.uint32)
    parent = {"h": np.array(bitsub.model.packed.words_hash(words), dtype=np.uint64)}

    def child():
        return {"h": np.array(bitsub.model.packed.words_hash(words), dtype=np.uint64)}

    _assert_same(_in_child(child), parent)


def test_engine_pool_is_recreated_in_child():
    pool = threads.engine_pool()
    assert pool.submit(os.getpid).result() == os.getpid()

    def child():
        fresh = threads.engine_pool()
        return {"same": np.array(fresh is pool), "pid": np.array(fresh.submit(os.getpid).result())}

    got = _in_child(child)
    assert not bool(got["same"]) and int(got["pid"]) != os.getpid()
    assert threads.engine_pool() is pool


_SHARED: dict = {}  # what forked multiprocessing workers inherit


def _shared_matmul(batch: int) -> np.ndarray:
    return _SHARED["pm"].matmul(0, "fc", _SHARED["x"][:batch])


@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method is Linux's default")
def test_multiprocessing_fork_workers_run_matmul():
    pm = _model()
    x = np.random.default_rng(2).standard_normal((64, N)).astype(np.float32)
    parent = {b: pm.matmul(0, "fc", np.ascontiguousarray(x[:b])) for b in (1, 64)}
    _SHARED.update(pm=pm, x=x)
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map_async(_shared_matmul, [1, 64, 1, 64]).get(TIMEOUT_S)
    finally:
        _SHARED.clear()
    for b, y in zip([1, 64, 1, 64], results):
        assert np.array_equal(y, parent[b])


# ------------------------------------------------------------------ the thread policy


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_split_holds_blas_to_one_thread_and_restores_it():
    before = _blas_threads()
    assert before, "numpy's BLAS should be visible to threadpoolctl"
    seen = threads.split(lambda i: (i, _blas_threads()), [(0,), (1,), (2,)])
    assert [i for i, _ in seen] == [0, 1, 2]
    assert all(n == [1] * len(before) for _, n in seen)
    with threads.blas_one_thread():
        with threads.blas_one_thread():
            assert _blas_threads() == [1] * len(before)
        assert _blas_threads() == [1] * len(before)  # the outer use still holds it
    assert _blas_threads() == before


def test_split_raises_a_parts_error_after_all_parts_end():
    done = []

    def part(i):
        if i == 1:
            raise ValueError("part 1 failed")
        done.append(i)
        return i

    with pytest.raises(ValueError, match="part 1 failed"):
        threads.split(part, [(0,), (1,), (2,)])
    assert sorted(done) == [0, 2]
    assert threads.split(part, [(5,)]) == [5]
    assert threads.split(part, []) == []


def test_a_part_that_splits_again_runs_its_parts_itself():
    def inner(i):
        return i * 10

    def outer(i):
        return threads.split(inner, [(i,), (i + 1,)])

    assert threads.split(outer, [(1,), (5,)]) == [[10, 20], [50, 60]]
