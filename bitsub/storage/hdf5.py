r"""One HDF5 file per packed model, format version 4: the file holds only the occupied bits.

File layout
-----------
The file starts with an HDF5 user block of 512 bytes holding a seal (integers little-endian)::

    magic      b"BITSUB\x00\x01"  8 bytes
    version    uint32             format version (4)
    length     uint64             total file length in bytes
    crc32      uint32             zlib.crc32 of bytes [512, length)
    index      uint64, uint64     offset and size of the bytes of the dataset ``/index``
    head_crc   uint32             zlib.crc32 of all the bytes above
    (zeros up to byte 512)

Inside the HDF5 file (readable with plain h5py, no bitsub needed):

- ``/`` attributes ``encoding-type`` (``"bitsub.packed-model"``) and ``encoding-version`` (4).
- ``/payload`` (uint8): the tasks' payloads one after the other, in task order. A task's payload
  is the concatenation, layer by layer in layer order, of

  * its mask, Huffman-coded (:func:`bitsub.encode_mask`) alone or in the context of the
    previous task's mask of the same bank or of the union of the bank's earlier masks
    (``MASK_REFERENCES``); so masks are decoded in task order;
  * its write mask, only when it is not implied (``WRITE_REFERENCES``: ``"new"``, the mask
    minus what the bank's earlier tasks wrote, and ``"mask"`` store nothing; ``"coded"`` stores
    the Huffman-coded difference from ``"new"``);
  * its codes, one per written position in position order, packed at its bit-width
    (:func:`bitsub.pack_bits`), or for raw float32 fields the float32 values (little-endian);
  * its codebook (float32 little-endian);

  then its private arrays (float32 little-endian). Prefixes, positions and words are not
  stored: they are implied by the task order and the masks, and rebuilt at load.
- ``/index`` (uint8): UTF-8 JSON ``{"format": 4, "model": {...}, "crc": c}``: word and prefix
  bits, the network, the layers (name, shape), the (offset, size) of the payload's bytes in the
  file, per task its bank, the size and crc32 of its payload and per layer ``[bits, fields,
  mask_reference, mask_bytes, write_reference, write_bytes, centroids]``, its private arrays
  (name, shape), and per bank and layer the :func:`bitsub.model.packed.words_hash` of the
  rebuilt words. ``c`` is the crc32 of the canonical JSON of ``model``.

:func:`load` reads the whole file, checks the seal, then reads the model through the index,
never through the HDF5 library, so untrusted bytes reach no C parser. It reads the index (its
own crc32 first), then checks the seal's crc32 and every task's in one pass over the file (the
tasks' crc32 combined into the whole's: :mod:`bitsub.storage.crc`), checks the index's every
field, decodes each mask after checking its declared shape against the layer's (bounding what a
decoder allocates; each bank's tasks in order, the banks on the engine threads), and rebuilds
the words through :meth:`PackedModel.add_banks`, which writes each bank's words of a layer in
one pass straight from the packed masks and codes in the file's buffer
(:mod:`bitsub.model.rebuild`), refusing what ``add_task`` refuses: fields outside a task's
mask, codes outside its codebook, words without room, reused positions no earlier task wrote
and values that are not finite or above 2**60. The same pass sums the words' hash, which is
compared with the stored one before the model is returned, so no kernel ever indexes with
unverified words. :func:`save` gathers every task's codes of a bank and layer from the words in
one pass (:meth:`PackedModel.bank_codes`), lets HDF5 write the file's structure with the
payload's space placed but not filled, writes the payload's parts straight into it and the
seal from the tasks' crc32.
Format 3 files (one word per position) are refused with a message saying how to convert them
(re-export from the training run's checkpoints).

Length: a little over 600 lines: the format's one writer and one reader stay beside the byte
layout they share (seal, index, payload order), so the layout is defined in one place.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bitsub.atomic import atomic_path
from bitsub.codecs.bitfield import packed_size
from bitsub.errors import FormatError
from bitsub.model.packed import (
    MASK_REFERENCES,
    MAX_CODE_BITS,
    MAX_PREFIX_BITS,
    RAW_BITS,
    WRITE_REFERENCES,
    PackedModel,
    TaskLayer,
)
from bitsub.model.placement import PackedCodes, PackedMask
from bitsub.model.rebuild import SLACK
from bitsub.storage.crc import crc32_combine, crc32_segments
from bitsub.storage.masks import decode_packed_mask, unpack_context, write_mask
from bitsub.threads import engine_threads, split

__all__ = ["FORMAT_VERSION", "load", "save", "stored_task_bytes"]

FORMAT_VERSION = 4
USERBLOCK = 512
MAGIC = b"BITSUB\x00\x01"
_HEAD = struct.Struct("<8sIQIQQ")  # magic, version, length, body crc32, index offset, size
_HEAD_CRC = struct.Struct("<I")
ROOT_TYPE = "bitsub.packed-model"
INDEX = "index"
PAYLOAD = "payload"
MAX_POSITIONS = 1 << 32  # per layer, as the mask codec
MAX_LAYERS = 1 << 16
MAX_TASKS = 1 << 20


# ------------------------------------------------------------------------ save


def _task_payload(pm: PackedModel, t: int, cache: dict[tuple[int, str], dict[int, np.ndarray]]
                  ) -> tuple[dict[str, Any], list[Any]]:
    """The index entry (without its location) and the byte parts of task t's payload.

    ``cache``: (bank, layer) -> the packed codes of the bank's tasks
    (:meth:`PackedModel.bank_codes`), filled on first use.
    """
    layers, parts = [], []
    bank = pm.bank(t)
    for name in pm.layers:
        b, n = pm.bits(t, name), pm.fields(t, name)
        enc = pm.encoded_mask(t, name)
        wref, wdata = pm.write_coding(t, name)
        k = 0
        cdata: Any = b""
        cb = b""
        if b:
            if (bank, name) not in cache:
                cache[bank, name] = pm.bank_codes(bank, name)
            cdata = cache[bank, name][t]
        if b == RAW_BITS:
            cdata = cdata.view(">u4").astype("<u4").view(np.uint8)
        elif b:
            cbook = pm.codebook(t, name)
            k, cb = int(cbook.size), cbook.astype("<f4").tobytes()
        parts += [enc, wdata, cdata, cb]
        layers.append([b, n, pm.mask_reference(t, name), len(enc), wref, len(wdata), k])
    private = []
    for key, arr in pm.private(t).items():
        private.append([key, list(arr.shape)])
        parts.append(arr.astype("<f4").tobytes())
    return {"bank": pm.bank(t), "layers": layers, "private": private}, parts


def stored_task_bytes(pm: PackedModel, t: int) -> int:
    """Bytes of task t's payload in a format 4 file (what ``capacity`` counts, private included)."""
    total = 0
    for name in pm.layers:
        b, n = pm.bits(t, name), pm.fields(t, name)
        total += len(pm.encoded_mask(t, name)) + len(pm.write_coding(t, name)[1])
        if b == RAW_BITS:
            total += 4 * n
        elif b:
            total += packed_size(n, b) + 4 * pm.codebook(t, name).size
    return total + sum(4 * arr.size for arr in pm.private(t).values())


