"""The strategy interface: hooks around one task's training, and the per-task layers for export.

The trainer calls, for each task t:

1. ``before_task(t, model, data)``;
2. for every step: backward, ``after_backward(t, model)``, ``optimizer.step()``,
   ``after_step(t, model)``;
3. ``prune(t, model, data, evaluate)``; then, when ``retrain_epochs(t) > 0``, that many more
   epochs with the same step hooks (PackNet's retraining after pruning);
4. ``after_task(t, model, data, evaluate)`` (prune / quantize / consolidate).

``evaluate(model, task, split="val")`` returns an accuracy in [0, 1]; strategies decide on the
validation split, never on the test split.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Evaluate", "Strategy", "val_split"]

Evaluate = Callable[..., float]


def _plain(value: Any) -> Any:
    # Arguments go into checkpoints loaded with weights_only=True and into config.json: keep
    # numbers, strings, None and containers of them; anything else is recorded by its repr.
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


class Strategy:
    """Base strategy: no masks; owned positions (if any) frozen while a task trains.

    Subclasses override the hooks they need. The model's buffers (masks, owners) carry the
    consolidated state; ``state_dict`` holds only the strategy's own bookkeeping.

    Every strategy remembers the arguments it was built with (`arguments`, defaults filled in),
    so a checkpoint can record them and a resume with other arguments can be refused; they are
    captured in ``__new__`` because subclasses keep them under other names or change them later
    (``prefix_bits`` is chosen in ``setup``). `check_arguments` validates a dict of arguments by
    the strategy's own checks without a model.
    """

    name: str = "base"
    quantizes: bool = False
    uses_scores: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Strategy:
        """Record the arguments of ``__init__`` (see the class docstring)."""
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        except TypeError:  # __init__ raises the same error with its own message
            obj._arguments = {}
            return obj
        bound.apply_defaults()
        recorded: dict[str, Any] = {}
        params = inspect.signature(cls.__init__).parameters
        for key, value in list(bound.arguments.items())[1:]:
            if params[key].kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update(value)
            else:
                recorded[key] = value
        obj._arguments = _plain(recorded)
        return obj

    def __init__(self) -> None:
        self.finished: list[int] = []

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments this strategy was built with, defaults filled in (JSON-ready)."""
        return dict(getattr(self, "_arguments", {}))

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validate keyword arguments of this strategy by its own checks, without a model.

        Parameters
        ----------
        arguments : mapping
            Keyword arguments, as ``bitsub-train --strategy-args`` gives them.

        Returns
        -------
        dict
            The arguments with every default filled in (what `arguments` of the built strategy
            returns).

        Raises
        ------
        ValueError, TypeError
            An unknown name (the message lists the known ones) or a value the strategy refuses.
        """
        if not isinstance(arguments, Mapping):
            raise TypeError(f"strategy arguments must be a dict, got {type(arguments).__name__}")
        # The names of __init__, and of the parents' __init__ it forwards **kwargs to.
        known: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = list(inspect.signature(init).parameters.values())[1:]
            known += [p.name for p in params if p.name not in known and p.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                break
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise ValueError(
                f"strategy {cls.name!r} has no argument {', '.join(map(repr, unknown))}; "
                f"its arguments are {', '.join(known) or 'none'}"
            )
        for key, value in arguments.items():
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"strategy argument {key!r} is NaN; give a number")
        # Building a strategy only checks and stores its arguments: no model, no data.
        return cls(**arguments).arguments()

    # ------------------------------------------------------------------ hooks
    def setup(self, model: nn.Module, scenario: Any) -> None:
        """Called once before the first task (also on resume); allocates the scores if used."""
        if self.uses_scores:
            for layer in model.masked_layers().values():
                layer.enable_scores()

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:
        """Freeze owned positions of every task layer."""
        for layer in model.masked_layers().values():
            layer.freeze_owned()

    def parameters(self, model: nn.Module, task: int) -> list[nn.Parameter]:
        """What the optimizer of task ``task`` updates: shared weights, scores if used, private."""
        params = list(model.shared_parameters())
        if self.uses_scores:
            params += list(model.score_parameters())
        return params + list(model.private_parameters(task))

    def after_backward(self, task: int, model: nn.Module) -> None:
        """Zero the gradients of positions owned by earlier tasks."""
        for layer in model.masked_layers().values():
            layer.zero_owned_grads()

    def after_step(self, task: int, model: nn.Module) -> None:
        """Write back owned positions, so no optimizer state or weight decay can move them."""
        for layer in model.masked_layers().values():
            layer.restore_owned()

    def prune(self, task: int, model: nn.Module, data: Any, evaluate: Evaluate) -> None:
        """Called after the task's training epochs, before retraining (default: nothing)."""

    def retrain_epochs(self, task: int) -> int:
        """Epochs of retraining after `prune` (default 0)."""
        return 0

    def after_task(self, task: int, model: nn.Module, data: Any, evaluate: Evaluate) -> None:
        """Consolidate: unfreeze and record the task as finished."""
        for layer in model.masked_layers().values():
            layer.unfreeze()
        if task not in self.finished:
            self.finished.append(task)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The strategy's own state (the model holds masks and owners)."""
        return {"name": self.name, "finished": list(self.finished)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict`."""
        if state.get("name") != self.name:
            raise ValueError(
                f"state is for strategy {state.get('name')!r}, not {self.name!r}: "
                "resume with the same --strategy"
            )
        self.finished = [int(t) for t in state["finished"]]

    # ------------------------------------------------------------------ export
    def export_layers(self, model: nn.Module, task: int) -> dict[str, dict]:
        """Per layer: task ``task``'s ``mask``, the positions it ``write``s, and its ``values``.

        Default (masked strategies): the mask is the stored task mask, the task writes the
        positions it owns, and the values are ``layer.values(task)``.
        """
        out = {}
        for name, layer in model.masked_layers().items():
            mask = layer.task_mask(task).cpu().numpy()
            write = (layer.owner == task).cpu().numpy()
            with torch.no_grad():
                values = layer.values(task).detach().cpu().numpy().astype(np.float32, copy=True)
            out[name] = {"mask": mask, "write": write & mask, "values": values}
        return out


def val_split(data: Any) -> str:
    """The split strategy decisions use: "val", or "train" when the task has no validation data."""
    return "val" if len(getattr(data, "y_val", ())) else "train"
