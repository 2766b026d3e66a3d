"""bitsub_torch.allocator: glibc's mmap threshold fixed by bitsub's own commands, never on import.

The real-glibc checks run in fresh interpreters (the setting is process-wide). A freed 8 MiB
block raises glibc's dynamic threshold to 8 MiB, so a 4 MiB block then comes from the heap; with
the threshold fixed at 64 KiB (which turns the rise off) it gets its own mapping
(``mallinfo2().hblks`` counts mappings).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bitsub_torch.allocator import ENV, MMAP_THRESHOLD, glibc, tune_allocator

ROOT = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(glibc() is None, reason="the C library is not glibc")

PROBE = textwrap.dedent("""
    import ctypes, sys
    {before}
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in "abcdefghij"]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(8 << 20))
    maps = libc.mallinfo2().d
    block = libc.malloc(4 << 20)
    print(libc.mallinfo2().d - maps)
    libc.free(block)
""")


def mapped_blocks(before: str, env: dict | None = None) -> int:
    """Mappings a fresh interpreter adds for a 4 MiB malloc after running ``before``."""
    environ = {k: v for k, v in os.environ.items()
               if k not in (ENV, "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env or {})
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=environ,
                         capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout.split()[-1])


class FakeLibc:
    """Records mallopt calls; returns ``result``."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:  # noqa: D102
        self.calls.append((param, value))
        return self.result


def test_sets_the_threshold_once() -> None:
    libc = FakeLibc()
    assert tune_allocator({}, libc=libc) == f"mmap_threshold={MMAP_THRESHOLD}"
    assert libc.calls == [(-3, 65536)]  # M_MMAP_THRESHOLD of glibc's malloc.h


@pytest.mark.parametrize(("environ", "opt_out", "said"), [
    ({ENV: "system"}, False, "opted out"),
    ({ENV: " System "}, False, "opted out"),
    ({}, True, "opted out"),
    ({"MALLOC_MMAP_THRESHOLD_": "131072"}, False, "user setting"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False, "user setting"),
])
def test_opt_outs_call_nothing(environ: dict, opt_out: bool, said: str) -> None:
    libc = FakeLibc()
    assert tune_allocator(environ, opt_out=opt_out, libc=libc) == said
    assert libc.calls == []


def test_refusal_and_bad_value() -> None:
    assert tune_allocator({ENV: "tuned"}, libc=FakeLibc(result=0)) == "refused"
    with pytest.raises(ValueError, match=f"{ENV} must be 'system' or 'tuned'"):
        tune_allocator({ENV: "off"}, libc=FakeLibc())


@needs_glibc
def test_real_glibc_maps_blocks_of_64k_and_more() -> None:
    assert mapped_blocks("") == 0  # glibc's own threshold, risen to 8 MiB
    tuned = "from bitsub_torch.allocator import tune_allocator\nprint(tune_allocator())"
    assert mapped_blocks(tuned) == 1
    assert mapped_blocks(tuned, {ENV: "system"}) == 0


@needs_glibc
def test_importing_the_library_leaves_the_allocator_alone() -> None:
    before = ("import bitsub, bitsub_torch, bitsub_torch.cli, bitsub_torch.train, "
              "bitsub_torch.cl.trainer, bitsub_torch.allocator")
    assert mapped_blocks(before) == 0


@needs_glibc
def test_the_command_sets_it_and_the_flag_opts_out(tmp_path: Path) -> None:
    # bitsub-train's own process (argv from the command line) tunes before anything else; a bad
    # --strategy-args stops it right after, so nothing is trained.
    run = ("from bitsub_torch.cli import train_main\n"
           "sys.argv = ['bitsub-train', '--strategy', 'wsn', '--scenario', 'splitdigits', '--out', "
           f"{str(tmp_path / 'o')!r}, '--strategy-args', '[' {{flag}}]\n"
           "assert train_main() == 2")
    assert mapped_blocks(run.format(flag="")) == 1
    assert mapped_blocks(run.format(flag=", '--system-malloc'")) == 0
    assert not (tmp_path / "o").exists()
