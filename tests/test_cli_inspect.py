"""``bitsub inspect FILE``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bitsub.cli import main
from tests.test_capacity import case_study_model


def test_inspect_prints_layers_banks_tasks_bits_and_capacity(tmp_path, capsys):
    pm = case_study_model()
    pm.set_network([{"op": "linear", "layer": "L1", "bias": None}, {"op": "relu"},
                    {"op": "linear", "layer": "L2", "bias": None}])
    path = tmp_path / "m.h5"
    pm.save(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 layers, 3 tasks, 1 banks" in out
    assert "L1" in out and "2x3" in out and "3x2" in out
    assert "bank 0: tasks [0, 1, 2]" in out
    assert "task 1 (bank 0, prefix 2): L1: 1b/1/5; L2: 1b/1/5" in out
    assert '"op": "relu"' in out
    cap = pm.capacity()
    assert f"capacity: {cap.percent:.3f}%" in out and f"{cap.total}" in out
    size = path.stat().st_size
    assert f"file: {size} bytes; np.savez of one dense float32 copy" in out
    assert f"payload (total + private): {cap.payload_bytes} bytes" in out
    assert f"file: {size} bytes ({size - cap.payload_bytes} of seal, index" in out

    assert main(["inspect", str(path), "--prefix", "--no-padding", "--no-masks",
                 "--codebook-scope", "task"]) == 0
    out = capsys.readouterr().out
    assert "prefix=True" in out and "padding=False" in out and "codebook_scope='task'" in out


def test_inspect_refuses_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not a bitsub file at all" * 10)
    assert main(["inspect", str(bad)]) == 2
    assert "not a bitsub file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert "missing.h5" in err and err.count("\n") == 1
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and err.count("\n") == 1 and "Traceback" not in err
    # a crafted index (valid checksums) with a dtype-like string where a shape is expected
    from tests.test_storage import read_index, write_index

    pm = case_study_model()
    pm.save(bad)
    data = bytearray(bad.read_bytes())
    doc = read_index(data)
    doc["model"]["layers"][0][1] = ["<f4')", 3]
    write_index(data, doc)
    bad.write_bytes(data)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not an integer" in err and err.count("\n") == 1


def test_console_script_entry_point(tmp_path):
    pm = case_study_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    script = Path(sys.executable).parent / "bitsub"  # the installed console script
    if script.exists():
        cmd = [str(script)]
    else:
        cmd = [sys.executable, "-c", "import sys; from bitsub.cli import main; sys.exit(main())"]
    out = subprocess.run([*cmd, "inspect", str(path)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "bank 0: tasks [0, 1, 2]" in out.stdout
