"""Buffers shaped by data: loading them, and turning them into parameters.

A *statistical* module is one that defines ``statistical_initialization``.
Its statistics (a mean of shape ``(C,)``, a covariance ``(C, C)``) often
have a shape that is only known once data has been seen, so it registers
them unmaterialised: as ``None``, as a lazy ``UninitializedBuffer`` or as
an empty tensor (``torch.empty(0)``). Such a buffer is *data-shaped*.

Loading a state into a statistical module gives each unmaterialised
persistent buffer the shape of its saved value before the values are
copied, so a fresh, uninitialised pipeline accepts the state of an
initialised one under ``strict=True``. A buffer that is already
materialised keeps its shape: a different saved shape is the usual size
mismatch error, which names the key and both shapes.

A statistical module is *initialised* when it says so (its
``_statistically_initialized`` flag, cuvis.ai's name, set after
``statistical_initialization`` and by loading a state that holds its
buffers) and none of its persistent buffers is unmaterialised.

A state that holds some of a module's data-shaped buffers but not all of
them is incomplete: the absent ones are reported as missing keys. A state
that holds none of them is the state of an uninitialised module, and
loading it leaves the buffers unmaterialised. Non-persistent buffers are
never saved, never expected and never missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.nn.parameter import is_lazy

from ._errors import DefinitionError

INITIALIZED_FLAG = "_statistically_initialized"

__all__ = [
    "INITIALIZED_FLAG",
    "NotInitializedError",
    "adopt_saved_shapes",
    "freeze_buffers",
    "is_initialized",
    "is_statistical",
    "is_unmaterialized",
    "load_pre_hook",
    "mark_initialized",
    "unfreeze_buffers",
    "unmaterialized_buffers",
]


class NotInitializedError(RuntimeError):
    """A node's data-shaped buffer is used before it has a shape.

    Attributes
    ----------
    node
        Name of the node.
    buffer
        Name of the unmaterialised buffer.
    """

    def __init__(self, message: str, *, node: str, buffer: str) -> None:
        super().__init__(message)
        self.node = node
        self.buffer = buffer


def is_unmaterialized(value: Any) -> bool:
    """Whether a buffer still waits for its shape: None, lazy or empty."""
    if value is None:
        return True
    if is_lazy(value):
        return True
    return bool(value.numel() == 0)


def is_statistical(module: torch.nn.Module) -> bool:
    """Whether a module initialises itself from data."""
    return callable(getattr(module, "statistical_initialization", None))


def _persistent_buffers(module: torch.nn.Module) -> dict[str, Any]:
    hidden = module._non_persistent_buffers_set
    return {n: b for n, b in module._buffers.items() if n not in hidden}


def unmaterialized_buffers(module: torch.nn.Module) -> list[str]:
    """Names of the module's own persistent buffers that have no shape yet."""
    return [
        name
        for name, value in _persistent_buffers(module).items()
        if is_unmaterialized(value)
    ]


def is_initialized(module: torch.nn.Module) -> bool:
    """Whether a statistical module has its statistics.

    It must say so (its ``_statistically_initialized`` flag) and have a
    shape for every persistent buffer: its own, and those of every
    statistical module inside it. Other submodules may keep ``None``
    buffers by design (a ``BatchNorm`` without running statistics).
    """
    if not getattr(module, INITIALIZED_FLAG, False):
        return False
    return not any(
        unmaterialized_buffers(sub)
        for sub in module.modules()
        if sub is module or is_statistical(sub)
    )


def mark_initialized(module: torch.nn.Module) -> None:
    """Set the flag, unless the module computes it itself (a property)."""
    if isinstance(getattr(type(module), INITIALIZED_FLAG, None), property):
        return
    setattr(module, INITIALIZED_FLAG, True)


def adopt_saved_shapes(
    root: torch.nn.Module,
    state_dict: Mapping[str, Any],
    prefix: str,
    missing_keys: list[str],
) -> None:
    """Shape the unmaterialised buffers of ``root``'s statistical modules.

    Called before ``root`` loads ``state_dict`` (keys under ``prefix``);
    idempotent, so nested hooks may call it again on the same modules.
    """
    for name, module in root.named_modules(prefix=prefix.rstrip(".")):
        if is_statistical(module):
            here = f"{name}." if name else ""
            _adopt(module, state_dict, here, missing_keys)