def _canon(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _crc_parts(parts: list[Any]) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def _task_crcs(tasks: list[list[Any]]) -> list[int]:
    """The crc32 of each task's payload (its parts one after the other), on the engine threads."""
    k = min(engine_threads(), len(tasks))
    sizes = np.cumsum([sum(memoryview(p).nbytes for p in parts) for parts in tasks])
    edges = [0, *(int(np.searchsorted(sizes, j * sizes[-1] / k)) + 1 for j in range(1, k)),
             len(tasks)] if k > 1 and sizes[-1] >= 1 << 20 else [0, len(tasks)]
    groups = [(tasks[a:b],) for a, b in zip(edges, edges[1:]) if b > a]
    return [c for cs in split(lambda ts: [_crc_parts(p) for p in ts], groups) for c in cs]


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_file(pm: PackedModel, tmp: Path) -> int:
    """Write the whole file to ``tmp`` (not yet fsync'ed); return its size.

    HDF5 writes the structure with the payload's space allocated but not filled; the payload's
    parts then go straight to their place in the file (no copy of them is assembled in memory),
    and the seal is computed from the tasks' crc32 and the few other bytes, read back.
    """
    from bitsub.version import __version__

    entries, tasks = [], []
    cache: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    for t in pm.tasks:
        entry, parts = _task_payload(pm, t, cache)
        entry["bytes"] = sum(memoryview(p).nbytes for p in parts)
        entries.append(entry)
        tasks.append(parts)
    crcs = _task_crcs(tasks) if tasks else []
    payload_crc = 0
    for entry, crc in zip(entries, crcs):
        entry["crc"] = crc
        payload_crc = crc32_combine(payload_crc, crc, entry["bytes"])
    total = sum(e["bytes"] for e in entries)
    hashes = [[pm.words_hash(name, k) for name in pm.layers] for k in range(pm.banks)]
    # libver="latest": the compact object headers of HDF5 1.8+, about 1 KiB less per file;
    # meta_block_size=0: no 2 KiB block reserved for metadata ahead of the early-placed payload
    with h5py.File(tmp, "w", userblock_size=USERBLOCK, libver="latest",
                   meta_block_size=0) as f:
        f.attrs["encoding-type"] = ROOT_TYPE
        f.attrs["encoding-version"] = FORMAT_VERSION
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # contiguous space, placed now
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # and not written: the payload goes there
        dcpl.set_obj_track_times(False)  # no timestamps: the same model, the same bytes
        ds = h5py.h5d.create(f.id, PAYLOAD.encode(), h5py.h5t.STD_U8LE,
                             h5py.h5s.create_simple((total,)), dcpl=dcpl)
        off = ds.get_offset() if total else None
        if off is None and total:  # cannot happen: early allocation places the data
            raise RuntimeError("HDF5 did not place the payload contiguously")
        model = {"word_bits": pm.word_bits, "prefix_bits": pm.prefix_bits,
                 "network": pm.network, "bitsub_version": __version__,
                 "layers": [[name, list(pm.shape(name))] for name in pm.layers],
                 "tasks": entries, "hashes": hashes,
                 "payload": [0 if off is None else int(off), total]}
        text = json.dumps({"format": FORMAT_VERSION, "model": model,
                           "crc": zlib.crc32(_canon(model))}).encode()
        ix = f.create_dataset(INDEX, data=np.frombuffer(text, np.uint8))
        f.flush()
        index = (ix.id.get_offset(), ix.id.get_storage_size())
    if index[0] is None:  # cannot happen
        raise RuntimeError("HDF5 did not store the index contiguously")
    fd = os.open(tmp, os.O_RDWR)
    try:
        length = os.fstat(fd).st_size
        start = USERBLOCK if off is None else int(off)
        if start + total > length:  # cannot happen: HDF5 sizes the file to hold the payload
            raise RuntimeError("HDF5 wrote a file too short for its payload")
        pos = start
        for parts in tasks:
            for part in parts:
                _pwrite_all(fd, part, pos)
                pos += memoryview(part).nbytes
        crc = zlib.crc32(os.pread(fd, start - USERBLOCK, USERBLOCK))
        crc = crc32_combine(crc, payload_crc, total)
        tail = os.pread(fd, length - pos, pos)
        crc = crc32_combine(crc, zlib.crc32(tail), len(tail))
        head = _HEAD.pack(MAGIC, FORMAT_VERSION, length, crc, *index)
        head += _HEAD_CRC.pack(zlib.crc32(head))
        _pwrite_all(fd, head + bytes(USERBLOCK - len(head)), 0)
    finally:
        os.close(fd)
    return length


def save(pm: PackedModel, path: str | os.PathLike[str]) -> int:
    """Write ``pm`` to one HDF5 file at ``path``, atomically; return the file's size in bytes.

    The file is written to a temporary file beside ``path``, fsync'ed, then renamed over
    ``path`` (through :func:`bitsub.atomic.atomic_path`). A crash at any point leaves either
    the previous file or the new one at ``path``, never a partial one. Sets ``pm.file_bytes``.
    """
    if not isinstance(pm, PackedModel):
        raise TypeError(f"save needs a PackedModel, got {type(pm).__name__}")
    target = Path(os.fspath(path))
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path")
    with atomic_path(target) as tmp:
        size = _write_file(pm, tmp)
    pm.file_bytes = size
    return size


# ------------------------------------------------------------------------ load


def _check_seal(data: memoryview, where: str) -> tuple[int, tuple[int, int]]:
    """Check the seal of a file image but the body's crc; return it and the index's location."""
    if len(data) < 12:
        raise FormatError(f"{where}: truncated: {len(data)} bytes, not even a bitsub header")
    if data[:8] != MAGIC:
        raise FormatError(f"{where}: not a bitsub file (bad magic {bytes(data[:8])!r})")
    (version,) = struct.unpack_from("<I", data, 8)
    if version > FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version} is newer than this bitsub "
                          f"supports ({FORMAT_VERSION}); upgrade bitsub")
    if version != FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version} is not supported (this bitsub "
                          f"reads version {FORMAT_VERSION}); to convert it, re-run the "
                          "bitsub-train command that wrote it (it resumes from its checkpoints "
                          "and exports again), or re-export the model with "
                          "bitsub_torch.export and save it")
    end = _HEAD.size
    if len(data) < end + _HEAD_CRC.size:
        raise FormatError(f"{where}: truncated: {len(data)} bytes, the header needs "
                          f"{end + _HEAD_CRC.size}")
    (head_crc,) = _HEAD_CRC.unpack_from(data, end)
    if zlib.crc32(data[:end]) != head_crc:
        raise FormatError(f"{where}: header checksum mismatch: the file is corrupted")
    _, _, length, body_crc, off, size = _HEAD.unpack_from(data)
    if len(data) < length:
        raise FormatError(f"{where}: truncated: {len(data)} of {length} bytes")
    if len(data) > length:
        raise FormatError(f"{where}: {len(data) - length} unexpected bytes after the end")
    if length < USERBLOCK or any(data[end + _HEAD_CRC.size : USERBLOCK]):
        raise FormatError(f"{where}: bytes {end + _HEAD_CRC.size}..{USERBLOCK} of the header "
                          "are not zero: the file is corrupted")
    return body_crc, (off, size)


