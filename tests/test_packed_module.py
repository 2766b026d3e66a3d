import numpy as np
import pytest
import torch

import bitsub
from bitsub.kernels.matmul import matmul as packed_matmul
from bitsub_torch.cl.strategies import WSN, Strategy
from bitsub_torch.export import export
from bitsub_torch.nn.models import alexnet, mlp
from bitsub_torch.nn.packed_module import PackedModule, _col2im

torch.set_num_threads(1)


def masked_model(net, n_tasks, seed=0, density=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for norm in net.task_norms().values():
            for bn in norm.norms:
                bn.running_mean.uniform_(-0.2, 0.2, generator=g)
                bn.running_var.uniform_(0.5, 1.5, generator=g)
        for t in range(n_tasks):
            for layer in net.masked_layers().values():
                mask = torch.rand(layer.weight.shape, generator=g) < density
                layer.set_task_mask(t, mask)
                layer.consolidate(t, mask)
    return net.eval()


def logits_and_grad(module, x, task):
    x = x.clone().requires_grad_(True)
    y = module(x, task)
    # a fixed, non-trivial function of the logits
    w = torch.linspace(-1, 1, y.shape[1], dtype=y.dtype)
    (y * w).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("bits", [None, 3])
def test_mlp_forward_and_input_grad_match_torch(bits):
    net = masked_model(mlp((20,), 3, 3, width=12), 3)
    pm = export(net, WSN(0.5), bits=bits)
    pmod = PackedModule(pm)
    assert list(pmod.parameters()) == []
    x = torch.randn(9, 20, generator=torch.Generator().manual_seed(1))
    for t in range(3):
        y, g = logits_and_grad(pmod, x, t)
        if bits is None:
            y_ref, g_ref = logits_and_grad(net, x, t)
        else:
            # the reference: the same network computed with the file's (quantized) weights
            with torch.no_grad():
                for name, layer in net.masked_layers().items():
                    layer.weight.copy_(torch.from_numpy(pm.weights(t, name)))
            y_ref, g_ref = logits_and_grad(net, x, t)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_conv_network_forward_and_input_grad_match_torch():
    net = masked_model(alexnet((3, 32, 32), 4, 2, width=0.1), 2)
    pmod = PackedModule(export(net, WSN(0.5)))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for t in range(2):
        y, g = logits_and_grad(pmod, x, t)
        y_ref, g_ref = logits_and_grad(net, x, t)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def _tiny_packed(kind, seed=0):
    """Two tasks over one layer: task 1 reuses part of task 0's fields and writes 3-bit codes."""
    rng = np.random.default_rng(seed)
    shape = (5, 7) if kind == "linear" else (4, 3, 3, 3)
    pm = bitsub.PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("w", shape)
    m0 = rng.random(shape) < 0.6
    pm.add_task({"w": bitsub.TaskLayer(m0, m0, values=rng.standard_normal(shape), bits=4)},
                private={"b": rng.standard_normal(shape[0]).astype(np.float32),
                         "head": rng.standard_normal((2, 5 if kind == "linear" else 4 * 9))
                         .astype(np.float32)})
    m1 = (rng.random(shape) < 0.5) & m0 | (~m0 & (rng.random(shape) < 0.5))
    w1 = m1 & ~m0
    pm.add_task({"w": bitsub.TaskLayer(m1, w1, values=rng.standard_normal(shape), bits=3)},
                private=pm.private(0))
    if kind == "linear":
        steps = [{"op": "linear", "layer": "w", "bias": "b"}]
    else:
        steps = [{"op": "conv2d", "layer": "w", "stride": 2, "padding": 1, "bias": "b"},
                 {"op": "flatten"}]
    pm.set_network(steps + [{"op": "head", "weight": "head", "bias": None}])
    return pm


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_gradcheck(kind):
    pm = _tiny_packed(kind)
    pmod = PackedModule(pm)
    shape = (3, 7) if kind == "linear" else (2, 3, 6, 6)
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for t in range(2):
        # the kernels compute in float32: finite differences with a large step (the map is
        # linear, so the step costs no accuracy) at float32 tolerance
        assert torch.autograd.gradcheck(lambda x, t=t: pmod(x, t), (x.requires_grad_(True),),
                                        eps=1e-2, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_forward_equals_dense_reference(kind):
    pm = _tiny_packed(kind, seed=5)
    pmod = PackedModule(pm)
    shape = (4, 7) if kind == "linear" else (2, 3, 6, 6)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    for t in range(2):
        w = torch.from_numpy(pm.weights(t, "w"))
        b = torch.tensor(pm.private(t)["b"])
        if kind == "linear":
            h = torch.nn.functional.linear(x, w, b)
        else:
            h = torch.nn.functional.conv2d(x, w, b, stride=2, padding=1).flatten(1)
        ref = h @ torch.tensor(pm.private(t)["head"]).T
        torch.testing.assert_close(pmod(x, t), ref, rtol=1e-5, atol=1e-5)
        # float64 in, float64 out
        assert pmod(x.double(), t).dtype == torch.float64


def test_col2im_is_adjoint_of_im2col():
    rng = np.random.default_rng(0)
    for (n, c, h, w, kh, kw, s, p) in [(2, 3, 6, 6, 3, 3, 2, 1), (1, 2, 5, 7, 2, 3, 1, 0),
                                        (1, 1, 4, 4, 4, 4, 1, 2)]:
        x = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))
        cols = torch.nn.functional.unfold(x, (kh, kw), padding=p, stride=s)  # (n, c*kh*kw, L)
        oh = (h + 2 * p - kh) // s + 1
        ow = (w + 2 * p - kw) // s + 1
        g = rng.standard_normal((n * oh * ow, c * kh * kw)).astype(np.float32)
        # <im2col(x), g> == <x, col2im(g)>
        lhs = float((cols.permute(0, 2, 1).reshape(-1, c * kh * kw).numpy() * g).sum())
        rhs = float((x.numpy() * _col2im(g, (n, c, h, w), kh, kw, s, p, oh, ow)).sum())
        assert lhs == pytest.approx(rhs, rel=1e-4, abs=1e-4)


