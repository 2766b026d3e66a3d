"""AdapMTL's thetas' rules: what each component's threshold descends, besides STR's own.

Every rule here sets the gradient of each theta to the cost of pruning its component's next
weights minus the mean of these costs over the thetas: the schedule's common shift decides how
much is pruned, these centred gradients where (:mod:`bitsub_torch.mtl.trainer`). Rules
(``THETA_GRADIENTS``, with ``"loss"``, STR's loss gradient against an L2 decay, which the
optimiser applies itself):

- ``"per-weight"``: the theta's loss gradient over the number of weights at its threshold
  (:func:`per_weight_gradient`); ``"per-task"`` the same with each task's harm counted without
  the others' credit (:func:`positive_task_sum` first);
- ``"pruned-loss"``: the loss change of raising one theta, measured, per weight it zeroes
  (:func:`pruned_loss_gradient`);
- ``"fisher"``: the Fisher saliency of the next weights (:func:`fisher_gradient`).
"""

from __future__ import annotations

import numpy as np
import torch

from bitsub_torch.mtl.model import MTLNet

__all__ = ["BAND", "THETA_GRADIENTS", "fisher_gradient", "per_weight_gradient",
           "positive_task_sum", "pruned_loss_gradient"]

#: What AdapMTL's thetas descend: the loss gradient against an L2 decay ("loss", STR); or the
#: loss per pruned weight of each component, centred over the components, inferred from the soft
#: threshold's gradient ("per-weight"; "per-task" with each task's harm counted alone) or
#: measured ("pruned-loss"); or the Fisher saliency of the next weights to be pruned ("fisher").
THETA_GRADIENTS = ("loss", "per-weight", "per-task", "pruned-loss", "fisher")
#: Half-width, in theta, of the band that counts the weights at a threshold ("per-weight"); the
#: rise of one theta is twice it ("pruned-loss", "fisher").
BAND = 0.05


def per_weight_gradient(model: MTLNet, band: float = BAND) -> None:
    """Replace each theta's gradient by its loss per pruned weight, centred over the thetas.

    ``dL/dtheta_k`` (the gradient the backward pass left, zero when None) divided by
    ``dn_k/dtheta_k``, the number of weights that a rise of theta_k prunes (the unmasked
    weights with ``sigmoid(theta_k - band) < |w| <= sigmoid(theta_k + band)``, over ``2 band``;
    at least one), is the loss of pruning one more weight under that threshold. The common
    shift of the schedule removes any change shared by every theta, so only the differences
    count: a component whose weights cost more than the average gets a lower threshold, one
    that costs less a higher one, until every marginal cost is the same (the first-order
    condition of the least loss at a fixed overall sparsity). With one theta the gradient is 0.
    """
    th = model.thresholds
    near = dict.fromkeys(th.theta, 0)
    with torch.no_grad():
        for _, m in model.prunable():
            k = m.theta_key.replace(".", "/")
            lo, hi = torch.sigmoid(th.theta[k] - band), torch.sigmoid(th.theta[k] + band)
            a = torch.where(m.mask, m.weight, torch.zeros((), dtype=m.weight.dtype)).abs()
            near[k] += int(((a > lo) & (a <= hi)).sum())
    cost = {k: (0.0 if p.grad is None else float(p.grad)) * 2 * band / max(near[k], 1)
            for k, p in th.theta.items()}
    mean = float(np.mean(list(cost.values())))
    for k, p in th.theta.items():
        p.grad = torch.tensor(cost[k] - mean, dtype=p.dtype)


def pruned_loss_gradient(model: MTLNet, loss_fn, band: float = BAND) -> None:
    """Set each theta's gradient to the measured loss per weight its rise prunes, centred.

    For each theta k, ``loss_fn()`` (the loss of the current batch, a float) is evaluated with
    theta_k raised by ``2 band`` and the others unchanged; the rise's loss difference divided by
    the number of effective weights it zeroes (at least one) is the cost of pruning the next
    weights of that component, measured rather than inferred from the soft threshold's
    gradient (which is the cost of shrinking every kept weight). A component read by every task
    (the backbone) costs what it costs all of them together. The gradient is the cost minus the
    mean over the thetas; the thetas are left as they were.
    """
    th = model.thresholds
    keys = list(th.theta)
    with torch.no_grad():
        base_loss = float(loss_fn())
        base_zero = _zeros(model)
        cost = {}
        for k in keys:
            p = th.theta[k]
            kept = p.detach().clone()
            p.add_(2 * band)
            try:
                pruned = _zeros(model) - base_zero
                cost[k] = (float(loss_fn()) - base_loss) / max(pruned, 1)
            finally:
                p.copy_(kept)  # exactly back (adding and subtracting may round)
    mean = float(np.mean(list(cost.values())))
    for k, p in th.theta.items():
        p.grad = torch.tensor(cost[k] - mean, dtype=p.dtype)


def _zeros(model: MTLNet) -> int:
    return sum(int((m.sparse_weight() == 0).sum()) for _, m in model.prunable())


def positive_task_sum(task_grads: list[tuple[torch.Tensor | None, ...]]
                      ) -> list[torch.Tensor | None]:
    """Each theta's gradient as the sum over tasks of the positive parts of the tasks' own.

    ``task_grads[t][k]`` is the gradient of task t's relative loss with respect to theta k
    (None where task t does not read component k). A rise of a threshold that harms one task
    is a cost to that task even when it helps another: the cost of a component read by several
    tasks (the backbone) counts the harm to every one of them, without the credit of the others'
    gains (``"per-task"``; the sum of the signed gradients lets them cancel). None where no task
    reads the theta.
    """
    out: list[torch.Tensor | None] = []
    for per_theta in zip(*task_grads):
        parts = [g.clamp(min=0) for g in per_theta if g is not None]
        out.append(torch.stack(parts).sum(0) if parts else None)
    return out


def fisher_gradient(model: MTLNet, fisher: dict[str, torch.Tensor], band: float = BAND) -> None:
    """Set each theta's gradient to the Fisher saliency of its next pruned weights, centred.

    ``fisher[name]`` is a running mean of the squared loss gradient of layer ``name``'s
    weights. The cost of component k is the mean of ``w^2 F / 2`` (the second-order loss
    increase of zeroing w, Optimal Brain Damage with the empirical Fisher) over its weights that
    a rise of theta_k by ``2 band`` would prune: unmasked, ``sigmoid(theta_k) < |w| <=
    sigmoid(theta_k + 2 band)`` (0 when there are none). The gradient is the cost minus the mean
    cost: the thresholds move until the next weight costs the same in every component. A weight
    of the backbone is read by every task, so its gradient, hence its cost, sums every task's.
    """
    th = model.thresholds
    total = dict.fromkeys(th.theta, 0.0)
    count = dict.fromkeys(th.theta, 0)
    with torch.no_grad():
        for name, m in model.prunable():
            k = m.theta_key.replace(".", "/")
            lo, hi = torch.sigmoid(th.theta[k]), torch.sigmoid(th.theta[k] + 2 * band)
            a = torch.where(m.mask, m.weight, torch.zeros((), dtype=m.weight.dtype)).abs()
            sel = (a > lo) & (a <= hi)
            f = fisher.get(name)
            if f is not None:
                total[k] += float((0.5 * m.weight.double() ** 2 * f.double())[sel].sum())
            count[k] += int(sel.sum())
    cost = {k: total[k] / count[k] if count[k] else 0.0 for k in th.theta}
    mean = float(np.mean(list(cost.values())))
    for k, p in th.theta.items():
        p.grad = torch.tensor(cost[k] - mean, dtype=p.dtype)
