"""Network op vocabulary, validation and the NumPy forward, against a naive float64 interpreter."""

import json

import numpy as np
import pytest

from bitsub.kernels.plan import build_plan
from bitsub.model.network import OPS, forward, validate_network
from tests.naive import naive_resolved_weights, naive_run_steps
from tests.test_matmul import random_fields


class ToyModel:
    """The part of PackedModel that forward uses, built from random resolved fields."""

    def __init__(self, shapes, steps, private, seed=0):
        rng = np.random.default_rng(seed)
        self.network = steps
        self._shapes = shapes
        self._private = private
        self.plans, self.weights = {}, {}
        for name, shape in shapes.items():
            fields = random_fields(rng, shape, 0.6, 4, 2)
            self.plans[name] = build_plan(*fields)
            self.weights[name] = naive_resolved_weights(*fields)

    def shape(self, layer):
        return self._shapes[layer]

    def plan(self, task, layer):
        return self.plans[layer]

    def private(self, task):
        return dict(self._private)


CNN = [
    {"op": "conv2d", "layer": "c1", "stride": 1, "padding": 1, "bias": "c1.b"},
    {"op": "batchnorm", "mean": "bn.m", "var": "bn.v", "weight": "bn.w", "bias": "bn.b",
     "eps": 1e-5},
    {"op": "relu"},
    {"op": "maxpool2d", "kernel": 2, "stride": 2},
    {"op": "conv2d", "layer": "c2", "stride": 2, "padding": 0, "bias": None},
    {"op": "avgpool2d", "kernel": 2, "stride": 1},
    {"op": "flatten"},
    {"op": "dropout"},
    {"op": "linear", "layer": "fc", "bias": None},
    {"op": "relu"},
    {"op": "head", "weight": "head.w", "bias": "head.b"},
]


def cnn_model():
    rng = np.random.default_rng(1)
    f32 = np.float32
    private = {
        "c1.b": rng.standard_normal(4).astype(f32),
        "bn.m": rng.standard_normal(4).astype(f32),
        "bn.v": rng.random(4).astype(f32) + 0.5,
        "bn.w": rng.standard_normal(4).astype(f32),
        "bn.b": rng.standard_normal(4).astype(f32),
        "head.w": rng.standard_normal((3, 7)).astype(f32),
        "head.b": rng.standard_normal(3).astype(f32),
    }
    # 8x8 -> conv(3,p1) 8x8 -> pool 4x4 -> conv(2,s2) 2x2 -> avgpool(2,s1) 1x1 -> 5 -> 7 -> 3
    shapes = {"c1": (4, 2, 3, 3), "c2": (5, 4, 2, 2), "fc": (7, 5)}
    return ToyModel(shapes, CNN, private)


def test_forward_equals_naive_interpreter():
    model = cnn_model()
    x = np.random.default_rng(2).standard_normal((3, 2, 8, 8)).astype(np.float32)
    y = forward(model, 0, x)
    ref = naive_run_steps(CNN, model.weights, model.private(0), x)
    assert y.dtype == np.float32 and y.shape == (3, 3)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_forward_on_cuda_twin_matches_cpu():
    model = cnn_model()
    x = np.random.default_rng(3).standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(forward(model, 0, x, device="cuda"), forward(model, 0, x),
                               rtol=1e-5, atol=1e-5)


def test_batchnorm_with_batch_statistics():
    steps = [{"op": "linear", "layer": "fc", "bias": None},
             {"op": "batchnorm", "mean": None, "var": None, "weight": None, "bias": None,
              "eps": 1e-5}]
    model = ToyModel({"fc": (6, 4)}, steps, {})
    x = np.random.default_rng(4).standard_normal((9, 4)).astype(np.float32)
    h = x.astype(np.float64) @ model.weights["fc"].T.astype(np.float64)
    ref = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
    np.testing.assert_allclose(forward(model, 0, x), ref, rtol=1e-3, atol=1e-3)


def test_vocabulary_is_json_and_validates():
    validate_network(json.loads(json.dumps(CNN)))
    assert set(OPS) == {"linear", "conv2d", "relu", "maxpool2d", "avgpool2d", "flatten",
                        "batchnorm", "dropout", "head"}


