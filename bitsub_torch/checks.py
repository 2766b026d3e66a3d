"""The checks of ``bitsub-train`` and ``bitsub-eval``: every argument before anything is written.

`check_train_arguments` checks all of `bitsub_torch.cli.train`'s arguments (the strategy's by
the strategy's own `Strategy.check_arguments`, without a model); `check_out` refuses an output
directory that would make a write fail after training; `error_line` turns a `USER_ERRORS`
exception (a user's mistake, missing data or package, an I/O error) into the one line the
tools print before exiting with status 2.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bitsub import validate

__all__ = [
    "MODELS", "USER_ERRORS", "check_int", "check_out", "check_positive",
    "check_train_arguments", "error_line", "is_user_error", "naming",
]

MODELS = ("mlp", "alexnet", "tinynet", "resnet18")

# What a user's mistake, missing data or package, or the file system can raise: one line each.
# Anything else is a bug in bitsub and keeps its traceback.
USER_ERRORS = (OSError, ValueError, TypeError, ImportError)

# The packages whose ValueError / TypeError is a message to the user (see `is_user_error`).
_OWN_PACKAGES = (Path(validate.__file__).resolve().parent, Path(__file__).resolve().parent)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one line for the user (True) or a bug that keeps its traceback.

    OSError and ImportError always are (the file system, a missing package). A ValueError or
    TypeError is when bitsub raised it, or C code called from bitsub did (the innermost Python
    frame is bitsub's): bitsub checks what users give before it runs. Raised inside another
    library's Python code (torch's ``Expected more than 1 value per channel`` on a batch of one,
    say), it is bitsub calling that library wrongly, not a mistake of the user's.
    """
    if isinstance(exc, (OSError, ImportError)):
        return True
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:  # never raised (made by hand): take it as a message
        return True
    where = Path(last.tb_frame.f_code.co_filename).resolve()
    return any(where.is_relative_to(root) for root in _OWN_PACKAGES)


def error_line(exc: BaseException) -> str:
    """One line saying what went wrong, for a `USER_ERRORS` exception (with a hint for I/O)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        msg = f"{exc.strerror}{where}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            msg += ": free some space, then run the same command again (it resumes)"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and "--out" not in msg:
            msg += ": choose a path you can write to"
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high``, else an error naming the flag of argument ``name``."""
    return validate.check_int(value, _flag(name), low, high)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite float > 0, else a ValueError naming the flag of argument ``name``."""
    flag = _flag(name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"{flag} must be a finite number > 0, got {value!r}")
    if not 0 < float(value) < math.inf:
        raise ValueError(f"{flag} must be a finite number > 0, got {value}")
    return float(value)


def check_train_arguments(
    *,
    strategy: str,
    scenario: str,
    tasks: int | None,
    epochs: int | None,
    seed: int,
    export_bits: int | None,
    batch_size: int,
    lr: float,
    optimizer: str,
    model: str | None,
    width: float | None,
    strategy_args: Any,
    val_fraction: float,
    threads: int,
    activation_bits: Sequence[int] | None,
) -> dict[str, Any]:
    """Check every argument of `train` without reading data or writing anything.

    Returns the strategy's arguments with every default filled in (its own checks ran on them).
    Raises ValueError or TypeError with a one-line message naming the ``bitsub-train`` flag.
    """
    from bitsub_torch.cl.strategies import STRATEGIES
    from bitsub_torch.data.scenarios import SCENARIOS

    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    if scenario not in SCENARIOS:
        raise ValueError(f"--scenario must be one of {sorted(SCENARIOS)}, got {scenario!r}")
    if tasks is not None:
        check_int("tasks", tasks, 1)
    if epochs is not None:  # None: the convergence protocol
        check_int("epochs", epochs, 0)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    check_int("threads", threads, 1)
    check_positive("lr", lr)
    if width is not None:
        check_positive("width", width)
    if optimizer not in ("adam", "adamw", "sgd"):
        raise ValueError(f"--optimizer must be adam, adamw or sgd, got {optimizer!r}")
    if model is not None and model not in MODELS:
        raise ValueError(f"--model must be one of {MODELS}, got {model!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 <= val_fraction < 1.0
    ):
        raise ValueError(f"--val-fraction must lie in [0, 1), got {val_fraction!r}")
    if activation_bits is not None and (isinstance(activation_bits, (str, bytes)) or not all(
        isinstance(b, (int, np.integer)) and not isinstance(b, bool) and 2 <= b <= 16
        for b in activation_bits
    )):
        raise ValueError(
            f"--activation-bits (activation_bits) must be bit-widths in 2..16, got "
            f"{activation_bits!r}"
        )
    cls = STRATEGIES[strategy]
    if export_bits is not None:
        # The rule of bitsub_torch.export: b-bit codes (1..16) or 32 (raw float32 fields).
        bits = check_int("export_bits", export_bits, 1)
        if 16 < bits != 32:
            raise ValueError(f"--export-bits must be 1..16 (codes) or 32 (raw), got {bits}")
        if cls.quantizes:
            raise ValueError(
                f"--export-bits does not apply to {strategy}: it quantizes its weights itself "
                "and its codebooks are stored as they are; drop --export-bits"
            )
    if not isinstance(strategy_args, dict):
        raise TypeError(
            "--strategy-args must be a JSON object such as '{\"density\": 0.3}', got "
            f"{strategy_args!r}"
        )
    try:
        return cls.check_arguments(strategy_args)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"--strategy-args: {exc}") from exc


def check_out(out: Path) -> None:
    """Refuse now an ``--out`` that would make a write fail after training."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory (it is created if missing)")
    for name in ("config.json", "results.json", "model.h5", "accuracy_matrix.png",
                 "checkpoints"):
        path = out / name
        want_dir = name == "checkpoints"
        if path.exists() and path.is_dir() != want_dir:
            kind = "a file" if want_dir else "a directory"
            raise ValueError(f"{path} is {kind}; remove it or choose another --out")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES, f"cannot write to {existing} (permission denied or a read-only file "
            "system); choose another --out"
        )


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an ``OSError`` without a file name (ENOSPC from a plain write) the name ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