def test_plan_cache_and_transposed_plan():
    pm = _tiny_packed("linear")
    pmod = PackedModule(pm)
    p = pmod.plan(1, "w")
    assert pmod.plan(1, "w") is p
    assert p is pm.plan(1, "w")  # the forward plan is the packed model's own
    pt = pmod.plan(1, "w", transposed=True)
    assert pt.shape == (7, 5) and pmod.plan(1, "w", transposed=True) is pt
    np.testing.assert_array_equal(
        packed_matmul(pt, np.eye(5, dtype=np.float32)), pm.weights(1, "w")  # I @ W = W
    )
    pmod.clear_cache()
    assert pmod.plan(1, "w", transposed=True) is not pt


def test_errors():
    pm = _tiny_packed("linear")
    pmod = PackedModule(pm)
    with pytest.raises(ValueError, match="task"):
        pmod(torch.zeros(1, 7), 2)
    with pytest.raises(TypeError, match="task"):
        pmod(torch.zeros(1, 7), 0.0)
    with pytest.raises(TypeError, match="float32"):
        pmod(torch.zeros(1, 7, dtype=torch.int64), 0)
    with pytest.raises(TypeError, match="PackedModel"):
        PackedModule(42)
    empty = bitsub.PackedModel()
    empty.add_layer("w", (2, 2))
    with pytest.raises(ValueError, match="network"):
        PackedModule(empty)
    pm.set_network([{"op": "linear", "layer": "w", "bias": "missing"}])
    with pytest.raises(KeyError, match="missing"):
        PackedModule(pm)(torch.zeros(1, 7), 0)


def test_from_file(tmp_path):
    net = masked_model(mlp((12,), 2, 2, width=6), 2)
    pm = export(net, Strategy())
    pm.save(tmp_path / "m.h5")
    pmod = PackedModule(tmp_path / "m.h5")
    x = torch.randn(4, 12)
    for t in range(2):
        with torch.no_grad():
            torch.testing.assert_close(pmod(x, t), net(x, t), rtol=1e-5, atol=1e-5)
