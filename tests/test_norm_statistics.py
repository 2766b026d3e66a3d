"""BatchNorm statistics gathered again with dropout off (bitsub_torch.nn.norm_statistics).

Compared with `naive_gathered_statistics`, a float64 forward written by hand. Tolerance: torch
sums in float32 (pairwise / blocked), so a mean over n values is within about log2(n) u of the
float64 one relatively (u = 2^-24, n <= 4,000 here: ~1e-6); the second and third BatchNorms see
inputs normalised with the first's float32 statistics, which adds a few such errors. 1e-4 of
each channel's scale leaves a hundredfold margin and is still far below what a wrong rule moves
(a batch statistic taken with dropout on, or a momentum average, changes them by percent).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import naive_gathered_statistics
from test_strategies import permuted_digits
from torch import nn

from bitsub_torch.cl.strategies import WSN, PackNet
from bitsub_torch.cl.trainer import NORM_IMAGES, Trainer
from bitsub_torch.nn.layers import TaskBatchNorm, TaskConv2d, TaskLinear
from bitsub_torch.nn.models import TaskNetwork, mlp
from bitsub_torch.nn.norm_statistics import gather, task_batchnorms

torch.set_num_threads(1)


def small_cnn(num_tasks=2, seed=0):
    """8x8 images: conv 3x3 -> BN -> ReLU -> dropout -> conv 3x3 -> BN -> ReLU -> FC -> BN."""
    torch.manual_seed(seed)
    blocks = [
        ("conv1", TaskConv2d(1, 4, 3, num_tasks)),
        ("bn1", TaskBatchNorm(4, num_tasks)),
        ("relu1", nn.ReLU()),
        ("drop1", nn.Dropout(0.5)),
        ("conv2", TaskConv2d(4, 3, 3, num_tasks)),
        ("bn2", TaskBatchNorm(3, num_tasks)),
        ("relu2", nn.ReLU()),
        ("drop2", nn.Dropout(0.5)),
        ("flatten", nn.Flatten()),
        ("fc1", TaskLinear(3 * 4 * 4, 6, num_tasks)),
        ("bn3", TaskBatchNorm(6, num_tasks, dims=1)),
        ("relu3", nn.ReLU()),
    ]
    net = TaskNetwork(blocks, 6, 10, num_tasks, (1, 8, 8))
    with torch.no_grad():  # affine parameters away from (1, 0), so a wrong one shows
        for bn in net.task_norms().values():
            for norm in bn.norms:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    return net


def naive_layers(net, task):
    out = []
    for name, block in net.blocks.named_children():
        if isinstance(block, TaskConv2d):
            out.append(("conv", block.effective_weight(task).detach().numpy()))
        elif isinstance(block, TaskLinear):
            out.append(("linear", block.effective_weight(task).detach().numpy()))
        elif isinstance(block, TaskBatchNorm):
            n = block.norms[task]
            out.append(("bn", n.weight.detach().numpy(), n.bias.detach().numpy(), n.eps))
        elif isinstance(block, nn.ReLU):
            out.append(("relu",))
        elif isinstance(block, nn.Flatten):
            out.append(("flatten",))
        elif isinstance(block, nn.Dropout):
            out.append(("dropout",))
        else:
            raise AssertionError(name)
    return out


def assert_statistics(net, task, expected):
    norms = [bn.norms[task] for bn in net.task_norms().values()]
    assert len(norms) == len(expected)
    for norm, (mean, var) in zip(norms, expected):
        scale = np.sqrt(var)
        error = np.abs(norm.running_mean.numpy() - mean)
        assert (error <= 1e-4 * scale).all(), (error / scale).max()
        np.testing.assert_allclose(norm.running_var.numpy(), var, rtol=1e-4)


def images(n, seed=0):
    return np.random.default_rng(seed).normal(0.5, 1.0, (n, 1, 8, 8)).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 70), batch=st.integers(2, 33), task=st.integers(0, 1),
       subset=st.booleans(), seed=st.integers(0, 2**16))
def test_gather_matches_the_naive_twin(n, batch, task, subset, seed):
    net = small_cnn(seed=seed % 7)
    x = images(n + 5, seed)
    rows = np.sort(np.random.default_rng(seed).permutation(n + 5)[:n]) if subset else None
    used = x[rows] if subset else x
    net.train()
    got = gather(net, x, task, batch_size=batch, rows=rows)
    assert got == 3
    assert_statistics(net, task, naive_gathered_statistics(naive_layers(net, task), used, batch))


def test_a_last_batch_of_one_is_left_out():
    net = small_cnn()
    x = images(2 * 16 + 1)
    gather(net, x, 0, batch_size=16)
    expected = naive_gathered_statistics(naive_layers(net, 0), x[:32], 16)
    assert_statistics(net, 0, expected)
    # the comparison can tell: with the 33rd image (three batches of 11) the means move
    with_it = naive_gathered_statistics(naive_layers(net, 0), x, 11)[0]
    assert (np.abs(with_it[0] - expected[0][0]) > 1e-3 * np.sqrt(expected[0][1])).any()


def test_other_tasks_modes_momenta_and_random_state_are_kept():
    net = small_cnn(num_tasks=3)
    net.train()
    net.blocks.drop2.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = {name: m.training for name, m in net.named_modules()}
    torch.manual_seed(5)
    expected_draw = torch.rand(4)
    torch.manual_seed(5)
    for dropout in (False, True):
        gather(net, images(40), 1, batch_size=8, dropout=dropout)
    assert torch.equal(torch.rand(4), expected_draw)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".norms.1." in k for k in changed)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert all(n.momentum == 0.1 for bn in net.task_norms().values() for n in bn.norms)


def test_dropout_on_gives_the_variance_shift():
    net = small_cnn()
    x = images(64)
    gather(net, x, 0, batch_size=16)
    off = net.blocks.bn2.norms[0].running_var.clone()
    torch.manual_seed(0)
    gather(net, x, 0, batch_size=16, dropout=True)
    on = net.blocks.bn2.norms[0].running_var
    assert (on > 1.2 * off).all()  # dropout at p=0.5 doubles the kept values' square


def test_nothing_to_gather_changes_nothing():
    net = small_cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert gather(net, images(1), 0, batch_size=8) == 0  # a single image: no variance
    assert gather(net, images(0), 0, batch_size=8) == 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    plain = mlp((64,), 10, 2, width=8)
    assert task_batchnorms(plain, 0) == []
    assert gather(plain, np.zeros((10, 64), np.float32), 0) == 0
    with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
        gather(net, images(4), 0, batch_size=1)


class Mixed(nn.Module):
    """A plain BatchNorm (shared by the tasks) before a per-task one."""

    def __init__(self):
        super().__init__()
        self.shared = nn.BatchNorm1d(3)
        self.own = TaskBatchNorm(3, 2, dims=1)

    def forward(self, x, task):
        return self.own(self.shared(x), task)


def test_plain_batchnorms_are_shared_by_the_tasks_and_gathered():
    net = Mixed()
    assert task_batchnorms(net, 1) == [net.own.norms[1], net.shared]
    x = np.random.default_rng(0).normal(3.0, 2.0, (40, 3)).astype(np.float32)
    assert gather(net, x, 1, batch_size=20) == 2
    parts = x.reshape(2, 20, 3).astype(np.float64)
    np.testing.assert_allclose(net.shared.running_mean.numpy(), parts.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(net.shared.running_var.numpy(),
                               parts.var(1, ddof=1).mean(0), rtol=1e-5)
    assert torch.equal(net.own.norms[0].running_mean, torch.zeros(3))


# ------------------------------------------------------------------ the trainer


SCENARIO = permuted_digits(2, shape=(1, 8, 8))


@pytest.mark.parametrize("strategy", [WSN, PackNet])
def test_the_trainer_keeps_statistics_of_the_network_stored(strategy):
    """Each task's statistics: those of its stored sub-network, dropout off, over its images."""
    assert len(SCENARIO.tasks[0].y_train) <= NORM_IMAGES  # so the sample is every image
    net = small_cnn(num_tasks=2)
    kept = {}

    class Watch(strategy):
        def before_task(self, task, model, data):
            if task == 1:  # task 0's statistics as finished
                kept.update({k: v.clone() for k, v in model.state_dict().items()
                             if ".norms.0." in k})
            super().before_task(task, model, data)

    trainer = Trainer(net, Watch(), SCENARIO, epochs=1, batch_size=64, lr=1e-2, seed=1,
                      progress=False)
    trainer.run()
    net.eval()
    for task in (0, 1):
        x = SCENARIO.tasks[task].x_train
        assert_statistics(net, task, naive_gathered_statistics(naive_layers(net, task), x, 64))
    state = net.state_dict()
    assert kept and all(torch.equal(state[k], v) for k, v in kept.items())  # forget-free
    assert trainer.config()["norm_statistics"] == {"dropout": False, "images": NORM_IMAGES}