def _body_mismatch(data: memoryview) -> FormatError:
    return FormatError(f"checksum mismatch over bytes {USERBLOCK}..{len(data)}: "
                       "the file is corrupted")


def _check_index_location(data: memoryview, off: int, size: int) -> None:
    if not (USERBLOCK <= off and size > 0 and off + size <= len(data)):
        raise FormatError(f"header index ({off}, {size}) lies outside the file's "
                          "data: the file is corrupted")


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{where}: {value!r} is not an integer in {low}..{high}")
    return value


def _list(value: Any, where: str, n: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        raise FormatError(f"{where}: expected a list" + (f" of {n}" if n is not None else ""))
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _shape(value: Any, where: str, ndims: tuple[int, ...]) -> tuple[int, ...]:
    dims = _list(value, where)
    if len(dims) not in ndims:
        raise FormatError(f"{where}: shape {value!r} has {len(dims)} dimensions, expected "
                          f"{' or '.join(map(str, ndims))}")
    shape = tuple(_int(d, where, 0, MAX_POSITIONS) for d in dims)
    if math.prod(shape) > MAX_POSITIONS:
        raise FormatError(f"{where}: shape {shape} has more than {MAX_POSITIONS} positions")
    return shape


def _read_index(data: memoryview, off: int, size: int) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(data[off : off + size]))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"/{INDEX}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise FormatError(f"/{INDEX}: not a bitsub index")
    if doc.get("format") != FORMAT_VERSION:
        raise FormatError(f"/{INDEX}: format {doc.get('format')!r}, expected {FORMAT_VERSION}")
    if doc.get("crc") != zlib.crc32(_canon(doc["model"])):
        raise FormatError(f"/{INDEX}: checksum mismatch: the file is corrupted")
    return doc["model"]


