"""The examples on real earthlib spectra, on small subsets, and the data pinning."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import spectra  # noqa: E402

needs_data = pytest.mark.skipif(
    not spectra.earthlib_available(),
    reason=f"real spectra need earthlib {spectra.EARTHLIB_VERSION}: "
    f"{spectra.INSTALL_HINT}",
)
needs_plots = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="the examples draw figures with matplotlib: pip install matplotlib",
)
STAGES = ("train", "val", "test", "inference")


@pytest.fixture(autouse=True)
def _fresh_spectra_cache():
    spectra.load_spectra.cache_clear()
    yield
    spectra.load_spectra.cache_clear()


def run_example(name: str, tmp_path: Path, *argv: str) -> dict:
    module = importlib.import_module(name)
    return module.main([*argv, "--out", str(tmp_path), "--no-progress"])


def nodes_by_stage(plans: dict) -> dict[str, set[str]]:
    return {stage: set(plan.nodes) for stage, plan in plans.items()}


@pytest.fixture(scope="module")
def anomaly(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not spectra.earthlib_available():
        pytest.skip(f"real spectra need earthlib: {spectra.INSTALL_HINT}")
    out = tmp_path_factory.mktemp("anomaly")
    return run_example("anomaly_detection", out, "--limit", "600", "--epochs", "5")


@pytest.fixture(scope="module")
def materials(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not spectra.earthlib_available():
        pytest.skip(f"real spectra need earthlib: {spectra.INSTALL_HINT}")
    out = tmp_path_factory.mktemp("materials")
    return run_example(
        "material_classification", out, "--limit", "40", "--epochs", "15"
    )


@needs_data
@needs_plots
def test_anomaly_plans_put_each_node_in_its_stages(anomaly: dict) -> None:
    ran = nodes_by_stage(anomaly["plans"])
    core = {"normalise", "rx_detector", "score_head"}
    assert all(core <= ran[stage] for stage in STAGES)
    assert {"augment", "reference", "bce"} <= ran["train"]
    assert ran["train"].isdisjoint({"epoch_auroc", "epoch_f1", "decide"})
    for stage in ("val", "test"):
        assert {"bce", "epoch_auroc", "epoch_f1"} <= ran[stage]
        assert ran[stage].isdisjoint({"augment", "reference", "decide"})
    assert ran["inference"] == core | {"decide"}


@needs_data
@needs_plots
def test_anomaly_example_reports_every_stage(anomaly: dict) -> None:
    history = anomaly["history"]
    assert history.epochs == [0, 1, 2, 3, 4]
    assert all(np.isfinite(history["train/bce"]))
    for phase in anomaly["results"].values():
        assert set(phase["val"]) >= {"val/bce", "val/auroc", "val/f1"}
        assert set(phase["test"]) >= {"test/bce", "test/auroc", "test/f1"}
    test_size = len(spectra.anomaly_splits(spectra.load_spectra(), limit=600)["test"].y)
    assert anomaly["flagged"].shape == (test_size,)
    assert anomaly["flagged"].dtype == np.bool_


@needs_data
@needs_plots
def test_anomaly_metrics_are_in_a_sane_range(anomaly: dict) -> None:
    # Measured on this subset (seeds 0-2, both phases): AUROC 0.977-0.998,
    # F1 0.74-0.89. Chance would be AUROC 0.5 and F1 about 0.26.
    for phase in anomaly["results"].values():
        for stage in ("val", "test"):
            assert phase[stage][f"{stage}/auroc"] > 0.9
            assert 0.5 < phase[stage][f"{stage}/f1"] <= 1.0


@needs_data
@needs_plots
def test_anomaly_example_writes_its_figures(anomaly: dict) -> None:
    names = sorted(path.name for path in anomaly["figures"])
    assert names == ["roc.png", "score_histograms.png"]
    for path in anomaly["figures"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_data
@needs_plots
def test_material_plans_put_each_node_in_its_stages(materials: dict) -> None:
    ran = nodes_by_stage(materials["plans"])
    core = {"split_brightness", "standardise", "classifier"}
    assert all(core <= ran[stage] for stage in STAGES)
    assert ran["train"] == core | {"augment", "cross_entropy"}
    for stage in ("val", "test"):
        assert ran[stage] == core | {"cross_entropy", "accuracy", "macro_f1"}
    assert ran["inference"] == core | {"decide"}


@needs_data
@needs_plots
def test_material_classifier_learns_beyond_chance(materials: dict) -> None:
    classes = len(materials["classes"])
    untrained, trained = materials["results"].values()
    for stage in ("val", "test"):
        # 14 classes: chance accuracy is about 0.07. Measured on this subset
        # (seeds 0-2): untrained accuracy 0.03-0.10; trained accuracy
        # 0.66-0.78 and macro F1 0.65-0.77.
        assert untrained[stage][f"{stage}/accuracy"] < 0.3
        assert trained[stage][f"{stage}/accuracy"] > 0.6
        assert trained[stage][f"{stage}/macro_f1"] > 0.55
    predicted = materials["predicted"]
    assert predicted.min() >= 0 and predicted.max() < classes
    assert materials["figures"][0].name == "confusion.png"


@needs_data
def test_spectra_are_the_pinned_measured_rows() -> None:
    data = spectra.load_spectra()
    assert data.reflectance.shape == (5261, spectra.N_BANDS)
    assert data.wavelengths[0] == pytest.approx(0.40)
    assert data.wavelengths[-1] == pytest.approx(2.45)
    assert (data.level3 == "soil").sum() == 4185
    assert (data.level2 == "built").sum() == 888


@needs_data
def test_changed_data_file_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dict(spectra.SHA256_PREFIX)
    wrong["earthlib/data/spectra.csv"] = "0" * 16
    monkeypatch.setattr(spectra, "SHA256_PREFIX", wrong)
    with pytest.raises(RuntimeError, match=r"spectra\.csv has sha256 prefix 3ab19c85"):
        spectra.load_spectra()


def test_missing_earthlib_is_reported_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def absent(name: str):
        raise spectra.PackageNotFoundError(name)

    monkeypatch.setattr(spectra, "distribution", absent)
    assert not spectra.earthlib_available()
    with pytest.raises(RuntimeError, match=r"pip install earthlib==1\.1\.0"):
        spectra.load_spectra()


@needs_data
def test_anomaly_pipeline_passes_the_property_checker_on_real_spectra():
    import anomaly_detection
    import torch
    from hypothesis import strategies as st

    from cuvis_dsl import Trainer
    from cuvis_dsl.testing import check_pipeline

    splits = spectra.anomaly_splits(spectra.load_spectra(), seed=0, limit=300)
    pipe = anomaly_detection.build_pipeline(bands=splits["train"].x.shape[1])
    trainer = Trainer(pipe, statistical_stage="val", progress=False)
    trainer.statistical_initialization(anomaly_detection.Batches(splits["train"]))
    x = torch.from_numpy(splits["val"].x)
    y = torch.from_numpy(splits["val"].y).float()
    rows = st.lists(st.integers(0, len(x) - 1), min_size=1, max_size=16)
    real_batches = rows.map(lambda r: {"spectra": x[r], "label": y[r]})

    check_pipeline(pipe, real_batches, max_examples=20)
