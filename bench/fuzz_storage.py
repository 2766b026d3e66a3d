"""Throwaway fuzz runs of the format 4 loader (not collected by pytest; run by hand).

``python bench/fuzz_storage.py structured N``: N mutations of small random models' files with
every checksum recomputed (the seal, each task's crc32, the index's crc), so they reach the
decoders: payload bytes flipped or overwritten, integers of the index moved. Each load must
raise FormatError, return the identical model, or (only where no hash covers the bytes:
centroids and private arrays) a model whose masks and words are the original's and whose every
task decodes as the naive twin reads it.

``python bench/fuzz_storage.py raw N FILE``: N raw corruptions of FILE (truncations, bit flips,
overwritten bytes, appended bytes, zeroed blocks), each loaded in a child process (batches of
100 per child; a batch whose child dies or hangs is re-run case by case). Each load must raise
FormatError or return a model equal to FILE's. A case that hangs 60 s counts as a hang.

Prints the outcome counts; exits 1 on any crash, hang or other exception.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 100


def structured(n: int) -> dict[str, int]:
    import bitsub
    from bitsub import FormatError
    from tests.naive import naive_packed_weights
    from tests.test_packed import assert_same_bits, reuse_model, run_random_sequence
    from tests.test_storage import raw_model, small_model, structured_mutations

    models = [small_model()[0], small_model(word_bits=64, seed=5)[0], reuse_model(), raw_model()]
    models += [run_random_sequence(s, 32 + 32 * (s % 2), 1 + s % 4, 6,
                                   {"a": (5, 7), "b": (2, 3, 2, 2)})[0] for s in range(4)]
    out = {"refused": 0, "identical": 0, "consistent": 0, "other": 0}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.h5"
        per = -(-n // len(models))
        for seed, pm in enumerate(models):
            pm.save(path)
            data = bytearray(path.read_bytes())
            for _, case in structured_mutations(data, per, 1000 + seed):
                path.write_bytes(case)
                try:
                    back = bitsub.load(path)
                except FormatError:
                    out["refused"] += 1
                    continue
                except Exception:  # noqa: BLE001 -- what this run looks for
                    out["other"] += 1
                    traceback.print_exc()
                    continue
                if back == pm:
                    out["identical"] += 1
                    continue
                try:
                    for t in back.tasks:
                        for name in back.layers:
                            assert (back.mask(t, name) == pm.mask(t, name)).all()
                            assert (back.words(name, back.bank(t))
                                    == pm.words(name, pm.bank(t))).all()
                            assert_same_bits(back.weights(t, name),
                                             naive_packed_weights(back, t, name))
                    out["consistent"] += 1
                except AssertionError:
                    out["other"] += 1
                    traceback.print_exc()
    return out


def child(file: str, seed: int, start: int, count: int) -> None:
    """Load cases [start, start + count) of the raw corruptions; print one outcome per line."""
    import bitsub
    from bitsub import FormatError
    from tests.test_storage import corrupt_cases

    original = bitsub.load(file)
    data = Path(file).read_bytes()
    cases = list(corrupt_cases(data, start + count, seed))[start:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.h5"
        for case in cases:
            path.write_bytes(case)
            try:
                back = bitsub.load(path)
                kind = "identical" if back == original else "DIFFERENT"
            except FormatError:
                kind = "refused"
            except Exception as exc:  # noqa: BLE001 -- what this run looks for
                kind = f"OTHER {type(exc).__name__}: {exc}"
            print(kind, flush=True)


def run_child(file: str, seed: int, start: int, count: int) -> list[str]:
    cmd = [sys.executable, __file__, "child", file, str(seed), str(start), str(count)]
    # generous: children start numba and load the original on a shared, loaded machine
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120 + 5 * count)
    except subprocess.TimeoutExpired:
        print(f"cases {start}..{start + count}: timed out, re-running one by one",
              file=sys.stderr)
        return ["HANG"] if count == 1 else [x for i in range(count)
                                            for x in run_child(file, seed, start + i, 1)]
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != count:
        print(f"cases {start}..{start + count}: rc={proc.returncode}, {len(lines)} lines: "
              f"{proc.stderr[-300:]}", file=sys.stderr)
        if count == 1:
            return [f"CRASH rc={proc.returncode} {proc.stderr[-300:]}"]
        return [x for i in range(count) for x in run_child(file, seed, start + i, 1)]
    return lines


def raw(n: int, file: str, seed: int = 0) -> dict[str, int]:
    out: dict[str, int] = {}
    for start in range(0, n, BATCH):
        for line in run_child(file, seed, start, min(BATCH, n - start)):
            key = line if line in ("refused", "identical") else line
            out[key] = out.get(key, 0) + 1
    return out


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    if argv[0] == "child":
        child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    if argv[0] == "structured":
        out = structured(int(argv[1]))
        bad = out["other"]
    else:
        out = raw(int(argv[1]), argv[2])
        bad = sum(v for k, v in out.items() if k not in ("refused", "identical"))
    print(json.dumps(out, indent=1))
    print(f"{time.perf_counter() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
