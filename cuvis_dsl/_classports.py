"""Reading the ports of a class-form node.

From ``INPUT_SPECS`` / ``OUTPUT_SPECS`` when the class defines them, else
from ``forward``'s signature and return annotation. Name, stages and
renames belong to the instance and are applied last, in `ClassPorts.spec`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import torch
import typing_extensions

from ._context import Context
from ._errors import DefinitionError
from ._modules import ModuleDeclaration, forward_of
from ._ports import Port, PortSpec
from ._spec import (
    NodeSpec,
    _check_rebinding,
    _element_type,
    _is_context,
    _only_one_context,
    _origin,
    read_inputs,
    read_outputs,
    resolve_hints,
    source_location,
    split_annotation,
)

__all__ = ["LOCALNS", "ClassPorts", "read_class_ports", "returned_keys"]

LOCALNS = "_cuvis_localns"


@attrs.frozen
class ClassPorts:
    """What a Node subclass declares, before name and stages are known."""

    inputs: tuple[Port, ...]
    context: str | None
    context_position: int | None
    outputs: tuple[Port, ...]
    returns: str
    undeclared: tuple[str, ...]
    location: str
    origin: str

    def spec(self, declaration: ModuleDeclaration) -> NodeSpec:
        """The full spec, with the instance's name, stages and renames."""
        name = declaration.name or ""
        inputs = _renamed(self.inputs, declaration.inputs, name)
        outputs, returns, undeclared = self.outputs, self.returns, self.undeclared
        if declaration.outputs is not None:
            outputs, returns = _declared_outputs(
                self.outputs, declaration.outputs, name
            )
            undeclared = ()
        _check_rebinding(inputs, outputs, name)
        return NodeSpec(
            name=name,
            stages=declaration.stages,  # type: ignore[arg-type]
            inputs=inputs,
            outputs=outputs,
            returns=returns,
            context=self.context,
            location=self.location,
            role=declaration.role or "node",
            origin=self.origin,
            undeclared=undeclared,
            context_position=self.context_position,
        )


def read_class_ports(cls: type, owner: str) -> ClassPorts:
    """Read the ports of a Node subclass from its specs or its ``forward``."""
    forward = forward_of(cls, owner)
    signature = inspect.signature(forward)
    hints = resolve_hints(forward, getattr(cls, LOCALNS, None), owner)
    specs = _specs_of(cls, "INPUT_SPECS", owner)
    if specs:
        inputs, context, position = _spec_inputs(specs, signature, hints, owner)
    else:
        inputs, context, position = read_inputs(
            signature, hints, owner, frozenset({"self"})
        )
    outputs, returns, undeclared = _class_outputs(cls, forward, hints, owner)
    return ClassPorts(
        inputs=inputs,
        context=context,
        context_position=position,
        outputs=outputs,
        returns=returns,
        undeclared=undeclared,
        location=source_location(forward),
        origin=_origin(forward),
    )


def _specs_of(cls: type, attribute: str, owner: str) -> dict[str, Any]:
    specs = getattr(cls, attribute, None)
    if specs is None:
        return {}
    if not isinstance(specs, Mapping):
        raise DefinitionError(
            f"node {owner!r}: {cls.__qualname__}.{attribute} must be a dict of "
            f"port names to PortSpec, got {type(specs).__name__}.\n"
            f"  Fix: {attribute} = {{'data': PortSpec(dtype=torch.float32)}}",
            node=owner,
        )
    return dict(specs)


def _spec_inputs(
    specs: dict[str, Any],
    signature: inspect.Signature,
    hints: Mapping[str, Any],
    owner: str,
) -> tuple[tuple[Port, ...], str | None, int | None]:
    """Input ports from INPUT_SPECS, checked against ``forward``'s parameters.

    Also the context parameter and, when it is positional-only, the number
    of ports before it (a positional-or-keyword context is passed by
    keyword, like the ports).
    """
    context = _context_entry(specs, owner)
    ports: list[Port] = []
    position: int | None = None
    takes_any = False
    for parameter in list(signature.parameters.values())[1:]:
        name = parameter.name
        if parameter.kind is parameter.VAR_KEYWORD:
            takes_any = True
            continue
        _reject_star_args(parameter, owner)
        annotation = hints.get(name, Any)
        if name != context and name not in specs:
            if _is_context_parameter(name, annotation, hints):
                context = _only_one_context(context, name, owner)
        if name == context:
            position = _context_position(parameter, ports, signature, owner)
            continue
        if name not in specs:
            _check_unlisted(parameter, owner)
            continue
        ports.append(_input_port(name, specs.pop(name), annotation, parameter, owner))
    _check_receivable(context, specs, signature, takes_any, owner)
    ports.extend(_input_port(n, s, Any, None, owner) for n, s in specs.items())
    return tuple(ports), context, position


