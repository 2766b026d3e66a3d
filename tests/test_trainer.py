"""The trainer: re-tested accuracy matrix, seeds, checkpoints and resume after an interruption."""

import io
import json
import math

import numpy as np
import pytest
import torch
from test_strategies import permuted_digits

from bitsub_torch.cl.strategies import WSN, Finetune, PackNet
from bitsub_torch.cl.trainer import Results, Trainer
from bitsub_torch.data.scenarios import Scenario
from bitsub_torch.nn.models import mlp

torch.set_num_threads(1)

SCENARIO = permuted_digits(3)
# small and fast: 400 training samples per task
SMALL = Scenario(
    "pdigits-small",
    SCENARIO.input_shape,
    10,
    [
        type(t)(t.task_id, t.x_train[:400], t.y_train[:400], t.x_val, t.y_val, t.x_test,
                t.y_test, t.classes)
        for t in SCENARIO.tasks
    ],
)


class Interrupt(RuntimeError):
    pass


class Counting:
    """Mixin: count the tasks trained, and raise (a 'kill') when training task ``stop_at``."""

    stop_at = None

    def before_task(self, task, model, data):
        self.trained = [*getattr(self, "trained", []), task]
        if task == self.stop_at:
            raise Interrupt(f"killed at task {task}")
        super().before_task(task, model, data)


class CountingWSN(Counting, WSN):
    pass


class CountingPackNet(Counting, PackNet):
    pass


def make(strategy, ckpt=None, **kw):
    torch.manual_seed(0)
    model = mlp((64,), 10, 3, width=32)
    args = {"epochs": 1, "batch_size": 32, "lr": 1e-2, "progress": False, "seed": 3} | kw
    return model, Trainer(model, strategy, SMALL, checkpoint_dir=ckpt, **args)


@pytest.mark.parametrize("cls", [CountingWSN, CountingPackNet], ids=["wsn", "packnet"])
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, cls):
    model_a, trainer_a = make(cls(), tmp_path / "a")
    res_a = trainer_a.run()

    killed = cls()
    killed.stop_at = 2
    _, trainer_b = make(killed, tmp_path / "b")
    with pytest.raises(Interrupt):
        trainer_b.run()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["task_001.pt"]

    again = cls()  # the same command, run again in a fresh process state
    model_c, trainer_c = make(again, tmp_path / "b")
    res_c = trainer_c.run()
    assert again.trained == [2]  # finished tasks were not redone
    np.testing.assert_array_equal(res_c.accuracy_matrix, res_a.accuracy_matrix)
    np.testing.assert_array_equal(res_c.random_init_accuracy, res_a.random_init_accuracy)
    assert (res_c.acc, res_c.bwt, res_c.fwt) == (res_a.acc, res_a.bwt, res_a.fwt)
    sa, sc = model_a.state_dict(), model_c.state_dict()
    assert sa.keys() == sc.keys()
    for key in sa:
        assert torch.equal(sa[key], sc[key]), key
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["task_002.pt"]

    # a finished run resumes to the same results without training anything
    done = cls()
    _, trainer_d = make(done, tmp_path / "b")
    res_d = trainer_d.run()
    assert getattr(done, "trained", []) == []
    np.testing.assert_array_equal(res_d.accuracy_matrix, res_a.accuracy_matrix)


def test_resume_refuses_other_arguments(tmp_path):
    _, trainer = make(WSN(), tmp_path, epochs=1)
    trainer.run()
    _, other = make(WSN(), tmp_path, epochs=2)
    with pytest.raises(ValueError, match="same arguments"):
        other.run()
    _, other = make(PackNet(), tmp_path)
    with pytest.raises(ValueError, match="same arguments"):
        other.run()


def test_same_seed_same_results_and_other_seed_differs():
    res = [make(WSN(), seed=s)[1].run() for s in (1, 1, 2)]
    np.testing.assert_array_equal(res[0].accuracy_matrix, res[1].accuracy_matrix)
    assert not np.array_equal(res[0].accuracy_matrix, res[2].accuracy_matrix)


