"""Real labelled reflectance spectra from the earthlib 1.1.0 wheel.

The files are read straight from the installed distribution with numpy and the
standard library; ``earthlib`` itself is never imported. Install the data with
``pip install earthlib==1.1.0``. Only the 5261 measured spectra are kept; the
2000 simulated vegetation spectra are dropped.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

EARTHLIB_VERSION = "1.1.0"
INSTALL_HINT = f"pip install earthlib=={EARTHLIB_VERSION}"
N_ROWS, N_BANDS = 7261, 180
#: First 16 hex characters of the sha256 of each pinned file.
SHA256_PREFIX = {
    "earthlib/data/spectra.sli": "fcbc14e973fa28fb",
    "earthlib/data/spectra.sli.hdr": "27db225d30a43712",
    "earthlib/data/spectra.csv": "3ab19c85d7282737",
}
SPLITS = ("train", "val", "test")
COLUMNS = ("LEVEL_2", "LEVEL_3", "NAME")


@dataclass(frozen=True)
class Spectra:
    """Measured earthlib spectra, one row per spectrum.

    Attributes
    ----------
    reflectance
        Reflectance in [0, ~1.02], shape (N, 180).
    wavelengths
        Band centres in micrometres, 0.40 to 2.45 in 10 nm steps with the water
        bands 1.36-1.45 and 1.80-1.95 removed, shape (180,).
    level2, level3
        Class labels per spectrum, e.g. ``"bare"`` / ``"soil"``.
    names
        Spectrum names from the metadata table.
    """

    reflectance: NDArray[np.float32]
    wavelengths: NDArray[np.float64]
    level2: NDArray[np.str_]
    level3: NDArray[np.str_]
    names: NDArray[np.str_]


class Split(NamedTuple):
    """Features ``x`` (float32, (n, 180)) and integer labels ``y`` (n,)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]


def earthlib_available() -> bool:
    """Return whether earthlib is installed in the pinned version."""
    try:
        return distribution("earthlib").version == EARTHLIB_VERSION
    except PackageNotFoundError:
        return False


def _read_pinned() -> dict[str, bytes]:
    try:
        dist = distribution("earthlib")
    except PackageNotFoundError:
        raise RuntimeError(f"earthlib is not installed; run `{INSTALL_HINT}`") from None
    if dist.version != EARTHLIB_VERSION:
        raise RuntimeError(
            f"earthlib {dist.version} is installed but the examples are pinned to "
            f"{EARTHLIB_VERSION}; run `{INSTALL_HINT}`"
        )
    data = {}
    for rel, prefix in SHA256_PREFIX.items():
        raw = Path(str(dist.locate_file(rel))).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()[:16]
        if digest != prefix:
            raise RuntimeError(
                f"{rel} has sha256 prefix {digest}, expected {prefix}; the data "
                f"changed upstream, reinstall with `{INSTALL_HINT}`"
            )
        data[rel] = raw
    return data


@functools.lru_cache(maxsize=1)
def load_spectra() -> Spectra:
    """Load the measured earthlib spectra (cached, arrays are read-only).

    Returns
    -------
    Spectra
        5261 measured spectra with 180 bands.

    Raises
    ------
    RuntimeError
        If earthlib is missing, has another version, or a file hash differs.
    """
    files = _read_pinned()
    header = files["earthlib/data/spectra.sli.hdr"].decode()

    def field(key: str) -> list[str]:
        match = re.search(key + r"\s*=\s*\{(.*?)\}", header, re.S)
        if match is None:
            raise RuntimeError(f"spectra.sli.hdr has no {key!r} field")
        return [item.strip() for item in match.group(1).split(",")]

    wavelengths = np.array(field("wavelength"), dtype=np.float64)
    raw = np.frombuffer(files["earthlib/data/spectra.sli"], dtype="<f4")
    table = raw.reshape(N_ROWS, N_BANDS)
    text = io.StringIO(files["earthlib/data/spectra.csv"].decode(), newline="")
    rows = list(csv.DictReader(text))
    # The csv rows follow the .sli rows; one name differs only in spelling
    # (row 4251: "burnedcham" in the csv, "burncham" in the header).
    names = field("spectra names")
    if len(rows) != N_ROWS or len(names) != N_ROWS or len(wavelengths) != N_BANDS:
        raise RuntimeError("earthlib spectra.csv and spectra.sli do not match")
    if sum(r["NAME"] != n for r, n in zip(rows, names, strict=True)) > 1:
        raise RuntimeError("earthlib spectra.csv and spectra.sli rows do not align")
    keep = np.array([r["LEVEL_4"] == "measured" for r in rows])

    text_columns = [np.array([r[k] for r in rows])[keep] for k in COLUMNS]
    arrays = (table[keep].astype(np.float32), wavelengths, *text_columns)
    for array in arrays:
        array.flags.writeable = False
    return Spectra(*arrays)


