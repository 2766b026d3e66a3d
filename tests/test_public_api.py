"""The public surface: pinned names, and `import bitsub` touches neither torch nor CUDA."""

import subprocess
import sys

import bitsub


def test_all_is_sorted_and_importable():
    assert list(bitsub.__all__) == sorted(bitsub.__all__)
    for name in bitsub.__all__:
        assert hasattr(bitsub, name), name


def test_import_bitsub_imports_neither_torch_nor_cuda():
    code = (
        "import sys, bitsub\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')"
        " or m.startswith('numba.cuda')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


BITSUB_NAMES = {
    "AdaptiveResult", "Capacity", "FormatError", "PackedModel", "Plan", "TaskLayer",
    "adaptive_bitwidth", "build_plan", "decode_mask", "encode_mask", "kmeans_1d", "load",
    "pack_bits", "quantize", "unpack_bits", "validate_network",
}

BITSUB_TORCH_NAMES = {
    "AdaQPacknet", "FieldStore", "Finetune", "KLGate", "PackNet", "PackedModule", "Results",
    "STRATEGIES", "Scenario", "Strategy", "TaskBatchNorm", "TaskConv2d", "TaskData", "TaskLinear",
    "TaskNetwork", "TinySubNets", "Trainer", "WSN", "acc", "alexnet", "bwt", "export",
    "forgetting", "fwt", "get_scenario", "get_strategy", "mlp", "resnet18", "tinynet",
    # one-model (class-incremental) methods
    "DERpp", "ER", "EsaCL", "PruneRetrain", "RehearsalTrainer",
}


def test_public_names_are_pinned():
    # A change to the public surface is a decision: update these sets with it.
    import bitsub_torch

    assert set(bitsub.__all__) == BITSUB_NAMES
    assert set(bitsub_torch.__all__) == BITSUB_TORCH_NAMES
    assert list(bitsub_torch.__all__) == sorted(bitsub_torch.__all__)
    for name in bitsub_torch.__all__:
        assert hasattr(bitsub_torch, name), name


def test_the_issue_contract_names_exist():
    # Names other work relies on.
    from bitsub_torch import cli

    pm = bitsub.PackedModel(word_bits=32, prefix_bits=3)
    for method in ("add_layer", "add_task", "weights", "mask", "private", "bits", "capacity",
                   "save", "matmul", "conv2d", "forward", "plan_bytes", "resolve"):
        assert callable(getattr(pm, method)), method
    assert callable(cli.train_main) and callable(cli.eval_main)


# The modules of the packed model, its storage and `bitsub inspect`: no private name imported
# from another module, and no import cycle among their module-level imports.
BOUNDARY = ("bitsub/model", "bitsub/storage", "bitsub/cli.py", "bitsub/__init__.py")
ALLOWED_PRIVATE: set[tuple[str, str, str]] = set()


def _module_imports():
    """{module: [(imported module, name or None, top level?)]} for the boundary's modules."""
    import ast
    from pathlib import Path

    root = Path(bitsub.__file__).resolve().parents[1]
    out = {}
    for rel in BOUNDARY:
        base = root / rel
        for path in ([base] if base.suffix else sorted(base.rglob("*.py"))):
            mod = ".".join(path.relative_to(root).with_suffix("").parts)
            mod = mod.removesuffix(".__init__")
            tree = ast.parse(path.read_text())
            top = set(map(id, tree.body))
            found = []
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        found.append((node.module, alias.name, id(node) in top))
                elif isinstance(node, ast.Import):
                    found += [(a.name, None, id(node) in top) for a in node.names]
            out[mod] = found
    return out


def test_no_private_imports_across_modules():
    got = {(mod, src, name) for mod, found in _module_imports().items()
           for src, name, _ in found
           if name and name.startswith("_") and name != "__version__" and src != mod}
    assert got == ALLOWED_PRIVATE


def test_no_import_cycle_at_module_level():
    graph = {mod: {src for src, _, top in found if top and src.startswith("bitsub")}
             for mod, found in _module_imports().items()}
    state = {}

    def visit(mod, path):
        if state.get(mod) == "done" or mod not in graph:
            return
        assert state.get(mod) != "open", " -> ".join([*path, mod])
        state[mod] = "open"
        for dep in graph[mod]:
            visit(dep, [*path, mod])
        state[mod] = "done"

    for mod in graph:
        visit(mod, [])
