"""Procedural 3-D scenes with exact per-pixel segmentation, depth and surface normals.

Every scene is ray-cast analytically (no mesh, no rasteriser): a pinhole camera at the origin
looks along +z (y up) into a room with a floor (y = -1) and a back wall (z = ``wall``), in which
1 to 4 primitives stand on the floor: spheres, boxes turned about the vertical axis and upright
cylinders (with their top cap). For every pixel the nearest hit gives

- the class of the surface: 0 floor, 1 wall, 2 sphere, 3 box, 4 cylinder (``CLASSES``);
- its depth: the z coordinate of the hit point (depth along the optical axis, as in NYU-v2);
- its unit surface normal, in camera coordinates;
- its colour: the object's random albedo times Lambertian shading from a random light, plus a
  small per-pixel noise, so that shape is seen through shading and not read off the colour.

Everything is a NumPy expression over all pixels of a chunk of scenes, deterministic from the
seed: ``render(n, seed)`` draws scene k from ``numpy.random.default_rng([seed, k])``, so the first
scenes do not depend on ``n``. 3,000 scenes of 32 x 32 take 5-10 s on a loaded 2-core machine,
so :func:`bitsub_torch.data.multitask.get_mtl_scenario` caches its splits on disk.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASSES", "MAX_OBJECTS", "render"]

CLASSES = ("floor", "wall", "sphere", "box", "cylinder")
MAX_OBJECTS = 4
_FOCAL = 1.0


def _draw(n: int, seed: int, first: int, size: int) -> dict[str, np.ndarray]:
    """Scene parameters of scenes ``first .. first + n - 1``, one generator per scene."""
    keys = ("kind", "active", "cx", "cz", "size", "height", "angle", "albedo")
    keys += ("wall", "light", "floor_rgb", "wall_rgb", "noise")
    out: dict[str, list] = {k: [] for k in keys}
    for k in range(first, first + n):
        rng = np.random.default_rng([seed, k])
        count = int(rng.integers(1, MAX_OBJECTS + 1))
        out["active"].append(np.arange(MAX_OBJECTS) < count)
        out["kind"].append(rng.integers(2, 5, MAX_OBJECTS))
        out["cx"].append(rng.uniform(-1.6, 1.6, MAX_OBJECTS))
        out["cz"].append(rng.uniform(2.2, 4.5, MAX_OBJECTS))
        out["size"].append(rng.uniform(0.4, 0.9, MAX_OBJECTS))
        out["height"].append(rng.uniform(0.6, 1.8, MAX_OBJECTS))
        out["angle"].append(rng.uniform(0.0, np.pi / 2, MAX_OBJECTS))
        out["albedo"].append(rng.uniform(0.2, 1.0, (MAX_OBJECTS, 3)))
        out["wall"].append(rng.uniform(5.5, 7.5))
        light = np.array([rng.uniform(-1, 1), rng.uniform(0.5, 1.5), -rng.uniform(0.5, 1.5)])
        out["light"].append(light / np.linalg.norm(light))
        out["floor_rgb"].append(rng.uniform(0.2, 1.0, 3))
        out["wall_rgb"].append(rng.uniform(0.2, 1.0, 3))
        out["noise"].append(rng.normal(0.0, 0.02, (size * size, 3)))
    return {k: np.asarray(v, dtype=np.float64 if k not in ("kind", "active") else None)
            for k, v in out.items()}


def _rays(size: int) -> np.ndarray:
    """Unit ray directions, shape (size*size, 3), row-major from the top-left pixel."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    xs, ys = np.meshgrid(c, -c)
    d = np.stack([xs.ravel(), ys.ravel(), np.full(size * size, _FOCAL)], axis=1)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _sphere(d, cx, cy, cz, r):
    # |t d - c|^2 = r^2 with |d| = 1: t = b - sqrt(b^2 - |c|^2 + r^2), b = d.c
    b = d[..., 0] * cx + d[..., 1] * cy + d[..., 2] * cz
    disc = b * b - (cx * cx + cy * cy + cz * cz - r * r)
    t = b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
    p = d * t[..., None]
    n = (p - np.stack([cx, cy, cz], -1)) / r[..., None]
    return t, n


def _box(d, cx, cy, cz, half, hy, angle):
    # Into the box frame: rotate by -angle about y; then the slab method.
    ca, sa = np.cos(angle), np.sin(angle)
    ox, oy, oz = -cx, -cy, -cz
    lox, loz = ca * ox - sa * oz, sa * ox + ca * oz
    ldx, ldz = ca * d[..., 0] - sa * d[..., 2], sa * d[..., 0] + ca * d[..., 2]
    o = np.stack(np.broadcast_arrays(lox, oy, loz), -1)
    ld = np.stack(np.broadcast_arrays(ldx, d[..., 1], ldz), -1)
    h = np.stack(np.broadcast_arrays(half, hy, half), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-h - o) / ld
        t2 = (h - o) / ld
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin, tmax = lo.max(-1), hi.min(-1)
    t = np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)
    axis = lo.argmax(-1)
    ln = np.zeros(ld.shape)
    sign = -np.sign(np.take_along_axis(ld, axis[..., None], -1))[..., 0]
    np.put_along_axis(ln, axis[..., None], sign[..., None], -1)
    # Back to the camera frame: rotate by +angle about y.
    n = np.stack([ca * ln[..., 0] + sa * ln[..., 2], ln[..., 1],
                  -sa * ln[..., 0] + ca * ln[..., 2]], -1)
    return t, n


