"""The CUDA twin (on Numba's simulator when there is no GPU): same signature, same answers."""

import inspect
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub.kernels import gpu_matmul as gm
from bitsub.kernels.gpu_matmul import gpu_conv2d, gpu_matmul
from bitsub.kernels.matmul import conv2d, matmul
from bitsub.kernels.plan import build_plan
from tests.naive import naive_conv2d_loops, naive_dense_matmul, naive_resolved_weights
from tests.test_matmul import assert_close, layouts, random_fields


def test_twins_have_the_same_signature():
    assert inspect.signature(gpu_matmul) == inspect.signature(matmul)
    assert inspect.signature(gpu_conv2d) == inspect.signature(conv2d)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 20), st.integers(1, 24), st.sampled_from([0.0, 0.4, 1.0]),
       st.integers(1, 8), st.integers(1, 3), st.integers(0, 1), st.integers(1, 5),
       st.integers(0, 2**32 - 1))
def test_gpu_matmul_equals_dense_product(out, n_in, density, bits, writers, raw, batch, seed):
    rng = np.random.default_rng(seed)
    mask, source, codes, cbs = random_fields(rng, (out, n_in), density, bits, writers, raw)
    w = naive_resolved_weights(mask, source, codes, cbs)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    for layout in layouts(cbs, source, mask):
        plan = build_plan(mask, source, codes, cbs, layout=layout)
        assert_close(gpu_matmul(plan, x), naive_dense_matmul(w, x))
        assert_close(gpu_matmul(plan, x[0]), naive_dense_matmul(w, x[0]))


def test_gpu_conv2d_equals_naive_loops():
    rng = np.random.default_rng(7)
    mask, source, codes, cbs = random_fields(rng, (3, 2, 3, 2), 0.7, 4, 2)
    plan = build_plan(mask, source, codes, cbs)
    w = naive_resolved_weights(mask, source, codes, cbs)
    x = rng.standard_normal((2, 2, 5, 4)).astype(np.float32)
    assert_close(gpu_conv2d(plan, x, 2, 1), naive_conv2d_loops(x, w, 2, 1))


@pytest.mark.parametrize("layout", ["sell", "lut"])
def test_gpu_nan_propagates_as_in_dense_product(layout):
    rng = np.random.default_rng(8)
    mask, source, codes, cbs = random_fields(rng, (6, 5), 0.5, 2, 1)
    plan = build_plan(mask, source, codes, cbs, layout=layout)
    w = naive_resolved_weights(mask, source, codes, cbs)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    x[1, 2] = np.nan
    with np.errstate(invalid="ignore"):
        ref = x @ w.T
    y = gpu_matmul(plan, x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert_close(y[0], ref[0])


def test_gpu_bad_input_gets_the_cpu_errors():
    rng = np.random.default_rng(9)
    plan = build_plan(*random_fields(rng, (3, 4), 0.5, 2, 1))
    with pytest.raises(TypeError, match="float32"):
        gpu_matmul(plan, np.ones(4))
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu_matmul(plan, np.ones((4, 3), np.float32).T)


def test_no_gpu_gives_clear_runtime_error(monkeypatch):
    from numba import cuda

    rng = np.random.default_rng(9)
    plan = build_plan(*random_fields(rng, (3, 4), 0.5, 2, 1))
    monkeypatch.setattr(gm, "_state", {})
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        gpu_matmul(plan, np.ones(4, np.float32))


def test_import_gpu_module_does_not_import_numba_cuda():
    code = ("import sys, bitsub.kernels.gpu_matmul, bitsub.kernels.matmul, bitsub.model.network\n"
            "print(any(m.startswith('numba.cuda') for m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
