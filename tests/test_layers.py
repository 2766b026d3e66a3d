"""Task layers, straight-through functions and the papers' networks (bitsub_torch.nn)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import naive_conv2d, naive_quantize, naive_run_steps, naive_topk_mask

from bitsub_torch.cl.strategies import WSN
from bitsub_torch.nn.autograd import (
    quantize_ste,
    topk_count,
    topk_mask,
    topk_mask_bool,
    topk_masked_weight,
)
from bitsub_torch.nn.layers import TaskBatchNorm, TaskConv2d, TaskLinear
from bitsub_torch.nn.models import (
    SCENARIO_NETWORKS,
    alexnet,
    build,
    default_network,
    mlp,
    resnet18,
    tinynet,
)

torch.set_num_threads(1)

densities = st.floats(min_value=1e-3, max_value=1.0, exclude_min=False)


# ------------------------------------------------------------------ top-k mask


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    density=densities,
    seed=st.integers(0, 2**16),
)
def test_topk_mask_matches_naive(shape, density, seed):
    scores = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    k = topk_count(scores.numel(), density)
    got = topk_mask_bool(scores, density).numpy()
    assert got.shape == tuple(shape)
    assert got.sum() == k == max(1, min(scores.numel(), round(density * scores.numel())))
    # random normal scores have distinct magnitudes, so the top-k set is unique
    np.testing.assert_array_equal(got, naive_topk_mask(scores.numpy(), k))
    st_mask = topk_mask(scores, density)
    assert st_mask.dtype == scores.dtype
    np.testing.assert_array_equal(st_mask.numpy().astype(bool), got)


@pytest.mark.parametrize("fill", [0.0, 1.0, -2.0])
def test_topk_mask_with_ties_keeps_exactly_k(fill):
    scores = torch.full((5, 6), fill)
    mask = topk_mask_bool(scores, 0.3)
    assert int(mask.sum()) == 9
    np.testing.assert_array_equal(mask.numpy(), naive_topk_mask(scores.numpy(), 9))


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, -1.0, 1.0, 2.0, -0.5]), min_size=1, max_size=30),
    density=densities,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_topk_mask_ties_match_naive(values, density, dtype):
    """Few distinct values: ties are broken by position, lowest index first (also torch path)."""
    scores = torch.tensor(values, dtype=dtype)
    k = topk_count(len(values), density)
    got = topk_mask_bool(scores, density).numpy()
    np.testing.assert_array_equal(got, naive_topk_mask(np.array(values), k))


def test_topk_mask_edges():
    s = torch.randn(1)
    assert topk_mask_bool(s, 0.01).tolist() == [True]
    assert topk_mask_bool(torch.randn(4, 4), 1.0).all()
    assert topk_mask_bool(torch.empty(0), 0.5).numel() == 0


def test_topk_mask_is_straight_through():
    scores = torch.randn(6, 5, requires_grad=True)
    g = torch.randn(6, 5)
    (topk_mask(scores, 0.4) * g).sum().backward()
    torch.testing.assert_close(scores.grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_topk_rejects_bad_density(density):
    with pytest.raises(ValueError, match="density"):
        topk_mask(torch.randn(3), density)


def test_topk_rejects_bad_types():
    with pytest.raises(TypeError):
        topk_mask(np.ones(3), 0.5)
    with pytest.raises(TypeError):
        topk_mask(torch.ones(3), "0.5")


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, -3.0, float("nan"), float("inf")]),
        min_size=1,
        max_size=40,
    ),
    density=densities,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_topk_masked_weight_is_the_composition_bit_for_bit(values, density, dtype, seed):
    """The fused CPU path gives the bits of ``weight * topk_mask(scores)`` and of its gradients
    (ties, signed zeros, NaN and inf scores or weights, density 1, the non-fused dtypes)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(values)
    scores = torch.tensor(values, dtype=dtype)
    weight = torch.randn(n, generator=gen).to(dtype)
    weight[torch.rand(n, generator=gen) < 0.2] = -0.0
    grad = torch.randn(n, generator=gen).to(dtype)
    w1, s1 = weight.clone().requires_grad_(True), scores.clone().requires_grad_(True)
    w2, s2 = weight.clone().requires_grad_(True), scores.clone().requires_grad_(True)
    got = topk_masked_weight(w1, s1, density)
    want = w2 * topk_mask(s2, density)
    itype = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}
    bits = itype[dtype]
    assert torch.equal(got.detach().view(bits), want.detach().view(bits))
    got.backward(grad)
    want.backward(grad)
    assert torch.equal(w1.grad.view(bits), w2.grad.view(bits))
    assert torch.equal(s1.grad.view(bits), s2.grad.view(bits))


