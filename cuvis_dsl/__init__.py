"""Stage-aware PyTorch pipelines written as plain decorated functions."""

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
from ._metric import Metric
from ._node import FunctionNode, loss, metric, node
from ._pipeline import Pipeline
from ._plan import Plan
from ._ports import Port, PortSpec
from ._spec import NodeSpec
from ._stages import ExecutionStage, StageSet
from ._state import NotInitializedError

__all__ = [
    "Context",
    "CuvisDSLWarning",
    "CycleError",
    "DefinitionError",
    "DuplicateOutputError",
    "ExecutionStage",
    "FunctionNode",
    "LossNode",
    "Metric",
    "MetricNode",
    "MissingInputError",
    "Node",
    "NodeSpec",
    "NotInitializedError",
    "Pipeline",
    "Plan",
    "Port",
    "PortSpec",
    "PortValidationError",
    "SpecMismatchError",
    "StageSet",
    "WiringError",
    "loss",
    "metric",
    "node",
]
