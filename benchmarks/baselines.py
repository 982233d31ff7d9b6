"""Non-federated baselines: the simple alternatives every accuracy table shows beside federated deep learning.

Text: TF-IDF (word 1-2 grams, sublinear tf, min_df=1, ``TfidfVectorizer`` defaults otherwise) + L2 logistic regression.
Images: L2 logistic regression on raw pixels, scaled to [0, 1] and flattened; NOT standardized (per-pixel
z-scoring was tried on the PneumoniaMNIST and digits validation splits described below: same best
validation accuracy, 0.949 vs 0.949 and 0.972 vs 0.972, and lbfgs converges either way, so the simpler
features stay).

The data goes through the project's own readers (``common.data.read_train`` / ``read_test`` /
``label_set``), so the split is the experiment's:

* pooled baseline: trained on ALL the records of the experiment's training file (after
  ``data.max_samples``, as ``read_train`` returns them), i.e. what pooled training sees. The federated
  runs hold out ``data.val_fraction`` of every site for site evaluation; this baseline does not: it
  uses the full training file.
* single-site baseline: the experiment's partition (``common.partition.partition_indices`` over the
  training labels with ``exp.seed``, exactly as ``common.site.site_records`` does); a model is trained on
  each site's whole partition alone (again without the val_fraction hold-out) and reported as the mean
  (unweighted over sites) and the worst site accuracy: what a site gets without federating. A site
  whose partition holds one class predicts that class.
* test: the experiment's central test split (``read_test``: ``data.test_path``, the npz's ``test_*``
  arrays, or the built-in sources' fixed test split), scored with ``common.metrics.classification_scores``
  like the federated runs' central evaluation.

Hyperparameters, fixed: scikit-learn ``LogisticRegression`` (lbfgs, L2, ``max_iter=2000``). The inverse
regularization C is chosen once per experiment from C_GRID = (0.1, 1, 10, 100) on a validation split carved
from the training records (VAL_FRACTION = 10 %, stratified when every class has >= 2 records, seeded with
``exp.seed``; ties go to the C nearest scikit-learn's default 1); the chosen C is then refit on all the
training records. The test set is never used for a choice. The single-site models use the same C (no
per-site tuning). Featurizers (the TF-IDF vocabulary and idf) are fitted on the records a model trains on
only: a single-site model sees only its own site's vocabulary.

    python -m benchmarks.baselines --task pneumonia
    python -m benchmarks.baselines --task banking77 [--set data.max_samples=2000 ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._util import save, table
from common import config as config_mod
from common.config import ExperimentConfig
from common.data import RawData, label_set, read_test, read_train
from common.errors import ConfideError, ConfigError
from common.metrics import classification_scores
from common.partition import partition_indices

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "pneumonia": "simulations/configs/hospital_resnet_pneumonia.yaml",
    "banking77": "simulations/configs/bank_bert_banking77.yaml",
}
C_GRID = (0.1, 1.0, 10.0, 100.0)
VAL_FRACTION = 0.1
MAX_ITER = 2000
NGRAMS = (1, 2)


def method_name(exp: ExperimentConfig) -> str:
    return "tfidf+logreg" if exp.data.is_text else "pixels+logreg"


def load_split(exp: ExperimentConfig) -> tuple[RawData, RawData, int]:
    """(train, test, number of labels) of the experiment, read and labelled exactly as a run reads them."""
    train = read_train(exp.data)
    test = read_test(exp.data)
    if test is None:
        raise ConfigError(
            f"config key 'data.test_path' is empty: the baseline needs the experiment's central test split "
            f"({exp.data.path} has none)"
        )
    labels = label_set(exp.data, train)
    where = exp.data.path or f"built-in '{exp.data.source}'"
    test_where = exp.data.test_path or where
    return train.with_labels(labels, where=where), test.with_labels(labels, where=test_where), len(labels)


def _features(exp: ExperimentConfig, fit: RawData):
    """A fitted featurizer (on ``fit`` only) mapping RawData -> design matrix."""
    if exp.data.is_text:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, min_df=1)
        vec.fit(fit.texts)
        return lambda raw: vec.transform(raw.texts)

    return lambda raw: raw.images.reshape(len(raw), -1).astype(np.float64) / 255.0


def _fit_predict(exp: ExperimentConfig, train: RawData, test: RawData, c: float) -> tuple[np.ndarray, bool]:
    """Train on ``train`` (features fitted on it alone); (predicted class indices of ``test``, lbfgs converged)."""
    classes = np.unique(train.labels)
    if len(classes) == 1:  # one-class site: logistic regression is undefined; predict that class
        return np.full(len(test), classes[0], dtype=np.int64), True
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    featurize = _features(exp, train)
    clf = LogisticRegression(C=c, max_iter=MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported instead, from n_iter_
        clf.fit(featurize(train), train.labels)
    return clf.predict(featurize(test)).astype(np.int64), bool(np.all(clf.n_iter_ < MAX_ITER))


def _validation_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    n_val = max(1, int(round(len(labels) * VAL_FRACTION)))
    if stratify is not None and n_val < len(np.unique(labels)):
        stratify = None
    fit, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(fit), np.sort(val)


def choose_c(exp: ExperimentConfig, train: RawData, num_labels: int) -> tuple[float, dict[str, float]]:
    """The C from ``C_GRID`` with the best validation accuracy; never the test set. Ties go to the C nearest
    (in log scale) to scikit-learn's default 1, then to the smaller C."""
    fit, val = _validation_split(train.labels, exp.seed)
    fit_raw, val_raw = train.subset(fit), train.subset(val)
    scores: dict[str, float] = {}
    for c in C_GRID:
        pred, _ = _fit_predict(exp, fit_raw, val_raw, c)
        scores[str(c)] = classification_scores(val_raw.labels, pred, num_labels)[0]
    best = max(C_GRID, key=lambda c: (scores[str(c)], -abs(math.log10(c)), -c))
    return best, scores


