"""Packed sparse matmul on the CPU and the per-task plan, against the naive dense references."""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub.kernels import matmul as mm
from bitsub.kernels.matmul import _lut_decode_portable, _lut_slice_portable, conv2d, matmul
from bitsub.kernels.plan import LUT_CHUNK, SLICE, Plan, build_plan
from tests.naive import naive_conv2d_loops, naive_dense_matmul, naive_resolved_weights


def random_fields(rng, shape, density, bits, n_writers, raw_writers=0):
    """Random resolved fields: mask, source, codes and the writers' codebooks."""
    mask = rng.random(shape) < density
    n_all = n_writers + raw_writers
    source = np.where(mask, rng.integers(0, n_all, shape), -1).astype(np.int32)
    codebooks = {}
    codes = np.zeros(shape, np.uint32)
    for w in range(n_all):
        sel = source == w
        if w < n_writers:
            k = int(rng.integers(1, (1 << bits) + 1))
            codebooks[w] = rng.standard_normal(k).astype(np.float32)
            codes[sel] = rng.integers(0, k, int(sel.sum()))
        else:
            codebooks[w] = None
            codes[sel] = rng.standard_normal(int(sel.sum())).astype(np.float32).view(np.uint32)
    return mask, source, codes, codebooks


def assert_close(y, ref):
    ref = np.asarray(ref)
    assert y.dtype == np.float32 and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-4 * max(1.0, float(np.abs(ref).max(
        initial=0.0))))


fields = st.tuples(
    st.integers(1, 40),  # out
    st.integers(1, 70),  # in
    st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),  # density
    st.integers(1, 8),  # bit-width
    st.integers(1, 3),  # codebook writers (own and reused fields)
    st.integers(0, 1),  # raw float32 writers
    st.integers(0, 2**32 - 1),  # seed
)


def layouts(cbs, source, mask):
    """Layouts that can hold these fields: "sell" always, "lut" with <= 16 centroids in all."""
    present = {int(w) for w in np.unique(source[mask])}
    if any(cbs[w] is None for w in present):
        return ["sell"]
    small = sum(cbs[w].size for w in present) <= LUT_CHUNK
    return ["sell", "lut", "both"] if small else ["sell"]


@settings(max_examples=60, deadline=None)
@given(fields, st.sampled_from([1, 2, 3, 4, 7, 8, 9, 33]))
def test_matmul_equals_dense_product(f, batch):
    out, n_in, density, bits, writers, raw, seed = f
    rng = np.random.default_rng(seed)
    mask, source, codes, cbs = random_fields(rng, (out, n_in), density, bits, writers, raw)
    w = naive_resolved_weights(mask, source, codes, cbs)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    ref = naive_dense_matmul(w, x)
    for layout in [None, *layouts(cbs, source, mask)]:
        plan = build_plan(mask, source, codes, cbs, layout=layout)
        np.testing.assert_array_equal(plan.dense(), w)
        assert_close(matmul(plan, x), ref)
        assert_close(matmul(plan, x[0]), ref[0])


