"""The training system: a jit-compiled, sharded loop, atomic checkpoints and resumable runs."""

from ._checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ._fit import FitResult, fit
from ._loop import (
    Trainer,
    TrainState,
    build_model,
    check_dataset,
    make_optimizer,
    seed_keys,
)
from ._measure import measure_body
from ._plots import plot_run
from ._run import TrainingDiverged, train_run

__all__ = [
    "CheckpointError",
    "FitResult",
    "TrainState",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "check_dataset",
    "fit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "make_optimizer",
    "measure_body",
    "plot_run",
    "save_checkpoint",
    "seed_keys",
    "train_run",
]
