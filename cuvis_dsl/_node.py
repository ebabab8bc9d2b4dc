"""The ``@node`` decorator and nodes made from plain functions."""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from ._errors import DefinitionError
from ._spec import NodeSpec, Unresolved, read_spec, source_location
from ._stages import ExecutionStage, StageSet, StagesLike, as_stages

__all__ = ["FunctionNode", "call_target_of", "loss", "metric", "node", "spec_of"]

F = TypeVar("F", bound=Callable[..., Any])
Outputs = str | Sequence[str] | None

_ROLE_STAGES = {
    "node": StageSet(ExecutionStage.ALWAYS),
    "loss": StageSet("train|val|test"),
    "metric": StageSet("val|test"),
}


class FunctionNode:
    """A plain function (or other callable) declared as a pipeline node.

    Calling it calls the function. Its ports, stages and outputs are in
    `FunctionNode.spec`. Make one with `node`.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        stages: StagesLike | None = None,
        outputs: Outputs = None,
        inputs: Mapping[str, str] | None = None,
        role: str = "node",
        localns: Mapping[str, Any] | None = None,
    ) -> None:
        self.func = func
        self.name = _node_name(func, name)
        # Only explicit stages survive a change of role: loss(existing_node)
        # takes the loss defaults unless the node declared its own stages.
        self._stages = as_stages(stages) if stages is not None else None
        self.stages = self._stages if self._stages is not None else _ROLE_STAGES[role]
        self.role = role
        self._outputs = outputs
        self._inputs = dict(inputs) if inputs else None
        self._localns = localns
        self._spec: NodeSpec | None = None
        if not isinstance(func, functools.partial):
            functools.update_wrapper(self, func, updated=())  # type: ignore[arg-type]
        self._try_resolve()

    def _try_resolve(self) -> None:
        try:
            self._spec = self._read()
        except Unresolved:
            self._spec = None

    def _read(self) -> NodeSpec:
        target, hints_of, exclude = _unpartial(self.func)
        return read_spec(
            target,
            name=self.name,
            stages=self.stages,
            outputs=self._outputs,
            inputs=self._inputs,
            role=self.role,
            localns=self._localns,
            hints_of=hints_of,
            exclude=exclude,
        )

    @property
    def spec(self) -> NodeSpec:
        """The node's declaration; forward references are resolved here."""
        if self._spec is None:
            try:
                self._spec = self._read()
            except Unresolved as exc:
                raise DefinitionError(
                    f"node {self.name!r} ({source_location(self.func)}): the "
                    f"annotation of parameter {exc.parameter!r} names "
                    f"{exc.name!r}, which is not defined.\n"
                    f"  Fix: import or define {exc.name!r} in the module of "
                    f"{self.name!r}, or correct the annotation.",
                    node=self.name,
                    port=exc.parameter,
                ) from None
        return self._spec

    @property
    def call_target(self) -> Callable[..., Any]:
        """What the pipeline calls: the function itself."""
        return self.func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        try:
            spec = self.spec
        except DefinitionError:
            return f"<node {self.name!r} (unresolved annotations)>"
        return (
            f"<{self.role} {self.name!r} {spec.signature_text()}, stages={self.stages}>"
        )

    def _declaration(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": self._stages,
            "outputs": self._outputs,
            "inputs": self._inputs,
            "role": self.role,
        }

    def derive(self, **changes: Any) -> FunctionNode:
        """A copy with some of ``name``, ``stages``, ``outputs``, ``inputs`` changed."""
        declaration = self._declaration()
        if "name" in changes and "outputs" not in changes and self._outputs is None:
            declaration["outputs"] = None
        declaration.update({k: v for k, v in changes.items() if v is not None})
        return FunctionNode(self.func, localns=self._localns, **declaration)

    def __copy__(self) -> FunctionNode:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FunctionNode:
        # A node holds no state of its own; sharing it is what copying a
        # plain function does too, and works for lambdas and local functions.
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        if _module_global(self.func) is self:
            return (_import_global, (self.func.__module__, self.func.__qualname__))
        base = _module_global(self.func)
        if isinstance(base, FunctionNode) and base.func is self.func:
            return (_rebuild_from, (base, self._declaration()))
        _ensure_picklable(self)
        return (_rebuild, (self.func, self._declaration()))


