"""Huffman-coded binary masks: `encode_mask` / `decode_mask` and the byte format.

A mask (one bit per weight position: does the task use it) is flattened in C order and coded by
the smallest of several symbol schemes, each Huffman-coded with a canonical code (see
`bitsub.codecs.huffman`); the encoder skips the runs schemes where 8-bit blocks already come
within 1.02 n H(p) without sign of structure (see `bitsub.codecs.maskencode.plan_stream`):

- ``zeros`` / ``ones``: a constant mask, no payload.
- ``raw``: one bit per position.
- ``bytes``: 8-bit blocks, 256 symbols; within 2% of the entropy at densities 0.1-0.5.
- ``runs1`` / ``runs0``: the runs of the majority value between two occurrences of the minority
  value (1 for ``runs1``, 0 for ``runs0``). Symbol s < M-1 is "s majority bits then one minority
  bit"; symbol M-1 is "M-1 majority bits" (an escape for long runs). With e extra bits, the
  symbols count runs in units of 2**e and each non-escape symbol is followed by the run's e low
  bits as they are (for very sparse masks, whose long runs would need a huge alphabet). A
  virtual minority bit ends every segment. Near the entropy for sparse and dense masks.
- ``runs01``: alternating runs (0s, maybe none, then 1s, 0s, ...), one code for the runs of 0s
  and one for the runs of 1s, escapes as above (lengths stored minus 1, but for the first run).
  For clustered masks (rows, blocks or channels pruned together).

With a `context` (for example the union of earlier tasks' masks), the positions where the context
is 0 and those where it is 1 are coded as two separate streams, each by its own best scheme.

Byte format, version 1 (integers are LEB128 varints unless a width is given)::

    magic "BSMK" | version u8 | flags u8 (bit 0: context) | ndim u8 | shape: ndim varints
    [context checksum: crc32 of the packed context, u32 little-endian]
    stream, once (no context) or twice (context 0 positions, then context 1 positions):
        scheme u8
        runs1, runs0: extra bits u8 | M varint | code lengths | segments u8 | payload length
            per segment | payloads
        runs01: M0 varint | code lengths | M1 varint | code lengths | segments u8 | payload
            length per segment | payloads
        bytes: code lengths (256 symbols) | segments u8 | payload length per segment | payloads
        raw: ceil(n / 8) bytes, positions in little-endian bit order
    crc32 of everything before it, u32 little-endian

Code lengths are bit-packed MSB-first, each as its difference d from the previous one
("0": d = 0, "10": d = +1, "110": d = -1, "111" + 5 bits: the length itself), zero padded to a
byte. Each segment is an independent Huffman bit stream (MSB-first, zero padded) over an equal
share of the positions (runs) or bytes (bytes); two segments (streams of 2**15 positions or
bytes and more) let the decoder interleave them.

Decoders check the structure before they index (declared sizes against the data, code lengths
against the Kraft equality, every run against the mask's end) and then the checksum, so any bytes
that are not an encoding raise `FormatError`. A decoder allocates the mask only after the header
passed `max_positions` (by default `DEFAULT_MAX_POSITIONS`), so a few bytes declaring a huge
mask cannot make it allocate gigabytes.

The code lives in four modules beside this one: `bitsub.codecs.maskio` (varints, code-length
tables, segments), `bitsub.codecs.maskscan` (runs and histograms), `bitsub.codecs.maskencode`
(scheme choice and writers) and `bitsub.codecs.maskdecode` (stream parser and decoding kernels).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from bitsub.codecs.maskdecode import decode_stream, parse_stream
from bitsub.codecs.maskencode import SCHEME_NAMES, plan_stream, write_stream
from bitsub.codecs.maskio import Reader, varint
from bitsub.errors import FormatError

__all__ = [
    "DEFAULT_MAX_POSITIONS",
    "MAX_POSITIONS",
    "SCHEME_NAMES",
    "MaskCoding",
    "MaskHeader",
    "decode_mask",
    "decode_stream",
    "encode_mask",
    "encode_mask_best",
    "mask_scheme",
    "parse_mask",
]

MAGIC = b"BSMK"
VERSION = 1
# Largest mask (positions) we encode or decode at all.
MAX_POSITIONS = 1 << 32
# Largest mask a decoder allocates when the caller gives no bound: 256 MiB of bools. Larger
# masks decode with an explicit max_positions (the size the caller expects).
DEFAULT_MAX_POSITIONS = 1 << 28
_FLAG_CONTEXT = 1


def as_mask(mask, name: str) -> np.ndarray:
    """`mask` as a bool array (integers 0/1 accepted); TypeError / ValueError otherwise."""
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{name} holds integers other than 0 and 1; pass a boolean array")
        return arr.astype(np.bool_)
    raise TypeError(f"{name} must be a boolean array (or integers 0/1), got dtype {arr.dtype}")


def _context_checksum(context: np.ndarray) -> int:
    return zlib.crc32(np.packbits(context.reshape(-1)).tobytes())


def _check_shape(mask: np.ndarray) -> None:
    if mask.ndim > 255:
        raise ValueError("mask has more than 255 dimensions")
    if mask.size > MAX_POSITIONS:
        raise ValueError(f"mask has {mask.size} positions; at most {MAX_POSITIONS} are supported")


def _encode(mask: np.ndarray, ctx: np.ndarray | None) -> bytes:
    # mask and ctx (flat, same size) already checked.
    flat = np.ascontiguousarray(mask).reshape(-1)
    header = [MAGIC, bytes([VERSION, _FLAG_CONTEXT if ctx is not None else 0, mask.ndim])]
    header += [varint(d) for d in mask.shape]
    if ctx is None:
        streams = [flat]
    else:
        header.append(_context_checksum(ctx).to_bytes(4, "little"))
        streams = [flat[~ctx], flat[ctx]]
    body = b"".join(header) + b"".join(write_stream(plan_stream(s)) for s in streams)
    return body + zlib.crc32(body).to_bytes(4, "little")


def _flat_context(context, shape: tuple) -> np.ndarray:
    context = as_mask(context, "context")
    if context.shape != shape:
        raise ValueError(f"context shape {context.shape} differs from the mask shape {shape}")
    return np.ascontiguousarray(context).reshape(-1)


def encode_mask(mask: np.ndarray, context: np.ndarray | None = None) -> bytes:
    """Encode a binary mask of any shape into self-describing bytes.

    Parameters
    ----------
    mask : array_like of bool
        The mask; integer arrays holding only 0 and 1 are accepted too. Any shape, empty included,
        at most `MAX_POSITIONS` positions.
    context : array_like of bool, optional
        A mask of the same shape known to the decoder (for example the union of earlier tasks'
        masks). The positions where it is 1 and where it is 0 are coded separately, which is much
        smaller when `mask` largely reuses (or avoids) the context. `decode_mask` needs the same
        context.

    Returns
    -------
    bytes
        The encoding; `decode_mask` returns an identical array.
    """
    mask = as_mask(mask, "mask")
    _check_shape(mask)
    ctx = None if context is None else _flat_context(context, mask.shape)
    return _encode(mask, ctx)


class MaskCoding(NamedTuple):
    """The smallest of several codings of one mask (see `encode_mask_best`)."""

    data: bytes
    """The smallest encoding."""
    index: int
    """Which candidate it is: 0 alone, i the coding in ``contexts[i - 1]``."""
    sizes: tuple
    """Bytes of every candidate's encoding, in the same order."""


