"""Torch habits of the task networks and what finished tasks cost on the torch side.

Per-sample task labels against the one-task path, heads that grow, ``state_dict()`` alone
restoring a trained multi-task model (in a fresh process too), deepcopy / pickle / ``.to``,
scores only where a strategy uses them, and `TaskMemory` (coded masks, stored fields) against
the obvious dense bookkeeping in tests/naive.py.
"""

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from naive import naive_read_rule
from test_strategies import permuted_digits

from bitsub_torch.cl.strategies import WSN, PackNet, TinySubNets
from bitsub_torch.cl.trainer import Trainer
from bitsub_torch.nn.layers import TaskBatchNorm, TaskLinear
from bitsub_torch.nn.models import alexnet, mlp, resnet18
from bitsub_torch.nn.taskmemory import TaskMemory

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def trained(strategy, tasks=2, epochs=1):
    """A small model trained on permuted digits; the model is built for ONE task and grows."""
    scenario = permuted_digits(tasks)
    torch.manual_seed(0)
    model = mlp((64,), 10, 1, width=32)
    trainer = Trainer(model, strategy, scenario, epochs=epochs, batch_size=64, lr=1e-2,
                      progress=False)
    return model, trainer, trainer.run()


@pytest.fixture(scope="module")
def tsn():
    return trained(TinySubNets(0.5, post_prune_iters=2))


def test_per_sample_labels_equal_each_group_on_the_int_path():
    torch.manual_seed(1)
    model = mlp((64,), 10, 3, width=16)
    for t in (0, 2):  # task 1 reads the dense weight
        for layer in model.masked_layers().values():
            layer.set_task_mask(t, torch.rand(layer.weight.shape) < 0.5)
    x = torch.randn(40, 64)
    labels = torch.randint(0, 3, (40,))
    out = model(x, labels)
    for t in range(3):
        pick = labels == t
        assert torch.equal(out[pick], model(x[pick], t))
    out.sum().backward()  # gradients reach every head that had samples
    assert all(h.weight.grad is not None for h in model.heads)
    assert torch.equal(model(x, torch.tensor(2)), model(x, 2))  # a 0-d tensor is one task


@pytest.mark.parametrize("build", [
    lambda: alexnet((3, 32, 32), 5, 3, width=0.1),
    lambda: resnet18((3, 16, 16), 5, 3, width=4),
])
def test_per_sample_labels_with_batchnorm_in_training_mode(build):
    # BatchNorm's batch statistics come from each task's own samples, as in the int path.
    torch.manual_seed(2)
    model = build().train()
    x = torch.randn(12, *model.input_shape)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2])
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(7)  # dropout draws its masks group by group, in task order
    out = model(x, labels)
    torch.manual_seed(7)
    for t in range(3):
        model.load_state_dict(state)  # running statistics as before the mixed batch
        pick = labels == t
        torch.testing.assert_close(out[pick], model(x[pick], t), rtol=0, atol=1e-6)


