"""bitsub-train / bitsub-eval under misuse: every mistake is one line and exit 2, before anything
is written; I/O errors (full disk, a directory where a file belongs) likewise; killed saves' temp
files are cleaned; a resume with other arguments is refused; forked DataLoader workers run the
engine after the parent did."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bitsub_torch.cl.strategies import STRATEGIES
from bitsub_torch.cli import eval_main, train_main

# One task of 64-pixel digits, one epoch: the smallest real run.
GOOD = ["--strategy", "wsn", "--scenario", "splitdigits", "--tasks", "1", "--epochs", "1",
        "--batch-size", "32", "--no-progress"]

BAD = [
    ["--epochs", "-1"],
    ["--batch-size", "0"],
    ["--lr", "nan"],
    ["--lr", "inf"],
    ["--lr", "0"],
    ["--width", "-3"],
    ["--width", "2.5"],
    ["--tasks", "0"],
    ["--tasks", "6"],
    ["--threads", "0"],
    ["--seed", "-1"],
    ["--val-fraction", "1"],
    ["--activation-bits", "99"],
    ["--export-bits", "99"],
    ["--export-bits", "0"],
    ["--export-bits", "20"],
    ["--strategy-args", '{"nope": 1}'],
    ["--strategy-args", '{"density": 7}'],
    ["--strategy-args", '{"density": "half"}'],
    ["--strategy-args", '{"density": NaN}'],
    ["--strategy-args", "[0.5]"],
    ["--strategy-args", "{density: 0.5}"],
    ["--strategy", "tinysubnets", "--strategy-args", '{"per_layer": "no"}'],
    ["--strategy", "tinysubnets", "--strategy-args", '{"kmeans_method": "fast"}'],
    ["--strategy", "tinysubnets", "--export-bits", "4"],
    ["--strategy", "packnet", "--strategy-args", '{"keep": 0}'],
]


def one_line_error(err, tool="bitsub-train"):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{tool}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_each_bad_argument_is_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    for extra in BAD:
        capsys.readouterr()
        assert train_main([*GOOD, "--out", str(out), *extra]) == 2, extra
        one_line_error(capsys.readouterr().err)
        assert not out.exists(), extra
    # The corrected command then succeeds in the same --out.
    assert train_main([*GOOD, "--out", str(out)]) == 0
    assert (out / "model.h5").is_file() and (out / "results.json").is_file()


def test_flag_named_in_errors(tmp_path, capsys):
    out = tmp_path / "run"
    for extra, flag in ((["--epochs", "-1"], "--epochs"), (["--lr", "nan"], "--lr"),
                        (["--export-bits", "99"], "--export-bits"),
                        (["--strategy-args", '{"nope": 1}'], "'nope'")):
        train_main([*GOOD, "--out", str(out), *extra])
        assert flag in capsys.readouterr().err


def test_out_is_an_existing_file_then_corrected(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_bytes(b"mine")
    assert train_main([*GOOD, "--out", str(target)]) == 2
    assert "is a file" in one_line_error(capsys.readouterr().err)
    assert train_main([*GOOD, "--out", str(target / "sub")]) == 2
    one_line_error(capsys.readouterr().err)
    assert target.read_bytes() == b"mine"
    # a directory where run.h5 / results.json must go is refused before training
    out = tmp_path / "run"
    (out / "model.h5").mkdir(parents=True)
    assert train_main([*GOOD, "--out", str(out)]) == 2
    assert "model.h5 is a directory" in one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["model.h5"]
    (out / "model.h5").rmdir()
    assert train_main([*GOOD, "--out", str(out)]) == 0


def test_eval_errors_are_one_line(tmp_path, capsys):
    cases = [
        [str(tmp_path)],  # a directory
        [str(tmp_path / "absent.h5")],
        [str(tmp_path / "junk.h5")],
        [str(tmp_path / "empty.h5")],
        [str(tmp_path / "junk.h5"), "--batch-size", "0"],
    ]
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (tmp_path / "empty.h5").write_bytes(b"")
    for argv in cases:
        capsys.readouterr()
        assert eval_main([*argv, "--scenario", "splitdigits"]) == 2, argv
        line = one_line_error(capsys.readouterr().err, "bitsub-eval")
        if argv == [str(tmp_path)]:
            assert "is a directory" in line


def test_missing_optional_package_is_one_line(tmp_path):
    # A fresh interpreter where mlxtend cannot be imported (as if it were not installed).
    code = ("import sys; sys.modules['mlxtend'] = None; sys.modules['mlxtend.data'] = None; "
            "from bitsub_torch.cli import train_main; sys.exit(train_main(sys.argv[1:]))")
    out = tmp_path / "run"
    argv = [*GOOD, "--scenario", "pmnist5k", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "mlxtend" in line and "pip install" in line
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="permissions do not bind root")
def test_permission_denied_is_one_line_then_corrected(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert train_main([*GOOD, "--out", str(locked / "run")]) == 2
        assert "permission denied" in one_line_error(capsys.readouterr().err).lower()
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
    assert train_main([*GOOD, "--out", str(locked / "run")]) == 0


def tmp_files(root):
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def test_disk_full_during_training_is_one_line_and_leaves_no_temp_file(
        tmp_path, capsys, monkeypatch):
    # A full disk, simulated: fsync of any file over 10 kB (the checkpoint; config.json is
    # smaller) fails with ENOSPC, as fsync does on a full file system. Here a real tmpfs of
    # 200 kB gives the same (see the slow test below when mounting is allowed).
    real_fsync = os.fsync

    def fsync(fd):
        if os.fstat(fd).st_size > 10_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        assert train_main([*GOOD, "--out", str(out)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and "task_000.pt" in line
    assert tmp_files(out) == []
    assert not (out / "checkpoints" / "task_000.pt").exists()
    # with space again, the same command runs to the end
    assert train_main([*GOOD, "--out", str(out)]) == 0
    assert tmp_files(out) == []


def mount_tmpfs(path, options):
    path.mkdir()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                            capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("cannot mount a tmpfs here (needs root); the fsync test above simulates it")


@pytest.mark.slow
def test_training_into_a_200k_tmpfs(tmp_path, capsys):
    mount = tmp_path / "small"
    mount_tmpfs(mount, "size=200k")
    try:
        out = mount / "run"
        assert train_main([*GOOD, "--tasks", "2", "--out", str(out)]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert "No space left on device" in line and "checkpoints/task_00" in line
        assert tmp_files(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=30)


@pytest.mark.slow
def test_read_only_out_is_one_line_then_corrected(tmp_path, capsys):
    mount = tmp_path / "ro"
    mount_tmpfs(mount, "ro,size=1m")
    try:
        assert train_main([*GOOD, "--out", str(mount / "run")]) == 2
        assert "read-only" in one_line_error(capsys.readouterr().err)
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=30)
    assert train_main([*GOOD, "--out", str(mount / "run")]) == 0


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_killed_saves_are_cleaned_by_the_next_save(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    pid = dead_pid()
    stale = [out / f".model.h5.{pid}.0badc0de.tmp", out / f".results.json.{pid}.0badc0de.tmp",
             out / f".config.json.{pid}.0badc0de.tmp",
             out / "checkpoints" / f".task_000.pt.{pid}.0badc0de.tmp"]
    live = out / f".model.h5.{os.getpid()}.0badc0de.tmp"  # a save still running
    for p in [*stale, live]:
        p.write_bytes(b"x" * 1000)
    assert train_main([*GOOD, "--out", str(out)]) == 0
    assert [p for p in stale if p.exists()] == []
    assert live.exists()


def test_resume_without_config_json_refuses_other_strategy_arguments(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*GOOD, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["strategy_args"] == {"density": 0.5}  # defaults filled in
    (out / "config.json").unlink()
    capsys.readouterr()
    assert train_main([*GOOD, "--out", str(out), "--strategy-args", '{"density": 0.3}']) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "strategy_args.density (0.5 -> 0.3)" in line
    assert not (out / "config.json").exists()  # nothing claimed --out for the refused run
    assert train_main([*GOOD, "--out", str(out), "--val-fraction", "0.2"]) == 2
    assert "val_fraction (0.1 -> 0.2)" in one_line_error(capsys.readouterr().err)
    # the run's own arguments, spelled with the default made explicit, resume it
    assert train_main([*GOOD, "--out", str(out), "--strategy-args", '{"density": 0.5}']) == 0
    assert json.loads((out / "config.json").read_text()) == saved


def test_config_json_differences_are_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*GOOD, "--out", str(out)]) == 0
    capsys.readouterr()
    assert train_main([*GOOD, "--out", str(out), "--strategy-args", '{"density": 0.3}']) == 2
    assert "strategy_args.density (0.5 -> 0.3)" in one_line_error(capsys.readouterr().err)
    (out / "config.json").write_text("{not json")
    assert train_main([*GOOD, "--out", str(out)]) == 2
    assert "config.json" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_check_arguments_fills_defaults_and_refuses_unknown_names(name):
    cls = STRATEGIES[name]
    full = cls.check_arguments({})
    assert cls(**full).arguments() == full == cls().arguments()
    with pytest.raises(ValueError, match="no argument 'nope'"):
        cls.check_arguments({"nope": 1})
    with pytest.raises(TypeError):
        cls.check_arguments([("nope", 1)])


FORK_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    import bitsub
    from bitsub_torch.cl.strategies import WSN
    from bitsub_torch.export import export
    from bitsub_torch.nn.models import mlp
    from bitsub_torch.nn.packed_module import PackedModule

    torch.set_num_threads(1)
    path = sys.argv[1]
    g = torch.Generator().manual_seed(0)
    net = mlp((2048,), 10, 1, width=2048, depth=1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for layer in net.masked_layers().values():
            mask = torch.rand(layer.weight.shape, generator=g) < 0.5
            layer.set_task_mask(0, mask)
            layer.consolidate(0, mask)
    export(net, WSN(0.5)).save(path)
    # The parent uses the engine's pools: load (word checks) and matmul at batch 64 and 1.
    pmod = PackedModule(path)
    x = torch.randn(64, 2048, generator=g)
    with torch.no_grad():
        pmod(x, 0)
        ref = torch.cat([pmod(x[i:i + 1], 0) for i in range(4)])
    w_ref = bitsub.load(path).weights(0, "fc1")

    class Probe(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            assert (bitsub.load(path).weights(0, "fc1") == w_ref).all()
            with torch.no_grad():
                pmod(x, 0)
                return pmod(x[i:i + 1], 0)[0]

    loader = DataLoader(Probe(), batch_size=2, num_workers=2,
                        multiprocessing_context="fork")
    got = torch.cat(list(loader))
    assert torch.equal(got, ref), (got - ref).abs().max()
    print("ok")
""")


def run_probe(code, *argv, env, timeout):
    """Run ``code`` in a fresh session; on a timeout kill it and every worker it forked."""
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, "", ""
    return proc.returncode, out, err


def test_dataloader_workers_run_the_engine_after_the_parent_did(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    rc, out, err = run_probe(FORK_PROBE, str(tmp_path / "m.h5"), env=env, timeout=120)
    if rc is None:
        pytest.fail("a forked DataLoader worker hung in the engine (thread pools lost at fork)")
    assert rc == 0, err[-2000:]
    assert out.strip() == "ok"