def baseline(exp: ExperimentConfig) -> dict[str, Any]:
    """Pooled and single-site baselines of ``exp`` on its central test split (see the module docstring)."""
    start = time.perf_counter()
    train, test, num_labels = load_split(exp)
    c, val_scores = choose_c(exp, train, num_labels)
    pred, converged = _fit_predict(exp, train, test, c)
    accuracy, macro_f1 = classification_scores(test.labels, pred, num_labels)

    sites = []
    for i, part in enumerate(partition_indices(train.labels, exp.data, exp.seed)):
        if len(part) == 0:
            sites.append({"site": i, "records": 0, "accuracy": math.nan, "macro_f1": math.nan})
            continue
        own = train.subset(part)
        site_pred, _ = _fit_predict(exp, own, test, c)
        acc, f1 = classification_scores(test.labels, site_pred, num_labels)
        counts = np.bincount(own.labels)
        sites.append(
            {
                "site": i,
                "records": len(own),
                "classes": int(np.count_nonzero(counts)),
                "majority_fraction": float(counts.max() / len(own)),
                "accuracy": acc,
                "macro_f1": f1,
            }
        )
    scored = [s for s in sites if s["records"]]
    return {
        "method": method_name(exp),
        "experiment": exp.name,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "train_records": len(train),
        "test_records": len(test),
        "num_labels": num_labels,
        "C": c,
        "validation_accuracy_by_C": val_scores,
        "validation_fraction": VAL_FRACTION,
        "max_iter": MAX_ITER,
        "converged": converged,
        "features": (
            f"tfidf word {NGRAMS[0]}-{NGRAMS[1]} grams, sublinear tf"
            if exp.data.is_text
            else "pixels/255, flattened (not standardized)"
        ),
        "single_site": {
            "num_sites": exp.data.num_sites,
            "partitioner": exp.data.partitioner,
            "alpha": exp.data.alpha,
            "mean_accuracy": float(np.mean([s["accuracy"] for s in scored])),
            "worst_accuracy": float(min(s["accuracy"] for s in scored)),
            "mean_macro_f1": float(np.mean([s["macro_f1"] for s in scored])),
            "sites": sites,
        },
        "seconds": time.perf_counter() - start,
    }


def load_task(task: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; known: {', '.join(TASKS)}")
    return config_mod.load(REPO / TASKS[task], overrides or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one experiment key (repeatable), e.g. data.max_samples=2000",
    )
    args = parser.parse_args(argv)
    from simulations.local import parse_sets

    try:
        extra = parse_sets(args.set)
        result = baseline(load_task(args.task, extra))
    except ConfideError as exc:
        print(f"confide: {exc}", file=sys.stderr)
        return 2
    single = result["single_site"]
    print(
        table(
            [
                "task",
                "method",
                "train records",
                "test accuracy",
                "macro-F1",
                f"single site mean ({single['num_sites']} sites)",
                "single site worst",
                "C",
                "seconds",
            ],
            [
                [
                    args.task,
                    result["method"],
                    result["train_records"],
                    result["accuracy"],
                    result["macro_f1"],
                    single["mean_accuracy"],
                    single["worst_accuracy"],
                    result["C"],
                    round(result["seconds"], 1),
                ]
            ],
        )
    )
    path = save(f"baselines-{args.task}", {"task": args.task, "overrides": extra, **result})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
