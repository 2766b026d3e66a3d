"""The procedural scenes: determinism, and the geometry of their exact labels."""

from __future__ import annotations

import numpy as np
import pytest

from bitsub_torch.data.scenes import CLASSES, render

SIZE = 16


@pytest.fixture(scope="module")
def scenes():
    return render(24, seed=3, size=SIZE)


def _rays(size: int) -> np.ndarray:
    # The pinhole camera of the module docstring, written out again from its description.
    c = (np.arange(size) + 0.5) / size * 2 - 1
    xs, ys = np.meshgrid(c, -c)
    d = np.stack([xs, ys, np.ones_like(xs)])
    return d / np.linalg.norm(d, axis=0)


def test_shapes_and_ranges(scenes):
    assert scenes["image"].shape == (24, 3, SIZE, SIZE)
    assert scenes["segmentation"].shape == (24, SIZE, SIZE)
    assert scenes["normal"].shape == (24, 3, SIZE, SIZE)
    assert 0 <= scenes["image"].min() and scenes["image"].max() <= 1
    assert set(np.unique(scenes["segmentation"])) <= set(range(len(CLASSES)))
    assert (scenes["depth"] > 0).all()
    np.testing.assert_allclose(np.linalg.norm(scenes["normal"], axis=1), 1.0, atol=1e-5)


def test_deterministic_and_independent_of_count_and_chunk(scenes):
    again = render(5, seed=3, size=SIZE, first=10, chunk=2)
    for k in scenes:
        assert np.array_equal(again[k], scenes[k][10:15]), k
    other = render(5, seed=4, size=SIZE, first=10)
    assert not np.array_equal(other["depth"], again["depth"])


def test_floor_and_wall_geometry(scenes):
    d = _rays(SIZE)
    seg, depth, normal = scenes["segmentation"], scenes["depth"], scenes["normal"]
    for k in range(len(seg)):
        t = depth[k] / d[2]  # the ray parameter of the hit point
        floor, wall = seg[k] == 0, seg[k] == 1
        # The floor is the plane y = -1, facing up.
        np.testing.assert_allclose((t * d[1])[floor], -1.0, atol=1e-4)
        assert (normal[k][:, floor] == np.array([[0.0], [1.0], [0.0]])).all()
        # The back wall is a plane z = const, facing the camera.
        if wall.any():
            assert np.ptp(depth[k][wall]) < 1e-4
            assert (normal[k][:, wall] == np.array([[0.0], [0.0], [-1.0]])).all()
        # Every visible surface faces the camera.
        assert ((normal[k] * d).sum(0) <= 1e-6).all()


def test_objects_stand_on_the_floor_and_occlude(scenes):
    d = _rays(SIZE)
    seg, depth = scenes["segmentation"], scenes["depth"]
    objects = seg >= 2
    assert objects.any(), "scenes must show objects"
    t = depth / d[2]
    y = t * d[1]
    # Objects stand on the floor, below the camera height (y = 0) and above the floor.
    assert (y[objects] >= -1.0 - 1e-4).all()
    # An object is never behind the wall of its scene.
    for k in range(len(seg)):
        if (seg[k] == 1).any():
            assert depth[k][objects[k]].max(initial=0) <= depth[k][seg[k] == 1].max() + 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        render(2, size=2)
    with pytest.raises(ValueError, match="n must"):
        render(-1)
    assert render(0, size=8)["image"].shape == (0, 3, 8, 8)