def encode_mask_best(mask: np.ndarray, contexts: Sequence = ()) -> MaskCoding:
    """Encode a mask alone and in each context; keep the smallest (ties: the earliest).

    Parameters
    ----------
    mask : array_like of bool
        The mask, as for `encode_mask`.
    contexts : sequence of array_like of bool
        Candidate contexts of the mask's shape, for example the previous task's mask and the
        union of the earlier ones.

    Returns
    -------
    MaskCoding
        ``(data, index, sizes)``; decode with ``decode_mask(data, context)`` where `context` is
        None for index 0 and ``contexts[index - 1]`` otherwise.
    """
    mask = as_mask(mask, "mask")
    _check_shape(mask)
    flats = [_flat_context(c, mask.shape) for c in contexts]
    alone = _encode(mask, None)
    best, index = alone, 0
    sizes = [len(alone)]
    constant = mask.size == 0 or bool(mask.all()) or not mask.any()
    for i, ctx in enumerate(flats, 1):
        if constant:
            # Two constant streams and the context checksum: never smaller than alone.
            sizes.append(len(alone) + 5)
            continue
        enc = _encode(mask, ctx)
        sizes.append(len(enc))
        if len(enc) < len(best):
            best, index = enc, i
    return MaskCoding(best, index, tuple(sizes))


class MaskHeader(NamedTuple):
    """A validated encoding, payloads not decoded yet (see `parse_mask`)."""

    shape: tuple
    """The mask's shape."""
    sizes: list
    """Positions of each stream: [n] alone; [context 0 count, context 1 count] with a context."""
    streams: list
    """Each stream as `bitsub.codecs.maskdecode.parse_stream` returns it; decode with
    `decode_stream`."""
    context: np.ndarray | None
    """The flat bool context, or None."""

    @property
    def schemes(self) -> list:
        """Scheme name of each stream, e.g. ``["runs1"]``."""
        return [SCHEME_NAMES[s[0]] for s in self.streams]


def _as_buffer(data) -> memoryview:
    if isinstance(data, np.void):  # h5py's opaque values
        data = data.tobytes()
    elif isinstance(data, np.ndarray):
        if data.dtype not in (np.uint8, np.int8) or data.ndim != 1:
            raise TypeError(f"data as an array must be 1-D uint8, got {data.dtype} {data.shape}")
        data = np.ascontiguousarray(data).view(np.uint8)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = memoryview(data)
    if not data.c_contiguous:
        data = memoryview(data.tobytes())
    return data.cast("B")


