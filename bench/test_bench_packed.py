"""PackedModel throughput: add_task, weights(), save and load, each beside a baseline in one run.

Run: ``.venv/bin/python -m pytest bench/test_bench_packed.py -s --benchmark-columns=min,median``
(``-s`` prints the ratio table). ``BITSUB_BENCH_PACKED_SIDE`` sets the layer side (default 4096:
one 4096x4096 layer); 8 tasks at 4 bits, each writing every position (32-bit words, 3-bit
prefixes: 4 tasks per bank, 2 banks).

Baselines (same data, same run):
- add_task: NumPy writing the same fields (prefix and code shifted into place) into the uint32
  word arrays, ``words |= (prefix << s) | (codes << s - b)`` -- no checks, no bookkeeping;
- weights: NumPy ``codebook[codes]`` from a uint8 code array (the decode with the fields already
  unpacked, so the scan of the words is what we pay on top);
- save / load: plain h5py writing / reading one dense float32 copy of the layer (64 MiB at
  4096x4096), no checksums, no fsync; and, for save, the same plus ``fsync`` (what atomicity
  costs).

bitsub's file (format 4) holds only the codes, codebooks and masks; its load checks the seal
and every crc, decodes the masks, rebuilds each bank's words in one pass through ``add_banks``
(which checks every field, reading the codes straight from the file's bytes) and compares them
with their stored hashes. ``load-mixed`` is the other end of the
layouts: each task writes a random half of the positions and reuses a random half of its
bank's earlier ones, so write masks and masks are coded in context.
``load floor`` times, alone and in the same run, what any load of this file must do: read its
bytes into fresh page-aligned memory, check its crc32 (zlib, split over the engine threads) and
allocate and first-touch the words it rebuilds; the table prints each as a ratio to h5py's read.
For the one-core figure, run it under ``taskset -c 0``.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import bitsub
from bitsub import PackedModel, TaskLayer
from bitsub.storage.crc import crc32_segments
from bitsub.threads import engine_threads, split

SIDE = int(os.environ.get("BITSUB_BENCH_PACKED_SIDE", "4096"))
SHAPE = (SIDE, SIDE)
N_TASKS = 8
BITS = 4
PREFIX = 3
TIMES: dict[tuple[str, str], float] = {}
SIZES: dict[str, int] = {}
DENSE: dict[int, np.ndarray] = {}  # model id -> its dense float32 weights (computed untimed)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 1 << BITS, SHAPE, dtype=np.uint8) for _ in range(N_TASKS)]
    codebooks = [np.sort(rng.standard_normal(1 << BITS)).astype(np.float32)
                 for _ in range(N_TASKS)]
    mask = np.ones(SHAPE, bool)
    return codes, codebooks, mask


def build(data):
    codes, codebooks, mask = data
    pm = PackedModel(word_bits=32, prefix_bits=PREFIX)
    pm.add_layer("fc", SHAPE)
    for t in range(N_TASKS):
        pm.add_task({"fc": TaskLayer(mask, mask, bits=BITS, codebook=codebooks[t],
                                     codes=codes[t])})
    return pm


@pytest.fixture(scope="module")
def model(data):
    return build(data)


def numpy_add(data):
    codes, _, _ = data
    per_bank = ((1 << PREFIX) - 1, 32 // (PREFIX + BITS))
    per_bank = min(per_bank)
    banks = []
    for t in range(N_TASKS):
        k, j = divmod(t, per_bank)
        if j == 0:
            banks.append(np.zeros(SIDE * SIDE, np.uint32))
        s = 32 - (j + 1) * (PREFIX + BITS)
        c = codes[t].reshape(-1).astype(np.uint32)
        banks[k] |= (np.uint32(j + 1) << np.uint32(s + BITS)) | (c << np.uint32(s))
    return banks


def test_same_words_as_baseline(model, data):
    for k, words in enumerate(numpy_add(data)):
        np.testing.assert_array_equal(model.words("fc", k), words)


@pytest.mark.parametrize("impl", ["bitsub", "numpy"])
def test_add_tasks(benchmark, data, impl):
    small = tuple(a[:8, :8] for a in data[0][:1]), data[1], data[2][:8, :8]
    if impl == "bitsub":
        fn = build
        pm = PackedModel()  # warm the JIT
        pm.add_layer("fc", (8, 8))
        pm.add_task({"fc": TaskLayer(small[2], small[2], bits=BITS, codebook=data[1][0],
                                     codes=small[0][0])})
    else:
        fn = numpy_add
    benchmark.group = f"add {N_TASKS} tasks"
    benchmark.pedantic(fn, args=(data,), rounds=3, iterations=1)
    TIMES[("add_task", impl)] = benchmark.stats.stats.median / N_TASKS


@pytest.mark.parametrize("impl", ["bitsub", "numpy"])
def test_weights(benchmark, model, data, impl):
    t = N_TASKS - 1
    codes, codebooks, _ = data
    if impl == "bitsub":
        model.weights(0, "fc")

        def fn():
            return model.weights(t, "fc")
    else:
        def fn():
            return codebooks[t][codes[t]]
    benchmark.group = "weights"
    out = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    np.testing.assert_array_equal(out, codebooks[t][codes[t]])
    TIMES[("weights", impl)] = benchmark.stats.stats.median


def plain_save(pm, path, fsync):
    """The baseline: h5py writing one dense float32 copy of the layer."""
    dense = DENSE.get(id(pm))
    if dense is None:
        dense = DENSE[id(pm)] = pm.weights(pm.tasks[-1], "fc")
    with h5py.File(path, "w") as f:
        f["fc"] = dense
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def plain_load(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


@pytest.mark.parametrize("impl", ["bitsub", "h5py", "h5py+fsync"])
def test_save(benchmark, model, tmp_path, impl):
    path = tmp_path / "m.h5"
    for t in model.tasks:
        model.encoded_mask(t, "fc")  # encode masks once, outside the timing
    if impl == "bitsub":
        def fn():
            model.save(path)
    else:
        plain_save(model, path, fsync=False)  # the dense copy, decoded outside the timing

        def fn():
            plain_save(model, path, fsync=impl.endswith("fsync"))
    benchmark.group = "save"
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    SIZES[impl] = path.stat().st_size
    TIMES[("save", impl)] = benchmark.stats.stats.median


@pytest.mark.parametrize("impl", ["bitsub", "h5py"])
def test_load(benchmark, model, tmp_path, impl):
    path = tmp_path / "m.h5"
    if impl == "bitsub":
        model.save(path)
        fn = bitsub.load
    else:
        plain_save(model, path, fsync=False)
        fn = plain_load
    benchmark.group = "load"
    # more rounds than the others: on a shared machine a 20 ms load is easily disturbed
    out = benchmark.pedantic(fn, args=(path,), rounds=9, iterations=1, warmup_rounds=2)
    if impl == "bitsub":
        assert out == model
    SIZES["load-" + impl] = path.stat().st_size
    TIMES[("load", impl)] = benchmark.stats.stats.median


def read_aligned(path):
    """The file's bytes in fresh page-aligned memory, as the load reads them."""
    size = path.stat().st_size
    raw = np.empty(size + 4096, np.uint8)
    skip = -raw.ctypes.data % 4096
    view = memoryview(raw[skip : skip + size])
    with open(path, "rb", buffering=0) as fh:
        got = 0
        while got < size:
            got += fh.readinto(view[got:])
    return view


