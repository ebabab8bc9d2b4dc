"""The cuvis.ai-compatible class form: `Node`, `LossNode`, `MetricNode`."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from ._classports import LOCALNS, read_class_ports
from ._errors import DefinitionError
from ._modules import (
    ModuleDeclaration,
    class_declaration,
    instance_override,
    role_stages,
    snake_case,
)
from ._spec import NodeSpec, Unresolved, source_location
from ._stages import StageSet, StagesLike, as_stages
from ._state import (
    INITIALIZED_FLAG,
    adopt_saved_shapes,
    freeze_buffers,
    is_initialized,
    is_statistical,
    unfreeze_buffers,
)

__all__ = ["LossNode", "MetricNode", "Node"]

Specs = Mapping[str, Any]


class Node(torch.nn.Module):
    """Base class for nodes written the cuvis.ai way.

    Subclass it, call ``super().__init__(**kwargs)`` (optionally with
    ``execution_stages=``) and write ``forward`` returning a dict of
    outputs. Ports come from ``INPUT_SPECS`` / ``OUTPUT_SPECS`` when the
    class defines them, else from ``forward``'s signature: every named
    parameter is an input port (a trailing ``**_`` is ignored), and a
    ``TypedDict`` return annotation declares the outputs. Without either,
    the outputs are *undeclared*: the returned keys are outputs of the run,
    but no other node may consume them.

    A parameter annotated `Context`, an unannotated parameter named
    ``context``, or an ``INPUT_SPECS`` entry whose dtype is `Context`
    receives the run's context; it is not a port.

    Parameters
    ----------
    execution_stages
        The stages the node runs in (a set of `ExecutionStage`, a member,
        ``TRAIN | VAL`` or ``"train|val"``). Defaults to ALWAYS; to
        ``TRAIN|VAL|TEST`` for `LossNode` and ``VAL|TEST`` for `MetricNode`.
    name
        The node name; defaults to the class name in snake case. Module
        nodes are registered under it, so ``state_dict`` keys read
        ``"<name>.<buffer>"``.

    Attributes
    ----------
    INPUT_SPECS
        Optional mapping of input port name to `PortSpec`; ``[PortSpec]``
        marks a variadic (fan-in) port. A PortSpec whose dtype is a Python
        type and whose shape is ``()`` describes a plain scalar. Every
        ``forward`` parameter without a default must be listed; a listed
        name ``forward`` does not take needs a trailing ``**_``.
    OUTPUT_SPECS
        Optional mapping of output name to `PortSpec`.
    TRAINABLE_BUFFERS
        Names of buffers that `unfreeze` turns into parameters.

    Examples
    --------
    >>> class Scale(Node):
    ...     def __init__(self, factor: float = 2.0, **kwargs):
    ...         super().__init__(execution_stages={ExecutionStage.TRAIN}, **kwargs)
    ...         self.factor = factor
    ...
    ...     def forward(self, data, **_):
    ...         return {"scaled": data * self.factor}
    >>> scale = Scale()
    >>> scale.name, scale.execution_stages
    ('scale', StageSet(TRAIN))
    >>> pipe = Pipeline([scale])
    >>> pipe.forward(batch={"data": torch.ones(2)}, stage="train")
    {'scaled': tensor([2., 2.])}
    >>> pipe.forward(batch={"data": torch.ones(2)}, stage="val")
    {}
    """

    INPUT_SPECS: ClassVar[Specs | None] = None
    OUTPUT_SPECS: ClassVar[Specs | None] = None
    TRAINABLE_BUFFERS: ClassVar[tuple[str, ...]] = ()
    _ROLE: ClassVar[str] = "node"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        setattr(cls, LOCALNS, _defining_namespace())
        _mark_after_initialization(cls)
        if _defines_forward(cls):
            # NOTE: a forward reference may be defined after the class; it is
            # resolved when an instance is added to a pipeline.
            with contextlib.suppress(Unresolved):
                read_class_ports(cls, snake_case(cls.__name__))

    def __init__(
        self,
        *,
        execution_stages: StagesLike | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise DefinitionError(
                f"node name {name!r} of {type(self).__qualname__} is not an "
                f"identifier.\n  Fix: {type(self).__name__}(name='my_node')",
                node=str(name),
            )
        self._node_name = name
        self._node_stages = (
            None if execution_stages is None else as_stages(execution_stages)
        )
        setattr(self, INITIALIZED_FLAG, False)

    def _declaration(self) -> ModuleDeclaration:
        cls = type(self)
        own = ModuleDeclaration(
            name=getattr(self, "_node_name", None),
            stages=getattr(self, "_node_stages", None),
        )
        merged = (class_declaration(cls) or ModuleDeclaration()).merged(own)
        merged = merged.merged(instance_override(self))
        role = merged.role or cls._ROLE
        return attrs.evolve(
            merged,
            role=role,
            name=merged.name or snake_case(cls.__name__),
            stages=merged.stages or role_stages(role),
        )

    @property
    def name(self) -> str:
        """The node name: ``name=``, else the class name in snake case."""
        return self._declaration().name  # type: ignore[return-value]

    @name.setter
    def name(self, value: str) -> None:
        raise AttributeError(
            f"the name of node {self.name!r} is fixed once it is built.\n"
            f"  Fix: {type(self).__name__}(name={value!r}), or "
            f"node(instance, name={value!r})"
        )

    @property
    def execution_stages(self) -> StageSet:
        """The stages the node runs in."""
        return self._declaration().stages  # type: ignore[return-value]

    @property
    def role(self) -> str:
        """``"node"``, ``"loss"`` or ``"metric"``."""
        return self._declaration().role  # type: ignore[return-value]

    def node_spec(self) -> NodeSpec:
        """The node's declaration, as the pipeline reads it.

        Examples
        --------
        >>> class Stats(Node):
        ...     def forward(self, cube: torch.Tensor, **_):
        ...         return {"mean": cube.mean(), "std": cube.std()}
        >>> spec = Stats().node_spec()
        >>> spec.signature_text(), spec.returns, spec.undeclared
        ('(cube: Tensor) -> {...}', 'undeclared', ('mean', 'std'))
        """
        declaration = self._declaration()
        name = declaration.name or ""
        try:
            ports = read_class_ports(type(self), name)
        except Unresolved as exc:
            raise DefinitionError(
                f"node {name!r} ({source_location(type(self))}): the annotation "
                f"of parameter {exc.parameter!r} of forward names {exc.name!r}, "
                f"which is not defined.\n  Fix: import or define {exc.name!r} "
                f"in the module of {type(self).__qualname__}.",
                node=name,
                port=exc.parameter,
            ) from None
        return ports.spec(declaration)

    def extra_repr(self) -> str:
        text = f"name={self.name!r}, stages={self.execution_stages}"
        try:
            return f"{text}, ports={self.node_spec().signature_text()}"
        except DefinitionError:
            return text

    @property
    def requires_initial_fit(self) -> bool:
        """Whether the node defines ``statistical_initialization``."""
        return is_statistical(self)

    @property
    def initialized(self) -> bool:
        """Whether the node has its statistics.

        True once ``statistical_initialization`` has returned, or a state
        holding the node's buffers has been loaded, and every persistent
        buffer has a shape. Register statistics whose shape depends on the
        data as ``None`` or ``torch.empty(0)``; they take their shape from
        the data or from the loaded state.

        Examples
        --------
        >>> class Center(Node):
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.register_buffer("mean", None)
        ...
        ...     def statistical_initialization(self, stream):
        ...         self.mean = torch.stack([b["x"] for b in stream]).mean(0)
        ...
        ...     def forward(self, x, **_):
        ...         return {"centered": x - self.mean}
        >>> center = Center()
        >>> center.initialized
        False
        >>> center.statistical_initialization([{"x": torch.tensor([1.0, 3.0])}])
        >>> center.initialized, center.mean
        (True, tensor([1., 3.]))
        >>> fresh = Center()
        >>> fresh.load_state_dict(center.state_dict())
        <All keys matched successfully>
        >>> fresh.initialized
        True
        """
        return is_initialized(self)

    def unfreeze(self) -> None:
        """Make the node trainable: ``TRAINABLE_BUFFERS`` become parameters.

        Values, dtype, device and ``state_dict`` keys are kept; every
        parameter of the node then requires gradients. A buffer that has
        no shape yet (before statistical initialisation) is an error.

        Examples
        --------
        >>> class Offset(Node):
        ...     TRAINABLE_BUFFERS = ("bias",)
        ...
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.register_buffer("bias", torch.zeros(2))
        ...
        ...     def forward(self, x, **_):
        ...         return {"shifted": x + self.bias}
        >>> offset = Offset()
        >>> offset.unfreeze()
        >>> [name for name, _ in offset.named_parameters()]
        ['bias']
        >>> offset.freeze()
        >>> [name for name, _ in offset.named_buffers()]
        ['bias']
        """
        unfreeze_buffers(self, self.TRAINABLE_BUFFERS, self.name)
        self.requires_grad_(True)

    def freeze(self) -> None:
        """Stop training the node: ``TRAINABLE_BUFFERS`` become buffers again.

        Every remaining parameter of the node stops requiring gradients.
        """
        freeze_buffers(self, self.TRAINABLE_BUFFERS)
        self.requires_grad_(False)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        adopt_saved_shapes(self, state_dict, prefix, missing_keys)
        super()._load_from_state_dict(
            state_dict,  # type: ignore[arg-type]
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )


def _defining_namespace() -> dict[str, Any] | None:
    """Locals of the function a Node subclass is defined in, for its hints."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_name in (
        "__new__",
        "__init_subclass__",
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_locals is frame.f_globals:
        return None
    return dict(frame.f_locals)


