"""End to end: the one-model trainer, the CLI contract, export and file re-test (splitdigits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bitsub
from bitsub_torch.cl.rehearsal import RehearsalTrainer
from bitsub_torch.cl.strategies import get_strategy
from bitsub_torch.cli import eval_main, train_main
from bitsub_torch.data.scenarios import get_scenario
from bitsub_torch.nn.models import mlp

FAST = ["--scenario", "splitdigits", "--epochs", "2", "--batch-size", "32", "--no-progress",
        "--buffer", "60"]


def _trainer(name, tmp=None, tasks=3, **kw):
    sc = get_scenario("splitdigits", tasks=tasks, seed=0)
    torch.manual_seed(0)
    net = mlp(sc.input_shape, 2 * tasks, 1, width=32)
    strat = get_strategy(name, buffer=40, **kw)
    return RehearsalTrainer(net, strat, sc, epochs=2, batch_size=32, seed=0, progress=False,
                            checkpoint_dir=tmp), net


def test_esacl_cli_contract_export_and_file_retest(tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_main(["--strategy", "esacl", *FAST, "--setting", "class-il", "--sparsity", "0.9",
                     "--tasks", "5", "--seed", "0", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "results.json").read_text())
    for key in ("class_il", "task_il"):
        assert set(rep[key]) >= {"accuracy_matrix", "acc", "bwt"}
        assert np.array(rep[key]["accuracy_matrix"]).shape == (5, 5)
    assert rep["retrain_epochs"] == 0
    assert rep["train_flops"] > 0 and rep["examples_processed"] > 0
    assert rep["acc"] == rep["class_il"]["acc"]
    val = rep["validation"]
    assert len(val["class_il"]) == len(val["task_il"]) == 5
    assert val["acc_class_il"] == pytest.approx(np.mean(val["class_il"]))
    assert all(c <= t for c, t in zip(val["class_il"], val["task_il"]))  # task-IL is easier
    # exactly 90% of each shared tensor pruned after every task, and the file stores only the
    # kept positions
    pm = bitsub.load(out / "model.h5")
    assert len(pm.tasks) == 1
    total = kept = 0
    for layer in pm.layers:
        n = int(np.prod(pm.shape(layer)))
        assert int(pm.mask(0, layer).sum()) == n - round(0.9 * n)
        total, kept = total + n, kept + n - round(0.9 * n)
    assert rep["sparsity"] == [1.0 - kept / total] * 5
    # the file re-test equals the torch accuracies, prediction for prediction
    last = rep["class_il"]["accuracy_matrix"][-1]
    assert rep["export"]["class_il"] == last
    assert rep["export"]["task_il"] == rep["task_il"]["accuracy_matrix"][-1]
    assert rep["export"]["agreement"] == [1.0] * 5
    capsys.readouterr()
    assert eval_main([str(out / "model.h5"), "--scenario", "splitdigits", "--seed", "0",
                      "--setting", "class-il"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["accuracy"] == last and got["acc"] == pytest.approx(rep["class_il"]["acc"])
    # without --setting the one-model file is refused, not silently mis-tested
    assert eval_main([str(out / "model.h5"), "--scenario", "splitdigits"]) == 2
    assert "--setting class-il" in capsys.readouterr().err


def test_bad_arguments_write_nothing(tmp_path, capsys):
    out = tmp_path / "x"
    assert train_main(["--strategy", "packnet", *FAST, "--out", str(out)]) == 2
    assert "one-model strategies" in capsys.readouterr().err
    assert train_main(["--strategy", "esacl", "--scenario", "pmnist5k", "--out", str(out),
                       "--no-progress"]) == 2
    assert "split tasks" in capsys.readouterr().err
    assert train_main(["--strategy", "er", *FAST, "--sparsity", "0.5", "--out", str(out)]) == 2
    assert "dense model" in capsys.readouterr().err
    assert train_main(["--strategy", "esacl", *FAST, "--strategy-args", '{"buffer": 7}',
                       "--out", str(out)]) == 2
    assert "give it once" in capsys.readouterr().err
    assert not out.exists()


def test_flops_and_examples_are_counted_exactly_for_dense_er():
    tr, _ = _trainer("er", tasks=2)
    res = tr.run()
    per_example = 64 * 32 + 32 * 32 + 32 * 4  # fc1, fc2, head multiply-adds
    assert res["train_flops"] == 2 * 3 * res["examples_processed"] * per_example
    assert res["train_flops_dense"] == res["train_flops"]
    assert res["sparsity"] == [0.0, 0.0]
    # stream examples (no single-example batch is dropped here) plus 32 replayed per step
    # once the buffer holds anything
    n = [len(t.y_train) for t in tr.scenario.tasks]
    steps = [2 * -(-k // 32) for k in n]
    assert res["examples_processed"] == 2 * sum(n) + 32 * (sum(steps) - 1)


def test_prune_retrain_counts_its_retraining_and_is_sparse():
    tr, net = _trainer("prune-retrain", sparsity=0.75, retrain_epochs=1)
    res = tr.run()
    assert res["retrain_epochs"] == 3
    assert res["sparsity"] == [0.75] * 3
    for layer in net.masked_layers().values():
        w = layer.effective_weight(0).detach()
        assert int((w != 0).sum()) <= w.numel() - round(0.75 * w.numel())


def test_ids_drops_examples_and_counts_fewer():
    on, _ = _trainer("esacl", drop_fraction=0.5)
    off, _ = _trainer("esacl", ids=False)
    r_on, r_off = on.run(), off.run()
    assert r_off["examples_dropped"] == []
    assert all(d > 0 for d in r_on["examples_dropped"])
    assert r_on["examples_processed"] < r_off["examples_processed"]
    assert r_on["train_flops"] < r_off["train_flops"]
    # sparse training after the first task: fewer FLOPs than the same steps dense
    assert r_on["train_flops"] < r_on["train_flops_dense"]


def _resume_equals_uninterrupted(make, tmp_path, monkeypatch, keys):
    """Run ``make()`` through; run ``make(ck)`` stopped at task 2, then again resumed from
    ``ck``: the results ``keys`` and every weight and buffer must be equal."""
    full, net_full = make()
    want = full.run()
    ck = tmp_path / "ck"
    broken, _ = make(ck)
    real = RehearsalTrainer._train_task

    def stop_at_2(self, task):
        if task == 2:
            raise KeyboardInterrupt
        return real(self, task)

    monkeypatch.setattr(RehearsalTrainer, "_train_task", stop_at_2)
    with pytest.raises(KeyboardInterrupt):
        broken.run()
    monkeypatch.setattr(RehearsalTrainer, "_train_task", real)
    resumed, net_res = make(ck)
    got = resumed.run()
    for k in keys:
        assert got[k] == want[k], k
    a, b = net_full.state_dict(), net_res.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_ends_with_the_same_model(tmp_path, monkeypatch):
    _resume_equals_uninterrupted(
        lambda ck=None: _trainer("esacl", ck), tmp_path, monkeypatch,
        ("class_il", "task_il", "sparsity", "train_flops", "examples_processed",
         "examples_dropped"))


def test_resume_on_a_conv_network_ends_with_the_same_model(tmp_path, monkeypatch):
    # BatchNorm behind dropout: the regrowth's forward must not depend on the mode the model
    # was left in (a resumed run builds a fresh model, in train mode)
    from test_norm_statistics import small_cnn, split_digit_images

    sc = split_digit_images(3)

    def make(ck=None):
        net = small_cnn(num_tasks=1)
        return RehearsalTrainer(net, get_strategy("esacl", buffer=30), sc, epochs=1,
                                batch_size=16, seed=0, progress=False, checkpoint_dir=ck), net

    _resume_equals_uninterrupted(make, tmp_path, monkeypatch,
                                 ("class_il", "task_il", "sparsity", "train_flops",
                                  "examples_processed"))


def test_batchnorm_networks_never_train_on_a_batch_of_one():
    """The sharpness step's support set keeps two examples on a BatchNorm network (250 training
    images at batch 248 leave a last batch of two, whose half is one: torch refused it), and a
    replay batch of one is refused before training with what to give instead."""
    from test_norm_statistics import small_cnn, split_digit_images

    sc = split_digit_images(2)
    tr = RehearsalTrainer(small_cnn(num_tasks=1), get_strategy("esacl", buffer=30), sc, epochs=1,
                          batch_size=248, seed=0, progress=False)
    res = tr.run()
    assert np.array(res["class_il"]["accuracy_matrix"]).shape == (2, 2)
    for kw in ({"buffer": 1}, {"buffer": 30, "replay_batch": 1}):
        with pytest.raises(ValueError, match="buffer 0 or >= 2 and replay_batch >= 2"):
            RehearsalTrainer(small_cnn(num_tasks=1), get_strategy("er", **kw), sc,
                             progress=False)
    # a network without BatchNorm takes them
    RehearsalTrainer(mlp((1, 8, 8), 4, 1, width=8), get_strategy("er", buffer=1), sc,
                     progress=False)


def test_task_il_file_refuses_setting(tmp_path, capsys):
    out = tmp_path / "t"
    assert train_main(["--strategy", "finetune", "--scenario", "splitdigits", "--epochs", "1",
                       "--tasks", "2", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert eval_main([str(out / "model.h5"), "--scenario", "splitdigits",
                      "--setting", "class-il"]) == 2
    assert "drop --setting" in capsys.readouterr().err


def test_adaptive_export_stores_algorithm_1_codes(tmp_path):
    from bitsub_torch.cl.rehearsal_run import train_one_model

    rep = train_one_model(strategy="esacl", scenario="splitdigits", out=tmp_path / "q",
                          tasks=2, epochs=2, buffer=40, export_bits="auto", width=32,
                          progress=False)
    ad = rep["export"]["adaptive"]
    bits = set(ad["bits"].values())
    assert len(bits) == 1 and 1 <= min(bits) <= 8
    # Algorithm 1 stops at the first bit-width within 1 point of the float model (or at 8)
    assert ad["val_class_il"] >= ad["val_float"] - 0.01 or bits == {8}
    if min(bits) > 1:
        assert ad["history"][-2][1] < ad["val_float"] - 0.01
    pm = bitsub.load(tmp_path / "q" / "model.h5")
    for layer in pm.layers:
        w = pm.weights(0, layer)[pm.mask(0, layer)]
        assert pm.bits(0, layer) == min(bits)
        assert set(np.unique(w)) <= set(pm.codebook(0, layer).tolist())


def test_sfw_anchor_task_centres_later_polytopes_on_the_previous_weights():
    tr, net = _trainer("esacl", tasks=2, sfw=True, sfw_anchor="task", tau_task=0.5)
    tr.run()  # task 1 trained with the anchored polytope
    opts = tr._optimizers(True)
    for group, layer in zip(opts[0].param_groups, net.masked_layers().values()):
        w = layer.weight.detach()
        assert torch.equal(group["anchor"], w)
        n_active = int(layer.task_mask(0).sum())
        assert group["k"] == max(1, round(0.05 * n_active))
        assert group["radius"] == pytest.approx(0.5 * float(w.norm()) / group["k"] ** 0.5)
    # the origin (default): no anchor, the radius fixed from the initial norm
    tr.strategy.sfw_anchor = "origin"
    for group, name in zip(tr._optimizers(True)[0].param_groups, net.masked_layers()):
        assert group["anchor"] is None and group["radius"] == tr.strategy.radius[name]


@pytest.mark.parametrize("strategy", ["esacl", "er"])
def test_one_model_on_the_conv_network_trains_exports_and_retests(tmp_path, capsys,
                                                                  fake_fashion_mnist, strategy):
    # splitfmnist2d's default network (the reduced AlexNet at width 0.25, BatchNorm behind
    # dropout): the trainer's MAC count once crashed on it (a batch of one in train mode)
    out = tmp_path / "run"
    assert train_main(["--strategy", strategy, "--scenario", "splitfmnist2d", "--tasks", "2",
                       "--epochs", "1", "--buffer", "20", "--setting", "class-il",
                       "--no-progress", "--seed", "0", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["width"]) == ("alexnet", 0.25)
    rep = json.loads((out / "results.json").read_text())
    assert np.array(rep["class_il"]["accuracy_matrix"]).shape == (2, 2)
    assert rep["export"]["agreement"] == [1.0, 1.0]
    assert rep["export"]["class_il"] == rep["class_il"]["accuracy_matrix"][-1]
    pm = bitsub.load(out / "model.h5")
    assert pm.shape("conv1")[0] == 16


def test_layer_macs_leave_modes_and_batchnorm_statistics_unchanged():
    from bitsub_torch.cl import rehearsal
    from bitsub_torch.nn.models import alexnet

    torch.manual_seed(0)
    net = alexnet((1, 28, 28), 4, 1, width=0.25)
    net.train()
    net.blocks.drop1.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = {name: m.training for name, m in net.named_modules()}
    macs, head = rehearsal._layer_macs(net, (1, 28, 28))
    assert {name: m.training for name, m in net.named_modules()} == modes
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # conv1: 16 output channels of 25 x 25 positions, fan-in 1 x 4 x 4
    assert macs["conv1"] == 16 * 25 * 25 * 16
    assert head == net.heads[0].weight.numel()