class _Cursor:
    """Consecutive slices of one task's payload (``data[pos:end]``); errors name the task."""

    def __init__(self, data: memoryview, pos: int, end: int, where: str) -> None:
        self.data, self.pos, self.end, self.where = data, pos, end, where

    def take(self, n: int, what: str) -> memoryview:
        if n > self.end - self.pos:
            raise FormatError(f"{self.where}: {what} runs past the end of the payload")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def _locate_tasks(model: dict[str, Any], data: memoryview, index: tuple[int, int]
                  ) -> tuple[list[int], int, int]:
    """Where each task's payload starts in the file (and the end of the last), and the payload.

    The payload must lie after the seal, inside the file, apart from the index, and the tasks'
    sizes must add up to it exactly. Returns (cuts, payload offset, payload size): task t's
    payload is ``data[cuts[t]:cuts[t + 1]]``.
    """
    off, size = _list(model.get("payload"), "payload location", 2)
    size = _int(size, "payload size", 0, len(data))
    off = _int(off, "payload offset", USERBLOCK if size else 0, len(data) - size)
    if size and off < index[0] + index[1] and index[0] < off + size:
        raise FormatError(f"/{PAYLOAD} and /{INDEX} overlap in the file: the file is corrupted")
    tasks = _list(model.get("tasks"), "tasks")
    if len(tasks) > MAX_TASKS or not all(isinstance(e, dict) for e in tasks):
        raise FormatError("tasks: expected a list of objects")
    cuts = [off]
    for t, entry in enumerate(tasks):
        cuts.append(cuts[-1] + _int(entry.get("bytes"), f"task {t}: bytes", 0,
                                    off + size - cuts[-1]))
    if cuts[-1] != off + size:
        raise FormatError(f"/{PAYLOAD}: {off + size - cuts[-1]} bytes belong to no task")
    return cuts, off, size


