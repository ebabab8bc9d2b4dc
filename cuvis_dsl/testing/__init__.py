"""Property-testing toolkit for pipelines, built on Hypothesis.

Strategies draw stages, contexts, tensors matching a `PortSpec`, batches
for a pipeline and whole synthetic pipelines; `check_pipeline` runs
Hypothesis against your own pipeline and checks the stage contract in
every stage. Hypothesis is needed only here: importing ``cuvis_dsl``
does not import it.
"""

from ._synthetic import Call, record_calls
from .checker import PipelineCheckError, check_pipeline
from .strategies import (
    batches,
    contexts,
    pipelines,
    requested_outputs,
    stage_sets,
    stages,
    tensors,
)

__all__ = [
    "Call",
    "PipelineCheckError",
    "batches",
    "check_pipeline",
    "contexts",
    "pipelines",
    "record_calls",
    "requested_outputs",
    "stage_sets",
    "stages",
    "tensors",
]
