import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bitsub
from bitsub_torch.cl import trainer as trainer_module
from bitsub_torch.cli import eval_main, train_main
from bitsub_torch.cpukernels import ENV, cpu_flags

FAST = ["--scenario", "splitdigits", "--epochs", "3", "--lr", "0.005", "--batch-size", "32",
        "--no-progress", "--threads", "1"]


def run_train(out, *extra):
    return train_main([*FAST, "--out", str(out), *extra])


def run_eval(capsys, model, *extra):
    capsys.readouterr()
    rc = eval_main([str(model), "--scenario", "splitdigits", *extra])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def check_run_dir(out, n_tasks):
    res = json.loads((out / "results.json").read_text())
    for key in ("accuracy_matrix", "acc", "bwt", "fwt", "capacity", "config", "timings",
                "export"):
        assert key in res
    r = np.array(res["accuracy_matrix"], dtype=float)
    assert r.shape == (n_tasks, n_tasks)
    assert np.isfinite(r).all() and (r >= 0).all() and (r <= 1).all()
    assert res["capacity"]["percent"] > 0
    assert set(res["capacity"]["bits"]) >= {"fields", "codebooks", "masks", "private"}
    assert (out / "accuracy_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(bitsub.load(out / "model.h5"), bitsub.PackedModel)
    return res, r


@pytest.mark.parametrize("strategy", ["wsn", "packnet"])
def test_train_and_eval_forget_free(tmp_path, capsys, strategy):
    assert run_train(tmp_path, "--strategy", strategy) == 0
    res, r = check_run_dir(tmp_path, 5)
    assert res["bwt"] == 0.0
    # tasks learnt something (2 classes per task: chance is 0.5)
    assert np.mean(np.diag(r)) > 0.8
    # the file reproduces the torch model: same predictions, same accuracies
    assert min(res["export"]["agreement"]) >= 0.999
    ev = run_eval(capsys, tmp_path / "model.h5", "--seed", "0")
    assert ev["accuracy"] == pytest.approx(r[-1].tolist(), abs=1e-12)
    assert ev["accuracy"] == res["export"]["accuracy"]
    # the kernels the run used are recorded; the suite pins AVX2 where the CPU has it
    kernels = res["cpu_kernels"]
    if {"avx2", "fma"} <= cpu_flags() and os.environ.get(ENV) != "native":
        assert kernels["capability"] == "AVX2"
        assert (kernels["ATEN_CPU_CAPABILITY"], kernels["MKL_CBWR"]) == ("avx2", "AVX2")


def test_finetune_forgets(tmp_path):
    assert run_train(tmp_path, "--strategy", "finetune") == 0
    res, _ = check_run_dir(tmp_path, 5)
    assert res["bwt"] < 0


def test_export_bits_reports_file_accuracy(tmp_path, capsys):
    assert run_train(tmp_path, "--strategy", "wsn", "--tasks", "2", "--export-bits", "4") == 0
    res, r = check_run_dir(tmp_path, 2)
    assert res["export"]["bits"] == 4
    pm = bitsub.load(tmp_path / "model.h5")
    assert {pm.bits(t, name) for t in pm.tasks for name in pm.layers} <= {0, 4}
    ev = run_eval(capsys, tmp_path / "model.h5")
    assert ev["accuracy"] == res["export"]["accuracy"]
    # 4-bit codes of a tiny MLP stay close to the float model
    assert abs(ev["acc"] - float(np.mean(r[-1]))) < 0.1


def _interrupt_after(monkeypatch, k):
    real = trainer_module.Trainer._train_task

    def train_task(self, task):
        if task == k + 1:
            raise KeyboardInterrupt  # as if the run were killed after task k's checkpoint
        return real(self, task)

    monkeypatch.setattr(trainer_module.Trainer, "_train_task", train_task)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_train(full, "--strategy", "wsn", "--tasks", "3") == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 0)
        # Ctrl-C: one line and exit status 130, the finished task's checkpoint kept.
        assert run_train(cut, "--strategy", "wsn", "--tasks", "3") == 130
    assert not (cut / "results.json").exists()
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["task_000.pt"]
    assert run_train(cut, "--strategy", "wsn", "--tasks", "3") == 0
    a = json.loads((full / "results.json").read_text())
    b = json.loads((cut / "results.json").read_text())
    for key in ("accuracy_matrix", "acc", "bwt", "fwt", "forgetting", "capacity", "export"):
        assert a[key] == b[key], key
    assert bitsub.load(full / "model.h5") == bitsub.load(cut / "model.h5")


def test_other_arguments_on_same_dir_refused(tmp_path, capsys):
    assert run_train(tmp_path, "--strategy", "wsn", "--tasks", "1") == 0
    capsys.readouterr()
    assert run_train(tmp_path, "--strategy", "wsn", "--tasks", "2") == 2
    err = capsys.readouterr().err
    assert "tasks" in err and "--out" in err