def _unpartial(
    func: Callable[..., Any],
) -> tuple[Callable[..., Any], Any, frozenset[str]]:
    if isinstance(func, functools.partial):
        return func, func.func, frozenset(func.keywords)
    if inspect.isfunction(func) or inspect.ismethod(func):
        return func, None, frozenset()
    if callable(func) and not inspect.isclass(func) and not inspect.isbuiltin(func):
        return func, type(func).__call__, frozenset({"self"})
    return func, None, frozenset()


def _node_name(func: Callable[..., Any], name: str | None) -> str:
    if name is not None:
        if not isinstance(name, str) or not name.isidentifier():
            raise DefinitionError(
                f"node name {name!r} is not an identifier", node=str(name)
            )
        return name
    guessed = getattr(func, "__name__", None)
    if guessed == "<lambda>":
        raise DefinitionError(
            f"a lambda node ({source_location(func)}) needs a name: write "
            f"node(lambda ..., name='<a name>')",
            node="<lambda>",
        )
    if isinstance(func, functools.partial) or not isinstance(guessed, str):
        raise DefinitionError(
            f"cannot name the node made from {func!r}; pass name='...'",
            node=repr(func),
        )
    return guessed


def _module_global(func: Callable[..., Any]) -> Any:
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    target: Any = module
    for part in (getattr(func, "__qualname__", "") or "<none>").split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target


