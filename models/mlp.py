"""PyTorch MLP: signed-log and standardisation inside the network, class-weighted loss,
early stopping on validation average precision, deterministic under its seed.

The preprocessing lives in the module (as buffers), so the exported ONNX graph takes the
raw feature vector, exactly like the LightGBM graph. Torch is imported by training only:
serving runs the ONNX file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.metrics import average_precision

HIDDEN = (64, 32)
BATCH_SIZE = 1024
MAX_EPOCHS = 40
PATIENCE = 4  # epochs without a better validation AP before stopping
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-5
MAX_POSITIVE_WEIGHT = 50.0


class FraudMLP(nn.Module):
    """raw features → sign(x)·log(1+|x|) → standardise → MLP → fraud probability (2 columns)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = len(mean)
        for hidden in HIDDEN:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sign(x) * torch.log1p(torch.abs(x))
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [1 - p, p], the same "probabilities" output as the LightGBM graph.
        p = torch.sigmoid(self.logits(x)).unsqueeze(-1)
        return torch.cat([1 - p, p], dim=-1)


def make_deterministic(seed: int) -> None:
    """One thread, fixed seeds, deterministic kernels: the same weights on every run."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


@dataclass
class MLPModel:
    seed: int = 7

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray) -> None:
        """Adam on class-weighted BCE; keep the epoch with the best validation AP."""
        make_deterministic(self.seed)
        x = torch.as_tensor(x_train, dtype=torch.float32)
        y = torch.as_tensor(y_train, dtype=torch.float32)
        logged = torch.sign(x) * torch.log1p(torch.abs(x))
        mean, std = logged.mean(dim=0).numpy(), logged.std(dim=0).numpy() + 1e-6
        self.module = FraudMLP(mean, std)
        positives = float(y.sum())
        weight = min(MAX_POSITIVE_WEIGHT, (len(y) - positives) / max(positives, 1.0))
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight))
        optimiser = torch.optim.Adam(self.module.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        generator = torch.Generator().manual_seed(self.seed)

        best_ap, best_state, stale = -1.0, copy.deepcopy(self.module.state_dict()), 0
        self.epochs = 0
        for _ in range(MAX_EPOCHS):
            self.module.train()
            for batch in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
                optimiser.zero_grad()
                loss_fn(self.module.logits(x[batch]), y[batch]).backward()
                optimiser.step()
            self.epochs += 1
            ap = average_precision(y_valid, self.predict(x_valid))
            if ap > best_ap + 1e-6:
                best_ap, best_state, stale = ap, copy.deepcopy(self.module.state_dict()), 0
            else:
                stale += 1
                if stale >= PATIENCE:
                    break
        self.module.load_state_dict(best_state)
        self.best_valid_ap = best_ap

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) fraud probability per row."""
        self.module.eval()
        with torch.no_grad():
            return self.module(torch.as_tensor(x, dtype=torch.float32))[:, 1].double().numpy()
