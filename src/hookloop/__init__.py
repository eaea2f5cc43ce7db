"""hookloop: a small, fixed PyTorch training loop where every feature is a callback."""

from .callback import Callback, class_to_name
from .callbacks.compile import Compile
from .callbacks.ema import EMA
from .callbacks.keras import KerasCallback
from .callbacks.keras_lr import LearningRateScheduler, ReduceLROnPlateau, ReduceLROnPlateauCallback
from .callbacks.logging import BaseLogger, CSVLogger, LambdaCallback
from .callbacks.lr_finder import LRFinder, SuggestionMethod, minimum, slide, steep, valley
from .callbacks.mixup import CutMix, MixUp
from .callbacks.mlflow_logger import MLflowLogger
from .callbacks.nan import TerminateOnNaN, TerminateOnNaNCallback
from .callbacks.profiler import Profiler
from .callbacks.progress import ProgbarLogger, ProgressBar
from .callbacks.recorder import History, Recorder, TrainEval
from .callbacks.remote_monitor import RemoteMonitor
from .callbacks.resume import BackupAndRestore, ResumableSampler
from .callbacks.saving import ModelCheckpoint, SaveModel, SaveModelCallback
from .callbacks.schedule import ParamScheduler
from .callbacks.show_graph import ShowGraph, ShowGraphCallback
from .callbacks.tensorboard_logger import TensorBoard, TensorBoardCallback
from .callbacks.tracker import EarlyStopping, EarlyStoppingCallback, TrackerCallback
from .callbacks.training import GradientAccumulation, GradientClip, MixedPrecision
from .callbacks.wandb import WandbCallback, WandbMetricsLogger
from .checkpoint import (
    CheckpointError,
    FolderInUseError,
    ResumeMismatchError,
    latest_checkpoint,
)
from .data import DataLoaders, TensorLoader, find_bs, to_device
from .distributed import (
    DistributedTrainer,
    ShardSampler,
    distrib_ctx,
    is_rank_zero,
    rank,
    world_size,
)
from .events import (
    EVENTS,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
    event,
)
from .hyper import get_hyper, hyper_names, set_hyper
from .learner import Learner, default_device
from .metrics import (
    AvgLoss,
    AvgMetric,
    AvgSmoothLoss,
    Metric,
    TorchMetric,
    accuracy,
    error_rate,
    mae,
    mse,
)
from .schedules import (
    SchedCos,
    SchedExp,
    SchedLin,
    SchedNo,
    SchedPoly,
    combine_scheds,
    combined_cos,
)

__version__ = "0.1.0"

__all__ = [
    "KerasCallback",
    "BaseLogger",
    "CSVLogger",
    "LambdaCallback",
    "MLflowLogger",
    "RemoteMonitor",
    "TensorBoard",
    "TensorBoardCallback",
    "Callback",
    "class_to_name",
    "ProgbarLogger",
    "ProgressBar",
    "Profiler",
    "History",
    "Recorder",
    "TrainEval",
    "BackupAndRestore",
    "ResumableSampler",
    "CheckpointError",
    "FolderInUseError",
    "ResumeMismatchError",
    "latest_checkpoint",
    "MixUp",
    "CutMix",
    "MixedPrecision",
    "GradientClip",
    "GradientAccumulation",
    "EMA",
    "Compile",
    "DataLoaders",
    "TensorLoader",
    "DistributedTrainer",
    "ShardSampler",
    "distrib_ctx",
    "is_rank_zero",
    "rank",
    "world_size",
    "find_bs",
    "to_device",
    "EVENTS",
    "event",
    "CancelBackwardException",
    "CancelBatchException",
    "CancelEpochException",
    "CancelException",
    "CancelFitException",
    "CancelStepException",
    "CancelTrainException",
    "CancelValidException",
    "get_hyper",
    "hyper_names",
    "set_hyper",
    "Learner",
    "default_device",
    "AvgLoss",
    "AvgMetric",
    "AvgSmoothLoss",
    "Metric",
    "TorchMetric",
    "accuracy",
    "error_rate",
    "mae",
    "mse",
    "SchedCos",
    "SchedExp",
    "SchedLin",
    "SchedNo",
    "SchedPoly",
    "combine_scheds",
    "combined_cos",
    "TrackerCallback",
    "EarlyStopping",
    "EarlyStoppingCallback",
    "SaveModel",
    "SaveModelCallback",
    "ModelCheckpoint",
    "TerminateOnNaN",
    "TerminateOnNaNCallback",
    "ParamScheduler",
    "LearningRateScheduler",
    "ReduceLROnPlateau",
    "ReduceLROnPlateauCallback",
    "LRFinder",
    "SuggestionMethod",
    "valley",
    "slide",
    "minimum",
    "steep",
    "ShowGraph",
    "ShowGraphCallback",
    "WandbCallback",
    "WandbMetricsLogger",
]