def test_a_model_without_batchnorm_records_no_statistics_setting():
    trainer = Trainer(mlp((64,), 10, 2, width=8), WSN(), permuted_digits(2), epochs=1,
                      progress=False)
    assert "norm_statistics" not in trainer.config()


def split_digit_images(tasks=2):
    """Split scikit-learn digits as 1 x 8 x 8 images: task t holds classes 2t and 2t + 1."""
    from sklearn.datasets import load_digits

    from bitsub_torch.data.scenarios import Scenario, TaskData

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32).reshape(-1, 1, 8, 8)
    out = []
    for t in range(tasks):
        keep = np.flatnonzero((y == 2 * t) | (y == 2 * t + 1))
        xt, yt = x[keep], (y[keep] - 2 * t).astype(np.int64)
        out.append(TaskData(t, xt[:250], yt[:250], xt[250:300], yt[250:300], xt[300:], yt[300:],
                            (2 * t, 2 * t + 1)))
    return Scenario("splitdigits8x8", (1, 8, 8), 2, out)


@pytest.mark.parametrize("buffer", [40, 0])
def test_the_one_model_trainer_gathers_statistics_over_its_buffer(buffer):
    """After every task: dropout off, over the replay buffer (every class seen so far); with an
    empty buffer, over the task's own training images."""
    from bitsub_torch.cl import rehearsal
    from bitsub_torch.cl.strategies import get_strategy

    sc = split_digit_images(2)
    net = small_cnn(num_tasks=1)  # one head of 10 outputs; the first 4 are the classes
    after = {}

    class Trainer1(rehearsal.RehearsalTrainer):
        def gather_norms(self, task):
            flops = self.counters["flops"]
            super().gather_norms(task)
            after[task] = ({k: v.clone() for k, v in self.model.state_dict().items()},
                           self.buffer.x[: len(self.buffer)].numpy().copy(),
                           self.counters["flops"] - flops)

    trainer = Trainer1(net, get_strategy("er", buffer=buffer), sc, epochs=1, batch_size=16,
                       seed=0, progress=False)
    trainer.run()
    assert trainer.config()["norm_statistics"] == {"over": "buffer", "dropout": False}
    # one dense forward, counted by hand: conv1 4 x 6 x 6 outputs x 9, conv2 3 x 4 x 4 x 36,
    # fc1 6 x 48, head 10 x 6 multiply-adds; 2 FLOPs each
    forward = 2 * (4 * 36 * 9 + 3 * 16 * 36 + 6 * 48 + 10 * 6)
    for task in (0, 1):
        state, kept, flops = after[task]
        net.load_state_dict(state)
        x = kept if buffer else sc.tasks[task].x_train  # 250 images < NORM_IMAGES: all of them
        assert flops == forward * len(x)  # the gather's passes are in train_flops
        if buffer:
            assert len(kept) == buffer
        assert_statistics(net, 0, naive_gathered_statistics(naive_layers(net, 0), x, 16))


def test_the_one_model_trainer_without_batchnorm_records_no_statistics_setting():
    from bitsub_torch.cl.rehearsal import RehearsalTrainer
    from bitsub_torch.cl.strategies import get_strategy
    from bitsub_torch.data.scenarios import get_scenario

    sc = get_scenario("splitdigits", tasks=2, seed=0)
    trainer = RehearsalTrainer(mlp(sc.input_shape, 4, 1, width=8), get_strategy("er", buffer=10),
                               sc, epochs=1, progress=False)
    assert "norm_statistics" not in trainer.config()


def test_the_trainer_refuses_a_batch_of_one_on_a_batchnorm_network():
    from bitsub_torch.cl.strategies import get_strategy
    from bitsub_torch.cl.trainer import Trainer
    from bitsub_torch.nn.models import mlp

    sc = split_digit_images(2)
    with pytest.raises(ValueError, match="give batch_size >= 2"):
        Trainer(small_cnn(), get_strategy("wsn"), sc, batch_size=1, epochs=1, progress=False)
    Trainer(mlp((1, 8, 8), 2, 2, width=8), get_strategy("wsn"), sc, batch_size=1, epochs=1,
            progress=False)  # without BatchNorm a batch of one trains