@settings(max_examples=40, deadline=None)
@given(fields)
def test_sell_plan_invariants(f):
    out, n_in, density, bits, writers, raw, seed = f
    rng = np.random.default_rng(seed)
    mask, source, codes, cbs = random_fields(rng, (out, n_in), density, bits, writers, raw)
    plan = build_plan(mask, source, codes, cbs, layout="sell")
    n_slices = -(-out // SLICE)
    assert plan.slice_ptr.shape == (n_slices + 1,) and plan.slice_ptr[0] == 0
    np.testing.assert_array_equal(np.diff(plan.slice_ptr), plan.slice_len.astype(np.int64) * SLICE)
    np.testing.assert_array_equal(plan.row_len, mask.sum(axis=1))
    assert plan.nnz == mask.sum()
    assert plan.codebook[-1] == 0.0
    assert plan.cols.size == plan.codes.size == plan.slice_ptr[-1]
    assert int(plan.codes.max(initial=0)) < plan.codebook.size
    assert plan.cols.dtype == np.uint16
    assert plan.lut_codes.size == plan.lut_mask.size == 0
    # no dense float32 copy: the only floats are the combined codebook of the writers present
    present = {int(w) for w in np.unique(source[mask])}
    if raw == 0:
        assert plan.codebook.size == sum(cbs[w].size for w in present) + 1
        assert plan.codes.itemsize == (1 if plan.codebook.size <= 256 else 2)
    assert plan.nbytes == sum(a.nbytes for a in plan.arrays())
    for a in plan.arrays():
        assert not a.flags.writeable


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 70), st.sampled_from([0.0, 0.3, 1.0]),
       st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_lut_plan_invariants(out, n_in, density, bits, seed):
    rng = np.random.default_rng(seed)
    mask, source, codes, cbs = random_fields(rng, (out, n_in), density, bits, 1)
    plan = build_plan(mask, source, codes, cbs, layout="lut")
    ns = -(-out // LUT_CHUNK)
    assert plan.layout == "lut"
    assert plan.lut_codes.shape == (ns * n_in * 8,) and plan.lut_mask.shape == (ns * n_in,)
    assert plan.codebook.shape == (LUT_CHUNK + 1,) and plan.codebook[-1] == 0.0
    bits_set = np.unpackbits(plan.lut_mask.view(np.uint8)).sum()
    assert bits_set == mask.sum() == plan.nnz
    assert plan.cols.size == plan.codes.size == 0
    # 5 bits per position (4-bit code + mask bit), plus the codebook and row lengths
    assert plan.nbytes == ns * n_in * 10 + 4 * (LUT_CHUNK + 1) + 4 * out + 8
    both = build_plan(mask, source, codes, cbs, layout="both")
    np.testing.assert_array_equal(both.lut_codes, plan.lut_codes)
    assert both.nnz == plan.nnz and both.cols.size == both.slice_ptr[-1]


def test_lut_needs_a_small_codebook():
    rng = np.random.default_rng(0)
    mask, source, codes, cbs = random_fields(rng, (3, 4), 1.0, 5, 1)
    cbs[0] = rng.standard_normal(17).astype(np.float32)
    codes[:] = 16
    with pytest.raises(ValueError, match="at most 16"):
        build_plan(mask, source, codes, cbs, layout="lut")
    assert build_plan(mask, source, codes, cbs).layout == "sell"
    with pytest.raises(ValueError, match="layout"):
        build_plan(mask, source, codes, cbs, layout="csr")


@numba.njit
def _portable_matvec(plan_codes, plan_mask, book, x, out):
    n_in = x.size
    y = np.empty(out, np.float32)
    for s in range(-(-out // 16)):
        _lut_slice_portable(plan_codes, s * n_in * 8, plan_mask, s * n_in, book, x, 0, n_in, y,
                            16 * s, min(16, out - 16 * s))
    return y


@numba.njit
def _portable_decode(plan_codes, plan_mask, book, n_in, out):
    ns = -(-out // 16)
    w_t = np.empty(n_in * 16 * ns, np.float32)
    for s in range(ns):
        _lut_decode_portable(plan_codes, s * n_in * 8, plan_mask, s * n_in, book, w_t, 16 * s,
                             n_in, 16 * ns)
    return w_t.reshape(n_in, 16 * ns)


@pytest.mark.parametrize("shape", [(1, 1), (5, 16), (9, 33), (20, 100), (32, 3)])
def test_lut_portable_kernels_agree(shape):
    out, n_in = shape
    rng = np.random.default_rng(n_in)
    mask, source, codes, cbs = random_fields(rng, shape, 0.5, 4, 1)
    plan = build_plan(mask, source, codes, cbs, layout="lut")
    w = naive_resolved_weights(mask, source, codes, cbs)
    x = rng.standard_normal(n_in).astype(np.float32)
    y = _portable_matvec(plan.lut_codes, plan.lut_mask, plan.codebook, x, out)
    assert_close(y, naive_dense_matmul(w, x))
    dec = _portable_decode(plan.lut_codes, plan.lut_mask, plan.codebook, n_in, out)
    np.testing.assert_array_equal(dec[:, :out], w.T)
    assert not dec[:, out:].any()  # rows that pad the last slice are 0
    # the kernel in use (AVX-512 where the host has it) decodes identically
    tile_t = np.full(dec.shape, np.nan, np.float32)
    mm._lut_decode_rows(plan.lut_codes, plan.lut_mask, plan.codebook, n_in, 0, -(-out // 16),
                        tile_t)
    np.testing.assert_array_equal(tile_t, dec)


@pytest.mark.parametrize("layout", ["sell", "lut", "both"])
@pytest.mark.parametrize("batch", [1, 2, 8, 64, 1024])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_batch_sizes_and_densities(batch, density, layout, monkeypatch):
    rng = np.random.default_rng(batch)
    mask, source, codes, cbs = random_fields(rng, (19, 45), density, 3, 2)
    cbs = {w: cb[:8] for w, cb in cbs.items()}  # two writers, at most 16 centroids in all
    codes = np.minimum(codes, 7 * (source >= 0)).astype(np.uint32)
    w = naive_resolved_weights(mask, source, codes, cbs)
    plan = build_plan(mask, source, codes, cbs, layout=layout)
    x = rng.standard_normal((batch, 45)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    assert_close(matmul(plan, x), ref)
    monkeypatch.setattr(mm, "TILE_BYTES", 1)  # one row per decoded tile
    assert_close(matmul(plan, x), ref)


@pytest.mark.parametrize("layout", ["sell", "lut"])
@pytest.mark.parametrize("batch", [1, 3, 16, 70])
def test_parallel_and_serial_kernels_agree(batch, layout, monkeypatch):
    rng = np.random.default_rng(3)
    mask, source, codes, cbs = random_fields(rng, (70, 130), 0.4, 3, 2)
    if layout == "lut":
        cbs = {w: cb[:8] for w, cb in cbs.items()}  # at most 16 centroids in all
        codes = np.minimum(codes, 7 * (source >= 0)).astype(np.uint32)
    plan = build_plan(mask, source, codes, cbs, layout=layout)
    x = rng.standard_normal((batch, 130)).astype(np.float32)
    monkeypatch.setattr(mm, "PARALLEL_MIN", 0)
    par = matmul(plan, x)
    monkeypatch.setattr(mm, "PARALLEL_MIN", 1 << 62)
    ser = matmul(plan, x)
    np.testing.assert_allclose(par, ser, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("density", [0.1, 0.5])
@pytest.mark.parametrize("layout", ["sell", "lut", "both"])
@pytest.mark.parametrize("batch", [1, 4, 12, 70])
def test_nan_and_inf_propagate_as_in_dense_product(batch, layout, density):
    rng = np.random.default_rng(5)
    mask, source, codes, cbs = random_fields(rng, (21, 17), density, 2, 1)
    cbs[0][0] = 0.0  # a used position whose value is exactly 0
    plan = build_plan(mask, source, codes, cbs, layout=layout)
    w = naive_resolved_weights(mask, source, codes, cbs)
    x = rng.standard_normal((batch, 17)).astype(np.float32)
    x[0, 0] = np.nan
    x[-1, 3] = np.inf
    x[-1, 4] = -np.inf
    y = matmul(plan, x)
    with np.errstate(invalid="ignore"):
        ref = x @ w.T
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4)
    assert np.isnan(y[0]).all()  # a NaN input meets a 0 (used or not) in every row


def test_empty_task_and_empty_batch():
    shape = (5, 6)
    plan = build_plan(np.zeros(shape, bool), np.full(shape, -1, np.int32),
                      np.zeros(shape, np.uint32), {})
    assert plan.nnz == 0
    x = np.ones((3, 6), np.float32)
    np.testing.assert_array_equal(matmul(plan, x), np.zeros((3, 5), np.float32))
    assert matmul(plan, np.zeros((0, 6), np.float32)).shape == (0, 5)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 2), st.integers(0, 2), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_conv2d_equals_naive_loops(o, c, kh, kw, stride, padding, bits, seed):
    rng = np.random.default_rng(seed)
    mask, source, codes, cbs = random_fields(rng, (o, c, kh, kw), 0.6, bits, 2)
    plan = build_plan(mask, source, codes, cbs)
    w = naive_resolved_weights(mask, source, codes, cbs)
    x = rng.standard_normal((2, c, 5 + kh, 4 + kw)).astype(np.float32)
    y = conv2d(plan, x, stride, padding)
    assert_close(y, naive_conv2d_loops(x, w, stride, padding))


def test_conv2d_plan_as_flat_matmul():
    rng = np.random.default_rng(0)
    mask, source, codes, cbs = random_fields(rng, (4, 3, 2, 2), 0.5, 3, 1)
    plan = build_plan(mask, source, codes, cbs)
    w = naive_resolved_weights(mask, source, codes, cbs).reshape(4, -1)
    x = rng.standard_normal(12).astype(np.float32)
    assert_close(matmul(plan, x), naive_dense_matmul(w, x))


# ----------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_plan():
    rng = np.random.default_rng(1)
    return build_plan(*random_fields(rng, (4, 6), 0.5, 2, 1))


def test_bad_x_gets_clear_errors(small_plan):
    with pytest.raises(TypeError, match="float32"):
        matmul(small_plan, np.ones(6, np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        matmul(small_plan, [1.0] * 6)
    with pytest.raises(ValueError, match=r"shape \(6,\) or \(batch, 6\)"):
        matmul(small_plan, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"shape \(6,\) or \(batch, 6\)"):
        matmul(small_plan, np.ones((2, 3, 6), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        matmul(small_plan, np.ones((6, 4), np.float32).T)
    with pytest.raises(TypeError, match="Plan"):
        matmul("fc1", np.ones(6, np.float32))


def test_bad_conv_input_gets_clear_errors(small_plan):
    rng = np.random.default_rng(2)
    conv = build_plan(*random_fields(rng, (2, 3, 3, 3), 0.5, 2, 1))
    x = np.ones((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="4-D"):
        conv2d(small_plan, x)
    with pytest.raises(ValueError, match="NCHW"):
        conv2d(conv, np.ones((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv2d(conv, np.ones((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="stride"):
        conv2d(conv, x, stride=0)
    with pytest.raises(ValueError, match="padding"):
        conv2d(conv, x, padding=-1)
    with pytest.raises(TypeError, match="float32"):
        conv2d(conv, x.astype(np.float64))


def test_build_plan_rejects_bad_fields():
    mask = np.ones((2, 3), bool)
    source = np.zeros((2, 3), np.int32)
    codes = np.zeros((2, 3), np.uint32)
    with pytest.raises(ValueError, match="codebooks has no entry"):
        build_plan(mask, source, codes, {})
    with pytest.raises(ValueError, match="code 5"):
        build_plan(mask, source, np.full((2, 3), 5, np.uint32), {0: np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="one shape"):
        build_plan(mask, source[:1], codes, {0: np.zeros(4, np.float32)})
    with pytest.raises(TypeError, match="bool"):
        build_plan(mask.astype(int), source, codes, {0: np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match=r"\(out, in\)"):
        build_plan(np.ones(3, bool), np.zeros(3, np.int32), np.zeros(3, np.uint32), {})


def test_plan_is_compact():
    rng = np.random.default_rng(4)
    mask, source, codes, cbs = random_fields(rng, (64, 512), 0.2, 4, 1)
    dense_bytes = mask.size * 4
    sell = build_plan(mask, source, codes, cbs, layout="sell")
    lut = build_plan(mask, source, codes, cbs, layout="lut")
    assert build_plan(mask, source, codes, cbs).layout == "lut"  # small layer
    both = build_plan(mask, source, codes, cbs, layout="both")
    assert isinstance(both, Plan) and both.layout == "both"
    # sell: 2-byte column + 1-byte code per used position (plus slice padding)
    assert sell.nbytes < 0.25 * dense_bytes
    # lut: 5 bits per position
    assert lut.nbytes < (5 / 32 + 0.01) * dense_bytes
    assert both.nbytes < sell.nbytes + lut.nbytes


# ----------------------------------------------------------------------- through PackedModel


def packed_model(seed, word_bits=32):
    """Three tasks over two banks: own fields, reused fields, several codebook sizes."""
    from bitsub.model.packed import PackedModel, TaskLayer

    rng = np.random.default_rng(seed)
    pm = PackedModel(word_bits=word_bits, prefix_bits=2)
    shapes = {"fc": (23, 37), "conv": (5, 3, 3, 2)}
    for name, shape in shapes.items():
        pm.add_layer(name, shape)

    def layer(shape, bits, prev_mask, reuse):
        mask = rng.random(shape) < 0.5
        write = mask.copy()
        if prev_mask is not None and reuse:
            shared = prev_mask & (rng.random(shape) < 0.7)
            mask |= shared
            write = mask & ~shared
        k = 1 << bits
        return TaskLayer(mask, write, codebook=rng.standard_normal(k).astype(np.float32),
                         codes=rng.integers(0, k, shape))

    t0 = pm.add_task({n: layer(s, 2, None, False) for n, s in shapes.items()})
    prev = {n: pm.mask(t0, n) for n in shapes}
    t1 = pm.add_task({n: layer(s, 3, prev[n], True) for n, s in shapes.items()})
    t2 = pm.add_task({n: layer(s, 4, None, False) for n, s in shapes.items()}, bank="new")
    return pm, [t0, t1, t2], shapes


@pytest.mark.parametrize("batch", [1, 5, 40])
def test_matmul_through_packed_model(batch):
    from bitsub.kernels.plan import model_plan

    pm, tasks, shapes = packed_model(11)
    assert pm.banks == 2
    rng = np.random.default_rng(batch)
    for t in tasks:
        for name, shape in shapes.items():
            plan = model_plan(pm, t, name)
            w = pm.weights(t, name).reshape(shape[0], -1)
            np.testing.assert_array_equal(plan.dense().reshape(shape[0], -1), w)
            x = rng.standard_normal((batch, w.shape[1])).astype(np.float32)
            assert_close(matmul(plan, x), naive_dense_matmul(w, x))
            if len(shape) == 4:
                xi = rng.standard_normal((2, shape[1], 6, 5)).astype(np.float32)
                assert_close(conv2d(plan, xi, 1, 1),
                             naive_conv2d_loops(xi, pm.weights(t, name), 1, 1))
    # task 1 reads task 0's fields (reuse) and its own: a combined codebook of 4 + 8 centroids
    assert model_plan(pm, tasks[1], "fc").layout == "lut"


def test_raw_float_fields_through_packed_model():
    from bitsub.kernels.plan import model_plan
    from bitsub.model.packed import PackedModel, TaskLayer

    rng = np.random.default_rng(12)
    pm = PackedModel(word_bits=64, prefix_bits=2)
    pm.add_layer("fc", (9, 21))
    m0 = rng.random((9, 21)) < 0.6
    t0 = pm.add_task({"fc": TaskLayer(m0, m0, values=rng.standard_normal((9, 21)), bits=32)})
    m1 = m0 | (rng.random((9, 21)) < 0.3)
    write = m1 & ~m0
    t1 = pm.add_task({"fc": TaskLayer(m1, write, codebook=rng.standard_normal(4),
                                      codes=rng.integers(0, 4, (9, 21)))})
    x = rng.standard_normal((3, 21)).astype(np.float32)
    for t in (t0, t1):
        plan = model_plan(pm, t, "fc")
        assert plan.layout == "sell"
        w = pm.weights(t, "fc")
        np.testing.assert_array_equal(plan.dense(), w)
        assert_close(matmul(plan, x), naive_dense_matmul(w, x))


def test_portable_kernels_on_a_host_without_avx512():
    """NUMBA_CPU_NAME=generic turns the AVX-512 look-up off: the portable kernels run."""
    import os
    import subprocess
    import sys

    code = """
import numpy as np
from bitsub.kernels import matmul as mm
from bitsub.kernels.plan import build_plan
assert not mm.AVX512
rng = np.random.default_rng(0)
mask = rng.random((9, 37)) < 0.5
source = np.where(mask, 0, -1).astype(np.int32)
codes = rng.integers(0, 16, mask.shape).astype(np.uint32)
cb = {0: rng.standard_normal(16).astype(np.float32)}
plan = build_plan(mask, source, codes, cb, layout="lut")
w = np.where(mask, cb[0][codes], 0).astype(np.float64)
for x in (rng.standard_normal(37), rng.standard_normal((2, 37)), rng.standard_normal((9, 37))):
    x = x.astype(np.float32)
    np.testing.assert_allclose(mm.matmul(plan, x), x @ w.T, rtol=1e-4, atol=1e-4)
print("ok")
"""
    env = {**os.environ, "NUMBA_CPU_NAME": "generic"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ----------------------------------------------------------------------- PackedModel methods


def test_packed_model_methods_match_reference():
    pm, tasks, shapes = packed_model(21)
    rng = np.random.default_rng(21)
    for t in tasks:
        w = pm.weights(t, "fc")
        x = rng.standard_normal((3, 37)).astype(np.float32)
        assert_close(pm.matmul(t, "fc", x), naive_dense_matmul(w, x))
        assert_close(pm.matmul(t, "fc", x[0], device="cuda"), naive_dense_matmul(w, x[0]))
        xi = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
        ref = naive_conv2d_loops(xi, pm.weights(t, "conv"), 2, 1)
        assert_close(pm.conv2d(t, "conv", xi, stride=2, padding=1), ref)
        assert_close(pm.conv2d(t, "conv", xi, 2, 1, device="cuda"), ref)
        assert pm.plan(t, "fc") is pm.plan(t, "fc")  # cached
        assert pm.plan_bytes(t) == pm.plan(t, "fc").nbytes + pm.plan(t, "conv").nbytes
    with pytest.raises(IndexError):
        pm.matmul(7, "fc", np.ones(37, np.float32))
    with pytest.raises(KeyError):
        pm.matmul(0, "nope", np.ones(37, np.float32))
    with pytest.raises(ValueError, match="device"):
        pm.matmul(0, "fc", np.ones(37, np.float32), device="tpu")


def test_cached_plans_stay_valid_when_tasks_are_added():
    from bitsub.model.packed import TaskLayer

    pm, tasks, shapes = packed_model(22)
    x = np.random.default_rng(0).standard_normal((2, 37)).astype(np.float32)
    before = {t: pm.matmul(t, "fc", x) for t in tasks}
    m = np.random.default_rng(1).random(shapes["fc"]) < 0.3
    pm.add_task({"fc": TaskLayer(m, m, codebook=[0.5, -0.5], codes=np.ones(shapes["fc"], int))})
    for t in tasks:  # earlier tasks' outputs are unchanged, cached plan or fresh one
        np.testing.assert_array_equal(pm.matmul(t, "fc", x), before[t])
        np.testing.assert_array_equal(pm.plan(t, "fc").dense(), pm.weights(t, "fc"))
