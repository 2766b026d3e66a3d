r"""One HDF5 file per packed model: atomic save, verified load.

File layout (format version 3)
------------------------------
The file starts with an HDF5 user block (U = 512 bytes, or the next power of two that holds
the seal) holding a seal (integers little-endian)::

    magic      b"BITSUB\x00\x01"  8 bytes
    version    uint32             format version (3; no other version loads)
    length     uint64             total file length in bytes
    crc32      uint32             zlib.crc32 of bytes [U, length) outside the regions, in order
    userblock  uint32             U
    n_regions  uint32             R
    index      uint64, uint64     offset and size of the bytes of the dataset ``/index``
    regions    R x (uint64 offset, uint64 size): the raw bytes of the word datasets, sorted
    head_crc   uint32             zlib.crc32 of all the bytes above
    (zeros up to byte U)

:func:`load` reads the whole file, checks the seal, and then reads the model through the
index (below), never through the HDF5 library: a truncated or corrupted file is refused before
anything in it is interpreted, and load pays no HDF5 per-object overhead.
The regions hold the word arrays, each checked by its own ``hash`` (see below) in the one pass
that also checks the words' structure, instead of a second crc pass; load checks that the
regions are exactly the word datasets' bytes.
Inside the HDF5 file (readable with plain h5py, no bitsub needed):

- ``/`` attributes: ``word_bits``, ``prefix_bits``, ``n_layers``, ``n_tasks``, ``n_banks``,
  ``network`` (JSON text), ``bitsub_version``.
- ``/layers/<i>`` (i = 0, 1, ... in layer order) with attributes ``name`` and ``shape``, and one
  dataset per bank, ``bank_<k>``: the word array, flat, one word per weight position. 32-bit
  words are ``uint32 (n,)``; 64-bit words are ``uint32 (n, 2)`` pairs ``[high, low]``
  (word = high << 32 | low). Fields inside a word: see :mod:`bitsub.model.packed`.
- ``/tasks/<t>`` with attributes ``bank`` and ``prefix``, and datasets ``bits`` (int32, one per
  layer; 0 = no field, 32 = raw float32 fields, else code bit-width), ``fields`` (int64, number
  of fields the task wrote per layer), ``codebooks/<i>`` (float32 centroids, for layers with
  1..16-bit codes), ``masks/<i>`` (uint8, the mask Huffman-coded by
  :func:`bitsub.codecs.maskcodec.encode_mask`, alone or with a context), ``mask_refs`` (uint8, one
  per layer: the context of ``masks/<i>``: 0 none, 1 the decoded mask of the previous task of
  the same bank, 2 the union of the masks of all earlier tasks of the same bank; so masks are
  decoded in task order), ``private/<j>`` (float32, attribute ``name``).
- ``/index`` (uint8): UTF-8 JSON ``{"format": 3, "objects": {path: entry}}`` with an entry for
  every other group and dataset (paths ``/``, ``/layers/0``, ...): ``attrs`` (each attribute:
  ``{"s": text}`` or ``{"dtype", "shape", "v", "array"}``), and for a group ``children`` (its
  number of members), for a dataset ``dtype``, ``shape``, ``offset`` and ``size`` (of its
  contiguous bytes in the file). Save builds it from the objects as h5py reads them back; load
  reads the attributes and the datasets' bytes through it, with every check below.

Every group and dataset has the attributes ``encoding-type``, ``encoding-version`` and ``crc32``:
zlib.crc32 over the object's other attributes (canonical JSON) and, for a dataset, its raw
little-endian bytes -- except the word datasets, whose ``crc32`` covers their attributes and
whose attribute ``hash`` (uint64, :func:`bitsub.model.packed.words_hash` of the words as uint32 or
uint64 values) covers their data. Load checks every one of them (the index's own bytes are
covered by the seal).

Load reads the file once into memory; datasets over 64 KiB are 64-byte aligned in the file, so
the loaded model's 32-bit word arrays are views of that image, not copies. It reads the seal and
every byte outside the regions first and checks them; a thread then reads the regions in 4 MiB
pieces while load decodes the masks and checks each piece of words already read. What load pays
on top of reading the bytes: one pass over the words (structure, field counts, orphans and
hash, :func:`bitsub.model.packed._check_part`), overlapped with the read where a second core is
free,
the mask decodes, and the index's JSON.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import threading
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bitsub.atomic import write_bytes
from bitsub.codecs.maskcodec import (
    SCHEME_NAMES,
    _decode_stream,  # one stream of a parsed encoding
    decode_mask,
)
from bitsub.codecs.maskcodec import _parse as _parse_mask  # shape and schemes, nothing decoded
from bitsub.errors import FormatError
from bitsub.model.packed import (
    MASK_REFERENCES,
    MAX_CODE_BITS,
    MAX_PREFIX_BITS,
    RAW_BITS,
    PackedModel,
    _Bank,
    _check_bank,
    _check_range,
    _code_checks,
    _LazyMasks,
    _merge_context_streams,
    _Task,
    check_network,
    words_hash,
)

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_VERSION = 3
USERBLOCK = 512  # the smallest user block; larger when the seal lists many regions
MAGIC = b"BITSUB\x00\x01"
# magic, version, length, body crc32, userblock, n_regions, index offset, index size
_HEAD = struct.Struct("<8sIQIIIQQ")
_REGION = struct.Struct("<QQ")  # offset, size
_HEAD_CRC = struct.Struct("<I")
MAX_REGIONS = 1 << 20

ROOT_TYPE = "bitsub.packed-model"
INDEX = "index"  # the root dataset listing every other object (see the module docstring)
INDEX_TYPE = "bitsub.index"
# dtypes of the datasets load reads (any other listed in the index is refused)
_DATASET_DTYPES = frozenset({"<u4", "<i4", "<i8", "|u1", "<f4"})


# ------------------------------------------------------------------------ checksums


def _canon(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"array": value.dtype.str, "shape": list(value.shape),
                "data": [_canon(v) for v in value.reshape(-1).tolist()]}
    if isinstance(value, np.generic):
        return _canon(value.item())
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    return value


def _attrs_crc(attrs: Mapping[str, Any], data: Any = b"") -> int:
    canon = {k: _canon(attrs[k]) for k in sorted(attrs) if k != "crc32"}
    text = json.dumps(canon, sort_keys=True).encode()
    return zlib.crc32(data, zlib.crc32(text))


def _object_crc(obj: h5py.HLObject, data: Any = b"") -> int:
    return _attrs_crc(dict(obj.attrs.items()), data)


def _seal(obj: h5py.HLObject, kind: str, data: Any = b"", **attrs: Any) -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = FORMAT_VERSION
    for k, v in attrs.items():
        obj.attrs[k] = v
    obj.attrs["crc32"] = np.uint32(_object_crc(obj, data))


def _dataset(group: h5py.Group, key: str, arr: np.ndarray, kind: str, **attrs: Any) -> None:
    arr = np.ascontiguousarray(arr)
    ds = group.create_dataset(key, data=arr)
    _seal(ds, kind, arr.reshape(-1), **attrs)


def _group(parent: h5py.Group, key: str, kind: str, **attrs: Any) -> h5py.Group:
    g = parent.create_group(key)
    _seal(g, kind, **attrs)
    return g


# ------------------------------------------------------------------------ save


def _userblock(n_regions: int) -> int:
    need = _HEAD.size + n_regions * _REGION.size + _HEAD_CRC.size
    return max(USERBLOCK, 1 << (need - 1).bit_length())


def _words_dataset(g: h5py.Group, key: str, w: np.ndarray, word_bits: int) -> h5py.Dataset:
    if word_bits == 32:
        arr, kind = w.astype("<u4", copy=False), "bitsub.words-u32"
    else:
        arr, kind = np.empty((w.size, 2), "<u4"), "bitsub.words-u64-as-u32-pairs"
        arr[:, 0] = w >> np.uint64(32)
        arr[:, 1] = w & np.uint64(0xFFFFFFFF)
    ds = g.create_dataset(key, data=np.ascontiguousarray(arr))
    _seal(ds, kind, hash=np.uint64(words_hash(w)))
    return ds


def _attr_json(value: Any, where: str) -> Any:
    # an attribute as h5py reads it, in a JSON form _attr_value turns back into the same value
    if isinstance(value, str):
        return {"s": value}
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biuf":
        arr = np.asarray(value)
        return {"dtype": arr.dtype.str, "shape": list(arr.shape), "v": arr.tolist(),
                "array": isinstance(value, np.ndarray)}
    raise TypeError(f"{where}: cannot list attribute of type {type(value).__name__}")


def _attr_value(doc: Any) -> Any:
    if not isinstance(doc, dict):
        raise FormatError(f"attribute entry is {type(doc).__name__}, expected an object")
    if set(doc) == {"s"} and isinstance(doc["s"], str):
        return doc["s"]
    dtype = np.dtype(doc["dtype"])
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise FormatError(f"attribute of dtype {dtype}: not a number type")
    arr = np.array(doc["v"], dtype).reshape(tuple(int(d) for d in doc["shape"]))
    return arr if doc["array"] is True else arr[()]


def _write_index(f: h5py.File) -> h5py.Dataset:
    """Write the root dataset ``index``: every other object's attributes and data location.

    Load reads the model's metadata from it, instead of opening each HDF5 object (whose
    per-object cost is most of what HDF5 adds to the read of a file). It is what the objects
    hold, read back from the file through h5py.
    """
    objects: dict[str, Any] = {}

    def add(name: str, obj: Any) -> None:
        path = "/" + name if name else "/"
        if path == "/" + INDEX:
            return
        entry: dict[str, Any] = {
            "attrs": {k: _attr_json(v, path) for k, v in obj.attrs.items()}}
        if isinstance(obj, h5py.Dataset):
            plist = obj.id.get_create_plist()
            if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters():
                raise RuntimeError(f"{path}: not stored contiguously")  # cannot happen
            entry.update(dtype=obj.dtype.str, shape=list(obj.shape or ()),
                         offset=obj.id.get_offset(), size=obj.id.get_storage_size())
        else:
            entry["children"] = len(obj)
        objects[path] = entry

    add("", f)
    f.visititems(add)
    text = json.dumps({"format": FORMAT_VERSION, "objects": objects})
    data = np.frombuffer(text.encode(), np.uint8)
    if INDEX in f:
        del f[INDEX]
    ds = f.create_dataset(INDEX, data=data)
    _seal(ds, INDEX_TYPE, data)
    return ds


def _write_h5(pm: PackedModel, target: Any) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Write the HDF5 image; return the (offset, size) of the word datasets and the index."""
    from bitsub import __version__

    names = pm.layers
    words = []
    # big datasets 64-byte aligned in the file: the loaded word arrays are views of the image
    with h5py.File(target, "w", userblock_size=_userblock(len(names) * pm.banks),
                   alignment_threshold=1 << 16, alignment_interval=64) as f:
        layers = _group(f, "layers", "bitsub.layers")
        for i, name in enumerate(names):
            g = layers.create_group(str(i))
            for k in range(pm.banks):
                words.append(_words_dataset(g, f"bank_{k}", pm._banks[k].words[name],
                                            pm.word_bits))
            _seal(g, "bitsub.layer", name=name, shape=np.array(pm.shape(name), np.int64))
        tasks = _group(f, "tasks", "bitsub.tasks")
        for t in pm.tasks:
            g = tasks.create_group(str(t))
            bits = np.array([pm.bits(t, n) for n in names], "<i4")
            _dataset(g, "bits", bits, "bitsub.bit-widths")
            _dataset(g, "fields", np.array([pm.fields(t, n) for n in names], "<i8"),
                     "bitsub.field-counts")
            _dataset(g, "mask_refs", np.array([pm.mask_reference(t, n) for n in names], "|u1"),
                     "bitsub.mask-references")
            cbs = g.create_group("codebooks")
            masks = g.create_group("masks")
            for i, name in enumerate(names):
                if 1 <= bits[i] <= MAX_CODE_BITS:
                    _dataset(cbs, str(i), pm.codebook(t, name).astype("<f4"), "bitsub.codebook")
                enc = np.frombuffer(pm.encoded_mask(t, name), np.uint8)
                _dataset(masks, str(i), enc, "bitsub.mask-huffman")
            _seal(cbs, "bitsub.codebooks")
            _seal(masks, "bitsub.masks")
            priv = g.create_group("private")
            for j, (key, arr) in enumerate(pm.private(t).items()):
                _dataset(priv, str(j), arr.astype("<f4"), "bitsub.private-float32", name=key)
            _seal(priv, "bitsub.private")
            _seal(g, "bitsub.task", bank=pm.bank(t), prefix=pm.prefix(t))
        _seal(f, ROOT_TYPE, word_bits=pm.word_bits, prefix_bits=pm.prefix_bits,
              n_layers=len(names), n_tasks=len(pm.tasks), n_banks=pm.banks,
              network=json.dumps(pm.network), bitsub_version=__version__)
        f.flush()
        index = _write_index(f)
        f.flush()
        regions = [(ds.id.get_offset(), ds.id.get_storage_size()) for ds in words]
        index_region = (index.id.get_offset(), index.id.get_storage_size())
    if any(off is None for off, _ in regions + [index_region]):  # cannot happen
        raise RuntimeError("HDF5 did not store a word dataset contiguously")
    return sorted(regions), index_region


