"""bitsub_torch: the PyTorch bridge of bitsub (task layers, strategies, trainer, scenarios, export).

It depends on bitsub; bitsub never imports torch.
"""

from __future__ import annotations

from bitsub_torch.cl.divergence import KLGate
from bitsub_torch.cl.metrics import acc, bwt, forgetting, fwt
from bitsub_torch.cl.rehearsal import RehearsalTrainer
from bitsub_torch.cl.strategies import (
    ER,
    STRATEGIES,
    WSN,
    AdaQPacknet,
    DERpp,
    EsaCL,
    Finetune,
    PackNet,
    PruneRetrain,
    Strategy,
    TinySubNets,
    get_strategy,
)
from bitsub_torch.cl.taskvalues import FieldStore
from bitsub_torch.cl.trainer import Results, Trainer
from bitsub_torch.data.scenarios import Scenario, TaskData, get_scenario
from bitsub_torch.export import export
from bitsub_torch.nn.layers import TaskBatchNorm, TaskConv2d, TaskLinear
from bitsub_torch.nn.models import TaskNetwork, alexnet, mlp, resnet18, tinynet
from bitsub_torch.nn.packed_module import PackedModule

__all__ = [
    "AdaQPacknet",
    "DERpp",
    "ER",
    "EsaCL",
    "FieldStore",
    "Finetune",
    "KLGate",
    "PackNet",
    "PackedModule",
    "PruneRetrain",
    "RehearsalTrainer",
    "Results",
    "STRATEGIES",
    "Scenario",
    "Strategy",
    "TaskBatchNorm",
    "TaskConv2d",
    "TaskData",
    "TaskLinear",
    "TaskNetwork",
    "TinySubNets",
    "Trainer",
    "WSN",
    "acc",
    "alexnet",
    "bwt",
    "export",
    "forgetting",
    "fwt",
    "get_scenario",
    "get_strategy",
    "mlp",
    "resnet18",
    "tinynet",
]
