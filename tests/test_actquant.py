"""Activation quantization (TinySubNets Table 7) and op / bit-operation counts (Table 6)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitsub
from bitsub_torch.cl.actreport import activation_accuracy
from bitsub_torch.cl.ops import op_counts, ops_report, stored_weight_bits
from bitsub_torch.cli import _train_parser, format_report
from bitsub_torch.cli import train as cli_train
from bitsub_torch.nn.actquant import (
    calibrate_activations,
    fake_quantize_range,
    quantized_activations,
)
from bitsub_torch.nn.layers import TaskConv2d, TaskLinear
from bitsub_torch.nn.models import TaskNetwork, mlp

torch.set_num_threads(1)


# ------------------------------------------------------------------ the calibrated grid


@settings(max_examples=50, deadline=None)
@given(
    bits=st.integers(2, 16),
    n=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    relu=st.booleans(),
    widen=st.floats(0.5, 2.0),
)
def test_fake_quantize_range_is_a_fixed_clamped_grid(bits, n, seed, relu, widen):
    x = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    if relu:
        x = np.maximum(x, 0)
    lo, hi = float(x.min()) * widen, float(x.max()) * widen  # calibration range (maybe narrower)
    q = fake_quantize_range(torch.from_numpy(x), bits, lo, hi).double().numpy()
    if lo >= 0:
        levels, amax, kmin = 2**bits - 1, hi, 0
    else:
        levels, amax = 2 ** (bits - 1) - 1, max(-lo, hi)
        kmin = -levels
    if amax <= 0:
        assert np.all(q == 0)
        return
    scale = amax / levels
    k = q / scale
    # q is float32: its rounding error, in grid steps, grows with the number of levels.
    tol = 1e-3 + levels * 2.0**-20
    assert np.allclose(k, np.round(k), atol=tol)  # on the grid
    assert k.min() >= kmin - tol and k.max() <= levels + tol  # clamped to the range
    clipped = np.clip(x, kmin * scale, levels * scale)
    assert np.abs(q - clipped).max() <= scale / 2 + 1e-6 * max(1.0, amax)
    assert torch.equal(fake_quantize_range(torch.from_numpy(x), 32, lo, hi), torch.from_numpy(x))


def test_fake_quantize_range_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits"):
        fake_quantize_range(torch.zeros(3), 1, 0.0, 1.0)
    with pytest.raises(TypeError, match="bits"):
        fake_quantize_range(torch.zeros(3), 4.0, 0.0, 1.0)


def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    model = mlp((12,), 3, 2, width=8)
    for layer in model.masked_layers().values():
        nn.init.normal_(layer.weight)
    return model


def test_calibrate_records_each_layers_input_range():
    model = _tiny_mlp()
    x = np.random.default_rng(1).normal(size=(17, 12)).astype(np.float32)
    ranges = calibrate_activations(model, 1, x, batch_size=5)  # several batches
    assert ranges["fc1"] == pytest.approx((float(x.min()), float(x.max())))
    with torch.no_grad():
        h = torch.relu(model.blocks["fc1"](torch.from_numpy(x), 1))
    assert ranges["fc2"] == pytest.approx((float(h.min()), float(h.max())))
    assert ranges["fc2"][0] >= 0  # after a ReLU: the unsigned grid
    with pytest.raises(ValueError, match="at least one sample"):
        calibrate_activations(model, 0, x[:0])


def test_quantized_activations_quantizes_inputs_and_restores():
    model = _tiny_mlp().eval()
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(9, 12)).astype(np.float32))
    ranges = calibrate_activations(model, 0, x.numpy())
    with torch.no_grad():
        plain = model(x, 0)
        with quantized_activations(model, 16, ranges):
            high = model(x, 0)
        with quantized_activations(model, 2, ranges):
            low = model(x, 0)
            # by hand: quantize fc1's input, run fc1 + ReLU, quantize fc2's input, ...
            h = fake_quantize_range(x, 2, *ranges["fc1"]) @ model.blocks["fc1"].weight.T
            h = fake_quantize_range(torch.relu(h), 2, *ranges["fc2"])
            h = torch.relu(h @ model.blocks["fc2"].weight.T)
            torch.testing.assert_close(low, model.heads[0](h))
        after = model(x, 0)
    torch.testing.assert_close(high, plain, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(low, plain)
    assert torch.equal(after, plain)  # hooks removed
    with pytest.raises(ValueError, match="calibrate_activations"):
        quantized_activations(model, 8, {"fc1": (0.0, 1.0)})


def test_activation_accuracy_calibrates_on_val_never_test():
    model = _tiny_mlp().eval()
    rng = np.random.default_rng(3)

    def split(n, scale=1.0):
        return (scale * rng.normal(size=(n, 12))).astype(np.float32), rng.integers(0, 3, n)

    tasks = []
    for t, n_val in enumerate((10, 0)):  # task 1 has no val split: calibrate on train
        (xtr, ytr), (xva, yva), (xte, yte) = split(20), split(n_val), split(15, 50.0 + t)
        tasks.append(SimpleNamespace(x_train=xtr, y_train=ytr, x_val=xva, y_val=yva,
                                     x_test=xte, y_test=yte))
    seen = []

    def evaluate(m, task, which):
        seen.append(which)
        data = tasks[task]
        with torch.no_grad():
            pred = m(torch.from_numpy(data.x_test), task).argmax(1).numpy()
        return float(np.mean(pred == data.y_test))

    out = activation_accuracy(model, tasks, evaluate, bits=(2, 16))
    assert set(seen) == {"test"} and out["calibration"] == ["val", "train"]
    assert out["bits"] == [2, 16] and set(out["mean"]) == {"float", "2", "16"}
    for t, data in enumerate(tasks):  # the test inputs (50x wider) are clamped to the val range
        cal = data.x_val if len(data.x_val) else data.x_train
        ranges = calibrate_activations(model, t, cal)
        with torch.no_grad(), quantized_activations(model, 2, ranges):
            pred = model(torch.from_numpy(data.x_test), t).argmax(1).numpy()
        assert out["2"][t] == float(np.mean(pred == data.y_test))
    with pytest.raises(ValueError, match="activation bits"):
        activation_accuracy(model, tasks, evaluate, bits=(1,))


# ------------------------------------------------------------------ op counts on a hand-built model


def _hand_built():
    """conv (2x1x3x3, padding 1 on 1x4x4 -> 2x4x4) + linear (3 x 32); two tasks in one bank.

    Task 0 writes 3-bit fields in conv, 2-bit in fc. Task 1 reuses some of task 0's conv
    positions and writes 5-bit fields elsewhere in conv; in fc it writes nothing and reuses.
    """
    rng = np.random.default_rng(7)
    net = TaskNetwork(
        [("conv", TaskConv2d(1, 2, 3, 2, padding=1)), ("relu", nn.ReLU()),
         ("flat", nn.Flatten()), ("fc", TaskLinear(32, 3, 2))],
        3, 4, 2, (1, 4, 4),
    )
    shapes = {"conv": (2, 1, 3, 3), "fc": (3, 32)}
    pm = bitsub.PackedModel(word_bits=32, prefix_bits=2)
    for name, shape in shapes.items():
        pm.add_layer(name, shape)

    def layer(mask, write, bits):
        cb = np.linspace(-1, 1, 2**bits).astype(np.float32)
        codes = rng.integers(0, 2**bits, size=mask.shape)
        return bitsub.TaskLayer(mask=mask, write=write, bits=bits, codebook=cb, codes=codes)

    m0 = {n: rng.random(s) < 0.6 for n, s in shapes.items()}
    pm.add_task({"conv": layer(m0["conv"], m0["conv"], 3), "fc": layer(m0["fc"], m0["fc"], 2)})
    reuse_conv = m0["conv"] & (rng.random(shapes["conv"]) < 0.5)
    new_conv = ~m0["conv"] & (rng.random(shapes["conv"]) < 0.5)
    m1_fc = m0["fc"] & (rng.random(shapes["fc"]) < 0.7)
    none = np.zeros(shapes["fc"], bool)
    pm.add_task({"conv": layer(reuse_conv | new_conv, new_conv, 5), "fc": layer(m1_fc, none, 2)},
                bank=0)
    masks = [m0, {"conv": reuse_conv | new_conv, "fc": m1_fc}]
    wbits = [{"conv": 3, "fc": 2}, {"conv": np.where(new_conv, 5, 3), "fc": 2}]
    return net, pm, masks, wbits


def _count_by_hand(masks, wbits, b_a):
    """Independent count: loop over positions; conv weights run at 4x4 outputs, fc once."""
    spatial = {"conv": 16, "fc": 1}
    dense = macs = bops = 0
    for name, mask in masks.items():
        bits = np.broadcast_to(wbits[name], mask.shape)
        for idx in np.ndindex(mask.shape):
            dense += spatial[name]
            if mask[idx]:
                macs += spatial[name]
                bops += spatial[name] * int(bits[idx]) * b_a
    return dense, macs, bops


def test_ops_report_equals_an_independent_count():
    net, pm, masks, wbits = _hand_built()
    report = ops_report(net, pm, (1, 4, 4))
    assert report["act_bits"] == [4, 8, 16, 32]
    assert len(report["tasks"]) == 2
    for t, row in enumerate(report["tasks"]):
        m, bits = stored_weight_bits(pm, t)
        for name in masks[t]:
            assert np.array_equal(m[name], masks[t][name])
            want = np.where(masks[t][name], np.broadcast_to(wbits[t][name], m[name].shape), 0)
            assert np.array_equal(bits[name], want)
        for b_a in (4, 8, 16, 32):
            dense, macs, bops = _count_by_hand(masks[t], wbits[t], b_a)
            assert row["macs_dense"] == dense == 2 * 9 * 16 + 3 * 32
            assert row["macs"] == macs <= dense
            assert row["bops"][str(b_a)] == bops
        assert row["flops"] == 2 * row["macs"] and row["flops_dense"] == 2 * row["macs_dense"]
        assert row["bops_float"] == row["macs"] * 1024
        assert row["bops_dense_float"] == row["macs_dense"] * 1024
        assert row["macs_private"] == 3 * 4  # the task's float head, counted apart
        assert row["mean_weight_bits"] == pytest.approx(row["bops"]["8"] / 8 / row["macs"])
    assert report["tasks"][0]["weight_bits"] == {"conv": [3], "fc": [2]}
    assert report["tasks"][1]["weight_bits"]["fc"] == [2]  # reuses task 0's 2-bit fields
    assert set(report["tasks"][1]["weight_bits"]["conv"]) <= {3, 5}


def test_op_counts_accepts_per_position_bits_and_file_masks():
    net, pm, masks, wbits = _hand_built()
    counts = op_counts(net, 1, (1, 4, 4), weight_bits=wbits[1], act_bits=8, masks=masks[1])
    dense, macs, bops = _count_by_hand(masks[1], wbits[1], 8)
    assert (counts["macs_dense"], counts["macs_masked"], counts["bops"]) == (dense, macs, bops)


# ------------------------------------------------------------------ a CLI run end to end


def test_cli_flag_parsing():
    base = ["--strategy", "tinysubnets", "--scenario", "splitdigits", "--out", "x"]
    assert _train_parser().parse_args(base).activation_bits is None
    assert _train_parser().parse_args([*base, "--activation-bits"]).activation_bits == []
    args = _train_parser().parse_args([*base, "--activation-bits", "4", "8"])
    assert args.activation_bits == [4, 8]


@pytest.mark.parametrize("bad", [[1], [17], [4.0], "8"])
def test_cli_rejects_bad_activation_bits_before_training(tmp_path, bad):
    with pytest.raises(ValueError, match="activation.bits"):
        cli_train(strategy="finetune", scenario="splitdigits", out=tmp_path, tasks=2,
                  activation_bits=bad, progress=False)
    assert not (tmp_path / "config.json").exists()


def test_cli_run_reports_activation_quantization_and_ops(tmp_path):
    report = cli_train(strategy="tinysubnets", scenario="splitdigits", out=tmp_path, tasks=2,
                       epochs=1, lr=1e-2, batch_size=32, threads=1, progress=False,
                       strategy_args={"density": 0.5, "post_prune_iters": 0})
    assert json.loads((tmp_path / "results.json").read_text()) == report
    act = report["activation_quantization"]
    assert act["bits"] == [4, 8, 16]  # the default for a quantizing strategy
    assert act["calibration"] == ["val", "val"]
    for key in ("4", "8", "16", "float"):
        assert len(act[key]) == 2
        assert all(0.0 <= a <= 1.0 for a in act[key])
        assert act["mean"][key] == pytest.approx(np.mean(act[key]))
    assert act["float"] == report["accuracy_matrix"][-1]  # float = the re-tested last row
    assert all(abs(a - f) <= 0.01 for a, f in zip(act["16"], act["float"], strict=True))

    ops = report["ops"]
    assert ops["act_bits"] == [4, 8, 16, 32]
    pm = bitsub.load(tmp_path / "model.h5")
    for t, row in enumerate(ops["tasks"]):
        assert 0 < row["macs"] <= row["macs_dense"] == 64 * 100 + 100 * 100
        assert row["flops"] == 2 * row["macs"]
        bops = [row["bops"][str(b)] for b in ops["act_bits"]]
        assert bops == sorted(bops) and bops[-1] <= row["bops_float"] <= row["bops_dense_float"]
        assert 1 <= row["mean_weight_bits"] <= 8
        assert row["macs"] == sum(int(pm.mask(t, n).sum()) for n in pm.layers)
    text = format_report(report)
    assert "activations quantized" in text and "ops per sample" in text
    assert report["config"]["activation_bits"] == [4, 8, 16]


def test_cli_run_of_a_float_strategy_skips_activation_quantization(tmp_path):
    report = cli_train(strategy="finetune", scenario="splitdigits", out=tmp_path, tasks=2,
                       epochs=1, batch_size=32, threads=1, progress=False)
    assert report["activation_quantization"] is None
    for row in report["ops"]["tasks"]:
        assert row["macs"] == row["macs_dense"]  # dense, raw float32 fields
        assert row["bops"]["32"] == row["bops_float"]
        assert row["weight_bits"] == {"fc1": [32], "fc2": [32]}
    assert "ops per sample" in format_report(report)
