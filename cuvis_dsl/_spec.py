"""Reading a callable's signature into a node's declaration."""

from __future__ import annotations

import inspect
import types
import typing
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Union

import attrs
import typing_extensions

from ._context import Context
from ._errors import DefinitionError
from ._ports import Port, PortSpec
from ._stages import StageSet

__all__ = ["NodeSpec", "read_spec", "source_location", "Unresolved"]

RETURNS = ("single", "several", "none", "undeclared")


@attrs.frozen
class NodeSpec:
    """Everything a pipeline needs to know about one node.

    Attributes
    ----------
    name
        Unique name of the node within a pipeline.
    stages
        The stages the node runs in.
    inputs
        Input ports in signature order.
    outputs
        Output ports; empty when the node returns nothing.
    returns
        ``"single"`` (the return value is the one output), ``"several"`` (a
        tuple in declared order or a mapping by name), ``"none"`` or
        ``"undeclared"`` (a mapping whose keys are outputs of the run that
        no other node may consume).
    context
        Name of the parameter that receives the `Context`, if any.
    location
        ``file:line`` of the definition.
    role
        ``"node"``, ``"loss"`` or ``"metric"``.
    origin
        Module-qualified name of the function or class, for messages.
    undeclared
        Keys an undeclared-output node is seen to return (read from its
        source), so that a consumer of one gets a precise error.
    context_position
        How many input ports precede a positional context parameter; None
        when the context is keyword-only or absent.
    """

    name: str
    stages: StageSet
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    returns: str
    context: str | None
    location: str
    role: str = "node"
    origin: str = ""
    undeclared: tuple[str, ...] = ()
    context_position: int | None = None

    def input(self, name: str) -> Port:
        """The input port with this parameter name."""
        for port in self.inputs:
            if port.name == name:
                return port
        raise KeyError(name)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(port.name for port in self.outputs)

    def signature_text(self) -> str:
        """``(cube: Tensor, mask: Tensor = None) -> scores``."""
        params = []
        for port in self.inputs:
            label = port.name if port.wire == port.name else f"{port.name}<-{port.wire}"
            params.append(f"{label}: {port.describe()}")
        if self.context:
            params.append(f"{self.context}: Context")
        if self.returns == "undeclared":
            result = "{...}"
        elif not self.outputs:
            result = "None"
        else:
            result = ", ".join(port.name for port in self.outputs)
            if self.returns == "several":
                result = f"({result})"
        return f"({', '.join(params)}) -> {result}"


class Unresolved(Exception):
    """Internal: an annotation names something not (yet) defined."""

    def __init__(self, parameter: str, name: str) -> None:
        super().__init__(name)
        self.parameter = parameter
        self.name = name


def source_location(obj: object) -> str:
    """``file.py:line`` of a function or class, or ``<unknown>``."""
    target: Any = inspect.unwrap(obj) if callable(obj) else obj
    code = getattr(target, "__code__", None)
    if code is not None:
        return f"{_short_path(code.co_filename)}:{code.co_firstlineno}"
    try:
        lines = inspect.getsourcelines(target)
        return f"{_short_path(inspect.getfile(target))}:{lines[1]}"
    except (OSError, TypeError):
        return "<unknown>"


