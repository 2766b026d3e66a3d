"""Continual-learning strategies: hooks around one task's training (see `base.Strategy`)."""

from __future__ import annotations

from typing import Any

from bitsub_torch.cl.strategies.adaqpacknet import AdaQPacknet
from bitsub_torch.cl.strategies.base import Strategy
from bitsub_torch.cl.strategies.finetune import Finetune
from bitsub_torch.cl.strategies.onemodel import ER, DERpp, EsaCL, PruneRetrain
from bitsub_torch.cl.strategies.packnet import PackNet
from bitsub_torch.cl.strategies.tinysubnets import TinySubNets
from bitsub_torch.cl.strategies.wsn import WSN

# Registry of strategy names (as the CLI spells them) to classes.
STRATEGIES: dict[str, type[Strategy]] = {
    "adaqpacknet": AdaQPacknet,
    "derpp": DERpp,
    "er": ER,
    "esacl": EsaCL,
    "finetune": Finetune,
    "packnet": PackNet,
    "prune-retrain": PruneRetrain,
    "tinysubnets": TinySubNets,
    "wsn": WSN,
}


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build the strategy registered under ``name`` with keyword arguments ``kwargs``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)


__all__ = [
    "STRATEGIES",
    "AdaQPacknet",
    "DERpp",
    "ER",
    "EsaCL",
    "Finetune",
    "PackNet",
    "PruneRetrain",
    "Strategy",
    "TinySubNets",
    "WSN",
    "get_strategy",
]