def test_bad_task_labels_are_one_clear_error():
    model = mlp((8,), 3, 2, width=4)
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="integer"):
        model(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        model(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="grow"):
        model(x, torch.tensor([0, 1, 2, 0]))


def test_heads_norms_and_biases_grow_as_tasks_arrive():
    torch.manual_seed(3)
    model = alexnet((3, 32, 32), 4, 1, width=0.1)
    x = torch.randn(2, 3, 32, 32)
    before = model.eval()(x, 0)
    model.grow(3)
    assert model.num_tasks == 3 and len(model.heads) == 3
    assert all(bn.num_tasks == 3 and len(bn.norms) == 3 for bn in model.task_norms().values())
    assert model(x, torch.tensor([2, 0])).shape == (2, 4)
    assert torch.equal(model(x, 0), before)  # growing changes no existing task
    layer = TaskLinear(4, 2, 1, bias=True)
    layer.grow(2)
    assert len(layer.biases) == 2 and layer(torch.randn(3, 4), 1).shape == (3, 2)
    norm = TaskBatchNorm(2, 1, dims=1)
    norm.grow(3)
    assert len(norm.norms) == 3


def rows(trainer, model):
    return [trainer.evaluate(model, j, "test") for j in range(len(trainer.scenario.tasks))]


def test_state_dict_alone_restores_the_trained_model(tsn):
    model, trainer, res = tsn
    fresh = mlp((64,), 10, 1, width=32)  # built for one task, no strategy
    fresh.load_state_dict(model.state_dict())
    assert fresh.num_tasks == 2
    assert rows(trainer, fresh) == res.accuracy_matrix[-1].tolist()
    x = torch.from_numpy(trainer.scenario.tasks[1].x_test[:64])
    for t in range(2):
        assert torch.equal(fresh.eval()(x, t), model.eval()(x, t))


def test_state_dict_restores_in_a_fresh_process(tsn, tmp_path):
    model, trainer, res = tsn
    torch.save(model.state_dict(), tmp_path / "model.pt")
    code = f"""
import json, sys, torch
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
from test_strategies import permuted_digits
from bitsub_torch.nn.models import mlp
model = mlp((64,), 10, 1, width=32)
model.load_state_dict(torch.load({str(tmp_path / 'model.pt')!r}, weights_only=True))
model.eval()
out = []
for d in permuted_digits(2).tasks:
    with torch.no_grad():
        pred = model(torch.from_numpy(d.x_test), d.task_id).argmax(1).numpy()
    out.append(float((pred == d.y_test).mean()))
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == res.accuracy_matrix[-1].tolist()


def test_deepcopy_pickle_and_to_keep_every_task(tsn):
    model, trainer, _ = tsn
    x = torch.from_numpy(trainer.scenario.tasks[0].x_test[:32])
    labels = torch.arange(32) % 2
    model.eval()
    want = model(x, labels)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(other.eval()(x, labels), want)
    double = copy.deepcopy(model).to(torch.float64)
    torch.testing.assert_close(double(x.double(), labels).float(), want, rtol=1e-5, atol=1e-5)


def test_finished_tasks_cost_bits_not_float_copies(tsn):
    model, _, _ = tsn
    state = model.state_dict()
    assert not any(k.endswith((".masks", ".mask_set")) for k in state)
    for name, layer in model.masked_layers().items():
        n = layer.weight.numel()
        stored = [k for k in state if k.startswith(f"blocks.{name}.memory.")]
        assert stored and all(state[k].dtype in (torch.uint8, torch.int64, torch.float32)
                              for k in stored)
        # one float32 tensor per task only for its codebook (<= 2**8 centroids)
        assert all(state[k].numel() <= 256 for k in stored if state[k].dtype == torch.float32)
        coded = sum(state[k].numel() * state[k].element_size() for k in stored)
        # Two tasks in fewer bytes than one float32 copy (two copies would be 8 n bytes): a
        # bank holds one field per position, so the codes of both tasks take at most n bytes
        # at <= 8 bits, the masks at most 2 n / 8, the codebooks at most 2 x 256 x 4 bytes.
        assert coded <= n + 2 * n / 8 + 2 * 256 * 4 < n * 4


def test_scores_exist_only_where_a_strategy_learns_masks():
    packnet, _, _ = trained(PackNet(0.5, retrain_epochs=0), tasks=1)
    assert not any(k.endswith("scores") for k in packnet.state_dict())
    assert packnet.score_parameters() == []
    wsn, _, _ = trained(WSN(0.5), tasks=1)
    assert sum(k.endswith("scores") for k in wsn.state_dict()) == 2


def test_lazy_scores_are_the_scores_drawn_at_construction():
    torch.manual_seed(4)
    layer = TaskLinear(7, 5, 2)
    after = torch.rand(3)  # the random stream moved on as if the scores had been drawn
    torch.manual_seed(4)
    weight = torch.empty(5, 7)
    torch.nn.init.kaiming_uniform_(weight, a=5 ** 0.5)
    scores = torch.empty(5, 7)
    torch.nn.init.kaiming_uniform_(scores, a=5 ** 0.5)
    assert torch.equal(layer.weight.detach(), weight)
    assert torch.equal(layer.enable_scores().detach(), scores)
    assert torch.equal(torch.rand(3), after)


def test_a_checkpoint_with_bool_masks_still_loads():
    layer = TaskLinear(6, 4, 3)
    masks = torch.rand(3, 4, 6) < 0.5
    legacy = {"weight": layer.weight.detach().clone(), "owner": layer.owner.clone(),
              "masks": masks, "mask_set": torch.tensor([True, False, True])}
    layer.load_state_dict(legacy)
    assert torch.equal(layer.task_mask(0), masks[0]) and torch.equal(layer.task_mask(2), masks[2])
    assert not layer.has_task_mask(1)


def test_task_memory_masks_against_a_dict_of_bool_masks():
    rng = np.random.default_rng(5)
    shape = (9, 13)
    memory, naive = TaskMemory(shape), {}
    for step in range(40):
        t = int(rng.integers(0, 6))
        if rng.random() < 0.2:
            memory.clear_mask(t)
            naive.pop(t, None)
        else:  # overlapping masks, so that contexts are used and then released
            base = naive.get(t - 1, rng.random(shape) < 0.5)
            mask = base ^ (rng.random(shape) < rng.choice([0.0, 0.05, 0.5]))
            memory.set_mask(t, mask)
            naive[t] = mask
        if step % 3 == 0:
            memory.seal()
        assert memory.tasks() == sorted(naive)
        for u, m in naive.items():
            np.testing.assert_array_equal(memory.mask(u), m)
    fresh = TaskMemory(shape)
    fresh.load_state_dict(memory.state_dict())
    for u, m in naive.items():
        np.testing.assert_array_equal(fresh.mask(u), m)


def test_task_memory_values_follow_the_read_rule():
    rng = np.random.default_rng(6)
    shape = (5, 8)
    memory, history = TaskMemory(shape), []
    written = {}
    for t in range(7):
        bank = int(rng.integers(0, 2))
        mask = rng.random(shape) < 0.6
        free = ~written.get(bank, np.zeros(shape, bool))
        write = mask & (free | (rng.random(shape) < 0.3))  # some positions written again
        if t == 2:
            write[:] = False  # a task that only reuses its bank's fields
        bits = int(rng.integers(1, 4))
        codebook = rng.standard_normal(1 << bits).astype(np.float32)
        codes = rng.integers(0, 1 << bits, int(write.sum())).astype(np.uint8)
        memory.set_mask(t, mask)
        memory.set_values(t, bank, write, codebook, codes, bits)
        written[bank] = written.get(bank, np.zeros(shape, bool)) | write
        history.append((bank, write, codebook[codes]))
    fresh = TaskMemory(shape)
    fresh.load_state_dict(memory.state_dict())
    for t in reversed(range(7)):  # out of order: the caches rebuild from scratch
        want = naive_read_rule(history, t, shape)
        for m in (memory, fresh):
            np.testing.assert_array_equal(m.values(t), want)
            np.testing.assert_array_equal(m.write(t), history[t][1])
    with pytest.raises(ValueError, match="fixed"):
        memory.set_mask(3, np.ones(shape, bool))
