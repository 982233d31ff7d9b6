"""What a site releases beside its weights, as the job asks and the site's policy allows.

``privacy.site_metrics`` (capped by the site policy's ``site-metrics``):
- ``withhold``: nothing computed from records: the aggregation weight is 1 (uniform FedAvg), no
  training loss, no clip fraction, no held-out evaluation (the server does not ask for it), no
  step count or training time (both grow with the record count: at batch size 1 the steps are n);
- ``noisy``: the training-record count (the FedAvg weight) and the held-out count, accuracy and
  loss, each through a Gaussian mechanism whose cost is charged to the site's ledger (so it is part
  of the site's epsilon); training loss, clip fraction, step count and training time are withheld
  (no accounted mechanism);
- ``exact``: all of them, exactly, outside the DP guarantee (the privacy statement says so).
Without DP (privacy.mode off) everything is released exactly: no guarantee is claimed.

Noisy held-out release: per-record cross-entropy is clipped to [0, LOSS_CAP]; the vector (count,
correct count, clipped-loss sum / LOSS_CAP) changes by at most sqrt(3) in L2 norm when one record
is added or removed, and gets N(0, (sigma_r * sqrt 3)^2) noise per coordinate: one Gaussian
mechanism with noise multiplier sigma_r, i.e. the ledger entry (sigma_r, 1, 1). The training count
(sensitivity 1) is another such entry, reserved together with the round's DP-SGD.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.config import PrivacyConfig
from common.device import on_model_device
from common.privacy.mechanism.randomness import secret_generator
from common.train import EvalResult, TrainResult, evaluate, logits

LOSS_CAP = 10.0
EVAL_SENSITIVITY = math.sqrt(3.0)


def level(cfg: PrivacyConfig) -> str:
    return "exact" if cfg.mode == "off" else cfg.site_metrics


def release_entry(cfg: PrivacyConfig, what: str) -> dict[str, Any]:
    """Ledger entry of one Gaussian release with the job's release noise multiplier."""
    return {"noise_multiplier": cfg.release_noise_multiplier, "sample_rate": 1.0, "steps": 1, "kind": f"release:{what}"}


def _gauss(std: float) -> float:
    return float(torch.normal(0.0, std, (1,), generator=secret_generator()))


def train_metrics(cfg: PrivacyConfig, n: int, result: TrainResult) -> dict[str, float]:
    """The training reply's metrics. Under ``noisy`` the caller has reserved ``release_entry(cfg, 'count')``.
    The step count and training time are released only where the record count is (``exact``)."""
    how = level(cfg)
    if how == "exact":
        return {
            "weight": float(n),
            "num-examples": float(n),
            "train_loss": result.loss,
            "train_steps": float(result.steps),
            "train_seconds": result.seconds,
        }
    if how == "noisy":
        return {"weight": max(1.0, n + _gauss(cfg.release_noise_multiplier))}
    return {"weight": 1.0}


@torch.no_grad()
def noisy_evaluation(model: nn.Module, loader: DataLoader, sigma: float) -> dict[str, float]:
    """Held-out count, accuracy and loss through one Gaussian mechanism (noise multiplier ``sigma``)."""
    model.eval()
    count, correct, loss_sum = 0, 0, 0.0
    for batch in loader:
        batch = on_model_device(batch, model)
        out = logits(model, batch)
        losses = nn.functional.cross_entropy(out, batch["labels"], reduction="none").clamp(0.0, LOSS_CAP)
        count += int(batch["labels"].numel())
        correct += int((out.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(losses.sum())
    std = sigma * EVAL_SENSITIVITY
    n = max(1.0, count + _gauss(std))
    c = min(max(0.0, correct + _gauss(std)), n)
    s = max(0.0, loss_sum / LOSS_CAP + _gauss(std)) * LOSS_CAP
    return {"weight": n, "num-examples-noisy": n, "accuracy": c / n, "loss": min(s / n, LOSS_CAP)}


def evaluation_metrics(cfg: PrivacyConfig, model: nn.Module, loader: DataLoader, num_labels: int) -> dict[str, float]:
    """The evaluation reply's metrics. Under ``noisy`` the caller has reserved ``release_entry(cfg, 'evaluation')``."""
    how = level(cfg)
    if how == "exact":
        res: EvalResult = evaluate(model, loader, num_labels)
        n = float(res.num_examples)
        return {"weight": n, "num-examples": n, "loss": res.loss, "accuracy": res.accuracy, "macro_f1": res.macro_f1}
    if how == "noisy":
        return noisy_evaluation(model, loader, cfg.release_noise_multiplier)
    return {"weight": 1.0}