def _context_position(
    parameter: inspect.Parameter,
    ports: list[Port],
    signature: inspect.Signature,
    owner: str,
) -> int | None:
    """How many ports precede a positional-only context; None otherwise."""
    if parameter.kind is not parameter.POSITIONAL_ONLY:
        return None
    names = list(signature.parameters)[1:]
    listed = {port.name for port in ports}
    before = names[: names.index(parameter.name)]
    unlisted = [name for name in before if name not in listed]
    if unlisted:
        raise DefinitionError(
            f"node {owner!r}: forward takes the context {parameter.name!r} by "
            f"position after {unlisted[0]!r}, which is not in INPUT_SPECS, so "
            f"the context would land in {unlisted[0]!r}.\n  Fix: add "
            f"{unlisted[0]!r} to INPUT_SPECS, or move it after "
            f"{parameter.name!r}.",
            node=owner,
            port=unlisted[0],
        )
    return len(ports)


def _context_entry(specs: dict[str, Any], owner: str) -> str | None:
    found = [
        name
        for name, spec in specs.items()
        if isinstance(spec, PortSpec)
        and isinstance(spec.dtype, type)
        and issubclass(spec.dtype, Context)
    ]
    if len(found) > 1:
        raise DefinitionError(
            f"node {owner!r}: INPUT_SPECS gives the Context to {found}; a node "
            f"receives one context.\n  Fix: keep one entry with dtype=Context.",
            node=owner,
            port=found[1],
        )
    for name in found:
        del specs[name]
    return found[0] if found else None


def _is_context_parameter(name: str, annotation: Any, hints: Mapping[str, Any]) -> bool:
    return _is_context(annotation) or (name == "context" and name not in hints)


def _reject_star_args(parameter: inspect.Parameter, owner: str) -> None:
    if parameter.kind is parameter.VAR_POSITIONAL:
        raise DefinitionError(
            f"node {owner!r}: forward takes *{parameter.name}, which INPUT_SPECS "
            f"cannot describe.\n  Fix: declare a variadic port, "
            f"INPUT_SPECS = {{{parameter.name!r}: [PortSpec(...)]}}, and take "
            f"{parameter.name} as a list.",
            node=owner,
            port=parameter.name,
        )


def _check_unlisted(parameter: inspect.Parameter, owner: str) -> None:
    if parameter.default is parameter.empty:
        raise DefinitionError(
            f"node {owner!r}: forward parameter {parameter.name!r} is missing "
            f"from INPUT_SPECS, so nothing would ever pass it.\n  Fix: add "
            f"{parameter.name!r}: PortSpec(...) to INPUT_SPECS, or give it a "
            f"default.",
            node=owner,
            port=parameter.name,
        )


def _check_receivable(
    context: str | None,
    extra: dict[str, Any],
    signature: inspect.Signature,
    takes_any: bool,
    owner: str,
) -> None:
    unknown = list(extra)
    if context is not None and context not in signature.parameters:
        unknown.append(context)
    if unknown and not takes_any:
        names = [p for p in signature.parameters if p != "self"]
        raise DefinitionError(
            f"node {owner!r}: INPUT_SPECS declares {unknown}, but forward has "
            f"no such parameter (it takes {names}).\n  Fix: add them to "
            f"forward's parameters, or end forward's parameters with **_.",
            node=owner,
            port=unknown[0],
        )


def _as_port_spec(value: Any, table: str, name: str, owner: str) -> PortSpec:
    variadic = False
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise DefinitionError(
                f"node {owner!r}: {table}[{name!r}] is a list of {len(value)} "
                f"specs; a variadic port is written [PortSpec(...)].",
                node=owner,
                port=name,
            )
        value, variadic = value[0], True
    if not isinstance(value, PortSpec):
        raise DefinitionError(
            f"node {owner!r}: {table}[{name!r}] must be a PortSpec, got "
            f"{value!r}.\n  Fix: {table} = {{{name!r}: PortSpec(dtype=..., "
            f"shape=...)}}",
            node=owner,
            port=name,
        )
    if isinstance(value.dtype, type) and value.shape == ():
        # A Python scalar: shape () would otherwise demand a 0-d tensor.
        value = attrs.evolve(value, shape=None)
    return attrs.evolve(value, variadic=True) if variadic else value


def _type_of(spec: PortSpec) -> Any:
    if isinstance(spec.dtype, torch.dtype):
        return torch.Tensor
    if isinstance(spec.dtype, type):
        return spec.dtype
    return Any