def _mark_after_initialization(cls: type) -> None:
    """Make the class's own ``statistical_initialization`` set the flag."""
    method = cls.__dict__.get("statistical_initialization")
    if not callable(method) or getattr(method, "_cuvis_marks", False):
        return

    @functools.wraps(method)
    def initialize(self: Node, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        setattr(self, INITIALIZED_FLAG, True)
        return result

    initialize._cuvis_marks = True  # type: ignore[attr-defined]
    setattr(cls, "statistical_initialization", initialize)  # noqa: B010


def _defines_forward(cls: type) -> bool:
    return getattr(cls, "forward", None) is not torch.nn.Module.forward


class LossNode(Node):
    """A class-form loss: `Node` with stages TRAIN|VAL|TEST by default.

    Examples
    --------
    >>> class MSE(LossNode):
    ...     def forward(self, predictions, targets, **_):
    ...         return {"loss": ((predictions - targets) ** 2).mean()}
    >>> MSE().execution_stages
    StageSet(TRAIN|VAL|TEST)
    >>> MSE(execution_stages={ExecutionStage.TRAIN}).execution_stages
    StageSet(TRAIN)
    """

    _ROLE: ClassVar[str] = "loss"


class MetricNode(Node):
    """A class-form metric: `Node` with stages VAL|TEST by default.

    Examples
    --------
    >>> class Accuracy(MetricNode):
    ...     def forward(self, predictions, targets, context, **_):
    ...         value = (predictions.round() == targets).float().mean()
    ...         return {"metrics": [Metric("accuracy", value, context.stage)]}
    >>> Accuracy().execution_stages
    StageSet(VAL|TEST)
    """

    _ROLE: ClassVar[str] = "metric"