def _cylinder(d, cx, cz, r, top):
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = d[..., 0] * cx + d[..., 2] * cz
    disc = b * b - a * (cx * cx + cz * cz - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (b - np.sqrt(np.maximum(disc, 0.0))) / a
    y = ts * d[..., 1]
    ts = np.where((disc >= 0) & (ts > 1e-6) & (y >= -1.0) & (y <= top), ts, np.inf)
    ns = np.stack([ts * d[..., 0] - cx, np.zeros_like(ts), ts * d[..., 2] - cz], -1)
    ns = ns / r[..., None]
    # The top cap, seen from above (the camera is at y = 0, the tops are below it).
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = top / d[..., 1]
    dx, dz = tc * d[..., 0] - cx, tc * d[..., 2] - cz
    tc = np.where((tc > 1e-6) & (dx * dx + dz * dz <= r * r) & (top < 0), tc, np.inf)
    cap = tc < ts
    t = np.where(cap, tc, ts)
    n = np.where(cap[..., None], np.array([0.0, 1.0, 0.0]), ns)
    return t, n


def _render_chunk(p: dict[str, np.ndarray], size: int):
    m = len(p["wall"])
    d = _rays(size)[None, :, :]  # (1, P, 3)
    # Floor and back wall.
    with np.errstate(divide="ignore"):
        t_floor = np.where(d[..., 1] < 0, -1.0 / d[..., 1], np.inf) * np.ones((m, 1))
    t_wall = p["wall"][:, None] / d[..., 2]
    best_t = np.minimum(t_floor, t_wall)
    cls = np.where(t_floor < t_wall, 0, 1)
    normal = np.where((t_floor < t_wall)[..., None], np.array([0.0, 1.0, 0.0]),
                      np.array([0.0, 0.0, -1.0]))
    albedo = np.where((t_floor < t_wall)[..., None], p["floor_rgb"][:, None, :],
                      p["wall_rgb"][:, None, :])
    for j in range(MAX_OBJECTS):
        kind, act = p["kind"][:, j], p["active"][:, j]
        cx, cz, r = p["cx"][:, j, None], p["cz"][:, j, None], p["size"][:, j, None]
        hgt = p["height"][:, j, None] * r
        t = np.full(best_t.shape, np.inf)
        n = np.zeros(best_t.shape + (3,))
        # Each primitive is cast only in the scenes where object j is of its kind.
        for code in (2, 3, 4):
            s = np.flatnonzero(act & (kind == code))
            if not len(s):
                continue
            if code == 2:
                t[s], n[s] = _sphere(d, cx[s], -1.0 + r[s], cz[s], r[s])
            elif code == 3:
                t[s], n[s] = _box(d, cx[s], -1.0 + hgt[s], cz[s], r[s], hgt[s],
                                  p["angle"][s, j, None])
            else:
                t[s], n[s] = _cylinder(d, cx[s], cz[s], r[s], -1.0 + 2 * hgt[s])
        k = kind[:, None]
        hit = t < best_t
        best_t = np.where(hit, t, best_t)
        cls = np.where(hit, k, cls)
        normal = np.where(hit[..., None], n, normal)
        albedo = np.where(hit[..., None], p["albedo"][:, j][:, None, :], albedo)
    normal = normal / np.linalg.norm(normal, axis=-1, keepdims=True)
    depth = best_t * d[..., 2]
    shade = np.clip((normal * p["light"][:, None, :]).sum(-1), 0.0, None)
    rgb = np.clip(albedo * (0.25 + 0.75 * shade[..., None]) + p["noise"], 0.0, 1.0)
    shape = (m, size, size)
    return (rgb.reshape(shape + (3,)).transpose(0, 3, 1, 2).astype(np.float32),
            cls.reshape(shape).astype(np.int64),
            depth.reshape(shape).astype(np.float32),
            normal.reshape(shape + (3,)).transpose(0, 3, 1, 2).astype(np.float32))


def render(n: int, seed: int = 0, size: int = 32, first: int = 0, chunk: int = 256
           ) -> dict[str, np.ndarray]:
    """Render scenes ``first .. first + n - 1`` of the stream of ``seed``.

    Parameters
    ----------
    n : int
        Number of scenes (0 gives empty arrays).
    seed : int
        The stream; scene k is drawn from ``numpy.random.default_rng([seed, k])``.
    size : int
        Image side in pixels (4..256).
    first : int
        Index of the first scene, so that disjoint splits come from one stream.
    chunk : int
        Scenes rendered at once (bounds the memory).

    Returns
    -------
    dict
        ``image`` (n, 3, size, size) float32 in [0, 1]; ``segmentation`` (n, size, size) int64
        class ids (``CLASSES``); ``depth`` (n, size, size) float32 > 0; ``normal``
        (n, 3, size, size) float32 unit vectors in camera coordinates.
    """
    for name, v, lo, hi in (("n", n, 0, 10**7), ("size", size, 4, 256), ("first", first, 0, 10**9),
                            ("chunk", chunk, 1, 10**6)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an int in {lo}..{hi}, got {v!r}")
    parts = []
    for start in range(first, first + n, chunk):
        m = min(chunk, first + n - start)
        parts.append(_render_chunk(_draw(m, seed, start, size), size))
    if not parts:
        return {"image": np.zeros((0, 3, size, size), np.float32),
                "segmentation": np.zeros((0, size, size), np.int64),
                "depth": np.zeros((0, size, size), np.float32),
                "normal": np.zeros((0, 3, size, size), np.float32)}
    keys = ("image", "segmentation", "depth", "normal")
    return {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(keys)}