def test_cli_errors(tmp_path, capsys):
    assert train_main(["--strategy", "wsn", "--scenario", "pmnist", "--out", str(tmp_path),
                       "--no-progress"]) == 2
    assert "data-dir" in capsys.readouterr().err
    assert eval_main([str(tmp_path / "absent.h5"), "--scenario", "splitdigits"]) == 2
    assert "error" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"not a file")
    assert eval_main([str(tmp_path / "junk.h5"), "--scenario", "splitdigits"]) == 2
    with pytest.raises(SystemExit):
        train_main(["--strategy", "nope", "--scenario", "splitdigits", "--out", str(tmp_path)])


def test_a_value_error_inside_torch_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """A ValueError raised in another library's Python code is a bug of bitsub's, not a user's
    mistake: the command does not print it as a one-line error (status 2) but raises it."""
    import torch

    from bitsub_torch.checks import is_user_error

    def batch_of_one(self, task):  # torch's own message for a BatchNorm batch of one
        torch.nn.functional.batch_norm(torch.zeros(1, 3), None, None, training=True)

    with pytest.raises(ValueError, match="Expected more than 1 value per channel") as info:
        batch_of_one(None, 0)
    assert not is_user_error(info.value)
    monkeypatch.setattr(trainer_module.Trainer, "_train_task", batch_of_one)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        run_train(tmp_path / "bug", "--strategy", "wsn", "--tasks", "1")
    # bitsub's own checks, C code called from bitsub, and the file system stay one line
    with pytest.raises(ValueError) as info:
        bitsub.decode_mask(b"junk", 10)
    assert is_user_error(info.value)
    with pytest.raises(ValueError) as info:
        np.frombuffer(b"abc", dtype=np.int32)
    assert not is_user_error(info.value)  # raised here, in a test: not bitsub's code
    assert is_user_error(OSError(2, "No such file or directory"))
    assert is_user_error(ValueError("made, never raised"))
    assert not is_user_error(RuntimeError("a bug"))
    capsys.readouterr()
    assert run_train(tmp_path / "user", "--strategy", "wsn", "--tasks", "0") == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_and_rerun(tmp_path):
    """A real `kill -9` of bitsub-train after task 1's checkpoint; the same command finishes."""
    cmd = [sys.executable, "-c", "import sys; from bitsub_torch.cli import train_main; "
           "sys.exit(train_main())", *FAST, "--strategy", "wsn", "--epochs", "30",
           "--tasks", "4"]
    ref = tmp_path / "ref"
    subprocess.run([*cmd, "--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "task_001.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists(), "the run finished before the kill"
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert bitsub.load(ref / "model.h5") == bitsub.load(out / "model.h5")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["wsn", "packnet", "finetune"])
def test_pmnist5k_bars(tmp_path, capsys, strategy):
    out = tmp_path / strategy
    assert train_main(["--strategy", strategy, "--scenario", "pmnist5k", "--tasks", "5",
                       "--epochs", "3", "--batch-size", "64", "--lr", "0.005", "--out", str(out),
                       "--no-progress"]) == 0
    res, r = check_run_dir(out, 5)
    if strategy == "finetune":
        assert res["bwt"] < 0
        return
    assert res["bwt"] == 0.0
    assert np.mean(np.diag(r)) > 0.8
    assert min(res["export"]["agreement"]) >= 0.999
    capsys.readouterr()
    assert eval_main([str(out / "model.h5"), "--scenario", "pmnist5k", "--seed", "0"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(r[-1].tolist(), abs=1e-3)


def test_demo_runs_and_retests_from_file(tmp_path, capsys):
    from bitsub_torch.demo import main

    assert main(["--out", str(tmp_path), "--tasks", "2", "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "equals the last row of the accuracy matrix: yes" in out
    assert "capacity" in out and "BWT" in out
    check_run_dir(tmp_path, 2)


def test_splitfmnist2d_without_flags_builds_the_tables_network(tmp_path, capsys,
                                                              fake_fashion_mnist):
    # no --model, no --width: the reduced AlexNet at width 0.25 (16 first-conv channels, not
    # 64), recorded in config.json; a run directory of the full-width network is refused
    args = ["--strategy", "packnet", "--scenario", "splitfmnist2d", "--tasks", "1",
            "--epochs", "1", "--no-progress"]
    out = tmp_path / "run"
    assert train_main([*args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["width"]) == ("alexnet", 0.25)
    pm = bitsub.load(out / "model.h5")
    assert pm.shape("conv1")[0] == 16
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text(json.dumps({**config, "width": None}))
    capsys.readouterr()
    assert train_main([*args, "--out", str(full)]) == 2
    err = capsys.readouterr().err.strip()
    assert "width (None -> 0.25)" in err and "\n" not in err