@pytest.mark.parametrize(("step", "match"), [
    ({"op": "softmax"}, "unknown op"),
    ({"op": "linear"}, "needs key 'layer'"),
    ({"op": "linear", "layer": 3, "bias": None}, "layer name"),
    ({"op": "linear", "layer": "nope", "bias": None}, "no layer 'nope'"),
    ({"op": "linear", "layer": "c1", "bias": None}, "2-D layer"),
    ({"op": "conv2d", "layer": "fc", "stride": 1, "padding": 0, "bias": None}, "4-D layer"),
    ({"op": "conv2d", "layer": "c1", "stride": 0, "padding": 0, "bias": None}, "stride"),
    ({"op": "maxpool2d", "kernel": 2.5, "stride": 2}, "kernel"),
    ({"op": "head", "weight": None, "bias": None}, "private parameter"),
    ({"op": "batchnorm", "mean": None, "var": None, "weight": None, "bias": None,
      "eps": float("nan")}, "eps"),
    ({"op": "relu", "inplace": True}, "unknown key"),
    ("relu", "must be a dict"),
])
def test_validate_network_names_the_bad_step(step, match):
    layers = {"fc": (7, 5), "c1": (4, 2, 3, 3)}
    with pytest.raises(ValueError, match=match) as info:
        validate_network([{"op": "relu"}, step], layers)
    assert "step 1" in str(info.value)


def test_missing_private_key_is_a_clear_error():
    steps = [{"op": "linear", "layer": "fc", "bias": "fc.b"}]
    model = ToyModel({"fc": (3, 4)}, steps, {})
    with pytest.raises(KeyError, match="'fc.b'.*task 0"):
        forward(model, 0, np.ones((1, 4), np.float32))


def test_forward_rejects_bad_input():
    model = ToyModel({"fc": (3, 4)}, [{"op": "linear", "layer": "fc", "bias": None}], {})
    with pytest.raises(TypeError, match="float32"):
        forward(model, 0, np.ones((1, 4)))
    with pytest.raises(ValueError, match="device"):
        forward(model, 0, np.ones((1, 4), np.float32), device="tpu")
    model.network = []
    with pytest.raises(ValueError, match="no network"):
        forward(model, 0, np.ones((1, 4), np.float32))


def test_forward_through_packed_model():
    from bitsub.model.packed import PackedModel, TaskLayer

    rng = np.random.default_rng(6)
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("c1", (4, 2, 3, 3))
    pm.add_layer("fc", (7, 16))
    private = {"head.w": rng.standard_normal((3, 7)).astype(np.float32),
               "head.b": rng.standard_normal(3).astype(np.float32),
               "c1.b": rng.standard_normal(4).astype(np.float32)}

    def layer(shape):
        m = rng.random(shape) < 0.6
        return TaskLayer(m, m, codebook=rng.standard_normal(4), codes=rng.integers(0, 4, shape))

    t = pm.add_task({"c1": layer((4, 2, 3, 3)), "fc": layer((7, 16))}, private=private)
    steps = [{"op": "conv2d", "layer": "c1", "stride": 1, "padding": 0, "bias": "c1.b"},
             {"op": "relu"}, {"op": "maxpool2d", "kernel": 2, "stride": 2}, {"op": "flatten"},
             {"op": "linear", "layer": "fc", "bias": None}, {"op": "relu"},
             {"op": "head", "weight": "head.w", "bias": "head.b"}]
    pm.set_network(steps)
    x = rng.standard_normal((5, 2, 6, 6)).astype(np.float32)
    weights = {name: pm.weights(t, name) for name in ("c1", "fc")}
    ref = naive_run_steps(steps, weights, pm.private(t), x)
    np.testing.assert_allclose(pm.forward(t, x), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pm.forward(t, x, device="cuda"), ref, rtol=1e-4, atol=1e-4)


