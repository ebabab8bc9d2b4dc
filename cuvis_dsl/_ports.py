"""Port specs: what a node's inputs and outputs accept, and their checks."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import attrs
import torch

__all__ = [
    "Port",
    "PortSpec",
    "SpecViolation",
    "compile_check",
    "describe_type",
    "incompatibility",
    "summarize",
]

Dim = int | str
Bindings = dict[str, tuple[int, str]]
Check = Callable[[Any, Bindings, str], None]


def _to_shape(value: object) -> tuple[Dim, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"PortSpec.shape must be a tuple of dims, got {value!r}")
    return tuple(value)


def _check_shape(instance: Any, attribute: Any, shape: Any) -> None:
    if shape is None:
        return
    for dim in shape:  # type: ignore[attr-defined]
        if isinstance(dim, bool) or not isinstance(dim, (int, str)):
            raise TypeError(
                f"PortSpec.shape entries are ints, -1 or symbolic names, got {dim!r}"
            )
        if isinstance(dim, int) and dim < -1:
            raise ValueError(f"PortSpec.shape: {dim} is not a size; use -1 for any")
        if isinstance(dim, str) and not dim.isidentifier():
            raise ValueError(f"PortSpec.shape: symbolic dim {dim!r} is not a name")


def _check_dtype(instance: Any, attribute: Any, dtype: Any) -> None:
    if dtype is None or isinstance(dtype, (torch.dtype, type)):
        return
    raise TypeError(
        f"PortSpec.dtype must be a torch.dtype or a Python type, got {dtype!r}"
    )


@attrs.frozen
class PortSpec:
    """What one port accepts: dtype, shape and how it is wired.

    Put it inside ``Annotated[...]`` on a parameter or return annotation.

    Parameters
    ----------
    dtype
        A ``torch.dtype`` for tensors, or a Python type such as ``str``.
    shape
        One entry per dimension: a fixed size, ``-1`` for any size, or a
        symbolic name such as ``"C"`` that must bind to the same size on
        every port of one node call.
    description
        Free text shown in reprs and docs.
    optional
        The node runs without this input (it gets the parameter's default,
        or ``None``). A default value or ``Optional[...]`` sets this too.
    variadic
        Fan-in: the port receives a list of every producer's value.

    Examples
    --------
    >>> spec = PortSpec(dtype=torch.float32, shape=(-1, "C"))
    >>> spec
    PortSpec(float32, (-1, C))
    >>> spec == PortSpec(dtype=torch.float32, shape=[-1, "C"])
    True
    """

    dtype: torch.dtype | type | None = attrs.field(default=None, validator=_check_dtype)
    shape: tuple[Dim, ...] | None = attrs.field(
        default=None, converter=_to_shape, validator=_check_shape
    )
    description: str = ""
    optional: bool = False
    variadic: bool = False

    def __repr__(self) -> str:
        parts = []
        if self.dtype is not None:
            parts.append(_dtype_name(self.dtype))
        if self.shape is not None:
            parts.append(_shape_text(self.shape))
        parts += [flag for flag in ("optional", "variadic") if getattr(self, flag)]
        if self.description:
            parts.append(repr(self.description))
        return f"PortSpec({', '.join(parts)})"

    def merge(self, other: PortSpec) -> PortSpec:
        """Fill this spec's unset fields from ``other``."""
        return PortSpec(
            dtype=self.dtype if self.dtype is not None else other.dtype,
            shape=self.shape if self.shape is not None else other.shape,
            description=self.description or other.description,
            optional=self.optional or other.optional,
            variadic=self.variadic or other.variadic,
        )


def _dtype_name(dtype: object) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return getattr(dtype, "__name__", repr(dtype))


