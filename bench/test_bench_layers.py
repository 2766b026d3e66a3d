"""Training-step time of TaskLinear / TaskConv2d beside plain nn.Linear / nn.Conv2d (same run).

One step = zero_grad, forward, loss, backward, Adam step (fused, as the trainer uses; the
foreach Adam slows down ~3x on the exact zeros that masked positions leave in its moments).
The task layers run as a later task reads them: a fixed mask, half the positions owned by an
earlier task and frozen (gradient zeroed after backward, values restored after the step). The
``wsn-scores`` rows train through the straight-through top-k mask (WSN's training mode), which
selects the top half of the scores every step (`bitsub_torch.nn.autograd.topk_masked_weight`: exact
selection by counting passes from the last step's threshold, mask and masked weight in one pass)
and trains the scores with Adam too, so they carry a second parameter's optimizer step.
Shapes: p-MNIST's fc1 (784 -> 100, batch 128) and reduced AlexNet's conv2 (64 -> 128, 3x3, on
14x14 maps, batch 64). Timer: the thread's CPU time (one torch thread), because the machines
this runs on are shared and wall time measures the neighbours.
Run: ``pytest bench/test_bench_layers.py --benchmark-only``.
"""

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsub_torch.nn.layers import TaskConv2d, TaskLinear

torch.set_num_threads(1)

CASES = {
    "linear-784x100-b128": (
        lambda: nn.Linear(784, 100, bias=False),
        lambda: TaskLinear(784, 100, 2),
        (128, 784),
    ),
    "conv-64x128k3-14x14-b64": (
        lambda: nn.Conv2d(64, 128, 3, bias=False),
        lambda: TaskConv2d(64, 128, 3, 2),
        (64, 64, 14, 14),
    ),
}


def _plain_step(layer, x, target):
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        F.mse_loss(layer(x), target).backward()
        opt.step()

    return step


def _task_step(layer, x, target, mode):
    gen = torch.Generator().manual_seed(1)
    owned = torch.rand(layer.weight.shape, generator=gen) < 0.5
    layer.consolidate(0, owned)
    params = [layer.weight]
    if mode == "wsn-scores":
        layer.start_scores(1, 0.5)
        params.append(layer.scores)
    else:
        layer.set_task_mask(1, owned | (torch.rand(layer.weight.shape, generator=gen) < 0.5))
    layer.freeze_owned()
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        F.mse_loss(layer(x, 1), target).backward()
        layer.zero_owned_grads()
        opt.step()
        layer.restore_owned()

    return step


@pytest.mark.benchmark(timer=time.thread_time)
@pytest.mark.parametrize("mode", ["plain", "task-mask", "wsn-scores"])
@pytest.mark.parametrize("case", list(CASES))
def test_training_step(benchmark, case, mode):
    make_plain, make_task, shape = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(*shape)
    if mode == "plain":
        layer = make_plain()
        step = _plain_step(layer, x, torch.zeros_like(layer(x)))
    else:
        layer = make_task()
        step = _task_step(layer, x, torch.zeros_like(layer(x, 1)), mode)
    benchmark.group = case
    for _ in range(5):  # warm up allocator and kernels
        step()
    benchmark(step)
