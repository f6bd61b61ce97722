"""Calibration: fitted on validation rows, applied with numpy alone, monotone."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from models import calibration


def _shifted_scores(n: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True probabilities, labels drawn from them, and raw scores whose log-odds are +log(20)."""
    rng = np.random.default_rng(0)
    z = rng.normal(-4, 1.5, n)
    truth = 1 / (1 + np.exp(-z))
    labels = (rng.random(n) < truth).astype(int)
    raw = 1 / (1 + np.exp(-(z + np.log(20))))  # what class weighting does to a model's output
    return truth, labels, raw


def test_platt_undoes_a_log_odds_shift_and_keeps_the_ranking() -> None:
    truth, labels, raw = _shifted_scores()
    fitted = calibration.fit(raw, labels, "platt")
    calibrated = calibration.apply(fitted, raw)
    assert np.abs(calibrated - truth).mean() < 0.005
    assert np.abs(raw - truth).mean() > 0.05
    order = np.argsort(raw)
    assert np.all(np.diff(calibrated[order]) >= 0)


def test_isotonic_lookup_equals_scikit_learn() -> None:
    _, labels, raw = _shifted_scores(5_000)
    fitted = calibration.fit(raw, labels, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw, labels)
    probe = np.concatenate([raw[:500], [-1.0, 0.0, 1.0, 2.0]])
    np.testing.assert_allclose(calibration.apply(fitted, probe), reference.predict(probe), atol=1e-12)


def test_stored_form_is_plain_json_numbers() -> None:
    _, labels, raw = _shifted_scores(2_000)
    for method in ("platt", "isotonic"):
        fitted = calibration.fit(raw, labels, method)  # type: ignore[arg-type]
        assert all(isinstance(v, str | float | list) for v in fitted.values())


def test_calibration_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both fraud and legitimate"):
        calibration.fit(np.array([0.1, 0.2]), np.array([0, 0]))
