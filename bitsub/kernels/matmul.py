"""Packed sparse matmul on the CPU: y = x @ W_t.T straight from a task's plan.

Kernels, chosen by the plan's layout and the batch size (thresholds from
``bench/test_bench_matmul.py``):

- small batches on ``"lut"`` arrays: the fused decode-in-the-loop kernel. For a slice of 16
  rows, each column's 16 weights are decoded in registers (the 16 codes index the codebook
  held in one 512-bit register, ``vpermps``; the mask bits zero unused lanes) and multiplied by
  that column's input into 16 row sums held in one vector: no horizontal sums, no tails.
- small batches on ``"sell"`` arrays: slices of 16 rows in SIMD lanes, each step gathering one
  input and one centroid per row.
- large batches: cache-sized tiles of rows (of W.T for ``"lut"``) are decoded into a scratch
  tile (the same in-register look-up) and multiplied by BLAS. Below ``SELL_TILE_DENSITY``, a
  plan with ``"sell"`` arrays instead runs a batch-inner kernel over the used positions only:
  x is transposed in chunks of 64 samples and each position adds ``w * x[:, col]`` to its
  row, the 16 rows of a slice stepping together.

Threads: large calls are split over the engine's threads (:mod:`bitsub.threads`: plain Python
threads running the ``nogil`` kernels); in the large-batch paths each thread decodes its own
tiles and calls BLAS, which is held to one thread meanwhile, so the two pools never compete.

The in-register look-up needs AVX-512 or AVX2 with FMA (checked once on the host; on AVX2 each
16-entry look-up is four 8-entry ones and two blends, and LLVM splits the 16-lane vectors in
two); elsewhere a portable Numba kernel decodes the same layout.

NaN and inf in ``x`` propagate as in a dense product (a dense W has ``0 * x[j]`` at positions a
task does not use, NaN for a non-finite ``x[j]``): the ``"lut"`` kernels multiply every position
anyway; the ``"sell"`` kernels skip unused positions, so samples with a non-finite entry are
recomputed exactly (a rare, slower path).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from bitsub.config import FASTMATH, NJIT
from bitsub.kernels.common import check_plan, check_x, conv_geometry, fix_nonfinite, patches
from bitsub.kernels.plan import BOTH_MAX_DENSITY, SLICE, Plan
from bitsub.threads import engine_threads, split

__all__ = [
    "BATCH_MIN", "LUT_BATCH_MIN", "PARALLEL_MIN", "SELL_TILE_DENSITY",
    "TILE_BYTES", "conv2d", "matmul",
]

BATCH_MIN = 8
"""``"sell"``: batches of at least this many samples use the transposed (batch-inner) kernel."""

LUT_BATCH_MIN = 4
"""``"lut"``: batches of at least this many samples use decoded tiles and BLAS."""

PARALLEL_MIN = 1 << 21
"""Positions visited times batch from which a kernel is split over threads (a hand-off costs
about 10 us)."""

TILE_BYTES = 8 << 20
"""Size of the scratch tile of decoded float32 rows for the large-batch paths (L3-sized: fewer
BLAS calls, each of which can stall when another process holds a core)."""

_BATCH_CHUNK = 64  # samples per pass of the batch-inner "sell" kernel: a compile-time constant

SELL_TILE_DENSITY = BOTH_MAX_DENSITY
"""Batch >= BATCH_MIN: from this task density on, tiles are decoded for BLAS; below it a plan
with ``"sell"`` arrays runs the transposed kernel, which touches only the used positions."""


def _host_has(feature: str) -> bool:
    if numba.config.DISABLE_JIT or numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        import llvmlite.binding as ll

        return bool(ll.get_host_cpu_features().get(feature))
    except Exception:  # pragma: no cover (an exotic host): use the portable kernels
        return False


AVX512 = _host_has("avx512f")
"""Whether the ``"lut"`` kernels use the AVX-512 in-register look-up."""

AVX2 = not AVX512 and _host_has("avx2") and _host_has("fma")
"""Whether they use the AVX2 one instead (two 8-entry look-ups and a blend; else portable)."""

_FAST = set(FASTMATH)


# -------------------------------------------------------------------- "lut": AVX-512 / AVX2

_UNROLL = 4
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16F = ir.VectorType(_F32, 16)
_V16I = ir.VectorType(_I32, 16)
_V8B = ir.VectorType(ir.IntType(8), 8)


def _data(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


def _permvar(builder):
    fnty = ir.FunctionType(_V16F, [_V16F, _V16I])
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.permvar.sf.512")


_V8F = ir.VectorType(_F32, 8)
_V8I = ir.VectorType(_I32, 8)


def _permps(builder):
    fnty = ir.FunctionType(_V8F, [_V8F, _V8I])
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx2.permps")


def _lookup16(builder, book, idx):
    """book[idx & 15] for 16 lanes: one 16-entry vpermps (AVX-512).

    On AVX2, for each half of the lanes, two 8-entry vpermps (entries 0-7 and 8-15, each reading
    the low 3 bits of the index) and a blend on bit 3.
    """
    if AVX512:
        return builder.call(_permvar(builder), [book, idx])
    halves = [ir.Constant(_V8I, list(range(8))), ir.Constant(_V8I, list(range(8, 16)))]
    lo_book, hi_book = (builder.shuffle_vector(book, book, h) for h in halves)
    eight = ir.Constant(_V8I, [8] * 8)
    out = []
    for h in halves:
        i = builder.shuffle_vector(idx, idx, h)
        lo = builder.call(_permps(builder), [lo_book, i])
        hi = builder.call(_permps(builder), [hi_book, i])
        high = builder.icmp_unsigned("!=", builder.and_(i, eight), ir.Constant(_V8I, [0] * 8))
        out.append(builder.select(high, hi, lo))
    return builder.shuffle_vector(out[0], out[1], ir.Constant(_V16I, list(range(16))))


def _fma(builder):
    fnty = ir.FunctionType(_V16F, [_V16F, _V16F, _V16F])
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v16f32")


def _chunk_weights(builder, book, codes_ptr, mask_ptr, c):
    """16 weights of chunk c: book[code] where the mask bit is set, else 0.0."""
    p8 = builder.gep(codes_ptr, [builder.mul(c, ir.Constant(_I64, 8))])
    b = builder.load(builder.bitcast(p8, _V8B.as_pointer()), align=1)
    # The look-up reads only the low 4 bits of each index: the low nibbles need no masking.
    hi = builder.lshr(b, ir.Constant(_V8B, [4] * 8))
    both = builder.shuffle_vector(b, hi, ir.Constant(_V16I, list(range(16))))
    w = _lookup16(builder, book, builder.zext(both, _V16I))
    bits = builder.bitcast(builder.load(builder.gep(mask_ptr, [c]), align=2),
                           ir.VectorType(ir.IntType(1), 16))
    return builder.select(bits, w, ir.Constant(_V16F, [0.0] * 16))


def _lut_pointers(context, builder, sig, args):
    codes, cbase, mask, mbase, book = args[:5]
    codes_ptr = builder.gep(_data(context, builder, sig.args[0], codes), [cbase])
    mask_ptr = builder.gep(_data(context, builder, sig.args[2], mask), [mbase])
    book_ptr = _data(context, builder, sig.args[4], book)
    book_vec = builder.load(builder.bitcast(book_ptr, _V16F.as_pointer()), align=4)
    return codes_ptr, mask_ptr, book_vec


def _vector_at(builder, ptr, index):
    return builder.bitcast(builder.gep(ptr, [index]), _V16F.as_pointer())


@intrinsic
def _lut_slice_avx512(typingctx, codes, cbase, mask, mbase, book, x, xbase, n_in, y, ybase,
                      rows):
    """y[ybase : ybase + rows] = the slice's 16 rows times x[xbase : xbase + n_in]."""
    sig = types.void(codes, cbase, mask, mbase, book, x, xbase, n_in, y, ybase, rows)

    def codegen(context, builder, signature, args):
        codes_ptr, mask_ptr, book_vec = _lut_pointers(context, builder, signature, args)
        x_ptr = builder.gep(_data(context, builder, signature.args[5], args[5]), [args[6]])
        y_ptr = builder.gep(_data(context, builder, signature.args[8], args[8]), [args[9]])
        n_in_v, rows_v = args[7], args[10]
        zero = ir.Constant(_V16F, [0.0] * 16)
        accs = [cgutils.alloca_once(builder, _V16F) for _ in range(_UNROLL)]
        for a in accs:
            builder.store(zero, a)
        acc = accs[0]

        def step(j, a):  # the 16 rows' weights at column j, times x[j]
            w = _chunk_weights(builder, book_vec, codes_ptr, mask_ptr, j)
            xj = builder.load(builder.gep(x_ptr, [j]))
            xv = builder.insert_element(ir.Constant(_V16F, ir.Undefined), xj,
                                        ir.Constant(_I32, 0))
            xv = builder.shuffle_vector(xv, xv, ir.Constant(_V16I, [0] * 16))
            builder.store(builder.call(_fma(builder), [w, xv, builder.load(a)]), a)

        # _UNROLL independent accumulators hide the latency of the multiply-adds.
        groups = builder.udiv(n_in_v, ir.Constant(_I64, _UNROLL))
        with cgutils.for_range(builder, groups) as loop:
            j0 = builder.mul(loop.index, ir.Constant(_I64, _UNROLL))
            for u, a in enumerate(accs):
                step(builder.add(j0, ir.Constant(_I64, u)), a)
        done = builder.mul(groups, ir.Constant(_I64, _UNROLL))
        with cgutils.for_range(builder, builder.sub(n_in_v, done)) as loop:
            step(builder.add(done, loop.index), acc)
        total = builder.load(acc)
        for a in accs[1:]:
            total = builder.fadd(total, builder.load(a))
        full = builder.icmp_signed("==", rows_v, ir.Constant(_I64, 16))
        with builder.if_else(full) as (then, otherwise):
            with then:
                builder.store(total, builder.bitcast(y_ptr, _V16F.as_pointer()), align=4)
            with otherwise:  # the last, partial slice: never write past its rows
                buf = cgutils.alloca_once(builder, _V16F)
                builder.store(total, buf)
                fbuf = builder.bitcast(buf, _F32.as_pointer())
                with cgutils.for_range(builder, rows_v) as loop:
                    r = loop.index
                    builder.store(builder.load(builder.gep(fbuf, [r])), builder.gep(y_ptr, [r]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _lut_decode_avx512(typingctx, codes, cbase, mask, mbase, book, out, obase, n_in, stride):
    """out[obase + j * stride : ... + 16] = the slice's 16 weights at column j, for every j."""
    sig = types.void(codes, cbase, mask, mbase, book, out, obase, n_in, stride)

    def codegen(context, builder, signature, args):
        codes_ptr, mask_ptr, book_vec = _lut_pointers(context, builder, signature, args)
        out_ptr = builder.gep(_data(context, builder, signature.args[5], args[5]), [args[6]])
        with cgutils.for_range(builder, args[7]) as loop:
            j = loop.index
            w = _chunk_weights(builder, book_vec, codes_ptr, mask_ptr, j)
            builder.store(w, _vector_at(builder, out_ptr, builder.mul(j, args[8])), align=4)
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------- "lut": portable


@numba.njit(**NJIT)
def _lut_slice_portable(codes, cbase, mask, mbase, book, x, xbase, n_in, y, ybase, rows
                        ):  # pragma: no cover (njit)
    # Column by column, the 16 row sums side by side: 16 independent chains, and each sum
    # still adds its terms in column order (the same result as one row at a time).
    acc = np.zeros(16, np.float32)
    zero = np.float32(0.0)
    for j in range(n_in):
        xj = x[xbase + j]
        m = np.int64(mask[mbase + j])
        o = cbase + 8 * j
        for r in range(8):
            byte = np.int64(codes[o + r])
            lo = book[byte & 15]
            hi = book[(byte >> 4) & 15]
            acc[r] += (lo if (m >> r) & 1 else zero) * xj
            acc[r + 8] += (hi if (m >> (r + 8)) & 1 else zero) * xj
    for r in range(rows):
        y[ybase + r] = acc[r]


@numba.njit(**NJIT)
def _lut_decode_portable(codes, cbase, mask, mbase, book, out, obase, n_in, stride
                         ):  # pragma: no cover (njit)
    for j in range(n_in):
        m = mask[mbase + j]
        for r in range(16):
            code = (np.int64(codes[cbase + 8 * j + (r & 7)]) >> (4 * (r >> 3))) & 15
            out[obase + j * stride + r] = book[code] if (m >> r) & 1 else np.float32(0.0)


_lut_slice = _lut_slice_avx512 if AVX512 or AVX2 else _lut_slice_portable
_lut_decode = _lut_decode_avx512 if AVX512 or AVX2 else _lut_decode_portable


@numba.njit(**NJIT)
def _lut_vec(codes, mask, book, x, y, n_in, s0, s1):  # pragma: no cover (njit)
    """Slices s0..s1-1 of y = x @ W.T, x of shape (in,) or (batch, in)."""
    xf = x.ravel()
    yf = y.ravel()
    n_batch = xf.size // n_in
    out = yf.size // max(1, n_batch)
    for s in range(s0, s1):
        rows = min(16, out - 16 * s)
        for b in range(n_batch):
            _lut_slice(codes, s * n_in * 8, mask, s * n_in, book, xf, b * n_in, n_in, yf,
                       b * out + 16 * s, rows)


@numba.njit(**NJIT)
def _lut_matvec(codes, mask, book, x, out):  # pragma: no cover (njit)
    """Return W @ x for one sample (few arguments, y allocated here: small calls are fast)."""
    n_in = x.size
    y = np.empty(out, np.float32)
    for s in range(-(-out // 16)):
        _lut_slice(codes, s * n_in * 8, mask, s * n_in, book, x, 0, n_in, y, 16 * s,
                   min(16, out - 16 * s))
    return y


@numba.njit(**NJIT)
def _lut_decode_rows(codes, mask, book, n_in, s0, s1, tile_t):  # pragma: no cover (njit)
    """Write W.T of slices s0..s1-1 to tile_t[:, : 16 * (s1 - s0)] (tile_t of shape (in, k))."""
    flat = tile_t.ravel()
    stride = tile_t.shape[1]
    for s in range(s0, s1):
        _lut_decode(codes, s * n_in * 8, mask, s * n_in, book, flat, 16 * (s - s0), n_in,
                    stride)


# --------------------------------------------------------------------------- "sell"


@numba.njit(**NJIT, fastmath=_FAST)
def _sell_vec(slice_ptr, slice_len, cols, codes, codebook, x, y, s0, s1):  # pragma: no cover
    """Slices s0..s1-1 of y = x @ W.T (x and y 2-D); the rows of a slice run in SIMD lanes."""
    n_batch, out = y.shape
    acc = np.empty(SLICE, np.float32)
    for s in range(s0, s1):
        # Unsigned offsets: Numba then needs no negative-index fix-up, and the lanes vectorize.
        base = np.uint64(slice_ptr[s])
        length = slice_len[s]
        r_hi = min(SLICE, out - s * SLICE)
        for b in range(n_batch):
            xb = x[b]
            for r in range(SLICE):
                acc[r] = 0.0
            for k in range(length):
                o = base + np.uint64(k * SLICE)
                for r in range(SLICE):
                    q = o + np.uint64(r)
                    acc[r] += codebook[codes[q]] * xb[cols[q]]
            for r in range(r_hi):
                y[b, s * SLICE + r] = acc[r]


@numba.njit(**NJIT, fastmath=_FAST)
def _sell_batch(slice_ptr, slice_len, cols, codes, codebook, xt, yt, s0, s1):  # pragma: no cover
    """Slices s0..s1-1 of yt = W @ xt for _BATCH_CHUNK samples: xt (in, _BATCH_CHUNK).

    Each used position adds w * xt[col] to its row. The 16 rows of a slice step together, so
    their sums are 16 independent chains; the sample loop has a constant length, so it compiles
    to whole vectors.
    """
    out = yt.shape[0]
    acc = np.empty((SLICE, _BATCH_CHUNK), np.float32)
    for s in range(s0, s1):
        base = np.uint64(slice_ptr[s])
        acc[:] = 0.0
        for k in range(slice_len[s]):
            o = base + np.uint64(k * SLICE)
            for r in range(SLICE):
                q = o + np.uint64(r)
                w = codebook[codes[q]]
                j = cols[q]
                for b in range(_BATCH_CHUNK):
                    acc[r, b] += w * xt[j, b]
        for r in range(min(SLICE, out - s * SLICE)):
            for b in range(_BATCH_CHUNK):
                yt[s * SLICE + r, b] = acc[r, b]


@numba.njit(**NJIT)
def _sell_decode_rows(slice_ptr, slice_len, row_len, cols, codes, codebook, s0, s1, tile
                      ):  # pragma: no cover (njit)
    """Write the dense rows of slices s0..s1-1 into tile (zeros where unused)."""
    tile[:] = 0.0
    out = row_len.shape[0]
    for s in range(s0, s1):
        base = slice_ptr[s]
        r0 = (s - s0) * SLICE
        r_hi = min(SLICE, out - s * SLICE)
        for k in range(slice_len[s]):
            o = base + k * SLICE
            for r in range(r_hi):
                if k < row_len[s * SLICE + r]:
                    tile[r0 + r, cols[o + r]] = codebook[codes[o + r]]


@numba.njit(**NJIT)
def _any_nonfinite(x):  # pragma: no cover (njit)
    t = np.float32(0.0)
    for v in x.ravel():
        t += v * np.float32(0.0)
    return t != t


# --------------------------------------------------------------------------- drivers

def _split(kernel, args: tuple, n_items: int, work: int) -> None:
    """Run kernel(*args, a, b) over [0, n_items) in parts, one per engine thread when large.

    The parts run under :func:`bitsub.threads.split` (the engine's thread policy).
    """
    n_threads = min(engine_threads(), n_items)
    if work < PARALLEL_MIN or n_threads < 2:
        kernel(*args, 0, n_items)
        return
    step = -(-n_items // n_threads)
    split(kernel, [(*args, a, min(n_items, a + step)) for a in range(0, n_items, step)])


def _tile_part(decode, transposed: bool, x2: np.ndarray, y: np.ndarray, s0: int, s1: int,
               per_tile: int, n_in: int) -> None:
    """y[:, rows of slices s0..s1-1] = x2 @ W.T, decoding per_tile slices at a time for BLAS.

    ``decode(a, b, tile)`` writes slices a..b-1: W.T columns into tile (in, 16 * per_tile) when
    ``transposed``, else W rows into tile (16 * per_tile, in).
    """
    out = y.shape[1]
    rows = SLICE * per_tile
    tile = np.empty((n_in, rows) if transposed else (rows, n_in), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf propagate, as in the kernels
        for a in range(s0, s1, per_tile):
            b = min(s1, a + per_tile)
            r0, r1 = SLICE * a, min(out, SLICE * b)
            decode(a, b, tile)
            w_t = tile[:, : r1 - r0] if transposed else tile[: r1 - r0].T
            if r1 - r0 == out:
                np.matmul(x2, w_t, out=y)
            else:
                y[:, r0:r1] = x2 @ w_t


def _tiled_blas(decode, transposed: bool, out: int, n_in: int, x2: np.ndarray) -> np.ndarray:
    """Return x2 @ W.T by decoded tiles of whole slices (about TILE_BYTES each) and BLAS.

    Large calls split the slices over the engine's threads, each decoding its own tiles and
    calling BLAS on one thread (:mod:`bitsub.threads`); small ones leave BLAS its threads.
    """
    n_slices = -(-out // SLICE)
    n_threads = min(engine_threads(), n_slices)
    if x2.shape[0] * out * n_in < PARALLEL_MIN:
        n_threads = 1
    tile_bytes = TILE_BYTES // n_threads
    per_tile = max(1, min(-(-n_slices // n_threads), tile_bytes // (4 * SLICE * n_in)))
    y = np.empty((x2.shape[0], out), np.float32)
    if n_threads < 2:
        _tile_part(decode, transposed, x2, y, 0, n_slices, per_tile, n_in)
        return y
    step = -(-n_slices // n_threads)
    split(_tile_part, [(decode, transposed, x2, y, a, min(n_slices, a + step), per_tile, n_in)
                       for a in range(0, n_slices, step)])
    return y


def _run(plan: Plan, x: np.ndarray) -> np.ndarray:
    """Return x @ W.T for a checked x of shape (in,) or (batch, in): pick the kernel by shape."""
    out, n_in = plan.shape[0], plan.cols_in
    n_batch = x.shape[0] if x.ndim == 2 else 1
    has_lut, has_sell = plan.layout != "sell", plan.layout != "lut"
    sparse = plan.nnz < SELL_TILE_DENSITY * out * n_in
    n_slices = -(-out // 16)
    if has_lut and n_batch < LUT_BATCH_MIN:
        y = np.empty((n_batch, out) if x.ndim == 2 else out, np.float32)
        args = (plan.lut_codes, plan.lut_mask, plan.codebook, x, y, n_in)
        _split(_lut_vec, args, n_slices, out * n_in * n_batch)
        return y
    x2 = x if x.ndim == 2 else x.reshape(1, -1)
    if has_lut and not (has_sell and sparse and n_batch >= BATCH_MIN):
        codes, mask, book = plan.lut_args

        def decode_lut(s0: int, s1: int, tile_t: np.ndarray) -> None:
            _lut_decode_rows(codes, mask, book, n_in, s0, s1, tile_t)

        y = _tiled_blas(decode_lut, True, out, n_in, x2)
        return y if x.ndim == 2 else y[0]
    if n_batch >= BATCH_MIN and not sparse:
        # Dense enough: decode tiles of whole slices and let BLAS multiply (exact dense NaN
        # semantics, so no fix-up).
        def decode_sell(s0: int, s1: int, tile: np.ndarray) -> None:
            _sell_decode_rows(plan.slice_ptr, plan.slice_len, plan.row_len, plan.cols,
                              plan.codes, plan.codebook, s0, s1, tile)

        return _tiled_blas(decode_sell, False, out, n_in, x2)
    work = plan.cols.size * n_batch
    if n_batch < BATCH_MIN:
        y = np.empty((n_batch, out), np.float32)
        args = (plan.slice_ptr, plan.slice_len, plan.cols, plan.codes, plan.codebook, x2, y)
        _split(_sell_vec, args, plan.slice_len.size, work)
    else:
        y = np.empty((n_batch, out), np.float32)
        xt = np.zeros((n_in, _BATCH_CHUNK), np.float32)
        yt = np.empty((out, _BATCH_CHUNK), np.float32)
        args = (plan.slice_ptr, plan.slice_len, plan.cols, plan.codes, plan.codebook, xt, yt)
        for b0 in range(0, n_batch, _BATCH_CHUNK):  # a chunk of x.T, zero-padded, stays in cache
            b1 = min(n_batch, b0 + _BATCH_CHUNK)
            xt[:, : b1 - b0] = x2[b0:b1].T
            xt[:, b1 - b0:] = 0.0
            _split(_sell_batch, args, plan.slice_len.size, plan.cols.size * _BATCH_CHUNK)
            y[b0:b1] = yt[:, : b1 - b0].T
    if _any_nonfinite(x2):
        fix_nonfinite(plan.slice_ptr, plan.row_len, plan.cols, plan.codes, plan.codebook, x2, y)
    return y if x.ndim == 2 else y[0]


_NP_F32 = np.dtype(np.float32)


# --------------------------------------------------------------------------- public


def matmul(plan: Plan, x: np.ndarray) -> np.ndarray:
    """Packed sparse matmul: ``x @ W.T`` for the weights W of a plan, on the CPU.

    Parameters
    ----------
    plan : Plan
        A 2-D layer's plan (:func:`bitsub.kernels.plan.build_plan` or ``PackedModel.plan``). A 4-D
        (conv) plan is used as its (out, in*kh*kw) flattening.
    x : ndarray of float32, (in,) or (batch, in), C-contiguous

    Returns
    -------
    ndarray of float32, (out,) or (batch, out)
    """
    if type(plan) is not Plan:
        check_plan(plan)
    n_in = plan.cols_in
    if (type(x) is not np.ndarray or x.dtype != _NP_F32 or not 0 < x.ndim < 3
            or x.shape[-1] != n_in or not x.flags.c_contiguous):
        check_x(x, n_in)
    if x.ndim == 1 and plan.layout != "sell":  # the most common call in serving, kept short
        if plan.positions < PARALLEL_MIN:
            a = plan.lut_args
            return _lut_matvec(a[0], a[1], a[2], x, plan.shape[0])
    return _run(plan, x)


def conv2d(plan: Plan, x: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """2-D convolution (cross-correlation, NCHW) with a conv layer's packed weights, on the CPU.

    Runs through :func:`matmul` on im2col patches.

    Parameters
    ----------
    plan : Plan
        Plan of a 4-D layer of shape (out, in, kh, kw).
    x : ndarray of float32, (batch, in, height, width), C-contiguous
    stride, padding : int
        As in ``torch.nn.functional.conv2d`` with int arguments (zero padding).

    Returns
    -------
    ndarray of float32, (batch, out, out_height, out_width)
    """
    x, stride, padding, oh, ow = conv_geometry(plan, x, stride, padding)
    y = _run(plan, patches(plan, x, stride, padding, oh, ow))
    return np.ascontiguousarray(y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2))