def _ensure_picklable(item: FunctionNode) -> None:
    qualname = getattr(item.func, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise pickle.PicklingError(
            f"node {item.name!r} ({source_location(item.func)}) cannot be "
            f"pickled: its function {qualname!r} is defined inside another "
            f"function or is a lambda. Define it at module level to use it "
            f"in DataLoader workers or process pools."
        )


def _import_global(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _rebuild(func: Callable[..., Any], declaration: dict[str, Any]) -> FunctionNode:
    return FunctionNode(func, **declaration)


def _rebuild_from(base: FunctionNode, declaration: dict[str, Any]) -> FunctionNode:
    return FunctionNode(base.func, **declaration)


def _caller_namespace(depth: int) -> dict[str, Any] | None:
    """Locals of the frame that declares a node, for annotations naming them.

    At module level the function's own globals already serve, so nothing
    is copied.
    """
    frame = sys._getframe(depth + 1)
    if frame.f_locals is frame.f_globals:
        return None
    return dict(frame.f_locals)


@overload
def node(obj: F, /) -> Any: ...
@overload
def node(
    obj: None = None,
    /,
    *,
    name: str | None = ...,
    stages: StagesLike | None = ...,
    outputs: Outputs = ...,
    inputs: Mapping[str, str] | None = ...,
) -> Callable[[F], Any]: ...
@overload
def node(
    obj: Callable[..., Any],
    /,
    *,
    name: str | None = ...,
    stages: StagesLike | None = ...,
    outputs: Outputs = ...,
    inputs: Mapping[str, str] | None = ...,
) -> Any: ...


def node(
    obj: Any = None,
    /,
    *,
    name: str | None = None,
    stages: StagesLike | None = None,
    outputs: Outputs = None,
    inputs: Mapping[str, str] | None = None,
) -> Any:
    """Declare a function (or ``nn.Module`` class) as a pipeline node.

    Parameters become input ports wired by name, the return value becomes
    the output port(s), and a parameter annotated ``Context`` (or named
    ``context`` without annotation) receives the run's context.

    Parameters
    ----------
    obj
        The function, callable, existing node or ``nn.Module`` class. Omit
        it to use ``@node(...)`` with arguments.
    name
        Node name; defaults to the function's name. Required for lambdas
        and ``functools.partial`` objects.
    stages
        Stages the node runs in; defaults to ALWAYS.
    outputs
        Output name, or several names when the function returns a tuple or
        a mapping. Defaults to the node name (or a ``TypedDict`` return
        annotation's keys).
    inputs
        Renames the wires of input ports: ``{"cube": "raw_cube"}`` makes
        parameter ``cube`` read the value named ``raw_cube``.

    Examples
    --------
    >>> import torch
    >>> @node(stages="train|val")
    ... def double(x: torch.Tensor) -> torch.Tensor:
    ...     return 2 * x
    >>> double
    <node 'double' (x: Tensor) -> double, stages=TRAIN|VAL>
    >>> double(torch.tensor(3))
    tensor(6)
    >>> node(double, name="twice", inputs={"x": "y"})
    <node 'twice' (x<-y: Tensor) -> twice, stages=TRAIN|VAL>
    """
    return _declare(
        obj, "node", name=name, stages=stages, outputs=outputs, inputs=inputs
    )


def loss(
    obj: Any = None,
    /,
    *,
    name: str | None = None,
    stages: StagesLike | None = None,
    outputs: Outputs = None,
    inputs: Mapping[str, str] | None = None,
) -> Any:
    """Declare a loss node: `node` with stages TRAIN|VAL|TEST by default.

    The trainer sums every loss output of a TRAIN run for the backward pass.

    Examples
    --------
    >>> import torch
    >>> @loss
    ... def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ...     return ((pred - target) ** 2).mean()
    >>> mse.stages
    StageSet(TRAIN|VAL|TEST)
    """
    return _declare(
        obj, "loss", name=name, stages=stages, outputs=outputs, inputs=inputs
    )


def metric(
    obj: Any = None,
    /,
    *,
    name: str | None = None,
    stages: StagesLike | None = None,
    outputs: Outputs = None,
    inputs: Mapping[str, str] | None = None,
) -> Any:
    """Declare a metric node: `node` with stages VAL|TEST by default.

    Examples
    --------
    >>> import torch
    >>> @metric
    ... def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ...     return (pred == target).float().mean()
    >>> accuracy.stages
    StageSet(VAL|TEST)
    """
    return _declare(
        obj, "metric", name=name, stages=stages, outputs=outputs, inputs=inputs
    )


def _declare(obj: Any, role: str, **options: Any) -> Any:
    localns = _caller_namespace(2)
    if obj is None:
        return functools.partial(_declare_one, role=role, localns=localns, **options)
    return _declare_one(obj, role=role, localns=localns, **options)


def _declare_one(
    obj: Any, *, role: str, localns: dict[str, Any] | None, **options: Any
) -> Any:
    if isinstance(obj, FunctionNode):
        if role != "node":
            options["role"] = role
        return obj.derive(**options)
    if inspect.isclass(obj):
        from ._modules import declare_module_class

        return declare_module_class(obj, role=role, **options)
    if not callable(obj):
        raise DefinitionError(
            f"@{role} expects a function or an nn.Module class, got {obj!r}",
            node=repr(obj),
        )
    from ._modules import declare_module_instance, is_module

    if is_module(obj):
        return declare_module_instance(obj, role=role, **options)
    return FunctionNode(obj, role=role, localns=localns, **options)


def spec_of(item: Any) -> NodeSpec:
    """The `NodeSpec` of anything usable as a node, or a clear TypeError."""
    if isinstance(item, FunctionNode):
        return item.spec
    from ._modules import module_spec

    spec = module_spec(item)
    if spec is not None:
        return spec
    raise DefinitionError(
        f"{item!r} is not a node; decorate it with @node (or pass "
        f"node(func, name=...)) before adding it to a Pipeline",
        node=getattr(item, "__name__", repr(item)),
    )


def call_target_of(item: Any) -> Callable[..., Any]:
    """What a pipeline calls to run a node: a function or a module."""
    if isinstance(item, FunctionNode):
        return item.func
    return item  # type: ignore[no-any-return]