def _adopt(
    module: torch.nn.Module,
    state_dict: Mapping[str, Any],
    prefix: str,
    missing_keys: list[str],
) -> None:
    buffers = _persistent_buffers(module)
    present = {
        name
        for name in buffers
        if isinstance(state_dict.get(prefix + name), torch.Tensor)
    }
    if not present:
        return
    pending = [name for name, value in buffers.items() if is_unmaterialized(value)]
    for name in pending:
        if name in present:
            module._buffers[name] = _empty_like_saved(
                module, name, state_dict[prefix + name]
            )
    if present.intersection(pending):
        _report_absent(module, pending, present, prefix, missing_keys)
    mark_initialized(module)


def _report_absent(
    module: torch.nn.Module,
    pending: list[str],
    present: set[str],
    prefix: str,
    missing_keys: list[str],
) -> None:
    # NOTE: torch reports absent empty placeholders itself; a None buffer
    # is invisible to it.
    for name in pending:
        key = prefix + name
        absent = name not in present and module._buffers[name] is None
        if absent and key not in missing_keys:
            missing_keys.append(key)


def _empty_like_saved(
    module: torch.nn.Module, name: str, saved: torch.Tensor
) -> torch.Tensor:
    current = module._buffers[name]
    if current is not None:
        return torch.empty(saved.shape, dtype=current.dtype, device=current.device)
    return torch.empty(saved.shape, dtype=saved.dtype, device=_device_of(module, saved))


def _device_of(module: torch.nn.Module, fallback: torch.Tensor) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if not is_lazy(tensor) and tensor.numel():
            return tensor.device
    return fallback.device


def load_pre_hook(
    module: torch.nn.Module,
    state_dict: Mapping[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """``register_load_state_dict_pre_hook`` form of `adopt_saved_shapes`."""
    adopt_saved_shapes(module, state_dict, prefix, missing_keys)


def _check_trainable(module: torch.nn.Module, names: Iterable[str], node: str) -> None:
    for name in names:
        if name in module._parameters:
            continue
        if name not in module._buffers:
            raise DefinitionError(
                f"node {node!r}: TRAINABLE_BUFFERS names {name!r}, which is not a "
                f"buffer of the node. Buffers: {sorted(module._buffers)}.\n"
                f"  Fix: self.register_buffer({name!r}, ...) in __init__, or "
                f"remove {name!r} from TRAINABLE_BUFFERS.",
                node=node,
                port=name,
            )
        _check_buffer(module, name, node)


def _check_buffer(module: torch.nn.Module, name: str, node: str) -> None:
    value = module._buffers[name]
    if name in module._non_persistent_buffers_set:
        raise DefinitionError(
            f"node {node!r}: buffer {name!r} is not persistent, but a parameter "
            f"always is.\n  Fix: register {name!r} with persistent=True, or "
            f"remove it from TRAINABLE_BUFFERS.",
            node=node,
            port=name,
        )
    if value is None or is_unmaterialized(value):
        raise NotInitializedError(
            f"node {node!r}: buffer {name!r} cannot become trainable before it "
            f"has a shape (it is {'None' if value is None else 'empty'}).\n"
            f"  Fix: run the node's statistical_initialization (or load a "
            f"saved state) before unfreeze().",
            node=node,
            buffer=name,
        )
    if not (value.is_floating_point() or value.is_complex()):
        raise DefinitionError(
            f"node {node!r}: buffer {name!r} holds {value.dtype}, which cannot "
            f"require gradients.\n  Fix: store it as a floating-point tensor, or "
            f"remove it from TRAINABLE_BUFFERS.",
            node=node,
            port=name,
        )


def unfreeze_buffers(module: torch.nn.Module, names: Iterable[str], node: str) -> None:
    """Turn the named buffers into trainable parameters, in place.

    Every name is checked before anything changes. Values, dtype, device
    and ``state_dict`` keys stay the same.
    """
    names = list(names)
    _check_trainable(module, names, node)
    for name in names:
        if name in module._parameters:
            continue
        value = module._buffers.pop(name)
        if value is not None:
            module.register_parameter(name, torch.nn.Parameter(value.detach()))


def freeze_buffers(module: torch.nn.Module, names: Iterable[str]) -> None:
    """Turn the named parameters back into persistent buffers, in place."""
    for name in names:
        parameter = module._parameters.get(name)
        if parameter is None:
            continue
        del module._parameters[name]
        module.register_buffer(name, parameter.detach(), persistent=True)