def _shape_text(shape: tuple[Dim, ...]) -> str:
    inner = ", ".join(str(dim) for dim in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


_EMPTY = object()


@attrs.frozen
class Port:
    """A named input or output of a node.

    Attributes
    ----------
    name
        The parameter name (inputs) or output name.
    wire
        The name this port is wired by; equals ``name`` unless renamed.
    spec
        The port's `PortSpec`, with ``optional`` set from the signature.
    annotation
        The resolved type annotation without ``Annotated`` metadata, or
        ``typing.Any`` for an unannotated parameter.
    default
        The parameter's default, or `Port.NO_DEFAULT`.
    kind
        ``"positional"``, ``"keyword"``, ``"varargs"`` or ``"output"``.
    """

    NO_DEFAULT: typing.ClassVar[object] = _EMPTY

    name: str
    wire: str
    spec: PortSpec
    annotation: Any = Any
    default: Any = _EMPTY
    kind: str = "positional"

    @property
    def optional(self) -> bool:
        return self.spec.optional

    @property
    def variadic(self) -> bool:
        return self.spec.variadic

    @property
    def has_default(self) -> bool:
        return self.default is not _EMPTY

    def describe(self) -> str:
        """Short form used in reprs: ``cube: Tensor[float32, (-1, C)]``."""
        text = describe_type(self.annotation, self.spec)
        if self.spec.variadic:
            text = f"*{text}"
        if self.has_default:
            text += f" = {self.default!r}"
        elif self.spec.optional and not self.spec.variadic:
            text += " = None"
        return text


def describe_type(annotation: Any, spec: PortSpec) -> str:
    """Render an annotation with its spec, e.g. ``Tensor[float32, (-1, C)]``."""
    base = _type_name(annotation)
    extra = []
    if spec.dtype is not None and not (
        isinstance(spec.dtype, type) and spec.dtype is annotation
    ):
        extra.append(_dtype_name(spec.dtype))
    if spec.shape is not None:
        extra.append(_shape_text(spec.shape))
    return f"{base}[{', '.join(extra)}]" if extra else base


def _type_name(annotation: Any) -> str:
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type):
        if annotation is torch.Tensor:
            return "Tensor"
        return annotation.__qualname__
    return str(annotation).replace("typing.", "").replace("torch.Tensor", "Tensor")


