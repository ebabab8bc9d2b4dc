"""``torch.nn.Module`` classes and instances as nodes."""

from __future__ import annotations

import re
from typing import Any

import attrs
import torch

from ._errors import DefinitionError
from ._spec import NodeSpec, Unresolved, read_spec, source_location
from ._stages import ExecutionStage, StageSet, as_stages

__all__ = [
    "declare_module_class",
    "declare_module_instance",
    "is_module",
    "module_spec",
]

_CLASS_KEY = "__cuvis_node__"
_INSTANCE_KEY = "_cuvis_node_overrides"

_ROLE_STAGES = {
    "node": StageSet(ExecutionStage.ALWAYS),
    "loss": StageSet("train|val|test"),
    "metric": StageSet("val|test"),
}


@attrs.frozen
class ModuleDeclaration:
    """What ``@node(...)`` said about a module class or instance."""

    role: str = "node"
    name: str | None = None
    stages: StageSet | None = None
    outputs: Any = None
    inputs: Any = None

    def updated(self, **changes: Any) -> ModuleDeclaration:
        return attrs.evolve(
            self, **{key: value for key, value in changes.items() if value is not None}
        )


def is_module(obj: object) -> bool:
    return isinstance(obj, torch.nn.Module)


def snake_case(name: str) -> str:
    """``ChannelStats`` -> ``channel_stats``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def declare_module_class(cls: type, *, role: str, **options: Any) -> type:
    """Mark an ``nn.Module`` subclass so that its instances are nodes."""
    if not issubclass(cls, torch.nn.Module):
        raise DefinitionError(
            f"@{role} on a class needs a torch.nn.Module subclass; {cls.__qualname__} "
            f"is not one. Decorate a function, or subclass nn.Module.",
            node=cls.__qualname__,
        )
    inherited = cls.__dict__.get(_CLASS_KEY) or getattr(cls, _CLASS_KEY, None)
    base = inherited if isinstance(inherited, ModuleDeclaration) else None
    declaration = (base or ModuleDeclaration()).updated(**_as_changes(role, options))
    setattr(cls, _CLASS_KEY, declaration)
    _read(cls, declaration, snake_case(cls.__name__), deferred_ok=True)
    return cls


def _as_changes(role: str, options: dict[str, Any]) -> dict[str, Any]:
    changes = dict(options)
    if changes.get("stages") is not None:
        changes["stages"] = as_stages(changes["stages"])
    changes["role"] = role
    return changes


def declare_module_instance(
    module: torch.nn.Module, *, role: str, **options: Any
) -> Any:
    """Make one module instance a node (or change its declaration)."""
    current = module.__dict__.get(_INSTANCE_KEY)
    if current is None:
        current = getattr(type(module), _CLASS_KEY, None) or ModuleDeclaration()
    changes = _as_changes(role, options)
    if role == "node" and current.role != "node":
        changes.pop("role")
    declaration = current.updated(**changes)
    module.__dict__[_INSTANCE_KEY] = declaration
    _read(type(module), declaration, _default_name(module), deferred_ok=True)
    return module


def _default_name(module: torch.nn.Module) -> str:
    return snake_case(type(module).__name__)


def _read(
    cls: type, declaration: ModuleDeclaration, name: str, deferred_ok: bool = False
) -> NodeSpec | None:
    node_name = declaration.name or name
    stages = declaration.stages or _ROLE_STAGES[declaration.role]
    try:
        return read_spec(
            cls.forward,  # type: ignore[attr-defined]
            name=node_name,
            stages=stages,
            outputs=declaration.outputs,
            inputs=declaration.inputs,
            role=declaration.role,
            localns=None,
            exclude=frozenset({"self"}),
            location=source_location(cls.forward),  # type: ignore[attr-defined]
        )
    except Unresolved as exc:
        if deferred_ok:
            return None
        raise DefinitionError(
            f"node {node_name!r} ({source_location(cls)}): the annotation of "
            f"parameter {exc.parameter!r} of forward names {exc.name!r}, which "
            f"is not defined.\n  Fix: import or define {exc.name!r}.",
            node=node_name,
            port=exc.parameter,
        ) from None


def module_spec(item: object) -> NodeSpec | None:
    """The spec of a module node, or None if ``item`` is not one."""
    if not isinstance(item, torch.nn.Module):
        return None
    own = getattr(item, "node_spec", None)
    if callable(own):
        return own()  # type: ignore[no-any-return]
    declaration = item.__dict__.get(_INSTANCE_KEY) or getattr(
        type(item), _CLASS_KEY, None
    )
    if declaration is None:
        return None
    return _read(type(item), declaration, _default_name(item))