def test_matrix_is_retested_every_row():
    _, trainer = make(Finetune())
    res = trainer.run()
    r = res.accuracy_matrix
    assert r.shape == (3, 3) and not np.isnan(r).any()  # unseen tasks are tested too (FWT)
    assert res.random_init_accuracy.shape == (3,)
    assert not np.array_equal(r[1, :1], r[0, :1])  # finetune: row 1 re-measured task 0
    assert res.acc == pytest.approx(r[-1].mean())
    assert res.fwt == pytest.approx(
        np.mean([r[0, 1] - res.random_init_accuracy[1], r[1, 2] - res.random_init_accuracy[2]])
    )
    assert len(res.timings["train"]) == 3 and res.timings["total"] > 0


def test_results_to_json():
    r = Results(np.array([[0.5, np.nan], [0.5, 0.7]]), np.array([0.1, 0.2]), 0.6, 0.0,
                math.nan, 0.0, {"train": [1.0, math.nan]}, {"seed": 0})
    d = json.loads(r.to_json(allow_nan=False))
    assert d["timings"] == {"train": [1.0, None]}
    assert d["accuracy_matrix"] == [[0.5, None], [0.5, 0.7]]
    assert d["fwt"] is None and d["acc"] == 0.6 and d["config"] == {"seed": 0}
    assert set(d) >= {"accuracy_matrix", "acc", "bwt", "fwt", "forgetting", "timings", "config"}


def test_evaluate_uses_the_requested_split():
    model, trainer = make(WSN())
    val = trainer.evaluate(model, 0, "val")
    test = trainer.evaluate(model, 0, "test")
    assert 0 <= val <= 1 and 0 <= test <= 1
    with pytest.raises(ValueError, match="split"):
        trainer.evaluate(model, 0, "dev")


def test_progress_bars_run(capsys):
    _, trainer = make(PackNet(retrain_epochs=1), progress=True)
    trainer.run()
    assert "task" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kw, err",
    [
        ({"epochs": -1}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"optimizer": "rmsprop"}, ValueError),
        ({"lr": 0.0}, ValueError),
        ({"lr": math.nan}, ValueError),
        ({"lr": math.inf}, ValueError),
        ({"momentum": -1.0}, ValueError),
        ({"weight_decay": math.nan}, ValueError),
        ({"run_config": [1]}, TypeError),
    ],
)
def test_trainer_validates(kw, err):
    with pytest.raises(err):
        make(WSN(), **kw)


def test_trainer_checks_model_and_strategy():
    model = mlp((64,), 10, 2)
    Trainer(model, WSN(), SMALL)  # heads grow as tasks arrive
    assert model.num_tasks == len(model.heads) == 3
    with pytest.raises(TypeError, match="Strategy"):
        Trainer(mlp((64,), 10, 3), object(), SMALL)


def test_checkpoint_carries_the_strategy_arguments_and_the_run_config(tmp_path):
    _, trainer = make(WSN(0.5), tmp_path, epochs=0, run_config={"val_fraction": 0.1})
    trainer.run()
    state = torch.load(tmp_path / "task_002.pt", weights_only=True)
    assert state["config"]["strategy_args"] == {"density": 0.5}
    assert state["config"]["run"] == {"val_fraction": 0.1}
    assert state["config"]["parameters"]["blocks.fc1.weight"] == [32, 64]

    same = make(WSN(density=0.5), tmp_path, epochs=0, run_config={"val_fraction": 0.1})[1]
    assert same.check_resume() == 3
    for strategy, kw, named in [
        (WSN(0.3), {}, "strategy_args.density (0.5 -> 0.3)"),
        (WSN(0.5), {"run_config": {"val_fraction": 0.2}}, "run.val_fraction (0.1 -> 0.2)"),
        (PackNet(), {}, "strategy ('wsn' -> 'packnet')"),
    ]:
        kw = {"epochs": 0, "run_config": {"val_fraction": 0.1}} | kw
        _, other = make(strategy, tmp_path, **kw)
        with pytest.raises(ValueError, match="same arguments") as info:
            other.check_resume()
        assert named in str(info.value)
        with pytest.raises(ValueError, match="same arguments"):
            other.run()
    # another width: refused by the recorded parameter shapes, not by a load_state_dict crash
    torch.manual_seed(0)
    wide = Trainer(mlp((64,), 10, 3, width=48), WSN(0.5), SMALL, checkpoint_dir=tmp_path,
                   epochs=0, batch_size=32, lr=1e-2, progress=False, seed=3,
                   run_config={"val_fraction": 0.1})
    with pytest.raises(ValueError) as info:
        wide.check_resume()
    assert "parameters.blocks.fc1.weight ([32, 64] -> [48, 64])" in str(info.value)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    _, trainer = make(WSN(), tmp_path, epochs=0)
    trainer.run()
    path = tmp_path / "task_002.pt"
    path.write_bytes(path.read_bytes()[: 1000])
    _, again = make(WSN(), tmp_path, epochs=0)
    with pytest.raises(ValueError, match="cannot be read.*delete it"):
        again.run()