def floor_words(pm):
    """Fresh memory for every bank's words, first touched on the engine threads (as the load)."""
    out = []
    for _ in range(pm.banks):
        words = np.empty(SIDE * SIDE, np.uint32)
        halves = np.array_split(words, engine_threads())
        split(lambda a: a.fill(0), [(h,) for h in halves])
        out.append(words)
    return out


@pytest.mark.parametrize("part", ["read", "crc32", "words"])
def test_load_floor(benchmark, model, tmp_path, part):
    """What any load of this file must do, each part timed alone: read the file's bytes into
    fresh memory, check its crc32 (zlib, split over the engine threads as the load does),
    and allocate and first-touch the words it rebuilds (2 banks x 64 MiB)."""
    path = tmp_path / "m.h5"
    model.save(path)
    data = memoryview(np.fromfile(path, np.uint8))
    if part == "read":
        def fn():
            return read_aligned(path)
    elif part == "crc32":
        def fn():
            return crc32_segments(data, [512, len(data)])
    else:
        def fn():
            return floor_words(model)
    benchmark.group = "load floor"
    benchmark.pedantic(fn, rounds=9, iterations=1, warmup_rounds=2)
    TIMES[("floor", part)] = benchmark.stats.stats.median


def build_mixed():
    """The mixed layout: each task writes a random half and reuses a random half of the rest."""
    rng = np.random.default_rng(1)
    pm = PackedModel(word_bits=32, prefix_bits=PREFIX)
    pm.add_layer("fc", SHAPE)
    written = np.zeros(SHAPE, bool)
    per_bank = min((1 << PREFIX) - 1, 32 // (PREFIX + BITS))
    for t in range(N_TASKS):
        new_bank = t % per_bank == 0
        if new_bank:
            written[:] = False
        write = rng.random(SHAPE) < 0.5
        mask = write | (written & (rng.random(SHAPE) < 0.5))
        cb = np.sort(rng.standard_normal(1 << BITS)).astype(np.float32)
        codes = rng.integers(0, 1 << BITS, SHAPE, dtype=np.uint8)
        pm.add_task({"fc": TaskLayer(mask, write, bits=BITS, codebook=cb, codes=codes)},
                    bank="new" if new_bank and t else None)
        written |= write
    return pm


@pytest.fixture(scope="module")
def mixed_model():
    return build_mixed()


@pytest.mark.parametrize("impl", ["bitsub", "h5py"])
def test_load_mixed(benchmark, mixed_model, tmp_path, impl):
    path = tmp_path / "m.h5"
    if impl == "bitsub":
        mixed_model.save(path)
        fn = bitsub.load
    else:
        plain_save(mixed_model, path, fsync=False)
        fn = plain_load
    benchmark.group = "load-mixed"
    # five rounds: the ratio to the regular load (9 rounds) moved with single disturbed rounds
    out = benchmark.pedantic(fn, args=(path,), rounds=5, iterations=1, warmup_rounds=1)
    if impl == "bitsub":
        assert out == mixed_model
    SIZES["load-mixed-" + impl] = path.stat().st_size
    TIMES[("load-mixed", impl)] = benchmark.stats.stats.median


@pytest.fixture(scope="module", autouse=True)
def ratio_table():
    yield
    n = SIDE * SIDE
    print(f"\n{SIDE}x{SIDE} layer, {N_TASKS} tasks at {BITS} bits (median times)")
    if ("add_task", "bitsub") in TIMES:
        ours, base = TIMES[("add_task", "bitsub")], TIMES.get(("add_task", "numpy"))
        print(f"add_task  {ours * 1e3:8.1f} ms/task  {n / ours / 1e6:7.1f} M fields/s"
              + (f"  bitsub/numpy time {ours / base:5.2f}x" if base else ""))
    if ("weights", "bitsub") in TIMES:
        ours, base = TIMES[("weights", "bitsub")], TIMES.get(("weights", "numpy"))
        print(f"weights   {ours * 1e3:8.1f} ms       {n / ours / 1e6:7.1f} M weights/s"
              + (f"  bitsub/numpy time {ours / base:5.2f}x" if base else ""))
    for op in ("save", "load", "load-mixed"):
        ours = TIMES.get((op, "bitsub"))
        if not ours:
            continue
        size = SIZES.get("bitsub" if op == "save" else f"{op}-bitsub", 0)
        line = f"{op:<9} {ours * 1e3:8.1f} ms  {size / ours / 1e6:7.1f} MB/s"
        for base in ("h5py", "h5py+fsync"):
            t = TIMES.get((op, base))
            if t:
                line += f"  vs {base} {ours / t:5.2f}x time"
        print(line)
    base = TIMES.get(("load", "h5py"))
    parts = {part: TIMES.get(("floor", part)) for part in ("read", "crc32", "words")}
    if base and all(parts.values()):
        floor = sum(parts.values())
        print("load floor, x h5py load: "
              + "  ".join(f"{part} {t / base:5.2f}x" for part, t in parts.items())
              + f"  sum {floor / base:5.2f}x ({floor * 1e3:.1f} ms)")
        if TIMES.get(("load", "bitsub")):
            print(f"load = {TIMES[('load', 'bitsub')] / base:5.2f}x h5py, of which the floor "
                  f"(read + crc32 + words) {floor / base:5.2f}x")
    if TIMES.get(("load-mixed", "bitsub")) and TIMES.get(("load", "bitsub")):
        ratio = TIMES[("load-mixed", "bitsub")] / TIMES[("load", "bitsub")]
        print(f"load-mixed / load (bitsub, bar <= 3x): {ratio:5.2f}x")