def _gaps(length: int, userblock: int, regions: list[tuple[int, int]]):
    """The byte ranges [start, end) of [userblock, length) outside the regions, in order."""
    pos = userblock
    for off, size in regions:
        yield pos, off
        pos = off + size
    yield pos, length


def _body_crc(buf: Any, userblock: int, regions: list[tuple[int, int]]) -> int:
    crc = 0
    for start, end in _gaps(len(buf), userblock, regions):
        crc = zlib.crc32(buf[start:end], crc)
    return crc


def _seal_image(buf: Any, regions: list[tuple[int, int]], index: tuple[int, int]) -> None:
    """Write the seal into the user block of a complete file image (a writable buffer)."""
    userblock = _userblock(len(regions))
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(buf), _body_crc(buf, userblock, regions),
                      userblock, len(regions), *index)
    head += b"".join(_REGION.pack(off, size) for off, size in regions)
    head += _HEAD_CRC.pack(zlib.crc32(head))
    buf[:userblock] = head + bytes(userblock - len(head))


def save(pm: PackedModel, path: str | os.PathLike[str]) -> None:
    """Write ``pm`` to one HDF5 file at ``path``, atomically.

    The file is written to a temporary file beside ``path``, flushed and fsync'ed, then renamed
    over ``path`` (and the directory fsync'ed). A crash at any point leaves either the previous
    file or the new one at ``path``, never a partial one.

    Parameters
    ----------
    pm : PackedModel
        The model.
    path : str or path-like
        Target file.
    """
    if not isinstance(pm, PackedModel):
        raise TypeError(f"save needs a PackedModel, got {type(pm).__name__}")
    target = Path(os.fspath(path))
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path")
    # Build the whole file in memory, seal it, then write it out in one go.
    image = io.BytesIO()
    regions, index = _write_h5(pm, image)
    buf = image.getbuffer()
    _seal_image(buf, regions, index)
    try:
        write_bytes(target, buf)
    finally:
        buf.release()