def _three_way(
    index: NDArray[np.intp], val: float, test: float
) -> list[NDArray[np.intp]]:
    """Cut index into train, val, test; val and test get at least one if n >= 3."""
    n_val, n_test = (
        max(round(len(index) * f), int(len(index) >= 3)) for f in (val, test)
    )
    return [index[n_val + n_test :], index[:n_val], index[n_val : n_val + n_test]]


def anomaly_splits(
    spectra: Spectra,
    seed: int = 0,
    val: float = 0.2,
    test: float = 0.2,
    anomaly_fraction: float = 0.15,
    limit: int | None = None,
) -> dict[str, Split]:
    """Split soil (background, y=0) against built materials (anomaly, y=1).

    Background is every LEVEL_3 ``soil`` spectrum (4185), split by the ``val``
    and ``test`` fractions; train holds background only. Val and test each get
    disjoint random LEVEL_2 ``built`` spectra (888 in all) making up
    ``anomaly_fraction`` of the split (at least one); the rest stay unused.
    Defaults give train 2511, val 837 + 148, test 837 + 148.

    Parameters
    ----------
    spectra
        Output of :func:`load_spectra`.
    seed
        Seed of the numpy Generator; the same seed gives the same splits.
    val, test
        Fractions of the background used for validation and test.
    anomaly_fraction
        Share of anomalies in val and test, in (0, 1).
    limit
        Use only this many random background spectra (at least 3), for quick
        tests; anomaly counts shrink with it.

    Returns
    -------
    dict[str, Split]
        Splits keyed ``"train"``, ``"val"``, ``"test"``, rows shuffled.
    """
    if not 0.0 < anomaly_fraction < 1.0 or (limit is not None and limit < 3):
        raise ValueError("need 0 < anomaly_fraction < 1 and limit >= 3")
    rng = np.random.default_rng(seed)
    background = rng.permutation(np.flatnonzero(spectra.level3 == "soil"))[:limit]
    anomalies = rng.permutation(np.flatnonzero(spectra.level2 == "built"))
    ratio = anomaly_fraction / (1.0 - anomaly_fraction)
    start, result = 0, {}
    for name, bg in zip(SPLITS, _three_way(background, val, test), strict=True):
        n_anom = 0 if name == "train" else max(1, round(len(bg) * ratio))
        if start + n_anom > len(anomalies):
            raise ValueError("not enough anomalies; lower anomaly_fraction")
        index = np.concatenate([bg, anomalies[start : start + n_anom]])
        y = np.repeat(np.array([0, 1], dtype=np.int64), [len(bg), n_anom])
        order = rng.permutation(len(index))
        result[name] = Split(spectra.reflectance[index[order]], y[order])
        start += n_anom
    return result


def classification_splits(
    spectra: Spectra,
    level: str = "LEVEL_3",
    seed: int = 0,
    min_count: int = 20,
    max_per_class: int | None = None,
    val: float = 0.2,
    test: float = 0.2,
) -> tuple[dict[str, Split], list[str]]:
    """Stratified train/val/test splits for material classification.

    Classes with fewer than ``min_count`` spectra are dropped (with the default
    20: 14 LEVEL_3 classes, and all 4 LEVEL_2 classes). Each kept class is
    shuffled, capped at ``max_per_class`` spectra (soil alone has 4185) and cut
    by the ``val`` and ``test`` fractions, at least one spectrum per split.

    Parameters
    ----------
    spectra
        Output of :func:`load_spectra`.
    level
        ``"LEVEL_3"`` (soil, road, paint, ...) or ``"LEVEL_2"`` (bare, built,
        npv, burned).
    seed
        Seed of the numpy Generator; the same seed gives the same splits.
    min_count
        Smallest class size kept (at least 3), counted before the cap.
    max_per_class
        Cap on spectra per class (at least 3), to balance or shrink the data.
    val, test
        Fractions of each class used for validation and test.

    Returns
    -------
    tuple[dict[str, Split], list[str]]
        Splits keyed ``"train"``, ``"val"``, ``"test"`` (rows shuffled), and
        the sorted class names that the labels ``y`` index.
    """
    if level not in ("LEVEL_2", "LEVEL_3"):
        raise ValueError(f"level must be 'LEVEL_2' or 'LEVEL_3', got {level!r}")
    if min_count < 3 or (max_per_class is not None and max_per_class < 3):
        raise ValueError("min_count and max_per_class must be at least 3")
    labels = spectra.level2 if level == "LEVEL_2" else spectra.level3
    names, counts = np.unique(labels, return_counts=True)
    classes = names[counts >= min_count]
    rng = np.random.default_rng(seed)
    parts = [
        _three_way(
            rng.permutation(np.flatnonzero(labels == c))[:max_per_class], val, test
        )
        for c in classes
    ]
    result = {}
    for i, name in enumerate(SPLITS):
        index = rng.permutation(np.concatenate([p[i] for p in parts]))
        y = np.searchsorted(classes, labels[index]).astype(np.int64)
        result[name] = Split(spectra.reflectance[index], y)
    return result, [str(c) for c in classes]
