"""Data-parallel training (torch DDP over gloo, 2 CPU processes) against one process.

The ranks are fresh Python processes started by the test, as torchrun starts them, and join
the process group through the same environment torchrun gives them (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``PORT``), running ``bitsub_torch.train.main``, the entry point of ``torchrun -m
bitsub_torch.train``; the one-process run before them leaves the engine's kernels in Numba's
on-disk cache. Every rank exports the packed file it would write and the ranks all-gather
its SHA-256 (``results.json: distributed.packed_sha256``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import bitsub
from bitsub_torch.cli import train_main

SETTING = ["--scenario", "splitdigits", "--no-progress", "--activation-bits"]
ARGS = ["--strategy", "tinysubnets", "--tasks", "3", "--epochs", "5", *SETTING]
TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RANK = (
    "import faulthandler, sys\n"
    "faulthandler.dump_traceback_later(float(sys.argv[1]))  # where a hung rank waits\n"
    "from bitsub_torch.train import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def _start_ranks(argv: list[str], world: int = 2) -> list[subprocess.Popen]:
    """Start ``world`` ranks running ``bitsub_torch.train.main(argv)`` as fresh processes.

    Fresh interpreters, as torchrun starts them: a forked rank would inherit the test process's
    threads and locks (torch's, tqdm's multiprocessing lock), and a rank killed while holding
    one of those would leave it held in the test process.
    """
    port = _free_port()
    ranks = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = tempfile.TemporaryFile()
        p = subprocess.Popen([sys.executable, "-c", _RANK, str(TIMEOUT_S - 10), *argv], env=env,
                             stdout=log, stderr=subprocess.STDOUT)
        p.log = log
        ranks.append(p)
    return ranks


def _tail(p: subprocess.Popen, n: int = 3000) -> str:
    p.log.seek(0)
    return p.log.read().decode(errors="replace")[-n:]


def _wait(ranks: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[int]:
    """Exit statuses of the ranks (killing them all if one hangs past ``timeout``)."""
    deadline = time.time() + timeout
    while any(p.poll() is None for p in ranks):
        if time.time() > deadline:
            for p in ranks:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            logs = "\n".join(f"--- rank {r}:\n{_tail(p)}" for r, p in enumerate(ranks))
            for p in ranks:
                p.log.close()
            pytest.fail(f"ranks still running after {timeout} s\n{logs}")
        time.sleep(0.01)
    codes = [p.returncode for p in ranks]
    if any(c not in (0, -signal.SIGKILL) for c in codes):
        print("\n".join(f"--- rank {r} (exit {c}):\n{_tail(p)}"
                        for r, (c, p) in enumerate(zip(codes, ranks))))
    for p in ranks:
        p.log.close()
    return codes


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, then 2 ranks, at the same global batch (128)."""
    one = tmp_path_factory.mktemp("one")
    two = tmp_path_factory.mktemp("two")
    assert train_main([*ARGS, "--out", str(one)]) == 0  # also compiles the engine's kernels
    assert _wait(_start_ranks([*ARGS, "--out", str(two)])) == [0, 0]
    return one, two


def test_two_ranks_agree_and_match_one_process(runs):
    one, two = runs
    a, b = _results(one), _results(two)
    assert b["config"]["world_size"] == 2 and a["config"]["world_size"] == 1
    dist = b["distributed"]
    assert dist["backend"] == "gloo"
    # Both ranks exported the same packed file (masks, fields, codebooks, heads), and at every
    # sync (after each prune and each task) their own states already hashed equal.
    assert len(dist["packed_sha256"]) == 2 and len(set(dist["packed_sha256"])) == 1
    assert dist["syncs"] == 2 * 3 and dist["diverged_syncs"] == 0
    assert dist["packed_sha256"][0] == bitsub_sha256(two / "model.h5")
    # The same global batch: every trained task (R[i, j], j <= i) within 1 point of one process,
    # forget-free. (R[i, j] for j > i reads a task not trained yet through its untrained head;
    # the ranks' float sums differ from one process's in the last bits, and those chance-level
    # entries can move by several test samples.)
    ra, rb = np.array(a["accuracy_matrix"]), np.array(b["accuracy_matrix"])
    trained = np.tril(np.ones_like(ra, dtype=bool))
    assert np.max(np.abs(ra - rb)[trained]) <= 0.01
    assert b["bwt"] == 0.0 and b["timings"]["steps"] == a["timings"]["steps"]
    assert b["export"]["accuracy"] == rb[-1].tolist()
    # Rank 0 alone wrote: the files of one run, the last checkpoint only.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["task_002.pt"]


