"""Export both model types to ONNX and gate registration on parity with the native model.

LightGBM goes through onnxmltools without a ZipMap (a plain probability tensor, not a
list of dicts); the MLP through ``torch.onnx.export``'s TorchScript exporter (the dynamo
exporter needs onnxscript, which nothing else here uses). Calibration stays outside the
graph as a stored lookup (`models.calibration`), applied by the same function in training
and serving, so parity is checked on the raw probabilities the graph returns.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.runtime import INPUT_NAME, OUTPUT_NAME, session

PARITY_TOLERANCE = 1e-5
LIGHTGBM_OPSET = 15  # the highest onnxmltools 1.16 converts LightGBM to
MLP_OPSET = 17


class ParityError(RuntimeError):
    """The ONNX graph and the native model disagree: the model must not be registered."""


def _float32_thresholds(model_text: str) -> str:
    """The LightGBM model text with every split threshold rounded *down* to a float32.

    The ONNX tree ensemble holds float32 thresholds; the converter rounds LightGBM's double
    thresholds to the *nearest* float32, which can land just above the double and send a
    feature equal to it the other way (seen: one test row in 3,830, off by 0.015). For a
    float32 input ``x``, ``x <= t`` holds exactly when ``x <= (largest float32 <= t)``, so
    rounding down changes no decision of the native model and makes the cast exact.
    """
    lines = []
    for line in model_text.splitlines():
        if line.startswith("tree_sizes="):  # byte offsets of the trees: no longer true, optional
            continue
        if line.startswith("threshold="):
            doubles = np.array(line.removeprefix("threshold=").split(), dtype=np.float64)
            singles = doubles.astype(np.float32)
            above = singles.astype(np.float64) > doubles
            singles[above] = np.nextafter(singles[above], np.float32(-np.inf))
            line = "threshold=" + " ".join(repr(float(v)) for v in singles)
        lines.append(line)
    return "\n".join(lines) + "\n"


def lightgbm_to_onnx(classifier: object, n_features: int) -> bytes:
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    assert isinstance(classifier, lgb.LGBMClassifier)
    booster = classifier.booster_
    exact = lgb.Booster(model_str=_float32_thresholds(booster.model_to_string(num_iteration=-1)))
    model = convert_lightgbm(
        exact,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=LIGHTGBM_OPSET,
    )
    # Keep one output, as the MLP graph has: the class label is the serving code's decision.
    kept = [output for output in model.graph.output if output.name == OUTPUT_NAME]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return bytes(model.SerializeToString())


def mlp_to_onnx(module: object, n_features: int) -> bytes:
    import torch

    assert isinstance(module, torch.nn.Module)
    module.eval()
    with tempfile.TemporaryDirectory(prefix="onnx-") as folder, warnings.catch_warnings():
        target = Path(folder) / "mlp.onnx"  # the TorchScript exporter warns that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (torch.zeros(1, n_features),),
            target,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "rows"}, OUTPUT_NAME: {0: "rows"}},
            opset_version=MLP_OPSET,
        )
        return target.read_bytes()


def check_parity(
    onnx_bytes: bytes,
    native_predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Raise ``ParityError`` unless ONNX Runtime and the native model agree on every row.

    Returns:
        The largest absolute difference between the two raw probabilities.
    """
    if len(x) == 0:
        raise ParityError("parity gate: no rows to compare")
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    try:
        onnx = session(onnx_bytes).run([OUTPUT_NAME], {INPUT_NAME: x32})[0][:, 1].astype(np.float64)
    except Exception as error:  # a corrupt or mismatched graph fails the gate too
        raise ParityError(f"parity gate: ONNX Runtime cannot run the model: {error}") from error
    native = np.asarray(native_predict(x32), dtype=np.float64)
    diff = np.abs(onnx - native)
    worst = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    if worst > tolerance:
        rows = int((~(diff <= tolerance)).sum())
        raise ParityError(
            f"parity gate: ONNX and native scores differ by up to {worst:.3g} (> {tolerance:g}) "
            f"on {rows:,} of {len(x):,} rows; not registering"
        )
    return worst