def _short_path(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else path


_RESOLVED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def resolve_hints(
    func: Callable[..., Any], localns: Mapping[str, Any] | None, owner: str
) -> dict[str, Any]:
    """Resolved annotations of ``func``, raising `Unresolved` for a bad name.

    A plain function's hints are resolved once and reused, so that deriving
    many nodes from one function stays cheap.
    """
    cacheable = inspect.isfunction(func)
    if cacheable and func in _RESOLVED:
        return _RESOLVED[func]
    try:
        hints = typing.get_type_hints(
            func, localns=dict(localns or {}), include_extras=True
        )
    except (NameError, AttributeError) as exc:
        # A typo such as ``torch.Tensr`` fails as an AttributeError; both
        # must name the parameter rather than escape as a bare exception.
        parameter, text = _find_unresolved(func, localns)
        name = getattr(exc, "name", None) if isinstance(exc, NameError) else None
        raise Unresolved(parameter, name or text or str(exc)) from exc
    except TypeError as exc:
        raise DefinitionError(
            f"cannot read the annotations of {owner!r}: {exc}", node=owner
        ) from exc
    if cacheable:
        _RESOLVED[func] = hints
    return hints


def _find_unresolved(
    func: Callable[..., Any], localns: Mapping[str, Any] | None
) -> tuple[str, str]:
    raw = getattr(func, "__annotations__", {})
    namespace = dict(getattr(func, "__globals__", {}))
    namespace.update(localns or {})
    for parameter, annotation in raw.items():
        if isinstance(annotation, str):
            try:
                eval(annotation, namespace)
            except (NameError, AttributeError):
                return parameter, annotation
    return "?", ""


def _is_context(annotation: Any) -> bool:
    if annotation is Context:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _is_context(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(members) == 1 and members[0] is Context
    return False


def split_annotation(annotation: Any) -> tuple[Any, PortSpec, bool]:
    """Split ``Annotated[T, PortSpec(...)]`` / ``Optional[T]`` into parts.

    Returns the bare type, the spec found in the metadata (or an empty one)
    and whether ``None`` is admitted.
    """
    spec = PortSpec()
    if typing.get_origin(annotation) is Annotated:
        base, *metadata = typing.get_args(annotation)
        for item in metadata:
            if isinstance(item, PortSpec):
                spec = item.merge(spec)
        bare, inner, admits_none = split_annotation(base)
        return bare, spec.merge(inner), admits_none
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = typing.get_args(annotation)
        if type(None) in members:
            rest = [m for m in members if m is not type(None)]
            if len(rest) == 1:
                bare, inner, _ = split_annotation(rest[0])
                return bare, spec.merge(inner), True
            return annotation, spec, True
    return annotation, spec, False


def _element_type(annotation: Any) -> Any:
    """For a variadic port typed ``list[T]``, the element type T."""
    if typing.get_origin(annotation) in (list, Sequence, tuple):
        args = typing.get_args(annotation)
        if args:
            return args[0]
    return Any


def read_inputs(
    signature: inspect.Signature,
    hints: Mapping[str, Any],
    owner: str,
    exclude: frozenset[str] = frozenset(),
    rename: Mapping[str, str] | None = None,
) -> tuple[tuple[Port, ...], str | None, int | None]:
    """Input ports, the context parameter and its position among the ports."""
    rename = dict(rename or {})
    ports: list[Port] = []
    context: str | None = None
    position: int | None = None
    for parameter in signature.parameters.values():
        name = parameter.name
        if name in exclude or parameter.kind is parameter.VAR_KEYWORD:
            continue
        annotation = hints.get(name, Any)
        if _is_context(annotation) or (name == "context" and name not in hints):
            if parameter.kind is parameter.VAR_POSITIONAL:
                raise DefinitionError(
                    f"node {owner!r}: *{name} cannot receive the Context; "
                    f"write '{name}: Context' as a normal parameter",
                    node=owner,
                    port=name,
                )
            context = _only_one_context(context, name, owner)
            if parameter.kind is not parameter.KEYWORD_ONLY:
                position = len(ports)
            continue
        ports.append(_input_port(parameter, annotation, rename.pop(name, name), owner))
    if rename:
        raise DefinitionError(
            f"node {owner!r}: inputs= renames {sorted(rename)}, which are not "
            f"input ports; the ports are {[p.name for p in ports]}",
            node=owner,
            port=next(iter(rename)),
        )
    return tuple(ports), context, position


def _only_one_context(current: str | None, name: str, owner: str) -> str:
    if current is not None:
        raise DefinitionError(
            f"node {owner!r} asks for the Context twice ({current!r} and "
            f"{name!r}); keep one, or annotate the data port with its type",
            node=owner,
            port=name,
        )
    return name


def _input_port(
    parameter: inspect.Parameter, annotation: Any, wire: str, owner: str
) -> Port:
    bare, spec, admits_none = split_annotation(annotation)
    has_default = parameter.default is not parameter.empty
    if parameter.kind is parameter.VAR_POSITIONAL:
        return Port(
            name=parameter.name,
            wire=wire,
            annotation=bare,
            kind="varargs",
            spec=attrs.evolve(spec, variadic=True, optional=True),
        )
    if spec.variadic:
        bare = _element_type(bare)
    kind = "keyword" if parameter.kind is parameter.KEYWORD_ONLY else "positional"
    if parameter.kind is parameter.POSITIONAL_ONLY:
        kind = "positional-only"
    return Port(
        name=parameter.name,
        wire=wire,
        spec=attrs.evolve(spec, optional=spec.optional or has_default or admits_none),
        annotation=bare,
        default=parameter.default if has_default else Port.NO_DEFAULT,
        kind=kind,
    )


def read_outputs(
    return_annotation: Any,
    outputs: str | Sequence[str] | None,
    default_name: str,
    owner: str,
    annotated: bool,
) -> tuple[tuple[Port, ...], str]:
    """Output ports and the return convention."""
    if isinstance(outputs, str):
        return (_output_port(outputs, return_annotation),), "single"
    if outputs is not None:
        names = list(outputs)
        _check_output_names(names, owner)
        per_name = _several_annotations(return_annotation, names, owner)
        ports = tuple(_output_port(n, per_name.get(n, Any)) for n in names)
        return ports, "several"
    if annotated and return_annotation in (None, type(None)):
        return (), "none"
    if typing_extensions.is_typeddict(_strip(return_annotation)):
        fields = typing.get_type_hints(_strip(return_annotation), include_extras=True)
        if not fields:
            raise DefinitionError(
                f"node {owner!r} returns an empty TypedDict", node=owner
            )
        return tuple(_output_port(n, t) for n, t in fields.items()), "several"
    return (_output_port(default_name, return_annotation),), "single"


def _strip(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _check_output_names(names: list[str], owner: str) -> None:
    if not names:
        raise DefinitionError(f"node {owner!r}: outputs= is empty", node=owner)
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise DefinitionError(
                f"node {owner!r}: output name {name!r} is not an identifier",
                node=owner,
                port=str(name),
            )
    if len(set(names)) != len(names):
        raise DefinitionError(
            f"node {owner!r}: outputs= repeats a name: {names}", node=owner
        )


def _several_annotations(
    annotation: Any, names: list[str], owner: str
) -> dict[str, Any]:
    base = _strip(annotation)
    if typing_extensions.is_typeddict(base):
        fields = typing.get_type_hints(base, include_extras=True)
        if set(fields) != set(names):
            raise DefinitionError(
                f"node {owner!r}: outputs= {names} but the TypedDict return "
                f"declares {list(fields)}; make them agree or drop outputs=",
                node=owner,
            )
        return fields
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if len(args) == len(names) and Ellipsis not in args:
            return dict(zip(names, args))
    return {}


def _output_port(name: str, annotation: Any) -> Port:
    bare, spec, admits_none = split_annotation(annotation)
    if spec.variadic:
        raise DefinitionError(f"output {name!r} cannot be variadic", node=name)
    return Port(
        name=name,
        wire=name,
        spec=attrs.evolve(spec, optional=admits_none),
        annotation=bare,
        kind="output",
    )


def read_spec(
    func: Callable[..., Any],
    *,
    name: str,
    stages: StageSet,
    outputs: str | Sequence[str] | None,
    inputs: Mapping[str, str] | None,
    role: str,
    localns: Mapping[str, Any] | None,
    hints_of: Callable[..., Any] | None = None,
    exclude: frozenset[str] = frozenset(),
    location: str | None = None,
) -> NodeSpec:
    """Read a node's full declaration from a callable.

    ``hints_of`` is the function whose annotations are read when it differs
    from ``func`` (the wrapped function of a partial); ``exclude`` lists
    parameters that are not ports (arguments bound by a partial).
    """
    if not stages:
        raise DefinitionError(
            f"node {name!r} is declared with no stages, so it would never run.\n"
            f"  Fix: pass stages='train|val' (or any stages), or leave stages out "
            f"to run in every stage",
            node=name,
        )
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise DefinitionError(
            f"cannot read the signature of {name!r}: {exc}", node=name
        ) from exc
    hints = resolve_hints(hints_of or func, localns, name)
    in_ports, context, position = read_inputs(signature, hints, name, exclude, inputs)
    annotated = "return" in hints or signature.return_annotation is not signature.empty
    out_ports, returns = read_outputs(
        hints.get("return", Any), outputs, name, name, annotated
    )
    _check_rebinding(in_ports, out_ports, name)
    return NodeSpec(
        name=name,
        stages=stages,
        inputs=in_ports,
        outputs=out_ports,
        returns=returns,
        context=context,
        location=location or source_location(hints_of or func),
        role=role,
        origin=_origin(hints_of or func),
        context_position=position,
    )


def _origin(func: Any) -> str:
    target = getattr(func, "__func__", func)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


def _check_rebinding(
    inputs: tuple[Port, ...], outputs: tuple[Port, ...], owner: str
) -> None:
    produced = {port.name for port in outputs}
    for port in inputs:
        if port.variadic and port.wire in produced:
            raise DefinitionError(
                f"node {owner!r}: variadic input {port.name!r} has the name of "
                f"its own output; a fan-in port cannot be rebound. Rename the "
                f"output with outputs=",
                node=owner,
                port=port.name,
            )