def bitsub_sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_ranks_resume_to_the_same_result(runs, tmp_path):
    _, two = runs
    argv = [*ARGS, "--out", str(tmp_path)]
    ranks = _start_ranks(argv)
    ckpt = tmp_path / "checkpoints" / "task_000.pt"
    deadline = time.time() + TIMEOUT_S
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.005)
    for p in ranks:  # kill -9, as a lost machine would
        p.kill()
    assert _wait(ranks) == [-signal.SIGKILL] * 2
    assert not (tmp_path / "results.json").exists(), "the run finished before the kill"
    assert _wait(_start_ranks(argv)) == [0, 0]
    a, b = _results(two), _results(tmp_path)
    for key in ("accuracy_matrix", "acc", "bwt", "capacity", "export"):
        assert a[key] == b[key], key
    assert bitsub.load(two / "model.h5") == bitsub.load(tmp_path / "model.h5")


def test_lottery_search_and_retraining_agree(tmp_path):
    """Ada-QPacknet: a search that fine-tunes on each rank, then DDP retraining of its choice."""
    argv = ["--strategy", "adaqpacknet", "--tasks", "2", "--epochs", "1", *SETTING,
            "--strategy-args", '{"population": 2}']
    one, two = tmp_path / "one", tmp_path / "two"
    assert train_main([*argv, "--out", str(one)]) == 0
    assert _wait(_start_ranks([*argv, "--out", str(two)])) == [0, 0]
    a, b = _results(one), _results(two)
    dist = b["distributed"]
    assert len(set(dist["packed_sha256"])) == 1 and dist["diverged_syncs"] == 0
    assert b["bwt"] == 0.0 and b["timings"]["steps"] == a["timings"]["steps"]
    ra, rb = np.array(a["accuracy_matrix"]), np.array(b["accuracy_matrix"])
    trained = np.tril(np.ones_like(ra, dtype=bool))
    assert np.max(np.abs(ra - rb)[trained]) <= 0.01


def test_nproc_errors_before_launching(tmp_path, capsys):
    assert train_main([*ARGS, "--out", str(tmp_path), "--nproc", "0"]) == 2
    assert "--nproc" in capsys.readouterr().err
    assert train_main(["--strategy", "esacl", "--scenario", "splitdigits", "--nproc", "2",
                       "--out", str(tmp_path)]) == 2
    assert "one-model" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- backend choice
# NCCL needs GPUs, which CI does not have: the choice and the NCCL-only arguments are checked with
# torch.cuda and torch.distributed's entry points replaced by recorders (no process group is made).


def test_choose_backend_nccl_with_cuda_else_gloo():
    import torch

    from bitsub_torch.cl.distributed import choose_backend

    assert choose_backend(True, 4, 1) == ("nccl", torch.device("cuda", 1))
    assert choose_backend(True, 2, 3) == ("nccl", torch.device("cuda", 1))  # round robin
    assert choose_backend(False, 0, 0) == ("gloo", torch.device("cpu"))
    assert choose_backend(True, 0, 0) == ("gloo", torch.device("cpu"))  # CUDA but no device


@pytest.mark.parametrize("cuda", [True, False])
def test_from_environment_joins_with_the_chosen_backend(monkeypatch, cuda):
    import torch
    import torch.distributed as tdist

    from bitsub_torch.cl.distributed import Distributed

    calls: dict = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)

    def init(backend, **kwargs):
        calls["init"] = (backend, kwargs)

    monkeypatch.setattr(tdist, "init_process_group", init)
    monkeypatch.setattr(tdist, "get_rank", lambda: 3)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 4)
    monkeypatch.setattr(tdist, "barrier", lambda **kw: calls.setdefault("barrier", kw))
    for key, value in {"LOCAL_RANK": "3", "RANK": "3", "WORLD_SIZE": "4",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    d = Distributed.from_environment(timeout_s=5)
    assert (d.rank, d.world_size) == (3, 4)
    backend, kwargs = calls["init"]
    d.barrier()
    if cuda:
        gpu = torch.device("cuda", 1)
        assert (d.backend, d.device, backend) == ("nccl", gpu, "nccl")
        assert kwargs["device_id"] == gpu and calls["set_device"] == gpu
        assert d._object_device() == gpu and calls["barrier"] == {"device_ids": [1]}
    else:
        assert (d.backend, d.device, backend) == ("gloo", torch.device("cpu"), "gloo")
        assert "device_id" not in kwargs and "set_device" not in calls
        assert d._object_device() is None and calls["barrier"] == {}