def _verify(data: memoryview, body_crc: int, index: tuple[int, int]
            ) -> tuple[dict[str, Any], list[int]]:
    """The checked index and the tasks' payload cuts, after every crc32 is verified.

    One pass over the file computes the crc32 of each task's payload and of the whole body
    (combined: :mod:`bitsub.storage.crc`). Where the index itself cannot be read, the body's
    crc decides the message: corruption, or content that is wrong behind a valid seal.
    """
    try:
        _check_index_location(data, *index)
        model = _read_index(data, *index)
        cuts, off, size = _locate_tasks(model, data, index)
    except FormatError:
        if zlib.crc32(data[USERBLOCK:]) != body_crc:
            raise _body_mismatch(data) from None
        raise
    if size:
        segments, whole = crc32_segments(data, [USERBLOCK, *cuts, len(data)])
    else:  # no payload bytes (it may lie anywhere, at offset 0)
        whole = crc32_segments(data, [USERBLOCK, len(data)])[1]
        segments = [0] * (len(cuts) + 1)
    if whole != body_crc:
        raise _body_mismatch(data)
    for t, entry in enumerate(model["tasks"]):
        if segments[t + 1] != entry.get("crc"):
            raise FormatError(f"task {t}: checksum mismatch: the file is corrupted")
    return model, cuts


