"""Released caches and dropped gradients: the trainer's memory between phases changes no value.

`Trainer.release_memory` drops the decoded masks and values of the layers, their `TaskMemory` and
the quantizing strategies' `FieldStore` after ``before_task``, after each task and after each
re-test, and finished tasks keep no gradient. These tests compare, bit for bit, against runs and
decodes that keep everything (the caches are an optimisation, never a source of values).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from naive import naive_read_rule
from test_strategies import permuted_digits

from bitsub_torch.cl.strategies import WSN, TinySubNets
from bitsub_torch.cl.trainer import Trainer
from bitsub_torch.nn.models import mlp
from bitsub_torch.nn.taskmemory import TaskMemory

torch.set_num_threads(1)


def run(strategy, release: bool, tasks: int = 3):
    scenario = permuted_digits(tasks)
    torch.manual_seed(0)
    model = mlp((64,), 10, tasks, width=32)
    trainer = Trainer(model, strategy, scenario, epochs=1, batch_size=64, lr=1e-2,
                      progress=False)
    if not release:
        trainer.release_memory = lambda: None  # keep every cache, as before
    return model, strategy, trainer.run()


@pytest.mark.parametrize("make", [lambda: TinySubNets(0.5, post_prune_iters=2), lambda: WSN(0.5)],
                         ids=["tinysubnets", "wsn"])
def test_releasing_changes_no_result_and_leaves_nothing_decoded(make):
    kept_model, _, kept = run(make(), release=False)
    model, strategy, res = run(make(), release=True)
    np.testing.assert_array_equal(res.accuracy_matrix, kept.accuracy_matrix)
    # after the run: no gradient anywhere, and nothing decoded is held
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None for p in kept_model.parameters())  # the old behaviour
    for layer in model.masked_layers().values():
        assert layer.memory.cached_nbytes() == 0
        assert not layer._mask_cache and not layer._values_cache
    store = getattr(strategy, "store", None)
    if store is not None:
        assert not store._masks and not store._values and not store._unions
    assert sum(la.memory.cached_nbytes() for la in kept_model.masked_layers().values()) > 0
    # (state_dict seals a pending mask, which caches it: compared after the checks above)
    want = kept_model.state_dict()
    got = model.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():  # bit for bit: same dtype, shape and bytes
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def test_task_memory_released_at_any_point_decodes_the_same_bits():
    rng = np.random.default_rng(11)
    shape = (6, 9)
    memory, history, written = TaskMemory(shape), [], {}
    for t in range(8):
        bank = int(rng.integers(0, 2))
        mask = rng.random(shape) < 0.6
        free = ~written.get(bank, np.zeros(shape, bool))
        write = mask & (free | (rng.random(shape) < 0.3))
        bits = int(rng.integers(1, 4))
        codebook = rng.standard_normal(1 << bits).astype(np.float32)
        codes = rng.integers(0, 1 << bits, int(write.sum())).astype(np.uint8)
        memory.set_mask(t, mask)
        memory.release_caches()  # the pending (uncoded) mask is state: it stays
        np.testing.assert_array_equal(memory.mask(t), mask)
        memory.set_values(t, bank, write, codebook, codes, bits)
        written[bank] = written.get(bank, np.zeros(shape, bool)) | write
        history.append((bank, mask, write, codebook[codes]))
        for u in rng.permutation(t + 1):  # queries in any order, releases in between
            if rng.random() < 0.5:
                memory.release_caches()
                assert memory.cached_nbytes() == 0
            b, m, w, _ = history[u]
            np.testing.assert_array_equal(memory.mask(u), m)
            np.testing.assert_array_equal(memory.write(u), w)
            want = naive_read_rule([(h[0], h[2], h[3]) for h in history], int(u), shape)
            np.testing.assert_array_equal(memory.values(u), want)
    assert memory.cached_nbytes() > 0
    memory.release_caches()
    assert memory.cached_nbytes() == 0
    pending = rng.random(shape) < 0.5
    memory.set_mask(9, pending)
    memory.release_caches()
    np.testing.assert_array_equal(memory.mask(9), pending)