def test_strategy_arguments_are_recorded_with_defaults():
    assert WSN().arguments() == {"density": 0.5}
    assert WSN(0.25).arguments() == WSN(density=0.25).arguments() == {"density": 0.25}
    assert PackNet(keep=0.3).arguments() == {"keep": 0.3, "retrain_epochs": 1}
    assert Finetune().arguments() == {}


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def test_checkpoint_stores_the_coded_task_memory_once_and_resumes_identically(tmp_path):
    from bitsub_torch.cl.strategies import TinySubNets

    class CountingTSN(Counting, TinySubNets):
        pass

    def tsn():
        return CountingTSN(0.5, post_prune_iters=0, kl_threshold=math.inf)

    model_a, trainer_a = make(tsn())
    res_a = trainer_a.run()
    killed = tsn()
    killed.stop_at = 2
    _, trainer_b = make(killed, tmp_path)
    with pytest.raises(Interrupt):
        trainer_b.run()

    # The strategy's FieldStore and the model's TaskMemory buffers hold the same coded arrays:
    # the checkpoint holds each once (one storage), so every non-empty store tensor loads as a
    # view of a model tensor's storage, and saving them apart (as before) is larger by their bytes.
    path = tmp_path / "task_001.pt"
    _assert_store_shares_model_storages(path)
    state = torch.load(path, weights_only=True)
    store = [t for t in _tensors(state["strategy"]["store"]) if t.numel()]
    shared = sum(t.numel() * t.element_size() for t in store)
    apart = {**state, "strategy": {k: (v if k != "store" else
                                       _clone_tensors(v)) for k, v in state["strategy"].items()}}
    buf = io.BytesIO()
    torch.save(apart, buf)
    assert buf.getbuffer().nbytes - path.stat().st_size >= shared

    again = tsn()
    model_c, trainer_c = make(again, tmp_path)
    res_c = trainer_c.run()
    assert again.trained == [2]
    _assert_store_shares_model_storages(tmp_path / "task_002.pt")  # also after a resume
    np.testing.assert_array_equal(res_c.accuracy_matrix, res_a.accuracy_matrix)
    sa, sc = model_a.state_dict(), model_c.state_dict()
    assert sa.keys() == sc.keys()
    for key in sa:
        assert sa[key].dtype == sc[key].dtype and torch.equal(sa[key], sc[key]), key
    ta, tc = list(_tensors(trainer_a.strategy.state_dict())), list(_tensors(again.state_dict()))
    assert len(ta) == len(tc) and all(torch.equal(x, y) for x, y in zip(ta, tc, strict=True))


def _assert_store_shares_model_storages(path):
    state = torch.load(path, weights_only=True)
    model_ptrs = {t.untyped_storage().data_ptr() for t in _tensors(state["model"]) if t.numel()}
    store = [t for t in _tensors(state["strategy"]["store"]) if t.numel()]
    assert store and all(t.untyped_storage().data_ptr() in model_ptrs for t in store)


def _clone_tensors(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tensors(v) for v in value)
    return value
