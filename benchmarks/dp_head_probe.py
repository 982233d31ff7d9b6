"""How batch size, local epochs and learning rate trade off at a fixed epsilon, for the text recipe
that learns under DP: federated DP-SGD on the classification head only, over frozen MiniLM features.

With the encoder frozen (``train.head_only_rounds``), a site's DP-SGD only ever sees each record's
mean-pooled feature vector, so this benchmark encodes every training and test query once (eval
mode) and then runs the same federated algorithm in closed form on those features: the
experiment's partition of the training data (``common.partition``), per-site Poisson sampling at
rate q = batch / n, per-sample gradients of the linear softmax head ((p - y) x and p - y), each
clipped to C, Gaussian noise sigma*C on the sum, divided by the expected batch size, local SGD with
momentum, FedAvg of the sites' heads each round, from the label-name initialisation
(``common/head_init.py``). sigma is calibrated per site by Opacus's accountant for the whole job
(rounds x local epochs x steps per epoch), delta = min(1e-5, 1/(10 n)). It is a fast stand-in for a
full Confide run (minutes instead of an hour per cell): it omits dropout in the frozen encoder and
runs no Flower, so the real runs (``simulations/sweeps/utility-banking77-head.yaml``) are the
figures to quote; this shows the trade-off that chose their settings. Test-set accuracy is reported
for every setting: it is a study of the trade-off, not a tuned result.

    python -m benchmarks.dp_head_probe --epsilon 8 --grid "128:1:0.5,128:3:0.5,256:3:2.0"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._util import save, table
from common import config as config_mod
from common.data import LabelSet, label_set, read_test, read_train
from common.partition import partition_indices
from common.privacy.mechanism.accounting import calibrate

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "simulations/configs/bank_bert_banking77.yaml"
CACHE = REPO / "runs/benchmarks"
HEADERS = ["ε", "expected batch", "local epochs", "lr", "σ (max site)", "test acc"]


def features(max_length: int) -> dict[str, np.ndarray]:
    """Mean-pooled MiniLM features of every train/test query and the label-name head (cached)."""
    path = CACHE / f"minilm-mean-features-{max_length}.npz"
    if path.is_file():
        return dict(np.load(path))
    from common.batches import make_dataset, make_loader
    from common.models import build_model

    exp = config_mod.load(EXPERIMENT, {"model.pooling": "mean", "model.head_init": "label_names",
                                       "model.max_length": max_length})  # fmt: skip
    train_raw = read_train(exp.data)
    labels = label_set(exp.data, train_raw)
    exp = config_mod.replace(exp, **{"data.labels": labels.names})
    model = build_model(exp, len(labels)).eval()
    captured: list[torch.Tensor] = []
    model.classifier.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    out: dict[str, np.ndarray] = {}
    for split, raw in (("train", train_raw), ("test", read_test(exp.data))):
        captured.clear()
        labelled = raw.with_labels(LabelSet(labels.names), where=split)
        with torch.no_grad():
            for batch in make_loader(make_dataset(labelled, exp.model), 256, shuffle=False):
                model(**{k: v for k, v in batch.items() if k != "labels"})
        out[f"x_{split}"] = torch.cat(captured).numpy()
        out[f"y_{split}"] = np.asarray(labelled.labels, dtype=np.int64)
    out["w0"], out["b0"] = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def federated_dp_head(
    f: dict[str, np.ndarray],
    parts: list[np.ndarray],
    epsilon: float,
    rounds: int,
    epochs: int,
    batch: int,
    lr: float,
    clip: float = 1.0,
    momentum: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """Test accuracy of the final global head, and the largest site noise multiplier."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.tensor(f["x_train"]), torch.tensor(f["y_train"])
    w, b = torch.tensor(f["w0"]).clone(), torch.tensor(f["b0"]).clone()
    sigmas = []
    for ids in parts:
        n = len(ids)
        steps = epochs * max(1, int(n / batch)) * rounds
        delta = min(1e-5, 1 / (10 * n))
        if np.isinf(epsilon):
            sigmas.append(0.0)
            continue
        sigmas.append(calibrate(epsilon, delta, sample_rate=batch / n, steps=steps, kind="prv"))
    for _ in range(rounds):
        heads = []
        for ids, sigma in zip(parts, sigmas, strict=True):
            idx, n = torch.tensor(ids), len(ids)
            lw, lb = w.clone(), b.clone()
            vw, vb = torch.zeros_like(lw), torch.zeros_like(lb)
            for _ in range(epochs * max(1, int(n / batch))):
                pick = idx[torch.rand(n, generator=g) < batch / n]
                xs, ys = x[pick], y[pick]
                p = torch.softmax(xs @ lw.T + lb, 1)
                p[torch.arange(len(ys)), ys] -= 1  # d loss / d logits, per record
                norms = p.norm(dim=1) * (xs.norm(dim=1) ** 2 + 1).sqrt()
                p = p * (clip / norms).clamp(max=1.0)[:, None]
                gw = (p.T @ xs + sigma * clip * torch.randn(lw.shape, generator=g)) / batch
                gb = (p.sum(0) + sigma * clip * torch.randn(lb.shape, generator=g)) / batch
                vw, vb = momentum * vw + gw, momentum * vb + gb
                lw, lb = lw - lr * vw, lb - lr * vb
            heads.append((lw, lb, n))
        w = torch.stack([h[0] for h in heads]).mean(0)
        b = torch.stack([h[1] for h in heads]).mean(0)
    xt, yt = torch.tensor(f["x_test"]), torch.tensor(f["y_test"])
    return float(((xt @ w.T + b).argmax(1) == yt).float().mean()), max(sigmas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, action="append", default=[], help="repeatable; inf = no DP")
    parser.add_argument("--grid", default="128:1:0.5,128:3:0.5,256:1:2.0,256:3:1.0,256:3:2.0,512:3:2.0,512:3:4.0",
                        help="batch:local_epochs:lr,...")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=32)
    args = parser.parse_args(argv)
    if not (REPO / "../shared/datasets/banking77").exists():
        print("confide: ../shared/datasets/banking77 not found", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    f = features(args.max_length)
    exp = config_mod.load(EXPERIMENT)
    parts = [np.asarray(p) for p in partition_indices(f["y_train"], exp.data, exp.seed)]
    rows, results = [], []
    for eps in args.epsilon or [8.0]:
        for cell in args.grid.split(","):
            batch, epochs, lr = cell.split(":")
            acc, sigma = federated_dp_head(f, parts, eps, args.rounds, int(epochs), int(batch), float(lr))
            results.append({"epsilon": eps, "batch": int(batch), "local_epochs": int(epochs), "lr": float(lr),
                            "noise_multiplier": sigma, "accuracy": acc})  # fmt: skip
            rows.append([eps, int(batch), int(epochs), float(lr), round(sigma, 2), round(acc, 3)])
            print(table(HEADERS, rows[-1:]), flush=True)
    path = save("dp-head-probe", {"rounds": args.rounds, "sites": [len(p) for p in parts], "results": results,
                                  "seconds": time.perf_counter() - start})  # fmt: skip
    print(table(HEADERS, rows))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
