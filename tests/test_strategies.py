"""Finetune, PackNet and WSN on a tiny real problem (scikit-learn digits), and their exports."""

import numpy as np
import pytest
import torch
from naive import naive_run_steps
from sklearn.datasets import load_digits

from bitsub_torch.cl.strategies import STRATEGIES, WSN, Finetune, PackNet, get_strategy
from bitsub_torch.cl.trainer import Trainer
from bitsub_torch.data.scenarios import Scenario, TaskData, get_scenario
from bitsub_torch.nn.autograd import topk_count
from bitsub_torch.nn.models import alexnet, mlp

torch.set_num_threads(1)


def permuted_digits(tasks=3, shape=(64,)):
    """Permuted scikit-learn digits: task t permutes the 64 pixels (task 0 keeps them)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order].astype(np.int64)
    out = []
    for t in range(tasks):
        perm = np.arange(64) if t == 0 else np.random.default_rng(t).permutation(64)
        xt = x[:, perm].reshape(-1, *shape)
        out.append(
            TaskData(t, xt[:1200], y[:1200], xt[1200:1400], y[1200:1400], xt[1400:], y[1400:],
                     tuple(range(10)))
        )
    return Scenario("pdigits", shape, 10, out)


SCENARIO = permuted_digits()


def run(strategy, *, optimizer="adam", weight_decay=0.0, lr=None, epochs=2, scenario=SCENARIO,
        model=None):
    if lr is None:  # scores learn slower than weights
        lr = 1e-2 if isinstance(strategy, WSN) else 3e-3
    torch.manual_seed(0)
    model = model or mlp((64,), 10, len(scenario.tasks), width=48)
    trainer = Trainer(model, strategy, scenario, epochs=epochs, batch_size=32, lr=lr,
                      optimizer=optimizer, weight_decay=weight_decay, progress=False)
    return model, trainer.run()


def assert_forget_free(r):
    t = len(r)
    for j in range(t):
        for i in range(j, t):
            assert r[i, j] == r[j, j], (i, j)


def task_state(model, task):
    """Every number the forward of ``task`` reads, as raw bytes: its task layers' effective
    weights, its private parameters (head, biases, norms) and all its norms' buffers."""
    out = {}
    with torch.no_grad():
        for name, layer in model.masked_layers().items():
            out[f"{name}:mask"] = layer.task_mask(task).cpu().numpy()
            # + 0.0 turns the -0.0 that ``weight * mask`` leaves where a later task flipped the
            # sign of a weight outside this task's mask into 0.0; every other bit must stay
            out[f"{name}:effective"] = (layer.effective_weight(task) + 0.0).cpu().numpy()
        out.update({f"private:{k}": v for k, v in model.private_params(task).items()})
        for name, bn in model.task_norms().items():
            for k, v in bn.norms[task].state_dict().items():
                out[f"{name}:buffer:{k}"] = v.cpu().numpy()
    return {k: (v.dtype.str, v.shape, np.ascontiguousarray(v).tobytes()) for k, v in out.items()}


def probe_forget_free(strategy):
    """Wrap ``strategy.before_task`` so that as every task begins, every earlier task's state
    (:func:`task_state`) is compared bit for bit with its state when the task after it began.

    A task's state is final once the trainer has finished it: after the strategy's
    ``after_task`` the trainer still gathers the task's BatchNorm statistics for the network
    stored. Returns the dict of snapshots; call :func:`assert_states_unchanged` after the run too.
    """
    snaps = {}
    before_task = strategy.before_task

    def probed(task, model, *args, **kwargs):
        compare_states(model, snaps, f"before task {task}")
        snaps.update({j: task_state(model, j) for j in range(task) if j not in snaps})
        return before_task(task, model, *args, **kwargs)

    strategy.before_task = probed
    return snaps


def assert_states_unchanged(model, snaps):
    assert snaps, "no task ended: nothing was checked"
    compare_states(model, snaps, "after the run")


def compare_states(model, snaps, when):
    for j, before in snaps.items():
        now = task_state(model, j)
        assert now.keys() == before.keys(), (j, when)
        changed = [k for k in before if now[k] != before[k]]
        assert not changed, f"task {j}'s {changed} changed {when}"


@pytest.mark.parametrize(
    "make, optimizer, wd",
    [
        (lambda: WSN(0.5), "adam", 0.0),
        (lambda: WSN(0.3), "sgd", 1e-3),
        (lambda: PackNet(0.5, retrain_epochs=1), "adam", 1e-3),
        (lambda: PackNet(0.6, retrain_epochs=0), "adamw", 1e-2),
    ],
    ids=["wsn-adam", "wsn-sgd-wd", "packnet-adam-wd", "packnet-adamw"],
)
def test_forget_free_strategies_have_exactly_zero_bwt(make, optimizer, wd):
    lr = 0.3 if optimizer == "sgd" else None
    strategy = make()
    snaps = probe_forget_free(strategy)
    model, res = run(strategy, optimizer=optimizer, weight_decay=wd, lr=lr)
    assert_states_unchanged(model, snaps)
    assert len(snaps) == 2  # tasks 0 and 1, taken as tasks 1 and 2 began (none trains after 2)
    r = res.accuracy_matrix
    assert_forget_free(r)
    assert res.bwt == 0.0 and res.forgetting == 0.0
    assert np.all(np.diag(r) > 0.3), np.diag(r)  # it learned each task (chance: 0.1)


