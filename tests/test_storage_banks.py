"""Load decodes the banks' tasks on the engine threads: the model is the same, and of several
bad tasks the first (in task order) is the one the error names, as when decoding in order."""

from __future__ import annotations

import numpy as np
import pytest

import bitsub
from bitsub import FormatError, PackedModel, TaskLayer
from tests.test_storage import read_index, write_index

SHAPE = (256, 256)  # large enough for the banks to be decoded on the engine threads


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    rng = np.random.default_rng(5)
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", SHAPE)
    for t in range(5):
        mask = rng.random(SHAPE) < 0.6
        pm.add_task({"fc": TaskLayer(mask, mask, bits=3, codebook=np.arange(8.0),
                                     codes=rng.integers(0, 8, SHAPE))},
                    bank="new" if t in (2, 4) else None)
    path = tmp_path_factory.mktemp("banks") / "m.h5"
    pm.save(path)
    return pm, path.read_bytes()


def test_banks_decoded_apart_load_the_same_model(image, tmp_path):
    pm, data = image
    assert [pm.bank(t) for t in pm.tasks] == [0, 0, 1, 1, 2]
    path = tmp_path / "m.h5"
    path.write_bytes(data)
    back = bitsub.load(path)
    assert back == pm
    for t in pm.tasks:
        assert back.weights(t, "fc").tobytes() == pm.weights(t, "fc").tobytes()


@pytest.mark.parametrize("bad, bank_of, named", [
    ([3], {}, "task 3 layer 0"),
    ([1, 3], {}, "task 1 layer 0"),
    ([3, 4], {}, "task 3 layer 0"),
    ([1], {2: 7}, "task 1 layer 0"),
    ([3], {2: 7}, "task 2 bank"),
])
def test_the_first_bad_task_is_named(image, tmp_path, bad, bank_of, named):
    _, data = image
    data = bytearray(data)
    doc = read_index(data)
    for t in bad:
        doc["model"]["tasks"][t]["layers"][0][0] = 17  # no such bit-width
    for t, k in bank_of.items():
        doc["model"]["tasks"][t]["bank"] = k
    write_index(data, doc)
    path = tmp_path / "m.h5"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=named):
        bitsub.load(path)
