import numpy as np
import pytest
import torch

import bitsub
from bitsub_torch.cl.strategies import WSN, Finetune, PackNet, Strategy
from bitsub_torch.export import export, packed_accuracy, packed_predictions
from bitsub_torch.nn.models import alexnet, mlp

torch.set_num_threads(1)


def masked_model(net, n_tasks, seed=0, density=0.5):
    """A model in the state WSN/PackNet leave it in: per-task masks, consolidated ownership."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for t in range(n_tasks):
            for layer in net.masked_layers().values():
                mask = torch.rand(layer.weight.shape, generator=g) < density
                layer.set_task_mask(t, mask)
                layer.consolidate(t, mask)
    net.eval()
    return net


def torch_logits(net, task, x):
    with torch.no_grad():
        return net(torch.from_numpy(x), task).numpy()


@pytest.mark.parametrize("strategy", [Strategy(), WSN(0.5), PackNet()])
def test_lossless_weights_and_private(strategy):
    net = masked_model(mlp((20,), 3, 4, width=12), 4)
    pm = export(net, strategy)
    assert isinstance(pm, bitsub.PackedModel)
    assert pm.word_bits == 64 and pm.prefix_bits == 3 and pm.banks == 1
    assert pm.tasks == [0, 1, 2, 3]
    assert pm.layers == list(net.masked_layers())
    for t in range(4):
        for name, layer in net.masked_layers().items():
            expected = (layer.weight * layer.task_mask(t)).detach().numpy()
            np.testing.assert_array_equal(pm.weights(t, name), expected)
            np.testing.assert_array_equal(pm.mask(t, name), layer.task_mask(t).numpy())
            assert pm.bits(t, name) in (0, 32)
        priv = pm.private(t)
        assert set(priv) == set(net.private_params(t))
        np.testing.assert_array_equal(priv["head.weight"], net.heads[t].weight.detach().numpy())
    assert pm.network == net.network_steps(0)


def test_finetune_exports_final_weights():
    net = mlp((10,), 2, 3, width=8)
    pm = export(net, Finetune())
    for t in range(3):
        for name, layer in net.masked_layers().items():
            np.testing.assert_array_equal(pm.weights(t, name), layer.weight.detach().numpy())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantized_export(bits):
    net = masked_model(mlp((30,), 3, 3, width=16), 3, seed=bits)
    pm = export(net, Strategy(), bits=bits)
    assert pm.word_bits == 32
    for t in range(3):
        for name, layer in net.masked_layers().items():
            write = (layer.owner == t).numpy() & layer.task_mask(t).numpy()
            w = pm.weights(t, name)
            ref = (layer.weight * layer.task_mask(t)).detach().numpy()
            assert pm.bits(t, name) == (bits if write.any() else 0)
            if write.any():
                assert len(np.unique(w[write])) <= 2**bits
                assert_kmeans_error_fits_the_bit_width(w[write], ref[write], bits)
            np.testing.assert_array_equal(w[~layer.task_mask(t).numpy()], 0)


def assert_kmeans_error_fits_the_bit_width(stored, original, bits):
    """Exact 1-D K-Means with 2**bits centroids does no worse than the means of 2**bits equal bins
    over the values' range; every value lies within half a bin, ptp / 2**(bits + 1), of its bin's
    middle, and a bin's mean is at least as close in squared error as its middle. So the squared
    error summed over the n values is at most n * (ptp / 2**(bits + 1))**2 (float32 slack)."""
    stored, original = stored.astype(np.float64), original.astype(np.float64)
    half_bin = np.ptp(original) / 2 ** (bits + 1)
    sse = float(np.sum((stored - original) ** 2))
    assert sse <= original.size * half_bin**2 * (1 + 1e-5) + 1e-10, (bits, sse)


def test_kmeans_error_bound_tells_the_bit_widths_apart():
    # uniform values: K-Means is then close to the equal bins, mean squared error ptp**2 / 12 per
    # bin width squared, between the bound of `bits` (1/4) and that of `bits + 1` (1/16)
    values = np.random.default_rng(0).uniform(-1, 1, 2000).astype(np.float32)
    for bits in (1, 2, 4, 6):
        book, codes = bitsub.kmeans_1d(values, 2**bits)
        assert_kmeans_error_fits_the_bit_width(book[codes], values, bits)
        # quantized to `bits`, it fails the bound of `bits + 1`
        with pytest.raises(AssertionError):
            assert_kmeans_error_fits_the_bit_width(book[codes], values, bits + 1)


def test_prefix_bits_grow_with_tasks():
    net = masked_model(mlp((6,), 2, 9, width=4), 9, density=0.6)
    pm = export(net, Strategy())
    assert pm.prefix_bits == 4 and pm.banks == 1
    for t in (0, 8):
        for name, layer in net.masked_layers().items():
            np.testing.assert_array_equal(
                pm.weights(t, name), (layer.weight * layer.task_mask(t)).detach().numpy()
            )
    sub = export(net, Strategy(), tasks=3)
    assert sub.tasks == [0, 1, 2] and sub.prefix_bits == 2


@pytest.mark.parametrize("kwargs,exc", [
    ({"bits": 0}, ValueError),
    ({"bits": 20}, ValueError),
    ({"bits": 2.0}, TypeError),
    ({"word_bits": 48}, ValueError),
    ({"word_bits": 32}, ValueError),  # raw float32 fields need 64-bit words
    ({"prefix_bits": 9}, ValueError),
    ({"tasks": 5}, ValueError),
    ({"tasks": 0}, ValueError),
])
def test_export_argument_errors(kwargs, exc):
    net = masked_model(mlp((6,), 2, 2, width=4), 2)
    with pytest.raises(exc):
        export(net, Strategy(), **kwargs)


def test_export_strategy_codebooks_and_errors():
    net = masked_model(mlp((8,), 2, 2, width=4), 2)

    class Coded(Strategy):
        quantizes = True

        def export_layers(self, model, task):
            out = {}
            for name, e in super().export_layers(model, task).items():
                codes = (e["values"] > 0).astype(np.int64)
                out[name] = {"mask": e["mask"], "write": e["write"], "bits": 1,
                             "codebook": np.array([-0.5, 0.5], np.float32), "codes": codes}
            return out

    pm = export(net, Coded())
    assert pm.word_bits == 32
    for t in range(2):
        for name, layer in net.masked_layers().items():
            m = layer.task_mask(t).numpy()
            w = pm.weights(t, name)
            assert set(np.unique(w[m])) <= {-0.5, 0.5}
    with pytest.raises(ValueError, match="quantizes"):
        export(net, Coded(), bits=4)

    class Layout(Coded):
        word_bits = 64
        prefix_bits = 1

        def export_layers(self, model, task):
            out = super().export_layers(model, task)
            for e in out.values():
                e["write"] = e["mask"].copy()  # every task writes all it uses: may open a bank
            return out

        def bank(self, task):
            return "new" if task else None

    pm = export(net, Layout())
    assert (pm.word_bits, pm.prefix_bits, pm.banks) == (64, 1, 2)
    assert [pm.bank(t) for t in pm.tasks] == [0, 1]

    class Bad(Strategy):
        def export_layers(self, model, task):
            return {"nope": {"mask": None, "write": None}}

    with pytest.raises(ValueError, match="unknown layers"):
        export(net, Bad())


# ------------------------------------------------------------------ from the file (pm.forward)


def test_lossless_forward_matches_torch(tmp_path):
    net = masked_model(mlp((20,), 3, 3, width=12), 3)
    pm = export(net, WSN(0.5))
    pm.save(tmp_path / "m.h5")
    pm = bitsub.load(tmp_path / "m.h5")
    x = np.random.default_rng(0).standard_normal((50, 20)).astype(np.float32)
    for t in range(3):
        np.testing.assert_allclose(pm.forward(t, x), torch_logits(net, t, x), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_array_equal(packed_predictions(pm, t, x, batch_size=7),
                                      torch_logits(net, t, x).argmax(1))


def test_conv_network_forward_matches_torch():
    net = masked_model(alexnet((3, 32, 32), 4, 2, width=0.1), 2)
    # give the per-task BatchNorms non-trivial statistics
    with torch.no_grad():
        for norm in net.task_norms().values():
            for bn in norm.norms:
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
    pm = export(net, WSN(0.5))
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    for t in range(2):
        np.testing.assert_allclose(pm.forward(t, x), torch_logits(net, t, x), rtol=1e-4,
                                   atol=1e-4)


def test_packed_accuracy():
    from bitsub_torch.data.scenarios import get_scenario

    sc = get_scenario("splitdigits", tasks=2)
    net = masked_model(mlp((64,), 2, 2, width=16), 2)
    pm = export(net, WSN(0.5))
    accs = packed_accuracy(pm, sc.tasks)
    for t, data in enumerate(sc.tasks):
        pred = torch_logits(net, t, data.x_test).argmax(1)
        assert accs[t] == pytest.approx(float(np.mean(pred == data.y_test)))
    with pytest.raises(ValueError, match="split"):
        packed_accuracy(pm, sc.tasks, split="nope")