def _task_layer(pm: PackedModel, cur: _Cursor, buf: np.ndarray, spec: Any, where: str,
                name: str, earlier: list[np.ndarray], written: np.ndarray
                ) -> tuple[TaskLayer, np.ndarray, bytes, int, tuple[int, bytes, np.ndarray]]:
    """Decode one layer of a task's payload into a TaskLayer (checked again by add_banks).

    ``earlier``: the packed masks of the bank's earlier tasks in this layer; ``written``:
    packed, the positions the bank's earlier tasks wrote, updated in place with this task's
    write mask. ``buf``: the file (``cur.data``'s array).
    Returns the TaskLayer (packed masks, and codes left in ``buf``), the packed mask, its
    stored bytes and reference, and (write reference, its stored bytes, the packed write mask).
    """
    shape = pm.shape(name)
    n_pos = math.prod(shape)
    b, n, mref, mlen, wref, wlen, k = _list(spec, where, 7)
    b = _int(b, f"{where} bit-width", 0, RAW_BITS)
    if not (b == 0 or b <= MAX_CODE_BITS or b == RAW_BITS):
        raise FormatError(f"{where}: bit-width {b} is not 0, 1..16 or 32")
    n = _int(n, f"{where} fields", 1 if b else 0, n_pos if b else 0)
    mref = _int(mref, f"{where} mask reference", 0, len(MASK_REFERENCES) - 1)
    wref = _int(wref, f"{where} write reference", 0, len(WRITE_REFERENCES) - 1)
    k = _int(k, f"{where} centroids", 1 if 1 <= b <= MAX_CODE_BITS else 0,
             1 << b if 1 <= b <= MAX_CODE_BITS else 0)
    if mref and not earlier:
        raise FormatError(f"{where}: the mask is coded against {MASK_REFERENCES[mref]!r} masks, "
                          "but the task is the first of its bank")
    context = ref = None
    if mref:
        ref = earlier[-1]
        if mref != 1:  # the union of the earlier masks (ufunc calls: without the GIL)
            ref = earlier[0].copy()
            for e in earlier[1:]:
                np.bitwise_or(ref, e, out=ref)
        context = unpack_context(ref, shape)
    enc = bytes(cur.take(_int(mlen, f"{where} mask bytes", 0, cur.end), "the mask"))
    try:
        mask = decode_packed_mask(enc, context, shape, ref)
    except (ValueError, TypeError) as exc:  # FormatError is a ValueError
        raise FormatError(f"{where}: bad mask encoding: {exc}") from None
    wdata = bytes(cur.take(_int(wlen, f"{where} write bytes", 0, cur.end), "the write mask"))
    if wref != 2 and wdata:
        raise FormatError(f"{where}: write reference {WRITE_REFERENCES[wref]!r} stores no bytes")
    diff = None
    if wref == 2:
        try:
            diff = decode_packed_mask(wdata, None, shape)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{where}: bad write mask encoding: {exc}") from None
    write, count, outside = write_mask(mask, written, wref, diff)  # written |= write
    if outside:
        raise FormatError(f"{where}: fields outside the task's mask")
    if count != n:
        raise FormatError(f"{where}: the write mask has {count} positions, the index says {n}")
    masks = {"mask": PackedMask(mask), "write": PackedMask(write)}
    if b == RAW_BITS:
        raw = np.frombuffer(cur.take(4 * n, "the raw fields"), "<f4")
        values = np.zeros(n_pos, np.float32)
        values[np.unpackbits(write, count=n_pos).view(bool)] = raw
        tl = TaskLayer(**masks, values=values.reshape(shape), bits=b)
    elif b:
        start = cur.pos
        cur.take(packed_size(n, b), "the codes")
        cb = np.frombuffer(cur.take(4 * k, "the codebook"), "<f4")
        tl = TaskLayer(**masks, bits=b, codebook=cb, codes=PackedCodes(buf, n, start))
    else:
        tl = TaskLayer(**masks)
    return tl, mask, enc, mref, (wref, wdata, write)


