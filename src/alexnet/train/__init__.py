"""Training: the paper's recipe (sections 4-5), checkpoints, exact resume, data parallel."""

from .loop import Trainer, TrainingDiverged, train
from .optim import PaperSGD, Schedule, make_optimizer

__all__ = ["PaperSGD", "Schedule", "Trainer", "TrainingDiverged", "make_optimizer", "train"]
