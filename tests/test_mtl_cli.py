"""bitsub-mtl end to end on MultiMNIST, and bitsub-eval reading its file."""

from __future__ import annotations

import json

import pytest

from bitsub_torch.cli import eval_main
from bitsub_torch.data.multitask import get_mtl_scenario
from bitsub_torch.mtl.cli import main


def test_multimnist_pairs_are_standard():
    sc = get_mtl_scenario("multimnist", seed=0)
    x, ys = sc.split("test")
    assert x.shape == (2000, 1, 36, 36) and sc.input_shape == (1, 36, 36)
    assert set(ys) == {"left", "right"} and ys["left"].max() <= 9
    with pytest.raises(ValueError, match="unknown multi-task scenario"):
        get_mtl_scenario("nyuv2")


def test_cli_writes_everything_and_eval_reads_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--strategy", "adapmtl-noweighting", "--scenario", "multimnist", "--sparsity", "0.5",
            "--seed", "1", "--out", str(out), "--iterations", "6", "--width", "4",
            "--theta-init", "-2", "--theta-lr", "0.3", "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("metrics", "lower_is_better", "delta_t", "delta_t_tasks", "sparsity"):
        assert key in res
    assert set(res["sparsity"]["components"]) == {"backbone", "left", "right"}
    assert res["lower_is_better"] == {"accuracy": False}
    assert res["file_metrics_equal"] and res["delta_t_reference"] == "trained by this command"
    for f in ("model.h5", "table.md", "sparsity.png", "checkpoint.pt"):
        assert (out / f).is_file(), f
    capsys.readouterr()
    assert eval_main([str(out / "model.h5"), "--scenario", "multimnist", "--seed", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == res["metrics"]


@pytest.mark.parametrize("bad, msg", [(["--sparsity", "1.5"], "sparsity"),
                                      (["--iterations", "0"], "iterations"),
                                      (["--bits", "40"], "bits")])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bad, msg):
    out = tmp_path / "run"
    code = main(["--strategy", "adapmtl", "--scenario", "multimnist", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), *bad])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_multifashion_without_data_says_where(tmp_path, capsys):
    code = main(["--strategy", "dense", "--scenario", "multifashion", "--out",
                 str(tmp_path / "r"), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "train-images-idx3-ubyte" in err and str(tmp_path) in err
    assert not (tmp_path / "r").exists()