def _decode_task(pm: PackedModel, data: memoryview, buf: np.ndarray, cuts: list[int], t: int,
                 entry: dict[str, Any], earlier: list[list[Any]], written: list[np.ndarray]
                 ) -> tuple[dict[str, TaskLayer], list[Any], dict[str, np.ndarray]]:
    """Task t's layers, their stored codings and its private arrays, from its payload.

    ``earlier``: the codings of the bank's earlier tasks; ``written``: per layer, the packed
    union of what they wrote, updated in place.
    """
    where = f"task {t}"
    names = pm.layers
    specs = _list(entry.get("layers"), f"{where} layers", len(names))
    cur = _Cursor(data, cuts[t], cuts[t + 1], where)
    layers, codings_t = {}, []
    for i, name in enumerate(names):
        tl, mask, enc, mref, wcode = _task_layer(
            pm, cur, buf, specs[i], f"{where} layer {i}", name,
            [rows[i][0] for rows in earlier], written[i])
        layers[name] = tl
        codings_t.append((mask, enc, mref, wcode))
    private = {}
    for j, spec in enumerate(_list(entry.get("private"), f"{where} private")):
        key, shape = _list(spec, f"{where} private[{j}]", 2)
        key = _str(key, f"{where} private[{j}] name")
        shape = _shape(shape, f"{where} private[{j}]", tuple(range(9)))
        if key in private:
            raise FormatError(f"{where}: private name {key!r} repeated")
        raw = cur.take(4 * math.prod(shape), f"private {key!r}")
        private[key] = np.frombuffer(raw, "<f4").reshape(shape)
    if cur.pos != cur.end:
        raise FormatError(f"{where}: {cur.end - cur.pos} bytes of the payload are "
                          "not described by the index")
    return layers, codings_t, private


