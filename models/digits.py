"""scikit-learn's 8x8 digits as the shipped model's data: the fixed train / held-out split and the preprocessing.

The data ships inside scikit-learn (``sklearn.datasets.load_digits``: 1797 grey 8x8 images, 10 classes), so the
quickstart needs no download. Pixels 0..16 are scaled to [0, 1]; the held-out split is stratified, 20 %
(360 images), ``random_state=0``. A network sees the image repeated T times (direct encoding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DIGITS_CHECKPOINT", "DIGITS_MODEL_KWARGS", "DIGITS_T", "DigitsSplit", "load_digits_split", "accuracy"]

DIGITS_T = 8
DIGITS_CHECKPOINT = "digits_cnn_if.pt"
# The architecture of the shipped checkpoint (zoo entry ``digits-cnn``); the training script builds exactly this.
DIGITS_MODEL_KWARGS = {
    "T": DIGITS_T, "neuron": "if", "in_channels": 1, "image_size": 8, "channels": (16, 32), "num_classes": 10,
    "v_threshold": 1.0, "alpha": 0.5, "v_threshold_lower_bound": 0.01,
}
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


@dataclass
class DigitsSplit:
    x_train: Tensor  # [N, 1, 8, 8] float32 in [0, 1]
    y_train: Tensor  # [N] int64
    x_test: Tensor
    y_test: Tensor


def load_digits_split() -> DigitsSplit:
    """The fixed split (same on every machine: scikit-learn's bundled data and a seeded stratified split)."""
    from dsr_deploy.errors import require

    datasets = require("sklearn.datasets", "quickstart", "the 8x8 digits data set")
    model_selection = require("sklearn.model_selection", "quickstart", "the 8x8 digits data set")
    data = datasets.load_digits()
    x = (np.asarray(data.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    y = np.asarray(data.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
        x, y, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return DigitsSplit(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr),
                       torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te))


def accuracy(logits: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Top-1 accuracy; ties go to the lowest class index (argmax), the same rule for every backend."""
    logits = torch.as_tensor(np.asarray(logits)) if not isinstance(logits, Tensor) else logits
    labels = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, Tensor) else labels
    return float((logits.argmax(-1) == labels).double().mean())
