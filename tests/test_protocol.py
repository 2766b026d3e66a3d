"""The convergence protocol: step budget, early stopping, best-on-validation state, score lr."""

import numpy as np
import pytest
import torch
from test_trainer import SMALL, CountingWSN, Interrupt

from bitsub_torch.cl.protocol import Protocol
from bitsub_torch.cl.strategies import WSN, Finetune, PackNet
from bitsub_torch.cl.trainer import Trainer
from bitsub_torch.data.scenarios import Scenario
from bitsub_torch.nn.models import mlp

torch.set_num_threads(1)

# 400 training samples at batch 32: 13 steps per epoch.
SPE = 13
FAST = Protocol(patience=2, max_epochs=3, min_steps=0, eval_every=1, decays=1)


def make(strategy, protocol=FAST, tasks=SMALL, ckpt=None, **kw):
    torch.manual_seed(0)
    model = mlp((64,), 10, len(tasks.tasks), width=32)
    args = {"batch_size": 32, "lr": 1e-2, "progress": False, "seed": 3} | kw
    return model, Trainer(model, strategy, tasks, protocol=protocol, checkpoint_dir=ckpt, **args)


def one_task(n_train=400):
    t = SMALL.tasks[0]
    task = type(t)(0, t.x_train[:n_train], t.y_train[:n_train], t.x_val, t.y_val, t.x_test,
                   t.y_test, t.classes)
    return Scenario("one", SMALL.input_shape, 10, [task])


@pytest.mark.parametrize(
    ("spe", "kw", "expected"),
    [
        (13, {"max_epochs": 3, "min_steps": 0, "eval_every": 1}, (39, 13)),
        (2, {"max_epochs": 3, "min_steps": 100, "eval_every": 30}, (120, 30)),  # small: floor
        (100, {"max_epochs": 5, "min_steps": 100, "eval_every": 30}, (500, 100)),  # >= 1 epoch
        (0, {"max_epochs": 1, "min_steps": 0, "eval_every": 1}, (1, 1)),
    ],
)
def test_budget_counts_steps_and_evaluates_at_least_once_per_epoch(spe, kw, expected):
    assert Protocol(**kw).budget(spe) == expected


@pytest.mark.parametrize(
    "kw",
    [{"patience": 0}, {"max_epochs": 0}, {"min_steps": -1}, {"eval_every": 0},
     {"decays": -1}, {"patience": 1.5}, {"patience": True}],
)
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        Protocol(**kw)


def test_trainer_refuses_a_protocol_without_validation_data():
    t = SMALL.tasks[0]
    empty = type(t)(0, t.x_train, t.y_train, t.x_val[:0], t.y_val[:0], t.x_test, t.y_test,
                    t.classes)
    with pytest.raises(ValueError, match="validation"):
        make(Finetune(), tasks=Scenario("noval", SMALL.input_shape, 10, [empty]))
    with pytest.raises(TypeError, match="Protocol"):
        make(Finetune(), protocol={"patience": 2})
    with pytest.raises(ValueError, match="score_lr"):
        make(WSN(), score_lr=0.0)


class Scripted(Trainer):
    """A trainer whose validation scores follow a script; records the lr at every evaluation."""

    def __init__(self, *args, script, **kw):
        super().__init__(*args, **kw)
        self.script = list(script)
        self.lrs = []

    def _val_score(self, task):
        return (self.script.pop(0), 0.0)

    def _make_optimizer(self, params):
        self.opt = super()._make_optimizer(params)
        return self.opt


def scripted(script, protocol, n_train=400):
    torch.manual_seed(0)
    model = mlp((64,), 10, 1, width=32)
    trainer = Scripted(model, Finetune(), one_task(n_train), script=script, protocol=protocol,
                       batch_size=32, lr=1e-2, progress=False)
    return trainer


@pytest.mark.parametrize(
    ("script", "patience", "decays", "evaluations"),
    [
        ([0.1, 0.2, 0.3, 0.3, 0.3, 0.9], 2, 0, 5),  # two without improvement: stop
        ([0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.9], 2, 1, 6),  # halve once, two more, stop
        ([i / 20 for i in range(13)], 2, 0, 11),  # the budget: 10 epochs, 10 evaluations
        ([0.5, 0.4, 0.6, 0.4, 0.4, 0.9], 2, 0, 5),  # an improvement resets the count
    ],
)
def test_early_stopping_counts_evaluations(script, patience, decays, evaluations):
    protocol = Protocol(patience=patience, max_epochs=10, min_steps=0, eval_every=SPE // 3 + 1,
                        decays=decays)
    trainer = scripted(script, protocol)
    res = trainer.run()
    every = protocol.budget(SPE)[1]
    assert every == SPE  # at least one epoch
    # the first evaluation scores the untrained state; each later one follows `every` steps
    assert res.timings["steps"] == [[(evaluations - 1) * every]]
    assert len(trainer.script) == len(script) - evaluations
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 2**decays)