def _input_port(
    name: str,
    value: Any,
    annotation: Any,
    parameter: inspect.Parameter | None,
    owner: str,
) -> Port:
    spec = _as_port_spec(value, "INPUT_SPECS", name, owner)
    bare, from_annotation, admits_none = split_annotation(annotation)
    spec = spec.merge(from_annotation)
    if spec.variadic and bare is not Any:
        bare = _element_type(bare)
    if bare is Any:
        bare = _type_of(spec)
    has_default = parameter is not None and parameter.default is not parameter.empty
    positional_only = (
        parameter is not None and parameter.kind is parameter.POSITIONAL_ONLY
    )
    return Port(
        name=name,
        wire=name,
        spec=attrs.evolve(spec, optional=spec.optional or has_default or admits_none),
        annotation=bare,
        default=_default_of(parameter, has_default),
        kind="positional-only" if positional_only else "keyword",
    )


def _output_port(name: str, value: Any, owner: str) -> Port:
    spec = _as_port_spec(value, "OUTPUT_SPECS", name, owner)
    if spec.variadic:
        raise DefinitionError(
            f"node {owner!r}: output {name!r} is declared variadic; only inputs "
            f"gather several values.\n  Fix: OUTPUT_SPECS = {{{name!r}: "
            f"PortSpec(...)}}",
            node=owner,
            port=name,
        )
    return Port(
        name=name, wire=name, spec=spec, annotation=_type_of(spec), kind="output"
    )


def _class_outputs(
    cls: type, forward: Callable[..., Any], hints: Mapping[str, Any], owner: str
) -> tuple[tuple[Port, ...], str, tuple[str, ...]]:
    specs = _specs_of(cls, "OUTPUT_SPECS", owner)
    if specs:
        ports = tuple(_output_port(n, s, owner) for n, s in specs.items())
        return ports, "several", ()
    returned = hints.get("return", inspect.Parameter.empty)
    if returned is None or returned is type(None):
        return (), "none", ()
    bare = typing.get_args(returned)[0] if _is_annotated(returned) else returned
    if typing_extensions.is_typeddict(bare):
        ports, returns = read_outputs(returned, None, owner, owner, True)
        return ports, returns, ()
    return (), "undeclared", returned_keys(forward)


def _is_annotated(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Annotated


def _renamed(
    ports: tuple[Port, ...], renames: Mapping[str, str] | None, owner: str
) -> tuple[Port, ...]:
    if not renames:
        return ports
    unknown = sorted(set(renames) - {port.name for port in ports})
    if unknown:
        raise DefinitionError(
            f"node {owner!r}: inputs= renames {unknown}, which are not input "
            f"ports; the ports are {[port.name for port in ports]}",
            node=owner,
            port=unknown[0],
        )
    return tuple(attrs.evolve(p, wire=renames.get(p.name, p.wire)) for p in ports)


def _declared_outputs(
    known: tuple[Port, ...], outputs: Any, owner: str
) -> tuple[tuple[Port, ...], str]:
    ports, returns = read_outputs(Any, outputs, owner, owner, False)
    if returns != "several":
        return ports, returns
    by_name = {port.name: port for port in known}
    return tuple(by_name.get(port.name, port) for port in ports), returns


def returned_keys(forward: Callable[..., Any]) -> tuple[str, ...]:
    """Keys of the dict literals ``forward`` returns, read from its source.

    Best effort: ``return {"a": ...}`` and ``return dict(a=...)`` are read;
    anything computed is not, and a function without source gives ``()``.
    """
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(forward)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return ()
    function = tree.body[0] if tree.body else None
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return ()
    keys: dict[str, None] = {}
    for statement in _own_nodes(function):
        if isinstance(statement, ast.Return) and statement.value is not None:
            keys.update(dict.fromkeys(_literal_keys(statement.value)))
    return tuple(keys)


def _own_nodes(function: ast.AST) -> Iterator[ast.AST]:
    """Every node of a function body, without descending into nested scopes."""
    for child in ast.iter_child_nodes(function):
        yield child
        if not isinstance(child, _SCOPES):
            yield from _own_nodes(child)


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _literal_keys(value: ast.expr) -> list[str]:
    if isinstance(value, ast.Dict):
        return [
            key.value
            for key in value.keys
            if isinstance(key, ast.Constant) and isinstance(key.value, str)
        ]
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "dict"
    ):
        return [keyword.arg for keyword in value.keywords if keyword.arg]
    return []


def _default_of(parameter: Any, has_default: bool) -> Any:
    return parameter.default if has_default else Port.NO_DEFAULT
