"""Stage-aware PyTorch pipelines written as plain decorated functions."""

from ._callbacks import BestCheckpoint, Callback, EarlyStopping
from ._classform import LossNode, MetricNode, Node
from ._context import Context
from ._errors import (
    CuvisDSLWarning,
    CycleError,
    DefinitionError,
    DuplicateOutputError,
    MissingInputError,
    PortValidationError,
    SpecMismatchError,
    WiringError,
)
from ._history import History
from ._loop import NonFiniteLossError
from ._metric import Metric
from ._node import FunctionNode, loss, metric, node
from ._pipeline import Pipeline
from ._plan import Plan
from ._ports import Port, PortSpec
from ._spec import NodeSpec
from ._stages import ExecutionStage, StageSet
from ._state import NotInitializedError
from ._statistical import InputStream
from ._trainer import Trainer

__all__ = [
    "BestCheckpoint",
    "Callback",
    "Context",
    "CuvisDSLWarning",
    "CycleError",
    "DefinitionError",
    "DuplicateOutputError",
    "EarlyStopping",
    "ExecutionStage",
    "FunctionNode",
    "History",
    "InputStream",
    "LossNode",
    "Metric",
    "MetricNode",
    "MissingInputError",
    "Node",
    "NonFiniteLossError",
    "NodeSpec",
    "NotInitializedError",
    "Pipeline",
    "Plan",
    "Port",
    "PortSpec",
    "PortValidationError",
    "SpecMismatchError",
    "StageSet",
    "Trainer",
    "WiringError",
    "loss",
    "metric",
    "node",
]