def summarize(value: object) -> str:
    """Describe a value for a message without printing its contents."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"Tensor[{dtype}, {tuple(value.shape)}, {value.device}]"
    if isinstance(value, (list, tuple)):
        items = ", ".join(summarize(item) for item in value[:3])
        more = ", ..." if len(value) > 3 else ""
        return f"{type(value).__name__}[{items}{more}] (len {len(value)})"
    if isinstance(value, dict):
        keys = ", ".join(repr(key) for key in list(value)[:5])
        return f"dict(keys: {keys}{', ...' if len(value) > 5 else ''})"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    return type(value).__qualname__


class SpecViolation(Exception):
    """Internal: a value broke a spec; the executor turns it into an error."""

    def __init__(self, reason: str, expected: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected


def _runtime_classes(annotation: Any) -> tuple[type, ...] | None:
    """Classes an annotation admits at run time, or None when unchecked."""
    if annotation is Any or annotation is None:
        return None
    if annotation is float:
        return (float, int)
    if annotation is complex:
        return (complex, float, int)
    if isinstance(annotation, type):
        return (annotation,) if _checkable(annotation) else None
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        classes: list[type] = []
        for member in typing.get_args(annotation):
            if member is type(None):
                classes.append(type(None))
                continue
            member_classes = _runtime_classes(member)
            if member_classes is None:
                return None
            classes.extend(member_classes)
        return tuple(classes)
    if isinstance(origin, type):
        return (origin,) if _checkable(origin) else None
    return None


def _checkable(cls: type) -> bool:
    """Whether ``isinstance`` works with ``cls`` and says something.

    TypedDicts and protocols that are not runtime-checkable refuse
    instance checks; they are left to static type checkers.
    """
    if cls is object:
        return False
    try:
        isinstance(None, cls)
    except TypeError:
        return False
    return True


def compile_check(annotation: Any, spec: PortSpec) -> Check | None:
    """Build the run-time check of one port, or None if there is nothing to check.

    The check takes the value, the call's symbolic bindings (name to size
    and the port that bound it) and the port name, and raises
    `SpecViolation`. Checks are shared between ports with the same
    annotation and spec.
    """
    try:
        return _cached_check(annotation, spec)
    except TypeError:
        return _build_check(annotation, spec)


@functools.lru_cache(maxsize=4096)
def _cached_check(annotation: Any, spec: PortSpec) -> Check | None:
    return _build_check(annotation, spec)


def _build_check(annotation: Any, spec: PortSpec) -> Check | None:
    classes = _runtime_classes(annotation)
    dtype = spec.dtype
    shape = spec.shape
    if classes is None and dtype is None and shape is None:
        return None
    tensor_dtype = dtype if isinstance(dtype, torch.dtype) else None
    python_type = dtype if isinstance(dtype, type) else None
    fixed = tuple(
        (i, d) for i, d in enumerate(shape or ()) if isinstance(d, int) and d >= 0
    )
    symbolic = tuple((i, d) for i, d in enumerate(shape or ()) if isinstance(d, str))
    rank = len(shape) if shape is not None else None

    def fail(reason: str) -> SpecViolation:
        return SpecViolation(reason, describe_type(annotation, spec))

    def check(value: Any, bindings: Bindings, port: str) -> None:
        if classes is not None and not isinstance(value, classes):
            raise fail(f"type mismatch: got {summarize(value)}")
        if python_type is not None and not isinstance(value, python_type):
            raise fail(f"type mismatch: got {summarize(value)}")
        if tensor_dtype is None and rank is None:
            return
        if not isinstance(value, torch.Tensor):
            raise fail(f"got {summarize(value)}, not a tensor")
        if tensor_dtype is not None and value.dtype != tensor_dtype:
            raise fail(f"dtype mismatch: got {summarize(value)}")
        if rank is None:
            return
        actual = value.shape
        if len(actual) != rank:
            raise fail(f"rank mismatch: expected {rank} dims, got {summarize(value)}")
        for index, size in fixed:
            if actual[index] != size:
                raise fail(f"dim {index} must be {size}: got {summarize(value)}")
        for index, name in symbolic:
            bound = bindings.get(name)
            if bound is None:
                bindings[name] = (actual[index], port)
            elif bound[0] != actual[index]:
                raise fail(_conflict(name, bound, actual[index], port, value))

    return check


def _conflict(
    name: str, bound: tuple[int, str], size: int, port: str, value: Any
) -> str:
    return (
        f"symbolic dim {name} conflicts: {name}={bound[0]} from "
        f"{bound[1]!r} but {name}={size} from {port!r} "
        f"(got {summarize(value)})"
    )


def incompatibility(out: Port, into: Port) -> str | None:
    """Why a producer's declared output cannot feed a consumer's port, if so."""
    if (
        out.annotation is into.annotation
        and out.spec.shape == into.spec.shape
        and (out.spec.dtype == into.spec.dtype)
    ):
        return None
    out_classes = _runtime_classes(out.annotation)
    in_classes = _runtime_classes(into.annotation)
    if out_classes and in_classes and type(None) not in out_classes:
        if not any(issubclass(o, in_classes) for o in out_classes):
            return (
                f"type {_type_name(out.annotation)} cannot feed "
                f"{_type_name(into.annotation)}"
            )
    a, b = out.spec, into.spec
    if isinstance(a.dtype, torch.dtype) and isinstance(b.dtype, torch.dtype):
        if a.dtype != b.dtype:
            return f"dtype {_dtype_name(a.dtype)} cannot feed {_dtype_name(b.dtype)}"
    if a.shape is not None and b.shape is not None:
        if len(a.shape) != len(b.shape):
            return (
                f"shape {_shape_text(a.shape)} has {len(a.shape)} dims, "
                f"{_shape_text(b.shape)} needs {len(b.shape)}"
            )
        for index, (x, y) in enumerate(zip(a.shape, b.shape)):
            if isinstance(x, int) and isinstance(y, int) and -1 not in (x, y):
                if x != y:
                    return (
                        f"dim {index} is {x} in {_shape_text(a.shape)} but "
                        f"{y} in {_shape_text(b.shape)}"
                    )
    return None
