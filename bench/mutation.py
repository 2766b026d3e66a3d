"""Sampled mutation testing (mutmut) of the read rule, the word checks, bit packing and metrics.

Run it with ``make mutation`` (or ``NUMBA_DISABLE_JIT=1 python bench/mutation.py``); it needs
``pip install mutmut`` (the ``mutation`` extra). The configuration is ``[tool.mutmut]`` in
pyproject.toml: mutants are generated for the modules named there, copied under ``mutants/``,
and each sampled mutant runs the tests that cover its function. ``NUMBA_DISABLE_JIT=1`` makes
the kernels plain Python, so their mutated bodies are what runs.

It prints the score per module (detected = killed or timed out, over the mutants run) and the
diff of every mutant not detected.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

# module -> the functions sampled (mutmut's mangled names: x_<function>, xǁ<Class>ǁ<method>)
FUNCTIONS = {
    # the read rule: its kernels (in readrule once packed.py is split) and the accessors
    "bitsub.model.readrule": ["x__resolve_kernel_py", "x__weights_kernel_py"],
    "bitsub.model.packed": [
        "x__resolve_kernel_py", "x__weights_kernel_py", "xǁPackedModelǁresolve",
        "xǁPackedModelǁweights", "xǁPackedModelǁ_prefix_tables",
    ],
    "bitsub.codecs.bitfield": ["x_pack_bits", "x_unpack_bits", "x_packed_size"],
    "bitsub_torch.cl.metrics": ["x__matrix", "x_acc", "x_bwt", "x_fwt", "x_forgetting"],
}


DETECTED = ("killed", "timeout")


def mutmut(*args: str, check: bool = True) -> str:
    # CI=1: the derandomized hypothesis profile, so that a rerun runs the same examples
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", OMP_NUM_THREADS="1", CI="1")
    out = subprocess.run([sys.executable, "-m", "mutmut", *args], env=env, text=True,
                         capture_output=True)
    if check and out.returncode:
        sys.exit(f"mutmut {' '.join(args[:2])} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out.stdout


def all_mutants() -> list[str]:
    names = []
    for meta in Path("mutants").rglob("*.py.meta"):
        names += json.loads(meta.read_text())["exit_code_by_key"]
    return names


def sampled(names: list[str], fraction: float, seed: int) -> list[str]:
    pattern = re.compile(r"^(.*)\.(x.*?)__mutmut_\d+$")
    chosen = []
    for name in sorted(names):
        mod, fn = pattern.match(name).groups()
        if fn in FUNCTIONS.get(mod, ()):
            chosen.append(name)
    rng = random.Random(seed)
    return sorted(rng.sample(chosen, round(len(chosen) * fraction)))


def main() -> None:
    """Generate the mutants, run a sample of those in FUNCTIONS, print scores and survivors."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.5, help="share of mutants to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--children", default="2", help="parallel mutant runs")
    args = ap.parse_args()
    first = f"bitsub_torch.cl.metrics.{FUNCTIONS['bitsub_torch.cl.metrics'][1]}__mutmut_1"
    mutmut("run", first, "--max-children", args.children)  # generates every mutant, and stats
    sample = sampled(all_mutants(), args.fraction, args.seed)
    print(f"running {len(sample)} sampled mutants (fraction {args.fraction}, seed {args.seed})")
    mutmut("run", *sample, "--max-children", args.children)
    status = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, st = line.strip().rpartition(": ")
        status[name] = st
    survivors = []
    for mod in FUNCTIONS:
        mine = [n for n in sample if n.startswith(mod + ".")]
        if not mine:
            continue
        # a mutant that makes the tests hang (timeout) is detected, as one that fails them
        killed = sum(status.get(n) in DETECTED for n in mine)
        left = [n for n in mine if status.get(n) not in DETECTED]
        survivors += left
        other = Counter(status.get(n) for n in left)
        print(f"{mod}: {killed}/{len(mine)} detected = {100 * killed / max(len(mine), 1):.1f}% "
              f"(not detected: {dict(other)})")
    total = len(sample) - len(survivors)
    print(f"all: {total}/{len(sample)} detected = {100 * total / max(len(sample), 1):.1f}%")
    for name in survivors:
        print(f"\n--- {name}: {status.get(name)}")
        print("\n".join(ln for ln in mutmut("show", name, check=False).splitlines()
                        if ln[:1] in "+-" and ln[:3] not in ("+++", "---")))


if __name__ == "__main__":
    main()
