"""Train the shipped checkpoint: zoo ``digits-cnn`` (DSR-IF, T=8) on scikit-learn's 8x8 digits.

    python -m dsr_deploy.models.train_digits --out models/digits_cnn_if.pt

Reproducible from the seed on CPU (one thread, deterministic algorithms): the same torch build gives the same
weights. Writes a plain state dict (loadable with ``torch.load(..., weights_only=True)``) and prints the held-out
accuracy that goes into the model card (models/digits-cnn.md).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsr_deploy.encoding import direct_encode
from dsr_deploy.io import atomic_path

from .digits import DIGITS_MODEL_KWARGS, accuracy, load_digits_split
from .small import SpikingCNN


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Augmentation: each image moved by -1..1 pixel in x and y (zero fill).
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    out = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., dy:, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, dx:] = 0
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, T: int) -> float:
    model.eval()
    with torch.no_grad():
        return accuracy(model(direct_encode(x, T)), y)


def train(seed: int = 0, epochs: int = 20, batch_size: int = 64, lr: float = 5e-3, log=print) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    data = load_digits_split()
    T = DIGITS_MODEL_KWARGS["T"]
    model = SpikingCNN(**DIGITS_MODEL_KWARGS, readout="rate")  # trained on the authors' rate readout
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(data.y_train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = _shift(data.x_train[idx], gen)
            loss = loss_fn(model(direct_encode(xb, T)), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 5 == 0 or epoch == epochs - 1:
            log(f"epoch {epoch + 1:3d}  loss {total / len(data.y_train):.4f}  "
                f"held-out acc {evaluate(model, data.x_test, data.y_test, T):.4f}  ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    stats = {
        "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "T": T,
        "train_accuracy": evaluate(model, data.x_train, data.y_train, T),
        "held_out_accuracy": evaluate(model, data.x_test, data.y_test, T),
        "held_out_size": int(len(data.y_test)), "train_size": int(len(data.y_train)),
        "train_seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
        "thresholds": {n: float(m.v_threshold.detach()) for n, m in model.named_modules()
                       if hasattr(m, "effective_threshold")},
    }
    return model, stats


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("models/digits_cnn_if.pt"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, stats = train(seed=a.seed, epochs=a.epochs)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()  # saved to memory: the archive's inner folder name is then fixed ("archive"), so the
    torch.save(state, buf)  # same weights give the same file bytes
    with atomic_path(a.out) as tmp:
        tmp.write_bytes(buf.getvalue())
        tmp.chmod(0o644)  # mkstemp creates 0600; the file ships in the package
    stats["file_bytes"] = a.out.stat().st_size
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
