"""How much a richer context could shrink a packed model's masks: ideal costs per context.

Usage::

    PYTHONPATH=. python bench/mask_context.py MODEL.h5

For every task that is not its bank's first and every layer, the ideal cost of its mask given a
context the decoder already holds (earlier masks of the bank, the values they store) is
``sum over the context's classes c of n_c H(p_c)``: ``n_c`` positions of class c of which a
fraction ``p_c`` are in the mask, ``H`` the binary entropy. No code tables are counted, so each
figure is a lower bound for a coder that splits the mask by that context (the file's own coder
splits by one earlier mask or their union). Printed in % of the dense float32 model's bits,
summed over those tasks and layers, beside what the file stores for the same masks. A
diagnostic (README, "Could the masks be coded for less?"); nothing here is used by bitsub.
"""

from __future__ import annotations

import argparse

import numpy as np

import bitsub


def entropy_bits(k: int, n: int) -> float:
    """n H(k / n) in bits: the ideal cost of n positions of which k are set."""
    if n == 0 or k in (0, n):
        return 0.0
    p = k / n
    return float(-n * (p * np.log2(p) + (1 - p) * np.log2(1 - p)))


def conditional_bits(mask: np.ndarray, classes: np.ndarray) -> float:
    """Sum over the classes of the ideal cost of the mask's positions in each."""
    return sum(entropy_bits(int(mask[classes == c].sum()), int((classes == c).sum()))
               for c in np.unique(classes))


def magnitude_quartile(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """0 outside ``inside``; 1-4 the quartile of |value| among the positions inside."""
    out = np.zeros(values.shape, np.int64)
    if inside.any():
        a = np.abs(values[inside])
        out[inside] = 1 + np.searchsorted(np.quantile(a, [0.25, 0.5, 0.75]), a, side="right")
    return out


def context_costs(pm: bitsub.PackedModel) -> dict[str, float]:
    """Bits per context, summed over the tasks after each bank's first and every layer."""
    total: dict[str, float] = {}
    for t in pm.tasks:
        earlier = [u for u in pm.bank_tasks(pm.bank(t)) if u < t]
        if not earlier:
            continue
        for name in pm.layers:
            mask = pm.mask(t, name).reshape(-1)
            masks = [pm.mask(u, name).reshape(-1) for u in earlier]
            union = np.logical_or.reduce(masks).astype(np.int64)
            count = np.sum(masks, axis=0)
            previous = masks[-1].astype(np.int64)
            stored = np.zeros(mask.size, np.float32)  # the value each written position holds
            for u in earlier:
                w = pm.write_mask(u, name).reshape(-1)
                stored[w] = pm.weights(u, name).reshape(-1)[w]
            quartile = magnitude_quartile(stored, union.astype(bool))
            costs = {
                "stored in the file": 8.0 * len(pm.encoded_mask(t, name)),
                "alone": entropy_bits(int(mask.sum()), mask.size),
                "union of earlier masks": conditional_bits(mask, union),
                "previous mask": conditional_bits(mask, previous),
                "count of earlier masks": conditional_bits(mask, count),
                "union x |value| quartile": conditional_bits(mask, quartile),
                "previous x count": conditional_bits(mask, previous * 1000 + count),
                "previous x count x |value| quartile":
                    conditional_bits(mask, (previous * 1000 + count) * 10 + quartile),
            }
            for key, bits in costs.items():
                total[key] = total.get(key, 0.0) + bits
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a packed model file (model.h5)")
    args = p.parse_args(argv)
    pm = bitsub.load(args.model)
    dense = 32 * sum(int(np.prod(pm.shape(name))) for name in pm.layers)
    print(f"{args.model}: masks of the tasks after each bank's first, % of the dense bits")
    for key, bits in context_costs(pm).items():
        print(f"  {key:38s} {100 * bits / dense:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
