"""The results-table runner (bitsub_torch.experiments) on a tiny scenario."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bitsub
from bitsub_torch import experiments

FORGET_FREE = ("WSN", "TinySubNets", "Independent")


def _first_task_only(pm: bitsub.PackedModel) -> bitsub.PackedModel:
    """A packed model holding only task 0 of ``pm`` (its masks and values)."""
    one = bitsub.PackedModel(word_bits=64, prefix_bits=pm.prefix_bits)
    for name in pm.layers:
        one.add_layer(name, pm.shape(name))
    layers = {}
    for name in pm.layers:
        mask = pm.mask(0, name)
        layers[name] = bitsub.TaskLayer(mask, mask, values=pm.weights(0, name), bits=32)
    one.add_task(layers)
    return one


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    lines: list[str] = []
    result = experiments.run(["splitdigits"], ["Finetune", *FORGET_FREE], out=out, tasks=2,
                             epochs=1, seed=0, log=lines.append)
    return out, result, lines


def test_table_files(table):
    out, result, lines = table
    stored = json.loads((out / "table.json").read_text())
    assert stored["rows"] == result["rows"]
    assert [r["method"] for r in stored["rows"]] == ["Finetune", *FORGET_FREE]
    assert len(lines) == 4
    md = (out / "table.md").read_text()
    assert "## splitdigits (2 tasks)" in md
    for method in ("Finetune", *FORGET_FREE):
        assert f"| {method} |" in md
    assert "97.14" in md  # the paper's TinySubNets p-MNIST figure beside ours
    assert ("- BWT exactly 0.0 in every run (matrix and file) for WSN, TinySubNets, Independent:"
            " yes") in md
    for r in stored["rows"]:
        assert r["tasks"] == 2 and r["seed"] == 0 and r["epochs"] == 1
        assert (out / "splitdigits" / r["strategy"] / "seed0" / "model.h5").is_file()
        assert r["file_bytes"] == (out / "splitdigits" / r["strategy"] / "seed0" /
                                   "model.h5").stat().st_size
        assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["val_acc_file"] <= 1.0
        assert r["capacity"]["percent"] > 0


def test_forget_free_bwt_is_exactly_zero(table):
    _, result, _ = table
    rows = {r["method"]: r for r in result["rows"]}
    for method in FORGET_FREE:
        assert rows[method]["bwt"] == 0.0, method
        assert rows[method]["bwt_file"] == 0.0, method
        assert rows[method]["acc_file"] == pytest.approx(rows[method]["acc"], abs=1e-12)


def test_capacity_components_add_up(table):
    out, result, _ = table
    for r in result["rows"]:
        c = r["capacity"]
        assert c["percent"] == pytest.approx(c["fields"] + c["codebooks"] + c["masks"])
        pm = bitsub.load(out / "splitdigits" / r["strategy"] / "seed0" / "model.h5")
        assert c["stored_percent"] == pytest.approx(pm.capacity().percent)
        sizes = experiments.mask_bits(pm)
        assert sizes["best"] == c["bits"]["masks"]
        assert sizes["best"] <= min(sizes["alone"], sizes["previous"], sizes["union"])
        # the first task of a bank has no context: its masks cost the same in every coding
        first = experiments.mask_bits(_first_task_only(pm))
        assert len(set(first.values())) == 1
        positions = c["dense_bits"] // 32
        assert r["mask_saving"] == pytest.approx(1 - c["bits"]["masks"] / (2 * positions))
    rows = {r["method"]: r for r in result["rows"]}
    # two independent float32 models: two banks, every position written twice at 32 bits
    ind = rows["Independent"]
    assert ind["banks"] == 2
    assert ind["capacity"]["paper_style"] == pytest.approx(200.0)
    assert all(b == [32] for b in ind["bits"])
    tsn = rows["TinySubNets"]
    assert all(1 <= b <= 8 for task in tsn["bits"] for b in task)


def test_independent_keeps_each_task(table):
    out, _, _ = table
    pm = bitsub.load(out / "splitdigits" / "independent" / "seed0" / "model.h5")
    w0, w1 = pm.weights(0, "fc1"), pm.weights(1, "fc1")
    assert w0.shape == w1.shape and not np.array_equal(w0, w1)


def test_rerun_resumes(table):
    out, result, _ = table
    again = experiments.run(["splitdigits"], ["WSN", "Independent"], out=out, tasks=2, epochs=1,
                            seed=0, log=lambda line: None)
    first = {r["method"]: r for r in result["rows"]}
    for row in again["rows"]:
        before = first[row["method"]]
        assert row["accuracy_matrix"] == before["accuracy_matrix"]
        assert row["file_accuracy"] == before["file_accuracy"]  # from the checkpointed state


def test_table_shows_mean_and_sample_std_over_seeds(table):
    _, result, _ = table
    rows = [r for r in result["rows"] if r["method"] in ("WSN", "Independent")]
    other = [{**r, "seed": 1, "acc": r["acc"] - 0.1} for r in rows]
    md = experiments.format_table({**result, "rows": rows + other})
    for r in rows:
        accs = np.array([r["acc"], r["acc"] - 0.1]) * 100
        assert f"| {r['method']} | 2 | {accs.mean():.2f} ± {accs.std(ddof=1):.2f} |" in md


def test_tinysubnets_is_also_run_at_wsn_density():
    from bitsub_torch.cl.strategies import WSN

    assert experiments.VARIANTS["TinySubNets @ WSN density"] == (
        "tinysubnets", {"density": WSN().density})


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown methods"):
        experiments.run(["splitdigits"], ["NoSuch"], out=tmp_path)
    with pytest.raises(ValueError, match="unknown scenarios"):
        experiments.run(["nowhere"], ["WSN"], out=tmp_path)
    assert experiments.main(["--strategy-args", "[1]", "--out", str(tmp_path)]) == 2


def test_cnn_rows_run_the_conv_network(tmp_path, monkeypatch, fake_fashion_mnist):
    from bitsub_torch.nn import models

    # the table builds what bitsub-train builds without flags: the scenario's network
    assert models.SCENARIO_NETWORKS["splitfmnist2d"] == ("alexnet", 0.25)
    monkeypatch.setitem(models.SCENARIO_NETWORKS, "splitfmnist2d", ("alexnet", 0.1))
    out = tmp_path / "table"
    result = experiments.run(["splitfmnist2d"], ["TinySubNets"], out=out, tasks=2,
                             epochs=1, seed=0, log=lambda line: None)
    for r in result["rows"]:
        assert (r["model"], r["width"]) == ("alexnet", 0.1)
        assert r["bwt"] == 0.0 and r["bwt_file"] == 0.0
        assert r["acc_file"] == pytest.approx(r["acc"], abs=1e-12)
        pm = bitsub.load(out / "splitfmnist2d" / r["strategy"] / "seed0" / "model.h5")
        assert any(name.startswith("conv") for name in pm.layers)
    assert "## splitfmnist2d (2 tasks, alexnet at width 0.1)" in (out / "table.md").read_text()


def _snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_no_train_reads_finished_runs_through_links_and_writes_nothing_in_them(table, tmp_path):
    out, result, _ = table
    # a second table whose method directories are links to the first table's finished runs
    (tmp_path / "splitdigits").mkdir()
    for method in ("wsn", "independent"):
        (tmp_path / "splitdigits" / method).symlink_to(out / "splitdigits" / method)
    before = _snapshot(out / "splitdigits")
    again = experiments.run(["splitdigits"], ["WSN", "Independent"], out=tmp_path, tasks=2,
                            epochs=1, seed=0, log=lambda line: None, train_runs=False)
    assert _snapshot(out / "splitdigits") == before
    first = {r["method"]: r for r in result["rows"]}
    for row in again["rows"]:
        for key in ("acc", "bwt", "bwt_file", "val_acc_file", "capacity", "bits", "file_bytes"):
            assert row[key] == first[row["method"]][key], (row["method"], key)
    assert "| WSN | 1 |" in (tmp_path / "table.md").read_text()
    # an unfinished run, or one made with another seed, is refused before anything is written
    with pytest.raises(ValueError, match="is not finished"):
        experiments.run(["splitdigits"], ["PackNet"], out=tmp_path, tasks=2, epochs=1, seed=0,
                        log=lambda line: None, train_runs=False)
    other = tmp_path / "other"
    (other / "splitdigits" / "wsn").mkdir(parents=True)
    (other / "splitdigits" / "wsn" / "seed3").symlink_to(out / "splitdigits" / "wsn" / "seed0")
    with pytest.raises(ValueError, match="other arguments: seed 0"):
        experiments.run(["splitdigits"], ["WSN"], out=other, tasks=2, epochs=1, seed=3,
                        log=lambda line: None, train_runs=False)
    assert not (tmp_path / "splitdigits" / "packnet").exists()
    assert experiments.main(["--no-train", "--out", str(tmp_path), "--scenarios", "splitdigits",
                             "--strategies", "packnet", "--seeds", "0", "--tasks", "2",
                             "--epochs", "1"]) == 2
