"""The ``bitsub`` console command: ``bitsub inspect FILE`` prints what a packed-model file holds."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from bitsub.errors import FormatError
from bitsub.model.packed import PackedModel
from bitsub.storage.hdf5 import load

__all__ = ["describe", "main"]


def describe(pm: PackedModel, **capacity_options: object) -> str:
    """A readable report of a packed model: layers, banks, tasks, bit-widths, capacity table."""
    cap = pm.capacity(**capacity_options)
    lines = [
        f"packed model: {len(pm.layers)} layers, {len(pm.tasks)} tasks, {pm.banks} banks, "
        f"{pm.word_bits}-bit words, {pm.prefix_bits}-bit prefixes "
        f"(at most {pm.max_tasks_per_bank} tasks per bank)",
    ]
    if pm.file_bytes is not None:
        lines.append(f"file: {pm.file_bytes} bytes; np.savez of one dense float32 copy "
                     f"(layers and private arrays): {cap.dense_file_bytes} bytes")
    lines += [
        "",
        "layers:",
        f"  {'#':>3}  {'name':<20}{'shape':<18}{'weights':>10}",
    ]
    for i, name in enumerate(pm.layers):
        shape = pm.shape(name)
        lines.append(f"  {i:>3}  {name:<20}{'x'.join(map(str, shape)):<18}{math.prod(shape):>10}")
    lines += ["", "banks:"]
    for k in range(pm.banks):
        members = pm.bank_tasks(k)
        lines.append(f"  bank {k}: tasks {members} ({len(members)} of {pm.max_tasks_per_bank})")
    lines += ["", "tasks (bit-width / fields written / positions used, per layer; 32 = raw):"]
    for t in pm.tasks:
        cells = []
        for name in pm.layers:
            used = int(pm.mask(t, name).sum())
            cells.append(f"{name}: {pm.bits(t, name)}b/{pm.fields(t, name)}/{used}")
        private = ", ".join(f"{k}{list(v.shape)}" for k, v in pm.private(t).items()) or "-"
        lines.append(f"  task {t} (bank {pm.bank(t)}, prefix {pm.prefix(t)}): "
                     + "; ".join(cells))
        lines.append(f"      private: {private}")
    lines += ["", "network: " + (json.dumps(pm.network) if pm.network else "(none recorded)"), ""]
    lines.append(str(cap))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitsub", description="bitsub packed-model files.")
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print layers, banks, tasks, bit-widths and capacity")
    ins.add_argument("file", help="a file written by PackedModel.save")
    ins.add_argument("--prefix", action="store_true",
                     help="count the prefix bits of every field too (the in-memory words; a "
                          "file stores none)")
    ins.add_argument("--no-padding", action="store_true",
                     help="count code bits exactly, not padded to whole bytes as stored")
    ins.add_argument("--no-masks", action="store_true", help="leave masks out of the capacity")
    ins.add_argument("--codebook-scope", choices=("layer", "task"), default="layer",
                     help="one codebook per (task, layer) as stored, or one per task")
    ins.add_argument("--codebook-bits", type=int, default=32, help="bits per centroid")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitsub`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "inspect":
        try:
            pm = load(args.file)
        except (FormatError, OSError) as exc:
            print(f"bitsub inspect: {exc}", file=sys.stderr)
            return 2
        except MemoryError:
            print(f"bitsub inspect: {args.file}: not enough memory to load the model",
                  file=sys.stderr)
            return 2
        try:
            text = describe(pm, prefix=args.prefix, padding=not args.no_padding,
                            masks=not args.no_masks,
                            codebook_scope=args.codebook_scope,
                            codebook_bits=args.codebook_bits)
        except (TypeError, ValueError) as exc:
            print(f"bitsub inspect: {exc}", file=sys.stderr)
            return 2
        try:
            print(text)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `bitsub inspect FILE | head`
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2  # pragma: no cover  (argparse rejects unknown commands)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