@pytest.mark.parametrize("shape", [(100, 784), (7, 3, 3, 3), (1,), (0, 4)])
@pytest.mark.parametrize("density", [0.5, 0.1, 1.0])
def test_topk_masked_weight_matches_naive_on_layer_shapes(shape, density):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(shape, generator=gen)
    scores = torch.randn(shape, generator=gen, dtype=torch.float64)
    got = topk_masked_weight(weight.double(), scores, density)
    k = topk_count(scores.numel(), density)
    mask = naive_topk_mask(scores.numpy(), k)
    np.testing.assert_array_equal(got.numpy(), weight.double().numpy() * mask)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 600),
    density=densities,
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e30]),
    guess=st.sampled_from([float("nan"), 0.0, -1.0, 1e-40, 0.5, 1e38, float("inf")]),
    dens=st.sampled_from([0.0, 1.0, 1e12]),
    drift=st.sampled_from([0.0, -1.0, 1e-3]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_topk_masked_weight_exact_from_any_state(
    n, density, scale, guess, dens, drift, dtype, seed
):
    """The selection that starts from the kept state is exact whatever the state says."""
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype)
    scores[torch.rand(n, generator=gen) < 0.1] = 0.0  # ties at zero
    weight = torch.randn(n, generator=gen, dtype=dtype)
    k = topk_count(n, density)
    state = [guess, dens, drift]
    got = topk_masked_weight(weight, scores, density, state)
    want = weight.numpy() * naive_topk_mask(scores.numpy(), k)
    np.testing.assert_array_equal(got.numpy(), want)
    assert len(state) == 3


def test_score_mode_mask_is_the_topk_at_every_step():
    """Training in score mode: every step's forward uses exactly the top-k of the current scores
    (the layer keeps the last threshold as the next selection's start)."""
    torch.manual_seed(0)
    layer = TaskLinear(50, 20, 2)
    layer.start_scores(1, 0.3)
    opt = torch.optim.Adam([layer.weight, layer.scores], lr=0.05)
    x = torch.randn(8, 50)
    k = topk_count(1000, 0.3)
    for _ in range(15):
        mask = torch.from_numpy(naive_topk_mask(layer.scores.detach().numpy(), k))
        want = F.linear(x, layer.weight.detach() * mask)
        opt.zero_grad()
        y = layer(x, 1)
        torch.testing.assert_close(y.detach(), want, rtol=0, atol=0)
        y.pow(2).mean().backward()
        opt.step()


