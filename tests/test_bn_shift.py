"""bench/bn_shift.py, and the plain-BatchNorm case of the gathering it reports."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitsub_torch.cli import train_main
from bitsub_torch.nn.norm_statistics import gather

_PATH = Path(__file__).resolve().parent.parent / "bench" / "bn_shift.py"
_SPEC = importlib.util.spec_from_file_location("bn_shift", _PATH)
bs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bs)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x, task):
        return self.bn(self.drop(x))


def test_gather_takes_the_plain_mean_and_variance_with_dropout_off():
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(2.0, 3.0, (300, 3)).astype(np.float32)
    net = Net()
    gather(net, x, 0, batch_size=100, dropout=False)
    # three equal batches: the running mean is their mean, the running variance the mean of
    # their unbiased variances
    parts = x.reshape(3, 100, 3)
    np.testing.assert_allclose(net.bn.running_mean.numpy(), parts.mean(axis=1).mean(axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(net.bn.running_var.numpy(), parts.var(axis=1, ddof=1).mean(axis=0),
                               rtol=1e-4)
    assert net.drop.training and net.bn.training and net.bn.momentum == 0.1  # modes restored
    # with dropout on, the same images give another variance (the variance shift)
    gather(net, x, 0, batch_size=100, dropout=True)
    assert (net.bn.running_var.numpy() > 1.2 * parts.var(axis=1, ddof=1).mean(axis=0)).all()


def test_the_bench_reads_a_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--strategy", "wsn", "--scenario", "splitdigits", "--tasks", "2",
                       "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert bs.main([str(out), "--tasks", "0", "1", "--images", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["task 0", "task 1"]
    for line in lines:
        # the MLP has no BatchNorm: nothing is gathered, all four readings are the same
        figures = re.findall(r"(\d+\.\d\d)%", line)
        assert len(figures) == 4 and len(set(figures)) == 1, line
        assert "50 images" in line


_ONE = Path(__file__).resolve().parent.parent / "bench" / "bn_shift_one_model.py"
_SPEC_ONE = importlib.util.spec_from_file_location("bn_shift_one_model", _ONE)
bso = importlib.util.module_from_spec(_SPEC_ONE)
_SPEC_ONE.loader.exec_module(bso)


def test_the_one_model_bench_reads_back_what_the_trainer_kept(tmp_path, capsys,
                                                             fake_fashion_mnist):
    # a run made now keeps the buffer's statistics (dropout off): the bench's first reading and
    # its "buffer, dropout off" reading are the same numbers
    out = tmp_path / "run"
    assert train_main(["--strategy", "er", "--scenario", "splitfmnist2d", "--tasks", "2",
                       "--epochs", "1", "--buffer", "20", "--setting", "class-il",
                       "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert bso.main([str(out)]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert len(lines) == 9
    assert lines["statistics kept"] == lines["buffer, dropout off"]
    assert len(re.findall(r"\d+\.\d\d%", lines["statistics kept"])) == 4
