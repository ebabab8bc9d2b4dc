"""What a batch for a pipeline must hold: names, dtypes and linked dim sizes."""

from __future__ import annotations

import typing
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from .._ports import Port
from .._spec import NodeSpec
from .._stages import ExecutionStage

__all__ = ["BatchLayout", "Entry", "external_readers", "layout_batch"]

Reader = tuple[str, Port]
DimKey = tuple[str, ...]

_PYTHON_VALUES: dict[type, st.SearchStrategy[Any]] = {
    bool: st.booleans(),
    int: st.integers(-10, 10),
    float: st.floats(-10, 10, allow_nan=False, allow_infinity=False),
    str: st.text(max_size=8),
}


@attrs.frozen
class Entry:
    """How to draw one batch value: a given strategy, or a tensor layout."""

    required: bool
    dtype: torch.dtype = torch.float32
    rank: int | None = None
    strategy: st.SearchStrategy[Any] | None = None


class _Dims:
    """Union-find over dim slots and symbolic names, with fixed sizes."""

    def __init__(self) -> None:
        self.parent: dict[DimKey, DimKey] = {}
        self.fixed: dict[DimKey, tuple[int, str]] = {}

    def find(self, key: DimKey) -> DimKey:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def fix(self, key: DimKey, size: int, where: str) -> None:
        root = self.find(key)
        known = self.fixed.get(root)
        if known is not None and known[0] != size:
            raise _conflict(known, (size, where))
        self.fixed[root] = (size, where)

    def union(self, a: DimKey, b: DimKey) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        self.parent[root_a] = root_b
        if root_a in self.fixed:
            size, where = self.fixed.pop(root_a)
            self.fix(root_b, size, where)


def _conflict(first: tuple[int, str], second: tuple[int, str]) -> InvalidArgument:
    return InvalidArgument(
        f"batches(): no batch satisfies every port: {first[1]} needs size "
        f"{first[0]} where {second[1]} needs size {second[0]}.\n"
        f"  Fix: make the port specs agree, or pass overrides={{name: strategy}}"
    )


@attrs.frozen
class BatchLayout:
    """The entries of a batch and the dim classes linking their sizes."""

    entries: Mapping[str, Entry]
    dims: _Dims

    @property
    def free_roots(self) -> list[DimKey]:
        roots = {
            self.dims.find(("dim", name, str(index)))
            for name, entry in self.entries.items()
            for index in range(entry.rank or 0)
        }
        return sorted(root for root in roots if root not in self.dims.fixed)

    def shape_of(
        self, name: str, sizes: Mapping[DimKey, int]
    ) -> tuple[int, ...] | None:
        rank = self.entries[name].rank
        if rank is None:
            return None
        shape = []
        for index in range(rank):
            root = self.dims.find(("dim", name, str(index)))
            fixed = self.dims.fixed.get(root)
            shape.append(fixed[0] if fixed is not None else sizes[root])
        return tuple(shape)


def external_readers(
    specs: Mapping[str, NodeSpec], stages: Iterable[ExecutionStage]
) -> dict[str, list[Reader]]:
    """Ports of the nodes running in ``stages`` that read a name no node produces."""
    wanted = set(stages)
    produced = {
        out.name
        for spec in specs.values()
        for out in spec.outputs
        if out.name not in {port.wire for port in spec.inputs}
    }
    readers: dict[str, list[Reader]] = defaultdict(list)
    for spec in specs.values():
        if not wanted & set(spec.stages):
            continue
        for port in spec.inputs:
            if port.wire not in produced:
                readers[port.wire].append((spec.name, port))
    return dict(sorted(readers.items()))


def _is_tensor_port(port: Port) -> bool:
    spec = port.spec
    if isinstance(spec.dtype, torch.dtype) or spec.shape is not None:
        return True
    annotation = port.annotation
    if annotation in (Any, object):
        return spec.dtype is None
    if isinstance(annotation, type):
        return issubclass(annotation, torch.Tensor)
    return torch.Tensor in typing.get_args(annotation)


def _python_type(name: str, readers: list[Reader]) -> type:
    found = set()
    for node, port in readers:
        kind = port.spec.dtype if isinstance(port.spec.dtype, type) else port.annotation
        if kind not in _PYTHON_VALUES:
            raise InvalidArgument(
                f"batches(): cannot draw values for input {port.name!r} of node "
                f"{node!r} (batch key {name!r}), typed {kind!r}.\n"
                f"  Fix: pass overrides={{{name!r}: <a strategy>}}"
            )
        found.add(kind)
    if found == {int, float}:
        return int
    if len(found) > 1:
        raise InvalidArgument(
            f"batches(): the ports reading {name!r} want different types "
            f"{sorted(t.__name__ for t in found)}.\n"
            f"  Fix: pass overrides={{{name!r}: <a strategy>}}"
        )
    return found.pop()


def _tensor_entry(
    name: str, readers: list[Reader], dims: _Dims, required: bool
) -> Entry:
    dtypes = {p.spec.dtype for _, p in readers if isinstance(p.spec.dtype, torch.dtype)}
    if len(dtypes) > 1:
        raise InvalidArgument(
            f"batches(): the ports reading {name!r} want different dtypes "
            f"{sorted(str(d) for d in dtypes)}.\n"
            f"  Fix: make the port specs agree, or pass overrides={{{name!r}: ...}}"
        )
    rank = None
    for node, port in readers:
        shape = port.spec.shape
        if shape is None:
            continue
        where = f"input {port.name!r} of node {node!r}"
        if rank is not None and rank != len(shape):
            raise InvalidArgument(
                f"batches(): {where} wants {len(shape)} dims for {name!r}, "
                f"another port wants {rank}.\n  Fix: make the port specs agree"
            )
        rank = len(shape)
        _link(dims, name, shape, where)
    return Entry(
        required=required,
        dtype=dtypes.pop() if dtypes else torch.float32,
        rank=rank,
    )


def _link(dims: _Dims, name: str, shape: tuple[Any, ...], where: str) -> None:
    for index, dim in enumerate(shape):
        slot = ("dim", name, str(index))
        dims.find(slot)
        if isinstance(dim, str):
            dims.union(slot, ("sym", dim))
        elif dim >= 0:
            dims.fix(slot, dim, f"dim {index} of {where}")


def layout_batch(
    specs: Mapping[str, NodeSpec],
    stages: Iterable[ExecutionStage],
    overrides: Mapping[str, st.SearchStrategy[Any]],
) -> BatchLayout:
    """Work out every batch entry for the nodes running in ``stages``."""
    dims = _Dims()
    entries: dict[str, Entry] = {}
    for name, readers in external_readers(specs, stages).items():
        required = any(not port.optional for _, port in readers)
        if name in overrides:
            entries[name] = Entry(required=required, strategy=overrides[name])
        elif any(_is_tensor_port(port) for _, port in readers):
            entries[name] = _tensor_entry(name, readers, dims, required)
        else:
            kind = _python_type(name, readers)
            entries[name] = Entry(required=required, strategy=_PYTHON_VALUES[kind])
    return BatchLayout(entries=entries, dims=dims)