def test_topk_masked_weight_refuses_double_backward():
    w = torch.randn(4, 5, requires_grad=True)
    s = torch.randn(4, 5, requires_grad=True)
    (g,) = torch.autograd.grad(topk_masked_weight(w, s, 0.5).pow(2).sum(), s, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_topk_masked_weight_validates():
    with pytest.raises(TypeError, match="weight"):
        topk_masked_weight(np.ones(3), torch.ones(3), 0.5)
    with pytest.raises(TypeError, match="scores"):
        topk_masked_weight(torch.ones(3), torch.ones(3, dtype=torch.int32), 0.5)
    with pytest.raises(ValueError, match="shape"):
        topk_masked_weight(torch.ones(3), torch.ones(4), 0.5)
    with pytest.raises(ValueError, match="density"):
        topk_masked_weight(torch.ones(3), torch.ones(3), 0.0)
    with pytest.raises(TypeError, match="state"):
        topk_masked_weight(torch.ones(3), torch.ones(3), 0.5, [0.0, 1.0])


# ------------------------------------------------------------------ quantization


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_quantize_ste_matches_naive(n, bits, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    cb = rng.standard_normal(2**bits).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    q = quantize_ste(xt, torch.from_numpy(cb))
    np.testing.assert_array_equal(q.detach().numpy(), naive_quantize(x, cb).astype(np.float32))
    g = torch.randn(n)
    (q * g).sum().backward()
    torch.testing.assert_close(xt.grad, g, rtol=0, atol=0)


def test_quantize_ste_tie_goes_low_and_single_centroid():
    x = torch.tensor([0.5, -1.0, 3.0])
    assert quantize_ste(x, torch.tensor([1.0, 0.0])).tolist() == [0.0, 0.0, 1.0]
    assert quantize_ste(x, torch.tensor([2.0])).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="codebook"):
        quantize_ste(x, torch.tensor([]))


# ------------------------------------------------------------------ TaskLinear / TaskConv2d


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 5),
    fin=st.integers(1, 9),
    fout=st.integers(1, 9),
    p=st.floats(0.0, 1.0),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_task_linear_matches_dense_masked(n, fin, fout, p, bias, seed):
    torch.manual_seed(seed)
    layer = TaskLinear(fin, fout, 3, bias=bias)
    rng = np.random.default_rng(seed)
    mask = rng.random((fout, fin)) < p
    layer.set_task_mask(1, torch.from_numpy(mask))
    if bias:
        with torch.no_grad():
            layer.biases[1].copy_(torch.randn(fout))
    x = rng.standard_normal((n, fin)).astype(np.float32)
    got = layer(torch.from_numpy(x), 1).detach().numpy()
    w = layer.weight.detach().numpy().astype(np.float64) * mask
    want = x @ w.T + (layer.biases[1].detach().numpy() if bias else 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a task without a mask reads the dense weight
    dense = layer(torch.from_numpy(x), 0).detach().numpy()
    np.testing.assert_allclose(dense, x @ layer.weight.detach().numpy().T, rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_task_conv2d_matches_naive(k, stride, padding, cin, cout, seed):
    torch.manual_seed(seed)
    layer = TaskConv2d(cin, cout, k, 2, stride=stride, padding=padding)
    rng = np.random.default_rng(seed)
    mask = rng.random(tuple(layer.weight.shape)) < 0.5
    layer.set_task_mask(0, torch.from_numpy(mask))
    x = rng.standard_normal((2, cin, 5, 6)).astype(np.float32)
    got = layer(torch.from_numpy(x), 0).detach().numpy()
    want = naive_conv2d(x, layer.weight.detach().numpy() * mask, stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_score_mode_uses_topk_and_trains_scores():
    torch.manual_seed(0)
    layer = TaskLinear(6, 4, 2)
    layer.start_scores(1, 0.25)
    x = torch.randn(3, 6)
    y = layer(x, 1)
    mask = topk_mask_bool(layer.scores, 0.25)
    torch.testing.assert_close(y, F.linear(x, layer.weight * mask))
    y.sum().backward()
    assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0
    # only kept positions get a weight gradient
    assert torch.all(layer.weight.grad[~mask] == 0)
    # other tasks are unaffected by score mode
    torch.testing.assert_close(layer(x, 0), F.linear(x, layer.weight))
    layer.stop_scores()
    torch.testing.assert_close(layer(x, 1), F.linear(x, layer.weight))


def test_consolidate_owns_only_free_positions():
    layer = TaskLinear(3, 2, 3)
    m0 = torch.tensor([[True, False, True], [False, False, False]])
    m1 = torch.tensor([[True, True, False], [False, False, True]])
    assert layer.consolidate(0, m0) == 2
    assert layer.consolidate(1, m1) == 2
    assert layer.owner.tolist() == [[0, 1, 0], [-1, -1, 1]]


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
    ],
    ids=["adam-l2", "adamw", "sgd-momentum"],
)
def test_owned_positions_bit_identical_under_any_optimizer(make_opt):
    torch.manual_seed(0)
    layer = TaskConv2d(2, 3, 3, 2, padding=1)
    owned = torch.rand(layer.weight.shape) < 0.5
    layer.consolidate(0, owned)
    opt = make_opt([layer.weight])
    # stale optimizer state from "task 0" (momentum, Adam moments) must not move owned weights
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(4, 2, 5, 5), 0).pow(2).sum().backward()
        opt.step()
    layer.freeze_owned()
    before = layer.weight.detach().clone()
    for _ in range(10):
        opt.zero_grad()
        layer(torch.randn(4, 2, 5, 5), 1).pow(2).sum().backward()
        layer.zero_owned_grads()
        assert torch.all(layer.weight.grad[owned] == 0)
        opt.step()
        layer.restore_owned()
    after = layer.weight.detach()
    assert torch.equal(after[owned].view(torch.int32), before[owned].view(torch.int32))
    assert not torch.equal(after[~owned], before[~owned])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_restore_is_bit_exact_for_any_value(dtype):
    layer = TaskLinear(5, 4, 2).to(dtype)
    owned = torch.rand(4, 5) < 0.5
    owned[0, 0], owned[0, 1], owned[1, 1] = True, False, True
    with torch.no_grad():
        layer.weight[0, 0] = -0.0
        layer.weight[1, 1] = float("nan")
    layer.consolidate(0, owned)
    layer.freeze_owned()
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight[owned] = float("inf")
        layer.weight[0, 1] = float("nan")
        layer.weight.grad = torch.full_like(layer.weight, float("nan"))
    layer.zero_owned_grads()
    assert torch.all(layer.weight.grad[owned] == 0)
    layer.restore_owned()
    itype = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}
    got = layer.weight.detach()[owned].view(itype[dtype])
    assert torch.equal(got, before[owned].view(itype[dtype]))


