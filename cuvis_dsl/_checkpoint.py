"""Checkpoint files: atomic writes, safe loads and random-number-generator states.

A checkpoint holds only tensors and plain containers of numbers and
strings, so that it loads with ``torch.load(..., weights_only=True)``: no
pickled classes, no enums (stages are stored by name).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "capture_rng",
    "read_checkpoint",
    "restore_rng",
    "write_checkpoint",
]

FORMAT = "cuvis_dsl.checkpoint/1"
PathLike = str | os.PathLike[str]


def write_checkpoint(state: Mapping[str, Any], path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically and return the path.

    The file is written under a temporary name in the same directory and
    moved into place with `os.replace`, so a crash mid-write never leaves a
    truncated checkpoint where a good one was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> path = write_checkpoint({"step": 3}, folder / "last.pt")
    >>> read_checkpoint(path)["step"]
    3
    >>> sorted(p.name for p in folder.iterdir())
    ['last.pt']
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": FORMAT, **state}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a checkpoint written by `write_checkpoint`, with ``weights_only=True``."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {str(source)!r}.\n  Fix: pass the path of a "
            f"file written by Trainer.save_checkpoint or Trainer(checkpoint_dir=...)"
        )
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{str(source)!r} cannot be loaded with weights_only=True: {exc}\n"
            f"  Fix: load only checkpoints written by this library"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(source)!r} is not a cuvis_dsl checkpoint (format {found!r}, "
            f"expected {FORMAT!r}).\n  Fix: for a bare state_dict use "
            f"pipeline.load_state_dict(torch.load(path, weights_only=True))"
        )
    return state


def capture_rng() -> dict[str, Any]:
    """The states of the torch, CUDA, Python and (if imported) NumPy generators."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, position, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [
            name,
            torch.from_numpy(keys.astype("int64")),
            int(position),
            int(has_gauss),
            float(cached),
        ]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the generators back to a state from `capture_rng`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    numpy = sys.modules.get("numpy")
    saved = state.get("numpy")
    if numpy is not None and saved is not None:
        name, keys, position, has_gauss, cached = saved
        keys = numpy.asarray(keys.numpy(), dtype=numpy.uint32)
        numpy.random.set_state((name, keys, position, has_gauss, cached))