@pytest.mark.parametrize("make", [lambda: WSN(0.5), lambda: PackNet(0.5)], ids=["wsn", "packnet"])
def test_forget_free_on_the_splitdigits_scenario(make):
    scenario = get_scenario("splitdigits")
    torch.manual_seed(0)
    model = mlp(scenario.input_shape, scenario.num_classes, len(scenario.tasks), width=32)
    strategy = make()
    snaps = probe_forget_free(strategy)
    _, res = run(strategy, scenario=scenario, model=model, epochs=1)
    assert_states_unchanged(model, snaps)
    assert_forget_free(res.accuracy_matrix)
    assert res.bwt == 0.0
    assert res.acc > 0.6  # chance: 0.5


def test_the_forget_free_probe_catches_a_strategy_that_forgets():
    strategy = Finetune()
    snaps = probe_forget_free(strategy)
    with pytest.raises(AssertionError, match="task 0's .*changed before task 2"):
        run(strategy, epochs=1)
    assert list(snaps) == [0]


def test_finetune_forgets():
    _, res = run(Finetune(), epochs=3)
    assert res.bwt < 0
    assert res.forgetting > 0
    assert res.accuracy_matrix[0, 0] > 0.6


def test_wsn_masks_density_and_ownership():
    model, _ = run(WSN(0.4))
    for layer in model.masked_layers().values():
        k = topk_count(layer.weight.numel(), 0.4)
        owner = layer.owner
        used = torch.zeros_like(owner, dtype=torch.bool)
        for t in range(3):
            mask = layer.task_mask(t)
            assert layer.has_task_mask(t) and int(mask.sum()) == k
            assert torch.all((owner[mask] >= 0) & (owner[mask] <= t))  # only tasks <= t
            assert torch.all(mask[owner == t])  # a task owns only positions it uses
            used |= mask
        assert torch.equal(used, owner >= 0)


def test_packnet_keeps_its_fraction_and_all_earlier_weights():
    model, _ = run(PackNet(0.5, retrain_epochs=1))
    for layer in model.masked_layers().values():
        free = layer.weight.numel()
        for t in range(3):
            mask = layer.task_mask(t)
            own = layer.owner == t
            assert int(own.sum()) == round(0.5 * free)
            free -= int(own.sum())
            earlier = (layer.owner >= 0) & (layer.owner < t)
            assert torch.equal(mask, earlier | own)


@pytest.mark.parametrize("make", [lambda: WSN(0.5), lambda: PackNet(0.5), Finetune],
                         ids=["wsn", "packnet", "finetune"])
def test_export_layers_reproduce_the_model(make):
    strategy = make()
    model, _ = run(strategy, epochs=1)
    model.eval()
    x = SCENARIO.tasks[0].x_test[:50]
    written = {}
    for t in range(3):
        layers = strategy.export_layers(model, t)
        for name, d in layers.items():
            shape = tuple(model.masked_layers()[name].weight.shape)
            assert d["mask"].dtype == np.bool_ and d["mask"].shape == shape
            assert d["write"].dtype == np.bool_ and d["values"].dtype == np.float32
            assert not np.any(d["write"] & ~d["mask"])
            # the read rule: every position a task reads was written by a task <= t
            prev = written.get(name, np.zeros(shape, dtype=bool))
            assert not np.any(d["write"] & prev)  # one field per position
            written[name] = prev | d["write"]
            assert np.all(written[name][d["mask"]])
        weights = {n: d["values"].astype(np.float64) * d["mask"] for n, d in layers.items()}
        want = naive_run_steps(model.network_steps(t), weights, model.private_params(t), x)
        with torch.no_grad():
            got = model(torch.from_numpy(x), t).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_wsn_with_batchnorm_network_is_forget_free():
    x, y = load_digits(return_X_y=True)
    scen = permuted_digits(2, shape=(1, 8, 8))
    tasks = []
    for t in scen.tasks:  # 3-channel 24x24 images from the 8x8 digits, small enough for alexnet
        up = lambda a: np.repeat(np.repeat(np.repeat(a, 3, 1), 3, 2), 3, 3)  # noqa: E731
        tasks.append(TaskData(t.task_id, up(t.x_train[:300]), t.y_train[:300], up(t.x_val[:50]),
                              t.y_val[:50], up(t.x_test[:100]), t.y_test[:100], t.classes))
    scen = Scenario("pdigits-img", (3, 24, 24), 10, tasks)
    torch.manual_seed(0)
    model = alexnet((3, 24, 24), 10, 2, width=0.05)
    strategy = WSN(0.5)
    snaps = probe_forget_free(strategy)
    _, res = run(strategy, scenario=scen, model=model, epochs=1)
    assert_states_unchanged(model, snaps)
    assert any(":buffer:running_mean" in k for k in snaps[0])  # the norms were checked
    assert_forget_free(res.accuracy_matrix)
    assert res.bwt == 0.0


def test_state_dict_round_trip_and_checks():
    s = PackNet(0.3, retrain_epochs=2)
    s.finished = [0, 1]
    t = PackNet()
    t.load_state_dict(s.state_dict())
    assert (t.keep, t.retrain_epochs(0), t.finished) == (0.3, 2, [0, 1])
    w = WSN(0.2)
    w2 = WSN()
    w2.load_state_dict(w.state_dict())
    assert w2.density == 0.2
    with pytest.raises(ValueError, match="same --strategy"):
        WSN().load_state_dict(s.state_dict())


def test_registry_and_validation():
    assert set(STRATEGIES) >= {"finetune", "packnet", "wsn"}
    assert isinstance(get_strategy("wsn", density=0.1), WSN)
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="density"):
        WSN(0.0)
    with pytest.raises(ValueError, match="keep"):
        PackNet(1.5)
    with pytest.raises(ValueError, match="retrain_epochs"):
        PackNet(0.5, retrain_epochs=-1)
