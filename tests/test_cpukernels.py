"""pin_cpu_kernels: which variables bitsub's commands set, and that torch then runs AVX2 kernels."""

import os
import subprocess
import sys

import pytest

from bitsub_torch.cpukernels import ENV, PINNED, cpu_flags, pin_cpu_kernels

X86 = frozenset({"sse2", "avx", "avx2", "fma", "avx512f"})


def test_sets_every_variable_on_an_avx2_machine():
    env: dict[str, str] = {}
    line = pin_cpu_kernels(env, machine="x86_64", flags=X86)
    assert env == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert line == ("CPU kernels: ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=AVX2, "
                    "ONEDNN_MAX_CPU_ISA=AVX2")
    # a second call changes nothing
    again = dict(env)
    pin_cpu_kernels(again, machine="AMD64", flags=X86)
    assert again == env


def test_the_users_settings_win():
    env = {"MKL_CBWR": "COMPATIBLE"}
    line = pin_cpu_kernels(env, machine="x86_64", flags=X86)
    assert env == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2",
                   "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "the user's MKL_CBWR=COMPATIBLE kept" in line


@pytest.mark.parametrize("env, machine, flags, why", [
    ({ENV: "native"}, "x86_64", X86, "native"),
    ({ENV: " Native "}, "x86_64", X86, "native"),
    ({}, "aarch64", X86, "not x86-64"),
    ({}, "x86_64", frozenset({"sse2", "avx"}), "no AVX2"),
    ({}, "x86_64", frozenset({"avx2"}), "no AVX2"),  # AVX2 without FMA
    ({}, "x86_64", frozenset(), "no AVX2"),
])
def test_nothing_is_set(env, machine, flags, why):
    before = dict(env)
    line = pin_cpu_kernels(env, machine=machine, flags=flags)
    assert env == before
    assert why in line and line.startswith("CPU kernels: the machine's own")


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: X\nflags\t\t: fpu avx2 fma\n\n"
                 "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(f)) == frozenset({"fpu", "avx2", "fma"})
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
    (tmp_path / "empty").write_text("")
    assert cpu_flags(str(tmp_path / "empty")) == frozenset()


@pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(), reason="the CPU has no AVX2 and FMA")
def test_a_fresh_process_runs_torch_on_avx2_kernels():
    # bitsub_torch imported first (as the commands do), pinned, then torch's first operation.
    code = ("import bitsub_torch, torch; from bitsub_torch.cpukernels import pin_cpu_kernels; "
            "pin_cpu_kernels(); torch.ones(64).sum(); "
            "print(torch.backends.cpu.get_cpu_capability())")
    env = {k: v for k, v in os.environ.items() if k not in PINNED and k != ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split()[-1] == "AVX2"