def test_mask_cache_follows_mask_changes_and_state_loads():
    torch.manual_seed(0)
    layer = TaskLinear(4, 3, 2)
    x = torch.randn(2, 4)
    m1 = torch.rand(3, 4) < 0.5
    layer.set_task_mask(1, m1)
    torch.testing.assert_close(layer(x, 1), F.linear(x, layer.weight * m1))
    m2 = ~m1
    layer.set_task_mask(1, m2)
    torch.testing.assert_close(layer(x, 1), F.linear(x, layer.weight * m2))
    other = TaskLinear(4, 3, 2)
    other.set_task_mask(1, m1)
    other(x, 1)  # fills its cache with m1
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x, 1), layer(x, 1))
    layer.double()
    torch.testing.assert_close(layer(x.double(), 1), F.linear(x.double(), layer.weight * m2))


def test_set_task_mask_validates():
    layer = TaskLinear(3, 2, 2)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        layer.set_task_mask(0, torch.ones(2, 3))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        layer.set_task_mask(0, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="task must be in 0..1"):
        layer.set_task_mask(2, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="task must be an int"):
        layer(torch.randn(1, 3), 0.0)
    with pytest.raises(ValueError, match="in_features"):
        TaskLinear(0, 2, 1)
    assert not layer.has_task_mask(0)
    assert layer.task_mask(0).all()


def test_task_batchnorm_is_private_per_task():
    bn = TaskBatchNorm(3, 2)
    bn.train()
    bn(torch.randn(8, 3, 4, 4) * 5 + 2, 1)
    assert torch.equal(bn.norms[0].running_mean, torch.zeros(3))
    assert not torch.equal(bn.norms[1].running_mean, torch.zeros(3))
    with pytest.raises(ValueError, match="task"):
        bn(torch.randn(2, 3, 4, 4), 2)


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: mlp((784,), 10, 3), (784,)),
        (lambda: mlp((1, 8, 8), 4, 3, width=7, depth=3), (1, 8, 8)),
        (lambda: alexnet((3, 32, 32), 5, 3, width=0.1), (3, 32, 32)),
        (lambda: tinynet((3, 16, 16), 5, 3, width=0.1), (3, 16, 16)),
        (lambda: resnet18((3, 16, 16), 5, 3, width=4), (3, 16, 16)),
    ],
    ids=["mlp", "mlp-3d", "alexnet", "tinynet", "resnet18"],
)
def test_networks_forward_backward(build, shape):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(3, *shape)
    y = model(x, 2)
    assert y.shape == (3, model.num_classes)
    y.sum().backward()
    layers = model.masked_layers()
    assert layers and all(layer.weight.grad is not None for layer in layers.values())
    assert model.heads[2].weight.grad is not None and model.heads[0].weight.grad is None