def test_small_scenario_gets_the_step_floor():
    # 40 samples at batch 32: 2 steps per epoch; 3 epochs would be 6 steps, the floor gives 60
    protocol = Protocol(patience=50, max_epochs=3, min_steps=60, eval_every=20, decays=0)
    trainer = scripted([i / 100 for i in range(10)], protocol, n_train=40)
    res = trainer.run()
    assert res.timings["steps"] == [[60]]


class Recording(Trainer):
    """Records (score, weights) at every validation, to check which state is kept."""

    seen: list

    def _val_score(self, task):
        score = super()._val_score(task)
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.seen = [*getattr(self, "seen", []), (score, weights)]
        return score


def test_the_best_validation_state_is_kept_bit_for_bit():
    torch.manual_seed(0)
    model = mlp((64,), 10, 1, width=32)
    # a large learning rate makes the validation score go up and down
    trainer = Recording(model, Finetune(), one_task(), batch_size=32, lr=0.05, progress=False,
                        protocol=Protocol(patience=3, max_epochs=8, min_steps=0, eval_every=1,
                                          decays=1))
    trainer.run()
    scores = [s for s, _ in trainer.seen]
    assert len(set(scores)) > 2
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first of the best
    final = model.state_dict()
    for key, value in trainer.seen[best][1].items():
        assert torch.equal(final[key], value), key


def test_score_lr_moves_scores_by_at_most_its_adam_steps():
    protocol = Protocol(patience=1, max_epochs=1, min_steps=0, eval_every=1, decays=0)
    model, trainer = make(WSN(0.5), protocol=protocol, tasks=one_task(), score_lr=1e-7)
    before = [layer.enable_scores().detach().clone() for layer in model.masked_layers().values()]
    w_before = [layer.weight.detach().clone() for layer in model.masked_layers().values()]
    res = trainer.run()
    steps = res.timings["steps"][0][0]
    # one Adam step moves a parameter by lr |m_hat| / sqrt(v_hat) <= lr (1 - b1) / sqrt(1 - b2)
    # / sqrt(1 - b1^2 / b2) (Cauchy-Schwarz over the moment sums) = 7.3 lr at the defaults
    for b, s in zip(before, model.score_parameters(), strict=True):
        assert float((s.detach() - b).abs().max()) <= 7.4 * steps * 1e-7
    moved = [float((layer.weight.detach() - w).abs().max())
             for layer, w in zip(model.masked_layers().values(), w_before, strict=True)]
    assert max(moved) > 1e-3  # the weights learned at lr 1e-2


@pytest.mark.parametrize("cls", [CountingWSN], ids=["wsn"])
def test_resume_with_the_protocol_equals_uninterrupted_run(tmp_path, cls):
    model_a, trainer_a = make(cls(), ckpt=tmp_path / "a")
    res_a = trainer_a.run()
    killed = cls()
    killed.stop_at = 2
    _, trainer_b = make(killed, ckpt=tmp_path / "b")
    with pytest.raises(Interrupt):
        trainer_b.run()
    model_c, trainer_c = make(cls(), ckpt=tmp_path / "b")
    res_c = trainer_c.run()
    np.testing.assert_array_equal(res_c.accuracy_matrix, res_a.accuracy_matrix)
    assert res_c.timings["steps"] == res_a.timings["steps"]
    for key, value in model_a.state_dict().items():
        assert torch.equal(model_c.state_dict()[key], value), key
    # another protocol on the same checkpoints is refused
    _, other = make(cls(), protocol=Protocol(patience=3), ckpt=tmp_path / "b")
    with pytest.raises(ValueError, match="same arguments"):
        other.run()


def test_packnet_retrains_under_the_protocol_too():
    _, trainer = make(PackNet(0.5, retrain_epochs=1))
    res = trainer.run()
    assert all(len(s) == 2 and min(s) > 0 for s in res.timings["steps"])
    assert np.all(np.diag(res.accuracy_matrix) > 0.5)


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf"), "1e-3", True])
def test_cli_refuses_a_bad_score_lr_before_writing(tmp_path, bad):
    from bitsub_torch.cli import train as cli_train

    with pytest.raises(ValueError, match="score.lr"):
        cli_train(strategy="wsn", scenario="splitdigits", out=tmp_path, tasks=2, score_lr=bad,
                  progress=False)
    assert not (tmp_path / "config.json").exists()
