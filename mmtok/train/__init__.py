"""``mmtok train``: the shared masked transformer on a token folder (`Trainer`), its config
(`TrainConfig`) and the plugin heads trained with it."""

from mmtok.train.config import HeadConfig, OptimConfig, TrainConfig
from mmtok.train.heads import TrainModule, apply_bundle, build_heads
from mmtok.train.trainer import Trainer, train

__all__ = ["HeadConfig", "OptimConfig", "TrainConfig", "TrainModule", "Trainer", "apply_bundle",
           "build_heads", "train"]