def _bound(max_positions) -> int:
    if max_positions is None:
        return DEFAULT_MAX_POSITIONS
    if isinstance(max_positions, bool) or not isinstance(max_positions, (int, np.integer)):
        raise TypeError(f"max_positions must be an integer, got {max_positions!r}")
    if not 0 <= max_positions <= MAX_POSITIONS:
        raise ValueError(f"max_positions must be in 0..{MAX_POSITIONS}, got {max_positions}")
    return int(max_positions)


def parse_mask(data, context: np.ndarray | None = None, *,
               max_positions: int | None = None) -> MaskHeader:
    """Validate an encoding (structure, checksum, context, size) without decoding its payloads.

    Parameters are those of `decode_mask`; nothing of the mask's size is allocated.

    Returns
    -------
    MaskHeader
        ``(shape, sizes, streams, context)``.
    """
    data = _as_buffer(data)
    limit = _bound(max_positions)
    if len(data) < 4 + 3 + 4:
        raise FormatError(f"truncated: {len(data)} bytes is shorter than any mask encoding")
    if bytes(data[:4]) != MAGIC:
        raise FormatError("not a bitsub mask encoding (bad magic bytes)")
    if data[4] != VERSION:
        raise FormatError(f"mask format version {data[4]} is not supported (this reads {VERSION})")
    reader = Reader(data, len(data) - 4)
    reader.pos = 5
    flags = reader.u8("flags")
    if flags & ~_FLAG_CONTEXT:
        raise FormatError(f"unknown flags {flags:#x}")
    ndim = reader.u8("ndim")
    if ndim > 64:
        raise FormatError(f"{ndim} dimensions; NumPy arrays have at most 64")
    shape = tuple(reader.varint("shape", MAX_POSITIONS) for _ in range(ndim))
    n = math.prod(shape)
    if n > MAX_POSITIONS:
        raise FormatError(f"declared shape {shape} has more than {MAX_POSITIONS} positions")
    if n > limit:
        hint = "" if max_positions is not None else "; pass max_positions= the size you expect"
        raise FormatError(
            f"declared shape {shape} has {n} positions, more than the bound {limit}{hint}"
        )
    ctx = None
    if flags & _FLAG_CONTEXT:
        ctx_sum = int.from_bytes(reader.take(4, "context checksum"), "little")
        if context is None:
            raise FormatError("this mask was encoded with a context; pass the same context")
        context = as_mask(context, "context")
        if context.shape != shape:
            raise FormatError(f"context shape {context.shape} differs from the mask's {shape}")
        ctx = np.ascontiguousarray(context).reshape(-1)
        n1 = int(np.count_nonzero(ctx))
        sizes = [n - n1, n1]
    else:
        sizes = [n]
    streams = [parse_stream(reader, size) for size in sizes]
    if reader.pos != reader.end:
        raise FormatError(f"{reader.end - reader.pos} unexpected bytes after the last stream")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise FormatError("checksum mismatch: the data is corrupted")
    if ctx is None and context is not None:
        raise FormatError("this mask was encoded without a context; pass context=None")
    if ctx is not None and _context_checksum(ctx) != ctx_sum:
        raise FormatError("the context differs from the one the mask was encoded with")
    return MaskHeader(shape, sizes, streams, ctx)


def decode_mask(data, context: np.ndarray | None = None, *,
                max_positions: int | None = None) -> np.ndarray:
    """Decode bytes from `encode_mask` back into the boolean mask.

    Parameters
    ----------
    data : bytes, bytearray, memoryview or 1-D uint8 array
        The encoding.
    context : array_like of bool, optional
        The context the mask was encoded with, if any (the same array).
    max_positions : int, optional
        Refuse (FormatError, before allocating) a mask declaring more positions, for example
        the size of the layer it belongs to. Default `DEFAULT_MAX_POSITIONS` (2**28).

    Returns
    -------
    np.ndarray of bool
        The mask, with its original shape (C-contiguous).

    Raises
    ------
    FormatError
        If `data` is not a valid encoding (truncated, corrupted, unknown version, over the
        bound, ...) or the context is missing, unexpected or not the one the mask was encoded
        with.
    """
    shape, sizes, parsed, ctx = parse_mask(data, context, max_positions=max_positions)
    streams = [decode_stream(p, size) for p, size in zip(parsed, sizes)]
    if ctx is None:
        return streams[0].reshape(shape)
    out = np.empty(ctx.size, dtype=np.bool_)
    out[~ctx] = streams[0]
    out[ctx] = streams[1]
    return out.reshape(shape)


def mask_scheme(data, context: np.ndarray | None = None, *,
                max_positions: int | None = None) -> list[str]:
    """Names of the schemes an encoding's streams use, e.g. ``["runs1"]`` (for reports, tests).

    A context-coded mask has two streams (context 0 positions, then context 1 positions) and
    needs its context.
    """
    return parse_mask(data, context, max_positions=max_positions).schemes
