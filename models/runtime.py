"""Scoring with a registered model: ONNX Runtime + calibration + thresholds, nothing else.

This is what the scoring service imports: numpy and onnxruntime only, no torch, no
LightGBM, no training code. Both model types export the same interface: input
``features`` (float32, rows × ``MODEL_FEATURES``), output ``probabilities`` (rows × 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from models import calibration
from models.costs import Thresholds, decide

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    """An ONNX Runtime session for one scoring thread (intra-op threads: 1, no spinning)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxScorer:
    """Raw scores, calibrated scores and decisions from an ONNX model and its stored metadata."""

    def __init__(self, onnx_bytes: bytes, metadata: dict[str, Any]) -> None:
        self.session = session(onnx_bytes)
        self.features: list[str] = list(metadata["features"])
        self.calibration: dict[str, Any] = metadata["calibration"]
        self.thresholds = Thresholds.from_dict(metadata["thresholds"])

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities, float64, one per row of ``x`` (rows × features)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, len(self.features))
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][:, 1], dtype=np.float64)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Calibrated fraud probabilities."""
        return calibration.apply(self.calibration, self.raw(x))

    def decide(self, x: np.ndarray) -> np.ndarray:
        return decide(self.score(x), self.thresholds)