def test_mlp_is_the_papers_784_100_100_without_bias():
    model = mlp()
    assert list(model.masked_layers()) == ["fc1", "fc2"]
    shapes = [tuple(v.weight.shape) for v in model.masked_layers().values()]
    assert shapes == [(100, 784), (100, 100)]
    assert all(v.biases is None for v in model.masked_layers().values())
    assert all(h.bias is None for h in model.heads)
    assert len(model.heads) == 10


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: mlp((12,), 4, 2, width=9), (12,)),
        (lambda: alexnet((3, 24, 24), 4, 2, width=0.05), (3, 24, 24)),
        (lambda: tinynet((2, 8, 8), 4, 2, width=0.05), (2, 8, 8)),
    ],
    ids=["mlp", "alexnet", "tinynet"],
)
def test_network_steps_reproduce_forward(build, shape):
    """A naive interpreter of network_steps + private_params + masked weights = model.eval()."""
    torch.manual_seed(0)
    model = build()
    strategy = WSN(0.5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    # give task 1 trained-looking norms, a mask and ownership
    model.train()
    model(torch.from_numpy(x), 1)
    for layer in model.masked_layers().values():
        layer.set_task_mask(1, torch.from_numpy(rng.random(tuple(layer.weight.shape)) < 0.6))
        layer.consolidate(1)
    model.eval()
    steps = model.network_steps(1)
    private = model.private_params(1)
    named = {
        k
        for s in steps
        for key, k in s.items()
        if key in ("bias", "mean", "var", "weight") and isinstance(k, str)
    }
    assert named == set(private)
    assert all(v.dtype == np.float32 for v in private.values())
    layers = strategy.export_layers(model, 1)
    weights = {n: d["values"].astype(np.float64) * d["mask"] for n, d in layers.items()}
    want = naive_run_steps(steps, weights, private, x)
    with torch.no_grad():
        got = model(torch.from_numpy(x), 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resnet18_has_no_steps_but_private_params():
    model = resnet18((3, 16, 16), 5, 2, width=4)
    with pytest.raises(NotImplementedError, match="skip"):
        model.network_steps(0)
    assert "head.weight" in model.private_params(0)
    assert "layer1_0.conv1" in model.masked_layers()


@pytest.mark.parametrize(
    "call",
    [
        lambda: alexnet((3, 4, 4)),
        lambda: alexnet((784,)),
        lambda: mlp((), 10, 2),
        lambda: tinynet((3, 16, 16), width=0),
        lambda: mlp(num_tasks=0),
    ],
)
def test_network_constructors_validate(call):
    with pytest.raises((ValueError, TypeError)):
        call()


def test_build_is_the_factory_with_the_scenarios_shapes():
    sc = SimpleNamespace(input_shape=(1, 28, 28), num_classes=2, tasks=[0, 1, 2])
    net = build("alexnet", sc, 0.25)
    torch.manual_seed(0)
    ref = alexnet((1, 28, 28), 2, 3, width=0.25)
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()}
    assert net.num_tasks == 3
    flat = SimpleNamespace(input_shape=(64,), num_classes=10, tasks=[0])
    assert build("mlp", flat, 32).blocks.fc1.weight.shape == (32, 64)
    with pytest.raises(ValueError, match="whole number of units"):
        build("mlp", flat, 0.5)
    with pytest.raises(ValueError, match="model must be one of mlp, alexnet, tinynet, resnet18"):
        build("vgg", flat)
    # the one-model runs: one head over every class of the stream
    one = build("alexnet", sc, 0.25, num_classes=6, num_tasks=1)
    assert one.num_tasks == 1 and len(one.heads) == 1 and one.heads[0].weight.shape[0] == 6


def test_default_network_is_the_scenarios_then_the_input_shapes():
    assert SCENARIO_NETWORKS == {"splitfmnist2d": ("alexnet", 0.25)}
    image = (1, 28, 28)
    assert default_network("splitfmnist2d", image) == ("alexnet", 0.25)
    assert default_network("splitfmnist2d", image, "alexnet") == ("alexnet", 0.25)
    assert default_network("splitfmnist2d", image, None, 1.0) == ("alexnet", 1.0)
    assert default_network("splitfmnist2d", image, "alexnet", 0.5) == ("alexnet", 0.5)
    assert default_network("splitfmnist2d", image, "tinynet") == ("tinynet", None)
    assert default_network("pmnist5k", (784,)) == ("mlp", None)
    assert default_network("pmnist5k", (784,), None, 50) == ("mlp", 50)
    assert default_network("scifar100", (3, 32, 32)) == ("alexnet", None)
    assert default_network("tinyimagenet", (3, 64, 64)) == ("tinynet", None)
    assert default_network("tinyimagenet", (3, 64, 64), "alexnet") == ("alexnet", None)