# ------------------------------------------------------------------------ load


def _check_head(data: bytes, where: str) -> tuple[int, int]:
    """Check the fixed part of the seal (magic, version); return (length, userblock)."""
    if len(data) < _HEAD.size:
        raise FormatError(f"{where}: truncated: {len(data)} bytes, not even a bitsub header")
    magic, version, length, _, userblock, n_regions, _, _ = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{where}: not a bitsub file (bad magic {magic!r})")
    if version > FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version} is newer than this bitsub "
                          f"supports ({FORMAT_VERSION}); upgrade bitsub")
    if version != FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version} is not supported (this bitsub "
                          f"reads version {FORMAT_VERSION})")
    if n_regions > MAX_REGIONS or userblock != _userblock(n_regions):
        raise FormatError(f"{where}: header declares {n_regions} regions in a {userblock}-byte "
                          "user block: the file is corrupted")
    return length, userblock


def _check_seal(data: Any, where: str, fill: Any = None
                ) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Check the seal of a file image; return the regions and the index's (offset, size).

    ``fill(start, end)``, if given, reads the bytes [start, end) outside the regions into the
    image once the header (the image's first user-block bytes) is checked.
    """
    length, userblock = _check_head(data, where)
    n_regions = _HEAD.unpack_from(data)[5]
    end = _HEAD.size + n_regions * _REGION.size
    if len(data) < end + _HEAD_CRC.size:
        raise FormatError(f"{where}: truncated: {len(data)} bytes, the header needs "
                          f"{end + _HEAD_CRC.size}")
    (head_crc,) = _HEAD_CRC.unpack_from(data, end)
    if zlib.crc32(memoryview(data)[:end]) != head_crc:
        raise FormatError(f"{where}: header checksum mismatch: the file is corrupted")
    if len(data) < length:
        raise FormatError(f"{where}: truncated: {len(data)} of {length} bytes")
    if len(data) > length:
        raise FormatError(f"{where}: {len(data) - length} unexpected bytes after the end")
    if any(memoryview(data)[end + _HEAD_CRC.size : userblock]):
        raise FormatError(f"{where}: bytes {end + _HEAD_CRC.size}..{userblock} of the header "
                          "are not zero: the file is corrupted")
    regions = [_REGION.unpack_from(data, _HEAD.size + j * _REGION.size)
               for j in range(n_regions)]
    pos = userblock
    for off, size in regions:
        if off < pos or off + size > length:
            raise FormatError(f"{where}: header region ({off}, {size}) overlaps another or "
                              "lies outside the file: the file is corrupted")
        pos = off + size
    if fill is not None:
        for start, stop in _gaps(length, userblock, regions):
            fill(start, stop)
    if _body_crc(memoryview(data), userblock, regions) != _HEAD.unpack_from(data)[3]:
        raise FormatError(f"{where}: checksum mismatch over bytes {userblock}..{length}: "
                          "the file is corrupted")
    index = _HEAD.unpack_from(data)[6:8]
    if not (userblock <= index[0] and index[1] > 0 and index[0] + index[1] <= length) or any(
            index[0] < off + size and off < index[0] + index[1] for off, size in regions):
        raise FormatError(f"{where}: header index ({index[0]}, {index[1]}) lies outside the "
                          "file or over a word array: the file is corrupted")
    return regions, index


def _read_into(fh: Any, view: memoryview, pos: int) -> int:
    """Read bytes at file offset pos into view until it is full or the file ends."""
    fh.seek(pos)
    got = 0
    while got < len(view):  # readinto may return short counts
        more = fh.readinto(view[got:])
        if not more:
            break
        got += more
    return got


def _read_image(fh: Any, where: str) -> tuple[np.ndarray, list[tuple[int, int]],
                                              tuple[int, int]]:
    """Read and check the seal and every byte outside the word arrays' regions.

    One NumPy buffer holds the file (reading into a bytes object costs twice that in page
    faults); the word arrays of the loaded model are views of it. The regions are read by
    :class:`_WordReader`.
    """
    head = fh.read(_HEAD.size)
    userblock = _HEAD.size
    if len(head) == _HEAD.size:
        userblock = _check_head(head, where)[1]  # refuse a foreign file before reading it
    size = os.fstat(fh.fileno()).st_size
    data = np.empty(size, np.uint8)
    view = memoryview(data)
    _read_into(fh, view[:userblock], 0)

    def fill(start: int, end: int) -> None:
        if _read_into(fh, view[start:end], start) < end - start:
            raise FormatError(f"{where}: the file shrank while it was read")

    regions, index = _check_seal(data, where, fill)
    return data, regions, index


_PIECE = 1 << 22  # bytes of word arrays read, then checked, at a time


class _WordReader:
    """Reads the word arrays' regions of an open file into its image, on a thread, in order.

    Load checks the words read so far while the next piece is read (the word check costs about
    what reading does), instead of reading the whole file before checking anything.
    """

    def __init__(self, fh: Any, data: np.ndarray, regions: list[tuple[int, int]]) -> None:
        self.fh, self.data, self.regions = fh, data, regions
        self.read_to = 0  # every region byte before this offset is read
        self.finished = False
        self.stopped = False
        self.error = ""
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="bitsub-load", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        view = memoryview(self.data)
        try:
            for off, size in self.regions:
                pos, end = off, off + size
                while pos < end and not self.stopped:
                    k = min(end, pos + _PIECE) - pos
                    if _read_into(self.fh, view[pos : pos + k], pos) < k:
                        self.error = "the file shrank while it was read"
                        return
                    pos += k
                    with self.cond:
                        self.read_to = pos
                        self.cond.notify_all()
            if not self.stopped and _read_into(self.fh, memoryview(bytearray(1)),
                                               len(self.data)):
                self.error = "the file grew while it was read"
        except OSError as exc:
            self.error = f"read error: {exc}"
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    def wait(self, end: int) -> None:
        """Wait until the region bytes before offset end are read (FormatError if never)."""
        with self.cond:
            while self.read_to < end and not self.finished:
                self.cond.wait()
            if self.read_to < end:
                raise FormatError(self.error or "the file could not be read")

    def finish(self) -> None:
        """Wait for the end of the read; raise FormatError if the file changed meanwhile."""
        self.thread.join()
        if self.error:
            raise FormatError(self.error)

    def stop(self) -> None:
        self.stopped = True
        self.thread.join()


class _Reader:
    """Checked access to the objects of one file, through its index; errors name the object."""

    def __init__(self, data: np.ndarray, regions: list[tuple[int, int]],
                 index: tuple[int, int]) -> None:
        self.data = data  # the file image (word arrays are views of it)
        self.regions = dict(regions)  # offset -> size, from the seal
        self.claimed: set[int] = set()
        self.attrs: dict[str, dict[str, Any]] = {}  # path -> attributes, each decoded once
        raw = self.data[index[0] : index[0] + index[1]]
        try:
            doc = json.loads(raw.tobytes())
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"/{INDEX}: not JSON: {exc}") from None
        objects = doc.get("objects") if isinstance(doc, dict) else None
        if not isinstance(objects, dict) or doc.get("format") != FORMAT_VERSION:
            raise FormatError(f"/{INDEX}: not a format {FORMAT_VERSION} table of objects")
        self.objects: dict[str, Any] = objects

    def obj(self, path: str, kind: str, *, dataset: bool) -> dict[str, Any]:
        entry = self.objects.get(path)
        if not isinstance(entry, dict) or not isinstance(entry.get("attrs"), dict):
            raise FormatError(f"{path}: missing")
        if dataset != ("dtype" in entry):
            raise FormatError(f"{path}: expected a {'dataset' if dataset else 'group'}")
        try:
            attrs = {str(k): _attr_value(v) for k, v in entry["attrs"].items()}
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            raise FormatError(f"{path}: bad attribute in the index: {exc}") from None
        self.attrs[path] = attrs
        got = attrs.get("encoding-type")
        if got != kind:
            raise FormatError(f"{path}: encoding-type is {got!r}, expected {kind!r}")
        ver = attrs.get("encoding-version")
        if isinstance(ver, (bool, np.bool_)) or not isinstance(ver, (int, np.integer)):
            raise FormatError(f"{path}: encoding-version missing or not an integer")
        if ver > FORMAT_VERSION:
            raise FormatError(f"{path}: encoding-version {ver} is newer than this bitsub "
                              f"supports ({FORMAT_VERSION}); upgrade bitsub")
        if ver != FORMAT_VERSION:
            raise FormatError(f"{path}: encoding-version {ver} is not supported (this bitsub "
                              f"reads version {FORMAT_VERSION})")
        return entry

    def _verify(self, path: str, data: Any = b"") -> None:
        attrs = self.attrs[path]
        stored = attrs.get("crc32")
        if not isinstance(stored, (int, np.integer)) or int(stored) != _attrs_crc(attrs, data):
            raise FormatError(f"{path}: checksum mismatch: the file is corrupted")

    def group(self, path: str, kind: str) -> int:
        """Check a group; return its number of members."""
        entry = self.obj(path, kind, dataset=False)
        self._verify(path)
        n = entry.get("children")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise FormatError(f"{path}: bad member count in the index")
        return n

    def _located(self, path: str, entry: dict[str, Any], dtype: str) -> tuple[tuple, int, int]:
        # (shape, offset, size) of a dataset's bytes, checked against the file image
        if entry.get("dtype") != np.dtype(dtype).str:
            raise FormatError(f"{path}: dtype {entry.get('dtype')}, expected {np.dtype(dtype)}")
        shape, off, size = entry.get("shape"), entry.get("offset"), entry.get("size")
        if not (isinstance(shape, list) and len(shape) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in shape)):
            raise FormatError(f"{path}: bad shape in the index")
        nbytes = np.dtype(dtype).itemsize * math.prod(shape)
        if off is None and size == 0 == nbytes:
            return tuple(shape), 0, 0  # HDF5 allocates no storage for an empty dataset
        if (isinstance(off, bool) or not isinstance(off, int) or size != nbytes
                or not 0 <= off <= self.data.size - nbytes):
            raise FormatError(f"{path}: its bytes ({off}, {size}) are not {nbytes} bytes "
                              "inside the file")
        return tuple(shape), off, size

    def array(self, path: str, kind: str, dtype: str, shape: tuple[int, ...] | None = None,
              ndim: int | None = None) -> np.ndarray:
        entry = self.obj(path, kind, dataset=True)
        got, off, size = self._located(path, entry, dtype)
        if shape is not None and got != shape:
            raise FormatError(f"{path}: shape {got}, expected {shape}")
        if ndim is not None and len(got) != ndim:
            raise FormatError(f"{path}: {len(got)} dimensions, expected {ndim}")
        arr = self.data[off : off + size].view(dtype).reshape(got).copy()
        self._verify(path, arr.reshape(-1))
        return arr

    def words(self, path: str, word_bits: int, n: int,
              reader: _WordReader) -> tuple[np.ndarray, int, int]:
        """A word array (a view of the file image when aligned), its stored hash and offset.

        A view's words may not be read yet: ``reader.wait`` for them before use.
        """
        if word_bits == 32:
            kind, shape = "bitsub.words-u32", (n,)
        else:
            kind, shape = "bitsub.words-u64-as-u32-pairs", (n, 2)
        entry = self.obj(path, kind, dataset=True)
        got, off, size = self._located(path, entry, "<u4")
        if got != shape:
            raise FormatError(f"{path}: <u4 {got}, expected <u4 {shape}")
        self._verify(path)  # the attributes; the data is covered by the hash
        expected = self.attrs[path].get("hash")
        if not isinstance(expected, np.uint64):
            raise FormatError(f"{path}: attribute 'hash' missing or not a uint64")
        if self.regions.get(off) != size or off in self.claimed:
            raise FormatError(f"{path}: its bytes are not a region listed in the file's seal")
        self.claimed.add(off)
        raw = self.data[off : off + size].view("<u4")
        if not raw.flags.aligned or word_bits == 64:
            reader.wait(off + size)  # copied now
        if not raw.flags.aligned:
            raw = raw.copy()
        if word_bits == 32:
            # a view of the image, which only this model holds (writable: numba dispatches
            # read-only arrays far more slowly, and add_task writes in place)
            return raw.astype(np.uint32, copy=False), int(expected), off
        pairs = raw.reshape(shape)
        w = (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64)
        return w, int(expected), off


def _attr_int(attrs: Mapping[str, Any], key: str, path: str, low: int, high: int) -> int:
    v = attrs.get(key)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise FormatError(f"{path}: attribute {key!r} missing or not an integer")
    if not low <= int(v) <= high:
        raise FormatError(f"{path}: attribute {key!r} = {int(v)} outside {low}..{high}")
    return int(v)


def _attr_str(attrs: Mapping[str, Any], key: str, path: str) -> str:
    v = attrs.get(key)
    if isinstance(v, bytes):
        try:
            v = v.decode()
        except UnicodeDecodeError:
            raise FormatError(f"{path}: attribute {key!r} is not UTF-8 text") from None
    if not isinstance(v, str):
        raise FormatError(f"{path}: attribute {key!r} missing or not text")
    return v


def _packed_mask(enc: bytes, context: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    # np.packbits of the decoded flat mask; a constant mask (a task using all or none of a
    # layer) is packed straight from its parsed header, without a bool array in between.
    if context is None:
        got, _, streams, _ = _parse_mask(enc, None)
        scheme = SCHEME_NAMES[streams[0][0]]
        if got == shape and scheme in ("zeros", "ones"):
            n = math.prod(shape)
            packed = np.full((n + 7) // 8, 0xFF if scheme == "ones" else 0, np.uint8)
            if n & 7 and scheme == "ones":
                packed[-1] = (0xFF << (8 - (n & 7))) & 0xFF
            return packed
    else:
        # the two streams (context 0, context 1 positions) merged straight into packed bits:
        # decode_mask's boolean scatter costs ~5x more on large masks
        got, sizes, streams, ctx = _parse_mask(enc, context)
        if got != shape:
            raise FormatError(f"mask of shape {got}, expected {shape}")
        bits = [_decode_stream(p, size) for p, size in zip(streams, sizes)]
        if [b.size for b in bits] != sizes:  # cannot happen: the decoder checks it
            raise FormatError("mask streams do not match the context")
        out = np.empty((ctx.size + 7) // 8, np.uint8)
        _merge_context_streams(ctx, *(np.append(b, False) for b in bits), out)
        return out
    mask = decode_mask(enc)
    if mask.shape != shape or mask.dtype != np.bool_:
        raise FormatError(f"mask of shape {mask.shape}, expected {shape}")
    return np.packbits(mask.reshape(-1))


def _reference_context(tasks: list[_Task], earlier: list[int], name: str, ref: int,
                       shape: tuple[int, ...]) -> np.ndarray | None:
    # The context a stored mask was coded against (PackedModel._reference_mask), from the
    # masks of the earlier tasks of the bank, already decoded.
    if ref == 0:
        return None
    n = math.prod(shape)
    if ref == 1:
        packed = tasks[earlier[-1]].masks[name]
    else:
        packed = np.bitwise_or.reduce([tasks[u].masks[name] for u in earlier])
    return np.unpackbits(packed, count=n).view(bool).reshape(shape)


def _check_words(reader: _WordReader, off: int, words: np.ndarray, word_bits: int,
                 prefix_bits: int, n_prefixes: int, bits_by_prefix: np.ndarray,
                 limit: np.ndarray, *out: Any) -> tuple[int, int]:
    """_check_bank of a word array at file offset off, piece by piece as the reader reads them.

    Pieces are checked on this thread while the reader thread reads the next (two busy
    threads); once the whole array is read, the rest is checked over threads in one call.
    """
    n = words.size
    step = _PIECE // words.itemsize
    code_check = _code_checks(bits_by_prefix, limit)
    lo = 0
    h = 0
    while lo < n:
        if reader.read_to >= off + n * words.itemsize:
            bad, part = _check_bank(words, word_bits, prefix_bits, n_prefixes, bits_by_prefix,
                                    limit, *out, start=lo)
            lo = n
        else:
            hi = min(n, lo + step)
            reader.wait(off + hi * words.itemsize)
            bad, part = _check_range(words, lo, hi, (word_bits, prefix_bits, n_prefixes,
                                                     bits_by_prefix, limit, code_check), *out)
            lo = hi
        if bad >= 0:
            return bad, 0
        h = (h + int(part)) & 0xFFFFFFFFFFFFFFFF
    return -1, h


def _build(data: np.ndarray, regions: list[tuple[int, int]], index: tuple[int, int],
           reader: _WordReader) -> PackedModel:
    r = _Reader(data, regions, index)
    r.group("/", ROOT_TYPE)
    root = r.attrs["/"]
    word_bits = _attr_int(root, "word_bits", "/", 32, 64)
    if word_bits not in (32, 64):
        raise FormatError(f"/: word_bits = {word_bits}, expected 32 or 64")
    prefix_bits = _attr_int(root, "prefix_bits", "/", 1, MAX_PREFIX_BITS)
    n_layers = _attr_int(root, "n_layers", "/", 0, 1 << 20)
    n_tasks = _attr_int(root, "n_tasks", "/", 0, 1 << 24)
    n_banks = _attr_int(root, "n_banks", "/", 0, n_tasks)
    if (n_banks == 0) != (n_tasks == 0):
        raise FormatError(f"/: {n_tasks} tasks in {n_banks} banks")
    try:
        network = check_network(json.loads(_attr_str(root, "network", "/")))
    except (ValueError, TypeError) as exc:
        raise FormatError(f"/: attribute 'network' is not a valid network: {exc}") from None

    pm = PackedModel(word_bits=word_bits, prefix_bits=prefix_bits)
    pm._network = network
    r.group("/layers", "bitsub.layers")
    names = []
    layer_words: list[list[Any]] = []  # (words, stored hash), then words
    for i in range(n_layers):
        path = f"/layers/{i}"
        r.group(path, "bitsub.layer")
        name = _attr_str(r.attrs[path], "name", path)
        shape_attr = r.attrs[path].get("shape")
        if not (isinstance(shape_attr, np.ndarray) and shape_attr.dtype.kind in "iu"):
            raise FormatError(f"{path}: attribute 'shape' missing or not integers")
        try:
            pm.add_layer(name, tuple(int(s) for s in shape_attr))
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{path}: bad layer: {exc}") from None
        n = math.prod(pm.shape(name))
        banks = [r.words(f"{path}/bank_{k}", word_bits, n, reader) for k in range(n_banks)]
        names.append(name)
        layer_words.append(banks)
    if len(r.claimed) != len(r.regions):
        raise FormatError(f"/: the seal lists {len(r.regions)} regions, the file has "
                          f"{len(r.claimed)} word arrays")

    r.group("/tasks", "bitsub.tasks")
    tasks: list[_Task] = []
    members: list[list[int]] = [[] for _ in range(n_banks)]
    for t in range(n_tasks):
        path = f"/tasks/{t}"
        r.group(path, "bitsub.task")
        bank = _attr_int(r.attrs[path], "bank", path, 0, n_banks - 1)
        prefix = _attr_int(r.attrs[path], "prefix", path, 1, (1 << prefix_bits) - 1)
        if prefix != len(members[bank]) + 1:
            raise FormatError(f"{path}: prefix {prefix} in bank {bank}, expected "
                              f"{len(members[bank]) + 1} (tasks take prefixes in order)")
        members[bank].append(t)
        bits = r.array(f"{path}/bits", "bitsub.bit-widths", "<i4", shape=(n_layers,))
        counts = r.array(f"{path}/fields", "bitsub.field-counts", "<i8", shape=(n_layers,))
        refs = r.array(f"{path}/mask_refs", "bitsub.mask-references", "|u1", shape=(n_layers,))
        earlier = members[bank][:-1]
        for i in range(n_layers):
            if refs[i] >= len(MASK_REFERENCES):
                raise FormatError(f"{path}/mask_refs: layer {i}: unknown mask reference "
                                  f"{int(refs[i])} (0..{len(MASK_REFERENCES) - 1})")
            if refs[i] and not earlier:
                raise FormatError(f"{path}/mask_refs: layer {i}: the mask is coded against "
                                  f"{MASK_REFERENCES[refs[i]]!r} masks, but task {t} is the "
                                  f"first task of bank {bank}")
        r.group(f"{path}/codebooks", "bitsub.codebooks")
        r.group(f"{path}/masks", "bitsub.masks")
        n_private = r.group(f"{path}/private", "bitsub.private")
        task = _Task(bank=bank, prefix=prefix, bits={}, fields={}, codebooks={}, masks={},
                     private={}, encoded_masks={})
        for i, name in enumerate(names):
            b = int(bits[i])
            shape = pm.shape(name)
            if not (b == 0 or 1 <= b <= MAX_CODE_BITS or b == RAW_BITS):
                raise FormatError(f"{path}/bits: layer {i}: bit-width {b} is not 0, 1..16 or 32")
            if b and prefix_bits + b > word_bits:
                raise FormatError(f"{path}/bits: layer {i}: a {prefix_bits} + {b}-bit field "
                                  f"does not fit a {word_bits}-bit word")
            if not 0 <= counts[i] <= math.prod(shape) or (b == 0) != (counts[i] == 0):
                raise FormatError(f"{path}/fields: layer {i}: {int(counts[i])} fields with "
                                  f"bit-width {b}")
            if 1 <= b <= MAX_CODE_BITS:
                cb = r.array(f"{path}/codebooks/{i}", "bitsub.codebook", "<f4", ndim=1)
                if not 1 <= cb.size <= 1 << b:
                    raise FormatError(f"{path}/codebooks/{i}: {cb.size} centroids for "
                                      f"{b}-bit codes")
                cb.flags.writeable = False
                task.codebooks[name] = cb
            elif b == RAW_BITS:
                task.codebooks[name] = None
            else:
                task.codebooks[name] = np.zeros(0, np.float32)
            enc = r.array(f"{path}/masks/{i}", "bitsub.mask-huffman", "|u1", ndim=1)
            context = _reference_context(tasks, earlier, name, int(refs[i]), shape)
            try:
                task.masks[name] = _packed_mask(enc.tobytes(), context, shape)
            except (ValueError, TypeError) as exc:  # FormatError is a ValueError
                raise FormatError(f"{path}/masks/{i}: bad mask encoding: {exc}") from None
            task.bits[name] = b
            task.fields[name] = int(counts[i])
            task.encoded_masks[name] = enc.tobytes()
            task.mask_refs[name] = int(refs[i])
        for j in range(n_private):
            ppath = f"{path}/private/{j}"
            arr = r.array(ppath, "bitsub.private-float32", "<f4")
            key = _attr_str(r.attrs[ppath], "name", ppath)
            if not key or key in task.private:
                raise FormatError(f"{ppath}: empty or repeated private name {key!r}")
            arr = arr.astype(np.float32, copy=False)
            arr.flags.writeable = False
            task.private[key] = arr
        tasks.append(task)

    for k in range(n_banks):
        if not members[k]:
            raise FormatError(f"/: bank {k} holds no task")
    # Words: well-formed fields of known tasks, codes inside codebooks, field counts as
    # recorded, every used position of every task has a field of a task <= it (the read rule is
    # total), and the hash: one pass per word array (_check_bank).
    size = 1 << prefix_bits
    layer_used: list[list[np.ndarray]] = [[] for _ in names]
    for i, name in enumerate(names):
        n = math.prod(pm.shape(name))
        for k in range(n_banks):
            words, expected, off = layer_words[i][k]
            bits_by_prefix = np.zeros(size, np.int64)
            limit = np.zeros(size, np.uint64)
            for j, t in enumerate(members[k]):
                bits_by_prefix[j + 1] = tasks[t].bits[name]
                cb = tasks[t].codebooks[name]
                limit[j + 1] = np.uint64(1 << 32) if cb is None else cb.size
            used = np.empty(n, np.uint8)  # every entry written when the check passes
            counts = np.zeros(size, np.int64)
            orphans = np.zeros(size, np.int64)
            # the stack of the masks is built only if some word needs it (see _check_part)
            masks = _LazyMasks(lambda k=k, name=name: np.stack([tasks[t].masks[name]
                                                                for t in members[k]]))
            bad, h = _check_words(reader, off, words, word_bits, prefix_bits, len(members[k]),
                                  bits_by_prefix, limit, masks, used, counts, orphans)
            where = f"/layers/{i}/bank_{k}"
            if bad >= 0:  # damage, or a malformed word: which one, the hash of it all says
                reader.wait(off + words.size * words.itemsize)
                h = words_hash(words)
            if h != expected:
                raise FormatError(f"{where}: checksum mismatch: the file is corrupted")
            if bad >= 0:
                raise FormatError(f"{where}: word {bad} holds malformed fields")
            for j, t in enumerate(members[k]):
                if counts[j + 1] != tasks[t].fields[name]:
                    raise FormatError(f"{where}: task {t} has {int(counts[j + 1])} fields, "
                                      f"/tasks/{t}/fields says {tasks[t].fields[name]}")
                if orphans[j + 1]:
                    raise FormatError(f"/tasks/{t}/masks/{i}: task {t} uses "
                                      f"{int(orphans[j + 1])} positions of layer {name!r} that "
                                      f"no task <= {t} of bank {k} wrote")
            layer_used[i].append(used)
            layer_words[i][k] = words
    for k in range(n_banks):
        pm._banks.append(_Bank(
            words={name: layer_words[i][k] for i, name in enumerate(names)},
            used={name: layer_used[i][k] for i, name in enumerate(names)},
            tasks=members[k],
        ))
    pm._tasks = tasks
    return pm


def load(path: str | os.PathLike[str]) -> PackedModel:
    """Read a packed model written by :func:`save`, verifying everything.

    Raises
    ------
    bitsub.FormatError
        If the file is truncated, corrupted (any checksum), malformed, or from a newer format
        version; the message names what is wrong and where.
    OSError
        If the file cannot be read at all (missing, permissions).
    """
    p = Path(os.fspath(path))
    where = str(p)
    with open(p, "rb", buffering=0) as fh:
        data, regions, index = _read_image(fh, where)
        reader = _WordReader(fh, data, regions)
        try:
            pm = _build(data, regions, index, reader)
            reader.finish()
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError,
                UnicodeDecodeError, OverflowError, RecursionError, struct.error) as exc:
            raise FormatError(f"{where}: unreadable content ({type(exc).__name__}: {exc})") \
                from None
        finally:
            reader.stop()
    return pm