def _build(model: dict[str, Any], data: memoryview, buf: np.ndarray, cuts: list[int]
           ) -> PackedModel:
    word_bits = _int(model.get("word_bits"), "word_bits", 32, 64)
    if word_bits not in (32, 64):
        raise FormatError(f"word_bits = {word_bits}, expected 32 or 64")
    prefix_bits = _int(model.get("prefix_bits"), "prefix_bits", 1, MAX_PREFIX_BITS)
    pm = PackedModel(word_bits=word_bits, prefix_bits=prefix_bits)
    for i, spec in enumerate(_list(model.get("layers"), "layers")[:MAX_LAYERS + 1]):
        if i == MAX_LAYERS:
            raise FormatError(f"layers: more than {MAX_LAYERS}")
        name, shape = _list(spec, f"layers[{i}]", 2)
        try:
            pm.add_layer(_str(name, f"layers[{i}] name"), _shape(shape, f"layers[{i}]", (2, 4)))
        except (ValueError, TypeError) as exc:
            raise FormatError(f"layers[{i}]: bad layer: {exc}") from None
    names = pm.layers
    try:
        pm.set_network(model.get("network"))
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"network: not a valid network: {exc}") from None
    tasks = model["tasks"]  # a list of dicts (_locate_tasks)
    hashes = _list(model.get("hashes"), "hashes")
    # The banks' numbers first (task order), then each bank's tasks decoded in order, the banks
    # on the engine threads (a bank's masks depend on its earlier tasks only); the error
    # raised is the one of the first task that has one, as when decoding in task order.
    members: list[list[int]] = []  # bank -> its tasks
    banks: list[int] = []
    failures: list[tuple[int, BaseException]] = []
    for t, entry in enumerate(tasks):
        try:
            bank = _int(entry.get("bank"), f"task {t} bank", 0, len(members))
        except FormatError as exc:
            failures.append((t, exc))
            break
        if bank == len(members):
            members.append([])
        members[bank].append(t)
        banks.append(bank)
    sizes = [math.prod(pm.shape(n)) for n in names]

    def decode_bank(k: int) -> tuple[dict[int, Any], tuple[int, BaseException] | None]:
        written = [np.zeros((n + 7) // 8, np.uint8) for n in sizes]  # packed union of writes
        done: dict[int, Any] = {}
        for t in members[k]:
            try:
                done[t] = _decode_task(pm, data, buf, cuts, t, tasks[t],
                                       [done[u][1] for u in members[k] if u < t], written)
            except Exception as exc:  # raised below, in task order
                return done, (t, exc)
        return done, None

    parts = [(k,) for k in range(len(members))]
    decoded: dict[int, Any] = {}
    for done, failure in (split(decode_bank, parts) if sum(sizes) >= 1 << 16
                          else [decode_bank(*p) for p in parts]):
        decoded.update(done)
        if failure is not None:
            failures.append(failure)
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    codings, all_layers, privates = [], [], []
    for t in range(len(tasks)):
        layers, codings_t, private = decoded[t]
        codings.append(codings_t)
        all_layers.append(layers)
        privates.append(private)
    try:
        pm.add_banks(all_layers, banks, privates)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"inconsistent tasks: {exc}") from None
    if len(hashes) != pm.banks:
        raise FormatError(f"hashes: {len(hashes)} banks listed, the tasks use {pm.banks}")
    for k, row in enumerate(hashes):
        row = _list(row, f"hashes[{k}]", len(names))
        for i, name in enumerate(names):
            if pm.words_hash(name, k) != _int(row[i], f"hashes[{k}]", 0, (1 << 64) - 1):
                raise FormatError(f"bank {k}, layer {name!r}: the rebuilt words do not match "
                                  "their stored hash: the file is corrupted")
    for t, rows in enumerate(codings):
        for name, (_, enc, mref, (wref, wdata, _)) in zip(names, rows):
            pm.keep_stored_coding(t, name, enc, mref, (wref, wdata))
    return pm


def _read_file(p: Path) -> tuple[np.ndarray, memoryview]:
    """The file's bytes: a page-aligned writable array (SLACK bytes more) and a view of them.

    Page-aligned: the kernel copies a page-aligned file offset into a page-aligned address
    at about twice the speed of a misaligned one. Writable: numba dispatches read-only arrays
    slower. The slack lets the rebuild read the last code stream eight bytes at a time.
    """
    with open(p, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = np.empty(size + SLACK + 4096, np.uint8)
        skip = -raw.ctypes.data % 4096
        buf = raw[skip : skip + size + SLACK]
        view = memoryview(buf)
        got = 0
        while got < size:
            k = fh.readinto(view[got:size])
            if not k:
                break
            got += k
        rest = fh.read()  # a file that grew meanwhile is read to its end (the seal checks length)
    if rest:
        buf = np.concatenate([buf[:got], np.frombuffer(rest, np.uint8),
                              np.zeros(SLACK, np.uint8)])
        got += len(rest)
    buf[got:] = 0
    return buf, memoryview(buf)[:got]


def load(path: str | os.PathLike[str]) -> PackedModel:
    """Read a packed model written by :func:`save`, verifying everything before returning it.

    Raises
    ------
    bitsub.FormatError
        If the file is truncated, corrupted, malformed, inconsistent, from an older format
        (with how to convert it) or a newer one; the message names what is wrong and where.
    OSError
        If the file cannot be read at all (missing, a directory, permissions).
    """
    p = Path(os.fspath(path))
    where = str(p)
    if p.is_dir():
        raise IsADirectoryError(f"{where} is a directory; give a file written by save")
    buf, data = _read_file(p)
    body_crc, index = _check_seal(data, where)
    try:
        model, cuts = _verify(data, body_crc, index)
        pm = _build(model, data, buf, cuts)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError,
            UnicodeDecodeError, OverflowError, RecursionError, struct.error) as exc:
        raise FormatError(f"{where}: unreadable content ({type(exc).__name__}: {exc})") \
            from None
    pm.file_bytes = len(data)
    return pm