def test_set_network_refuses_bad_steps_when_recorded():
    import bitsub

    pm = bitsub.PackedModel()
    pm.add_layer("fc1", (3, 4))
    with pytest.raises(ValueError, match="fc9|layer"):
        pm.set_network([{"op": "linear", "layer": "fc9", "bias": None}])
    with pytest.raises(ValueError):
        pm.set_network([{"op": "no-such-op"}])
    pm.set_network([{"op": "linear", "layer": "fc1", "bias": None}, {"op": "relu"}])
    assert pm.network[0]["layer"] == "fc1"


def test_parse_network_fills_every_default_in_one_place():
    from bitsub.model.network import Step, parse_network

    steps = parse_network([
        {"op": "conv2d", "layer": "c"}, {"op": "conv2d", "layer": "c", "stride": None},
        {"op": "maxpool2d", "kernel": 3}, {"op": "avgpool2d", "kernel": 2, "stride": None},
        {"op": "batchnorm"}, {"op": "head", "weight": "w"},
    ])
    assert steps == (
        Step(0, "conv2d", layer="c", stride=1, padding=0),
        Step(1, "conv2d", layer="c", stride=1, padding=0),
        Step(2, "maxpool2d", kernel=3, stride=3),
        Step(3, "avgpool2d", kernel=2, stride=2),
        Step(4, "batchnorm", eps=1e-5),
        Step(5, "head", weight="w"),
    )


# Left-out and null keys everywhere they are allowed: every forward path must read them alike.
SPARSE = [
    {"op": "conv2d", "layer": "c1", "stride": None, "padding": 1},
    {"op": "batchnorm", "mean": None, "var": None},
    {"op": "relu"},
    {"op": "maxpool2d", "kernel": 2, "stride": None},
    {"op": "conv2d", "layer": "c2", "bias": "c2.b"},
    {"op": "avgpool2d", "kernel": 2},
    {"op": "dropout"},
    {"op": "flatten"},
    {"op": "linear", "layer": "fc"},
    {"op": "batchnorm", "mean": "bn.m", "var": "bn.v", "weight": "bn.w", "bias": None},
    {"op": "head", "weight": "head.w"},
]


def sparse_packed_model():
    from bitsub.model.packed import PackedModel, TaskLayer

    rng = np.random.default_rng(11)
    pm = PackedModel(word_bits=32, prefix_bits=2)
    # 9x9 -> conv(3, p1) 9x9 -> pool 2 (stride 2) 4x4 -> conv 2 3x3 -> avgpool 2 (stride 2) 1x1
    shapes = {"c1": (3, 2, 3, 3), "c2": (5, 3, 2, 2), "fc": (6, 5)}
    for name, shape in shapes.items():
        pm.add_layer(name, shape)
    private = {"c2.b": rng.standard_normal(5), "bn.m": rng.standard_normal(6),
               "bn.v": rng.random(6) + 0.5, "bn.w": rng.standard_normal(6),
               "head.w": rng.standard_normal((4, 6))}
    layers = {}
    for name, shape in shapes.items():
        m = rng.random(shape) < 0.7
        layers[name] = TaskLayer(m, m, codebook=rng.standard_normal(4),
                                 codes=rng.integers(0, 4, shape))
    t = pm.add_task(layers, private={k: v.astype(np.float32) for k, v in private.items()})
    pm.set_network(SPARSE)
    return pm, t


def test_left_out_and_null_keys_mean_the_same_on_every_forward_path():
    pm, t = sparse_packed_model()
    x = np.random.default_rng(12).standard_normal((4, 2, 9, 9)).astype(np.float32)
    weights = {name: pm.weights(t, name) for name in pm.layers}
    ref = naive_run_steps(SPARSE, weights, pm.private(t), x)
    y = pm.forward(t, x)
    assert y.shape == ref.shape == (4, 4)
    # float32 kernels against float64: a few ulps per op through ~10 ops of O(1) values
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # a null stride is stride 1 for a conv and the kernel for a pool, exactly
    explicit = [dict(s) for s in SPARSE]
    explicit[0]["stride"], explicit[3]["stride"] = 1, 2
    pm.set_network(explicit)
    np.testing.assert_array_equal(pm.forward(t, x), y)
    torch = pytest.importorskip("torch")
    from bitsub_torch import PackedModule

    pm.set_network(SPARSE)
    out = PackedModule(pm)(torch.from_numpy(x), t)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-4, atol=1e-4)
