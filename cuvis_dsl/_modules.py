"""``torch.nn.Module`` classes and instances as nodes.

``@node(...)`` on a module class stores a declaration on the class; its
instances are then nodes whose ports come from ``forward``. Subclasses
inherit the declaration, except its ``name``: each class is named after
itself unless it says otherwise. ``node(instance, ...)`` stores an
override on one instance, which is how an undecorated module such as
``nn.Linear`` becomes a node, and how one instance is renamed.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import torch

from ._errors import DefinitionError
from ._spec import NodeSpec, Unresolved, read_spec, source_location
from ._stages import ExecutionStage, StageSet, as_stages

__all__ = [
    "ModuleDeclaration",
    "class_declaration",
    "declare_module_class",
    "declare_module_instance",
    "forward_of",
    "instance_override",
    "is_module",
    "module_spec",
    "role_stages",
    "snake_case",
]

_CLASS_KEY = "__cuvis_node__"
_INSTANCE_KEY = "_cuvis_node_overrides"

_ROLE_STAGES = {
    "node": StageSet(ExecutionStage.ALWAYS),
    "loss": StageSet("train|val|test"),
    "metric": StageSet("val|test"),
}
_FIELDS = ("role", "name", "stages", "outputs", "inputs")


@attrs.frozen
class ModuleDeclaration:
    """What ``@node(...)`` said about a module class or instance.

    ``None`` means "not said": the next level down decides (instance
    override, then class declaration, then the defaults). ``owner`` is the
    class the declaration was written on; a subclass does not inherit its
    ``name``.
    """

    role: str | None = None
    name: str | None = None
    stages: StageSet | None = None
    outputs: Any = None
    inputs: Any = None
    owner: type | None = attrs.field(default=None, eq=False)

    def merged(self, other: ModuleDeclaration | None) -> ModuleDeclaration:
        """This declaration with every field that ``other`` sets replaced."""
        if other is None:
            return self
        changes = {
            key: getattr(other, key)
            for key in _FIELDS
            if getattr(other, key) is not None
        }
        return attrs.evolve(self, **changes)


def role_stages(role: str | None) -> StageSet:
    """The default stages of a role: ALWAYS, TRAIN|VAL|TEST or VAL|TEST."""
    return _ROLE_STAGES[role or "node"]


def is_module(obj: object) -> bool:
    return isinstance(obj, torch.nn.Module)


def snake_case(name: str) -> str:
    """``ChannelStats`` -> ``channel_stats``, ``RXDetector`` -> ``rx_detector``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def class_declaration(cls: type) -> ModuleDeclaration | None:
    """The ``@node`` declaration ``cls`` wrote or inherited, or None."""
    declaration = getattr(cls, _CLASS_KEY, None)
    if not isinstance(declaration, ModuleDeclaration):
        return None
    if declaration.owner is not cls:
        return attrs.evolve(declaration, name=None, owner=cls)
    return declaration


def instance_override(module: torch.nn.Module) -> ModuleDeclaration | None:
    """What ``node(module, ...)`` said about this one instance, or None."""
    found = module.__dict__.get(_INSTANCE_KEY)
    return found if isinstance(found, ModuleDeclaration) else None


def _changes(role: str, options: dict[str, Any]) -> ModuleDeclaration:
    # NOTE: plain @node never changes a role, so node(loss_module, name=...)
    # stays a loss, as node(loss_function, name=...) does.
    stages = options.get("stages")
    name = options.get("name")
    if name is not None and (not isinstance(name, str) or not name.isidentifier()):
        raise DefinitionError(
            f"node name {name!r} is not an identifier; module nodes become "
            f"attributes of the pipeline. Fix: node(module, name='my_node')",
            node=str(name),
        )
    return ModuleDeclaration(
        role=None if role == "node" else role,
        name=name,
        stages=None if stages is None else as_stages(stages),
        outputs=options.get("outputs"),
        inputs=options.get("inputs"),
    )


def declare_module_class(cls: type, *, role: str, **options: Any) -> type:
    """Mark an ``nn.Module`` subclass so that its instances are nodes."""
    if not issubclass(cls, torch.nn.Module):
        raise DefinitionError(
            f"@{role} on a class needs a torch.nn.Module subclass; {cls.__qualname__} "
            f"is not one.\n  Fix: decorate a function, or subclass nn.Module.",
            node=cls.__qualname__,
        )
    base = class_declaration(cls) or ModuleDeclaration()
    declaration = attrs.evolve(base.merged(_changes(role, options)), owner=cls)
    setattr(cls, _CLASS_KEY, declaration)
    if not _has_own_spec(cls):
        _read(cls, declaration, deferred_ok=True)
    return cls


def declare_module_instance(
    module: torch.nn.Module, *, role: str, **options: Any
) -> Any:
    """Make one module instance a node, or change its declaration.

    The instance itself is returned, changed in place: a module has one
    name in one pipeline. Use a second instance for a second node.
    """
    override = (instance_override(module) or ModuleDeclaration()).merged(
        _changes(role, options)
    )
    module.__dict__[_INSTANCE_KEY] = override
    module_spec(module)
    return module


def _has_own_spec(cls: type) -> bool:
    return callable(getattr(cls, "node_spec", None))


def _effective(module: torch.nn.Module) -> ModuleDeclaration | None:
    base = class_declaration(type(module))
    override = instance_override(module)
    if base is None and override is None:
        return None
    return (base or ModuleDeclaration(owner=type(module))).merged(override)


def forward_of(cls: type, node_name: str) -> Any:
    forward = getattr(cls, "forward", None)
    if forward is None or forward is torch.nn.Module.forward:
        raise DefinitionError(
            f"node {node_name!r}: module class {cls.__qualname__} defines no "
            f"forward, so it has no ports.\n  Fix: define forward(self, ...) "
            f"on {cls.__qualname__}.",
            node=node_name,
        )
    return forward


def _read(
    cls: type, declaration: ModuleDeclaration, deferred_ok: bool = False
) -> NodeSpec | None:
    node_name = declaration.name or snake_case(cls.__name__)
    forward = forward_of(cls, node_name)
    try:
        return read_spec(
            forward,
            name=node_name,
            stages=declaration.stages or role_stages(declaration.role),
            outputs=declaration.outputs,
            inputs=declaration.inputs,
            role=declaration.role or "node",
            localns=None,
            exclude=frozenset({"self"}),
            location=source_location(forward),
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
    """The spec of a module node, or None if ``item`` is not a module.

    A module that nobody declared is an error that says how to declare it.
    Modules with their own ``node_spec()`` (the class form) describe
    themselves.
    """
    if not isinstance(item, torch.nn.Module):
        return None
    if _has_own_spec(type(item)):
        return item.node_spec()  # type: ignore[no-any-return,operator]
    declaration = _effective(item)
    if declaration is None:
        name = snake_case(type(item).__name__)
        raise DefinitionError(
            f"module {type(item).__qualname__} is not a node: neither its class "
            f"nor this instance was declared with @node.\n  Fix: "
            f"node({name}_module, name={name!r}, outputs='...') for one "
            f"instance, or @node on the class.",
            node=name,
        )
    return _read(type(item), declaration)
