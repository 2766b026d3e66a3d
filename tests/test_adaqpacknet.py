"""Ada-QPacknet on scikit-learn digits: forget-free, per-word fields, lottery search, export."""

import numpy as np
import pytest
import torch
from test_strategies import assert_states_unchanged, probe_forget_free
from test_tinysubnets import assert_forget_free, dense_forward, digits_tasks, pack, torch_weights

from bitsub_torch.cl.strategies import STRATEGIES, AdaQPacknet, get_strategy
from bitsub_torch.cl.strategies.adaqpacknet import magnitude_mask
from bitsub_torch.cl.trainer import Trainer
from bitsub_torch.export import export
from bitsub_torch.nn.models import mlp

torch.set_num_threads(1)


def train(strategy, scenario, *, epochs=2):
    torch.manual_seed(0)
    model = mlp((64,), 10, len(scenario.tasks), width=48)
    trainer = Trainer(model, strategy, scenario, epochs=epochs, batch_size=32, lr=3e-3,
                      progress=False)
    return model, trainer.run()


def small(**kw):
    return AdaQPacknet(**{"population": 3, "search_epochs": 1, "retrain_epochs": 1, **kw})


def test_registered():
    assert STRATEGIES["adaqpacknet"] is AdaQPacknet
    assert isinstance(get_strategy("adaqpacknet", population=2), AdaQPacknet)


def test_forget_free_own_fields_only_and_export_is_bit_exact():
    scenario = digits_tasks(3)
    strategy = small()
    snaps = probe_forget_free(strategy)
    model, res = train(strategy, scenario)
    assert_states_unchanged(model, snaps)
    r = res.accuracy_matrix
    assert_forget_free(r)
    assert res.bwt == 0.0
    assert np.all(np.diag(r) > 0.6), np.diag(r)
    store = strategy.store
    for t in range(3):
        log = strategy.log[t]
        assert all(1 <= b <= strategy.max_bits for b in log["bits"].values())
        assert len(set(log["bits"].values())) == 1  # one bit-width per task (per_layer=False)
        assert log["val_quantized"] == log["val_stored"]  # validated values == stored values
        for name in store.shapes:
            f = store.fields(t, name)
            np.testing.assert_array_equal(f.mask, f.write)  # no value sharing
    # Several tasks' fields in one word: some positions carry more than one field.
    field = store.prefix_bits + min(strategy.log[t]["bits"]["fc1"] for t in range(3))
    assert store.used_bits(0, "fc1").max() >= 2 * field
    for pm in (pack(model, strategy), export(model, strategy)):
        for t, data in enumerate(scenario.tasks):
            for name, w in torch_weights(model, t).items():
                assert pm.weights(t, name).tobytes() == w.tobytes(), (t, name)
            with torch.no_grad():
                want = model(torch.from_numpy(data.x_test), t).argmax(1).numpy()
            assert np.mean(dense_forward(pm, t, data.x_test).argmax(1) == want) >= 0.999


def test_lottery_search_ratios_and_fitness():
    scenario = digits_tasks(1)
    strategy = small(v_min=0.4, v_max=0.7)
    train(strategy, scenario)
    log = strategy.log[0]
    assert len(log["candidates"]) == 3
    assert all(0.4 <= v <= 0.7 for v in log["ratios"].values())
    best = max(c[0] for c in log["candidates"])
    assert log["fitness"] == best
    for fitness, acc, pruned in log["candidates"]:
        assert fitness == pytest.approx(0.8 * acc + 0.2 * pruned)
    # The kept fraction of each layer is 1 - its ratio (the first task has every position free).
    for name, ratio in log["ratios"].items():
        kept = strategy.store.fields(0, name).mask.mean()
        assert kept == pytest.approx(1 - ratio, abs=2e-3)


def test_full_bank_opens_a_new_one_and_export_follows():
    scenario = digits_tasks(4)
    strategy = small(prefix_bits=2)  # 3 tasks per bank
    snaps = probe_forget_free(strategy)
    model, res = train(strategy, scenario)
    assert_states_unchanged(model, snaps)
    assert_forget_free(res.accuracy_matrix)
    assert [strategy.log[t]["bank"] for t in range(4)] == [0, 0, 0, 1]
    assert strategy.bank(3) == "new"
    pm = pack(model, strategy)
    assert pm.banks == 2
    for t in range(4):
        for name, w in torch_weights(model, t).items():
            assert pm.weights(t, name).tobytes() == w.tobytes()


def test_word_budget_limits_the_fields_a_word_takes():
    scenario = digits_tasks(3)
    # 32-bit words, P=8, fields of 8 + b bits (b <= 8): after one field a word has 24 - b >= 16
    # bits left, room for a second field of any bit-width; after two, fewer than 16: full.
    strategy = small(prefix_bits=8, max_bits=8, min_free=0.0)
    train(strategy, scenario)
    store = strategy.store
    for name in store.shapes:
        w0, w1, w2 = (store.fields(t, name).write for t in range(3))
        assert (w0 & w1).any()  # two fields share words
        assert not (w0 & w1 & w2).any()  # never three
        assert (store.used_bits(0, name) <= store.word_bits).all()


def test_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    scenario = digits_tasks(2)
    strategy = small(population=2, seed=3)
    model, res = train(strategy, scenario)
    torch.save(strategy.state_dict(), tmp_path / "s.pt")
    back = AdaQPacknet()
    back.setup(model, scenario)
    back.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (back.population, back.seed, back.retrain_epochs(0)) == (2, 3, 1)
    assert back.log == strategy.log
    for t in range(2):
        a, b = strategy.export_layers(model, t), back.export_layers(model, t)
        for name in a:
            for key in ("mask", "write", "codes"):
                np.testing.assert_array_equal(a[name][key], b[name][key])
            assert a[name]["codebook"].tobytes() == b[name]["codebook"].tobytes()
    # The model reads its values through the restored store: the same accuracy.
    trainer = Trainer(model, back, scenario, progress=False)
    for t in range(2):
        assert trainer.evaluate(model, t, "test") == res.accuracy_matrix[1, t]


def test_magnitude_mask():
    w = torch.tensor([[0.1, -3.0, 2.0], [0.5, -0.2, 9.0]])
    avail = torch.tensor([[True, True, True], [True, True, False]])
    got = magnitude_mask(w, avail, 0.4)  # 2 of 5 available
    assert got.tolist() == [[False, True, True], [False, False, False]]
    assert magnitude_mask(w, torch.zeros_like(avail), 0.5).sum() == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        AdaQPacknet(v_min=0.8, v_max=0.4)
    with pytest.raises(ValueError):
        AdaQPacknet(population=0)
    with pytest.raises(ValueError):
        AdaQPacknet(search_lr=0.0)
    with pytest.raises(TypeError):
        AdaQPacknet(population=2.5)
