"""Which pooled MiniLM representation a new classification head should read (``model.pooling``).

Frozen all-MiniLM-L6-v2, built by Confide's own ``create_model``; one pass over BANKING77's train
and test queries collects both representations the head can read: the [CLS] pooler's output
(``cls``) and the attention-masked mean of the last hidden states (``mean``). A linear head is
then fitted on each (full-batch AdamW, centrally, no DP) and scored on the test split. This is the
linear-probe ceiling of a head on an untouched encoder: what a DP run that mostly trains the head
(LoRA, few steps) starts from.

    python -m benchmarks.pooling_probe            # needs ../shared/datasets/banking77
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks._util import save, table
from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import RawData, label_set, read_test, read_train
from common.models import create_model

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "simulations" / "configs" / "bank_bert_banking77.yaml"


@torch.no_grad()
def features(model: nn.Module, raw: RawData, model_cfg) -> dict[str, torch.Tensor]:
    """Pooler output and masked token mean for every record (batch order kept)."""
    out: dict[str, list[torch.Tensor]] = {"cls": [], "mean": []}
    for batch in make_loader(make_dataset(raw, model_cfg), 128, shuffle=False):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        hidden = model.bert(**inputs)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out["cls"].append(hidden.pooler_output)
        out["mean"].append((hidden.last_hidden_state * mask).sum(1) / mask.sum(1))
    return {k: torch.cat(v) for k, v in out.items()}


def fit_head(x: torch.Tensor, y: torch.Tensor, num_labels: int, steps: int, lr: float) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], num_labels)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="full-batch optimizer steps per head")
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    exp = config_mod.load(EXPERIMENT)
    if not Path(exp.data.path).is_file():
        raise SystemExit(f"BANKING77 not found at {exp.data.path}")
    train, test = read_train(exp.data), read_test(exp.data)
    labels = label_set(exp.data, train)
    train_raw, test_raw = train.with_labels(labels, exp.data.path), test.with_labels(labels, exp.data.test_path)
    model = create_model(exp.model, len(labels)).eval()
    start = time.perf_counter()
    train_x, test_x = features(model, train_raw, exp.model), features(model, test_raw, exp.model)
    seconds = time.perf_counter() - start
    y_train, y_test = torch.from_numpy(train_raw.labels), torch.from_numpy(test_raw.labels)
    rows = []
    for pooling in ("cls", "mean"):
        head = fit_head(train_x[pooling], y_train, len(labels), args.steps, args.lr)
        with torch.no_grad():
            acc = float((head(test_x[pooling]).argmax(1) == y_test).float().mean())
        rows.append({"pooling": pooling, "test_accuracy": acc})
    print(table(["pooling", "linear-probe test accuracy"], [[r["pooling"], r["test_accuracy"]] for r in rows]))
    print(f"{len(y_train)} train / {len(y_test)} test queries; features in {seconds:.0f} s")
    print("saved", save("pooling_probe", {"args": vars(args), "rows": rows, "feature_seconds": seconds}))


if __name__ == "__main__":
    main()
