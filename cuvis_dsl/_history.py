"""The record of a training run: one row of losses and metrics per epoch."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ._errors import did_you_mean, quoted

__all__ = ["History"]


class History:
    """Per-epoch losses and metrics of every stage, as `Trainer.fit` saw them.

    Each epoch is one record, a dict from keys such as ``"train/loss"``,
    ``"val/bce"`` or ``"val/accuracy"`` to floats; a stage that did not run
    in an epoch (validation skipped, empty data) has no keys there, never a
    NaN placeholder. ``str(history)`` is a table with one row per epoch.

    Examples
    --------
    >>> history = History()
    >>> history.add(0, {"train/loss": 0.75, "val/loss": 0.5})
    >>> history.add(1, {"train/loss": 0.25})
    >>> history["val/loss"]
    [0.5, None]
    >>> history.best("train/loss")
    (1, 0.25)
    >>> print(history)
    epoch  train/loss  val/loss
        0      0.7500    0.5000
        1      0.2500         -
    """

    def __init__(self, records: Sequence[tuple[int, Mapping[str, float]]] = ()) -> None:
        self._epochs: list[int] = []
        self._records: list[dict[str, float]] = []
        for epoch, values in records:
            self.add(epoch, values)

    def add(self, epoch: int, values: Mapping[str, float]) -> None:
        """Record the values of one finished epoch."""
        self._epochs.append(int(epoch))
        self._records.append({key: float(value) for key, value in values.items()})

    @property
    def epochs(self) -> list[int]:
        """The recorded epoch numbers, in order."""
        return list(self._epochs)

    @property
    def records(self) -> list[dict[str, float]]:
        """One dict of values per recorded epoch."""
        return [dict(record) for record in self._records]

    @property
    def last(self) -> dict[str, float]:
        """The values of the last recorded epoch (empty before the first)."""
        return dict(self._records[-1]) if self._records else {}

    def keys(self) -> list[str]:
        """Every key recorded in any epoch, train first, then val, then others."""
        seen: dict[str, None] = {}
        for record in self._records:
            seen.update(dict.fromkeys(record))
        return sorted(seen, key=_key_order)

    def __getitem__(self, key: str) -> list[float | None]:
        """The values of ``key`` per epoch, None where it was not recorded."""
        if key not in self.keys():
            raise KeyError(self._unknown(key))
        return [record.get(key) for record in self._records]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[tuple[int, dict[str, float]]]:
        return iter(zip(self.epochs, self.records))

    def best(self, key: str, mode: str = "min") -> tuple[int, float]:
        """The epoch with the lowest (``mode="min"``) or highest value of ``key``."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        pairs = [
            (epoch, value)
            for epoch, value in zip(self._epochs, self[key])
            if value is not None and not math.isnan(value)
        ]
        if not pairs:
            raise ValueError(f"{key!r} has no recorded value that is a number")
        choose = min if mode == "min" else max
        return choose(pairs, key=lambda pair: pair[1])

    def _unknown(self, key: str) -> str:
        known = self.keys()
        return (
            f"no value {key!r} was recorded.{did_you_mean(key, known)} "
            f"Recorded: {quoted(known) if known else '(nothing yet)'}"
        )

    def table(self, keys: Sequence[str] | None = None, precision: int = 4) -> str:
        """The history as a text table: one row per epoch, one column per key."""
        columns = list(self.keys() if keys is None else keys)
        for key in columns:
            if key not in self:
                raise KeyError(self._unknown(key))
        header = ["epoch", *columns]
        rows = [
            [str(epoch), *(_cell(record.get(key), precision) for key in columns)]
            for epoch, record in zip(self._epochs, self._records)
        ]
        widths = [
            max(len(row[i]) for row in [header, *rows]) for i in range(len(header))
        ]
        lines = [
            "  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows
        ]
        title = "  ".join(
            name.ljust(w) if i == 0 else name.rjust(w)
            for i, (name, w) in enumerate(zip(header, widths))
        )
        return "\n".join([title.rstrip(), *lines]) if rows else title + "\n(no epochs)"

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, keys={self.keys()})"

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and dicts, as stored in a checkpoint."""
        return {"epochs": list(self._epochs), "records": self.records}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> History:
        return cls(list(zip(state["epochs"], state["records"])))


def _key_order(key: str) -> tuple[int, bool, str]:
    stage, _, name = key.rpartition("/")
    order = {"train": 0, "val": 1, "test": 2, "inference": 3}
    return order.get(stage, 4), name != "loss", key


def _cell(value: float | None, precision: int) -> str:
    return "-" if value is None else f"{value:.{precision}f}"
