"""Every bad input a new user would try is refused clearly and quickly.

Each case below is one bad experiment, override, data file or model file, built under the test's
own folder (tiny files), and run through the real entry point ``python -m simulations.local``
(its ``main``, in-process). Each case proves that

(a) the run stops with exit code 2 (a Confide error, not a crash),
(b) the message is ONE line, ``confide: ...``, the last thing printed, naming the config key,
    file or record that is wrong (every expected fragment is asserted to appear in it),
(c) nothing printed contains a Python traceback, and
(d) it is quick: the check runs before Flower's simulation engine (Ray) would start. Flower's
    ``run_simulation`` is replaced by a function that fails the test, so a case that is only
    caught inside the simulation (by the ServerApp or a site) fails here instead of passing slowly.

Relative paths resolve against the test's folder (``CONFIDE_ROOT``, tests/conftest.py); ``{tmp}``
in an expected fragment stands for that folder.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from common import config as config_mod
from common import logs
from simulations import local
from tests.one_line import directory, write_files

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------- tiny files

ROWS = [(f"query number {i}", "card" if i % 2 else "transfer") for i in range(12)]


def csv_text(rows: list[tuple[str, str]] = ROWS, header: str = "text,label") -> str:
    return header + "\n" + "".join(f"{t},{c}\n" for t, c in rows)


def npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with path.open("wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, **arrays)

    return write


def images(n: int, side: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, side, side), dtype=np.uint8)


def labels(n: int) -> np.ndarray:
    return (np.arange(n) % 2).reshape(n, 1)


GOOD_NPZ = npz(train_images=images(12), train_labels=labels(12), test_images=images(4), test_labels=labels(4))


def image_folder(counts: dict[str, int], broken: str = "", sizes: tuple[int, ...] = (8,)) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        from PIL import Image

        root.mkdir()
        for label, n in counts.items():
            (root / label).mkdir()
            for i in range(n):
                side = sizes[i % len(sizes)]
                Image.fromarray(np.full((side, side), 10 * i, dtype=np.uint8)).save(root / label / f"{i}.png")
        if broken:
            (root / broken).write_bytes(b"this is not a png")

    return write


def torch_save(obj: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import torch

        torch.save(obj, path)

    return write


# --------------------------------------------------------------------------- experiments

DIGITS = "name: battery\nstrategy: {rounds: 1}\ndata: {num_sites: 2, max_samples: 60}\n"
TEXT = "name: battery\nmodel: {name: bert}\ndata: {source: csv, path: train.csv, num_sites: 2}\nstrategy: {rounds: 1}\n"
NPZ = "name: battery\nmodel: {name: resnet8}\ndata: {source: npz, path: x.npz, num_sites: 2}\nstrategy: {rounds: 1}\n"
FOLDER = (
    "name: battery\nmodel: {name: resnet8}\ndata: {source: imagefolder, path: imgs, num_sites: 2}\n"
    "strategy: {rounds: 1}\n"
)


@dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]  # fragments the one-line message must contain ({tmp}: the test folder)
    sets: tuple[str, ...] = ()  # --set KEY=VALUE arguments
    yaml: str | None = DIGITS  # the experiment file exp.yaml (None: not written)
    files: dict[str, object] = field(default_factory=dict)  # name -> text, bytes or a writer(path)
    argv: tuple[str, ...] = ("exp.yaml",)  # before the --set arguments
    xfail: str = ""


def text(*sets: str, files: dict[str, object] | None = None, **kw: object) -> dict:
    """A CSV text experiment (MiniLM, the bundled checkpoint) with a good train.csv unless replaced."""
    return {"yaml": TEXT, "sets": sets, "files": {"train.csv": csv_text(), **(files or {})}, **kw}


# fmt: off
CASES = [
    # ------------------------------------------------------------------ the experiment file
    Case("missing-experiment-file", ("experiment file not found", "nope.yaml"), argv=("nope.yaml",)),
    Case("experiment-file-is-a-directory", ("experiment file configs", "directory"), argv=("configs",),
         files={"configs": directory}),
    Case("yaml-syntax-error", ("exp.yaml", "not valid YAML", "line 2"), yaml="train:\n  lr: [0.1\n"),
    Case("yaml-tab-indent", ("exp.yaml", "not valid YAML"), yaml="train:\n\tlr: 0.1\n"),
    Case("yaml-not-a-mapping", ("exp.yaml", "mapping"), yaml="- train.lr: 0.1\n"),
    Case("yaml-scalar", ("exp.yaml", "mapping"), yaml="just some words\n"),
    Case("section-not-a-mapping", ("'train'", "mapping"), yaml="train: 3\n"),
    Case("unknown-section", ("'bogus'",), yaml="bogus:\n  x: 1\n"),
    Case("unknown-key-in-yaml", ("'train.lrr'", "exp.yaml", "did you mean 'train.lr'"), yaml="train:\n  lrr: 0.1\n"),
    Case("key-at-wrong-level", ("'lr'", "exp.yaml", "did you mean 'train.lr'"), yaml="lr: 0.1\n"),
    Case("dotted-key-in-yaml", ("'train.lr'", "exp.yaml", "nested"), yaml="train.lr: 0.1\n"),
    Case("yaml-duplicate-key", ("exp.yaml", "'rounds' appears twice", "first at line 2", "line 3"),
         yaml="strategy:\n  rounds: 1\n  rounds: 1000\n"),
    Case("yaml-duplicate-section", ("exp.yaml", "'strategy' appears twice"),
         yaml="strategy: {rounds: 1}\ndata: {num_sites: 2}\nstrategy: {rounds: 1000}\n"),
    Case("yaml-empty-file", ("exp.yaml", "empty"), yaml=""),
    Case("yaml-only-comments", ("exp.yaml", "empty"), yaml="# train:\n#   lr: 0.1\n"),
    Case("yaml-latin-1", ("exp.yaml", "UTF-8"), yaml=None, files={"exp.yaml": b"name: caf\xe9\n"}),
    # ------------------------------------------------------------------ --set overrides
    # ------------------------------------------------------------------ resources (before Ray starts)
    Case("cpus-per-site-above-machine", ("--cpus-per-site 4096", "CPUs"), argv=("exp.yaml", "--cpus-per-site", "4096")),
    Case("cpus-per-site-negative", ("--cpus-per-site", "> 0"), argv=("exp.yaml", "--cpus-per-site", "-1")),
    Case("cpus-per-site-zero", ("--cpus-per-site", "> 0"), argv=("exp.yaml", "--cpus-per-site", "0")),
    Case("gpus-per-site-beyond-machine", ("--gpus-per-site 4096",), argv=("exp.yaml", "--gpus-per-site", "4096")),
    Case("gpus-per-site-negative", ("--gpus-per-site", ">= 0"), argv=("exp.yaml", "--gpus-per-site", "-0.5")),
    Case("set-without-equals", ("--set", "train.lr"), sets=("train.lr",)),
    Case("set-unknown-key", ("'train.lrr'", "did you mean 'train.lr'"), sets=("train.lrr=0.1",)),
    Case("set-unknown-section", ("'trian.lr'", "did you mean 'train.lr'"), sets=("trian.lr=0.1",)),
    Case("set-below-a-value", ("'train.lr.x'",), sets=("train.lr.x=1",)),
    Case("set-empty-key", ("override", "empty key", "key=value"), sets=("=3",)),
    # ------------------------------------------------------------------ wrong types
    Case("lr-not-a-number", ("'train.lr'", "number", "fast"), sets=("train.lr=fast",)),
    Case("lr-nan", ("'train.lr'", "finite"), sets=("train.lr=.nan",)),
    Case("batch-size-fraction", ("'train.batch_size'", "integer"), sets=("train.batch_size=2.5",)),
    Case("rounds-a-string", ("'strategy.rounds'", "integer"), sets=("strategy.rounds=three",)),
    Case("bool-not-bool", ("'data.central_eval'", "true or false"), sets=("data.central_eval=maybe",)),
    Case("seed-a-list", ("'seed'", "integer"), yaml="seed: [1, 2]\n"),
    Case("seed-negative", ("'seed'", "[0, 2^32)"), sets=("seed=-1",)),
    Case("seed-too-large", ("'seed'", "[0, 2^32)"), sets=("seed=18446744073709551616",)),
    Case("labels-a-number", ("'data.labels'", "list"), yaml="data:\n  labels: 3\n"),
    Case("name-a-mapping", ("'name'", "string"), yaml="name: {a: 1}\n"),
    # ------------------------------------------------------------------ out of range
    Case("rounds-zero", ("'strategy.rounds'", ">= 1"), sets=("strategy.rounds=0",)),
    Case("rounds-negative", ("'strategy.rounds'", ">= 1"), sets=("strategy.rounds=-3",)),
    Case("lr-zero", ("'train.lr'", "> 0"), sets=("train.lr=0",)),
    Case("lr-negative", ("'train.lr'", "> 0"), sets=("train.lr=-0.01",)),
    Case("batch-size-zero", ("'train.batch_size'", ">= 1"), sets=("train.batch_size=0",)),
    Case("local-epochs-zero", ("'train.local_epochs'", ">= 1"), sets=("train.local_epochs=0",)),
    Case("num-sites-zero", ("'data.num_sites'", ">= 1"), sets=("data.num_sites=0",)),
    Case("fraction-train-zero", ("'strategy.fraction_train'", "(0, 1]"), sets=("strategy.fraction_train=0",)),
    Case("fraction-train-above-one", ("'strategy.fraction_train'",), sets=("strategy.fraction_train=1.5",)),
    Case("fraction-evaluate-negative", ("'strategy.fraction_evaluate'",), sets=("strategy.fraction_evaluate=-0.1",)),
    Case("val-fraction-one", ("'data.val_fraction'", "(0, 1)"), sets=("data.val_fraction=1",)),
    Case("alpha-zero", ("'data.alpha'", "> 0"), sets=("data.partitioner=dirichlet", "data.alpha=0")),
    Case("max-samples-negative", ("'data.max_samples'",), sets=("data.max_samples=-1",)),
    Case("fraction-train-selects-no-site", ("'strategy.fraction_train'", "selects no site"),
         sets=("strategy.fraction_train=0.1",)),
    Case("fraction-evaluate-selects-no-site", ("'strategy.fraction_evaluate'", "selects no site"),
         sets=("strategy.fraction_evaluate=0.2",)),
    Case("num-selected-above-num-sites", ("'strategy.num_selected'", "data.num_sites"),
         sets=("strategy.name=multikrum", "strategy.num_selected=9", "strategy.min_sites=2")),
    Case("min-sites-above-num-sites", ("'strategy.min_sites'", "data.num_sites"), sets=("strategy.min_sites=5",)),
    Case("in-channels-two", ("'model.in_channels'", "1 or 3"), sets=("model.in_channels=2",)),
    Case("empty-name", ("'name'", "empty"), sets=("name=' '",)),
    Case("duplicate-labels", ("'data.labels'", "duplicates"), sets=("data.labels=a,b,a",)),
    Case("one-label", ("'data.labels'",), sets=("data.labels=only",)),  # digits' test labels are outside it
    # ------------------------------------------------------------------ bad choices
    Case("model-name-unknown", ("'model.name'", "gpt2", "resnet18"), sets=("model.name=gpt2",)),
    Case("data-source-unknown", ("'data.source'", "xlsx", "csv"), sets=("data.source=xlsx",)),
    Case("partitioner-unknown", ("'data.partitioner'", "random", "dirichlet"), sets=("data.partitioner=random",)),
    Case("strategy-unknown", ("'strategy.name'", "fedsgd", "fedavg"), sets=("strategy.name=fedsgd",)),
    Case("privacy-mode-unknown", ("'privacy.mode'", "global", "local"), sets=("privacy.mode=global",)),
    Case("accountant-unknown", ("'privacy.accountant'", "gdp", "rdp"), sets=("privacy.accountant=gdp",)),
    Case("optimizer-unknown", ("'train.optimizer'", "adam", "adamw"), sets=("train.optimizer=adam",)),
    Case("device-unknown", ("'train.device'", "gpu", "cuda"), sets=("train.device=gpu",)),
    # ------------------------------------------------------------------ privacy combinations
    Case("delta-one", ("'privacy.delta'", "[0, 1)"), sets=("privacy.mode=local", "privacy.delta=1")),
    Case("delta-above-one-over-n", ("'privacy.delta'", "1/n", "smallest simulated site"),
         sets=("privacy.mode=local", "privacy.delta=0.5")),
    Case("delta-negative", ("'privacy.delta'",), sets=("privacy.mode=local", "privacy.delta=-1e-5")),
    Case("epsilon-negative", ("'privacy.target_epsilon'",), sets=("privacy.mode=local", "privacy.target_epsilon=-1")),
    Case("epsilon-zero", ("'privacy.target_epsilon'", "> 0"), sets=("privacy.mode=local", "privacy.target_epsilon=0")),
    Case("epsilon-without-mode", ("'privacy.target_epsilon'", "privacy.mode is 'off'", "without differential privacy"),
         sets=("privacy.target_epsilon=1",)),
    Case("noise-without-mode", ("'privacy.noise_multiplier'", "privacy.mode is 'off'"),
         sets=("privacy.noise_multiplier=2",)),
    Case("delta-without-mode", ("'privacy.delta'", "privacy.mode is 'off'"), sets=("privacy.delta=1e-6",)),
    Case("accountant-without-mode", ("'privacy.accountant'", "privacy.mode is 'off'"),
         sets=("privacy.accountant=prv",)),
    Case("privacy-section-without-mode", ("'privacy.max_grad_norm'", "privacy.mode is 'off'"),
         yaml=DIGITS + "privacy:\n  max_grad_norm: 0.5\n"),
    Case("dp-without-noise", ("'privacy.noise_multiplier'", "target_epsilon"),
         sets=("privacy.mode=local", "privacy.noise_multiplier=0")),
    Case("max-grad-norm-zero", ("'privacy.max_grad_norm'",), sets=("privacy.mode=local", "privacy.max_grad_norm=0")),
    Case("dp-sgd-in-bf16", ("'train.precision'", "bf16"), sets=("privacy.mode=local", "train.precision=bf16")),
    Case("class-weight-unknown", ("train.class_weight", "'balance'", "balanced"), sets=("train.class_weight=balance",)),
    Case("class-weight-negative", ("train.class_weight", "> 0"), sets=("train.class_weight=1,-1",)),
    Case("class-weight-balanced-under-local-dp", ("'train.class_weight'", "label counts"),
         sets=("privacy.mode=local", "train.class_weight=balanced")),
    Case("baseline-feature-unknown", ("'baseline.features'", "pixels"), sets=("baseline.features=tfidf",)),
    Case("baseline-text-feature-on-images", ("'baseline.features'", "image data"), sets=("baseline.features=ngrams",)),
    Case("baseline-share-without-dp", ("'baseline.epsilon_share'", "local-DP"), sets=("baseline.epsilon_share=0.2",)),
    Case("baseline-share-of-whole-budget", ("'baseline.epsilon_share'", "[0, 1)"),
         sets=("privacy.mode=local", "privacy.target_epsilon=8", "baseline.epsilon_share=1")),
    Case("central-dp-with-krum", ("'strategy.name'", "krum", "central"),
         sets=("privacy.mode=central", "strategy.name=krum", "data.num_sites=3", "strategy.min_sites=3")),
    Case("central-dp-adaptive-clipping", ("'privacy.clipping'", "adaptive"),
         sets=("privacy.mode=central", "privacy.clipping=adaptive")),
    Case("qfedavg-under-dp", ("'strategy.name'", "qfedavg", "site_metrics"),
         sets=("privacy.mode=local", "strategy.name=qfedavg")),
    Case("ghost-with-augment-multiplicity", ("'privacy.grad_sample_mode'", "ghost"),
         sets=("privacy.mode=local", "privacy.grad_sample_mode=ghost", "train.augment=crop",
               "train.augment_multiplicity=2")),
    # ------------------------------------------------------------------ other combinations
    Case("text-model-on-image-data", ("model.name 'bert'", "data.source 'digits'"), sets=("model.name=bert",)),
    Case("lora-on-resnet", ("'model.lora_r'", "bert"), sets=("model.lora_r=8",)),
    Case("mean-pooling-on-resnet", ("'model.pooling'", "bert"), sets=("model.pooling=mean",)),
    Case("krum-with-too-few-sites", ("'strategy.min_sites'", "krum"), sets=("strategy.name=krum",)),
    Case("fedprox-without-mu", ("'strategy.proximal_mu'", "fedprox"),
         sets=("strategy.name=fedprox", "strategy.proximal_mu=0")),
    Case("personalize-unknown-mode", ("'strategy.personalize'", "body", "head"), sets=("strategy.personalize=body",)),
    Case("local-finetune-negative", ("'strategy.local_finetune'", ">= 0"), sets=("strategy.local_finetune=-1",)),
    Case("personalize-a-model-without-a-body", ("'strategy.personalize'", "linear"),
         sets=("strategy.personalize=head", "model.name=linear", "model.features=pixels")),
    Case("personalize-under-secagg", ("'strategy.personalize'", "secagg"),
         sets=("strategy.personalize=head", "secagg.enabled=true")),
    Case("personalize-under-central-dp", ("'strategy.personalize'", "central"),
         sets=("strategy.personalize=head", "privacy.mode=central", "privacy.noise_multiplier=1.0")),
    Case("local-finetune-under-local-dp", ("'strategy.local_finetune'", "privacy.mode"),
         sets=("strategy.local_finetune=1", "privacy.mode=local", "privacy.noise_multiplier=1.0")),
    Case("fault-on-a-missing-site", ("'faults.crash_site'", "data.num_sites"), sets=("faults.crash_site=7",)),
    Case("augment-a-text-model", ("'train.augment'", "text"), **text("train.augment=crop")),
    Case("file-source-without-path", ("'data.path'", "csv"), sets=("model.name=bert", "data.source=csv")),
    # ------------------------------------------------------------------ text data files
    Case("csv-a-device", ("/dev/zero", "not a regular file", "data.path"), **text("data.path=/dev/zero")),
    Case("output-dir-is-a-file", ("'output_dir'", "{tmp}/runs", "is a file"), sets=("output_dir=runs",),
         files={"runs": "not a folder"}),
    Case("output-dir-below-a-file", ("'output_dir'", "{tmp}/runs", "is a file"), sets=("output_dir=runs/sub",),
         files={"runs": "not a folder"}),
    Case("csv-missing", ("{tmp}/nothere.csv", "data.path"), **text("data.path=nothere.csv")),
    Case("csv-is-a-directory", ("{tmp}/train.csv", "data.path", "directory"), **text(files={"train.csv": directory})),
    Case("csv-empty", ("{tmp}/train.csv",), **text(files={"train.csv": ""})),
    Case("csv-header-only", ("{tmp}/train.csv", "no records"), **text(files={"train.csv": "text,label\n"})),
    Case("csv-ragged-row", ("{tmp}/train.csv", "line 3"),
         **text(files={"train.csv": "text,label\na,card\nb,card,EXTRA\n"})),
    Case("csv-no-text-column", ("{tmp}/train.csv", "'data.text_field'", "'text'"),
         **text(files={"train.csv": csv_text(header="sentence,label")})),
    Case("csv-no-label-column", ("{tmp}/train.csv", "'data.label_field'", "'intent'"),
         **text("data.label_field=intent")),
    Case("csv-empty-text-value", ("{tmp}/train.csv", "record 1"),
         **text(files={"train.csv": "text,label\nfine,card\n,transfer\nok,card\n"})),
    Case("csv-missing-label-value", ("{tmp}/train.csv", "record 1", "no label"),
         **text(files={"train.csv": "text,label\nfine,card\nno label here,\nok,transfer\n"})),
    Case("csv-label-minus-one", ("{tmp}/train.csv", "record 3", "negative"),
         **text(files={"train.csv": csv_text([(t, "-1" if i == 3 else str(i % 2)) for i, (t, _) in enumerate(ROWS)])})),
    Case("csv-label-fraction", ("{tmp}/train.csv", "record 0", "fraction"),
         **text(files={"train.csv": csv_text([(t, str(i % 2 + 0.5)) for i, (t, _) in enumerate(ROWS)])})),
    Case("csv-label-field-is-text", ("{tmp}/train.csv", "'data.label_field'", "free text", "30 records"),
         **text("data.label_field=text", files={"train.csv": csv_text([(f"query {i}", "card") for i in range(30)])})),
    Case("csv-one-label-only", ("{tmp}/train.csv", "'data.labels'", "at least 2"),
         **text(files={"train.csv": csv_text([(f"t{i}", "card") for i in range(8)])})),
    Case("json-invalid", ("{tmp}/train.json",),
         **text("data.source=json", "data.path=train.json", files={"train.json": '[{"text": "a", "label": '})),
    Case("jsonl-bad-line", ("{tmp}/train.jsonl", "row 1"),
         **text("data.source=jsonl", "data.path=train.jsonl",
                files={"train.jsonl": '{"text": "a", "label": "card"}\n{"text": oops}\n'})),
    Case("jsonl-list-label", ("{tmp}/train.jsonl", "record 1", "list"),
         **text("data.source=jsonl", "data.path=train.jsonl",
                files={"train.jsonl": '{"text": "a", "label": "card"}\n{"text": "b", "label": ["x", "y"]}\n'})),
    Case("parquet-garbage", ("{tmp}/train.parquet", "parquet"),
         **text("data.source=parquet", "data.path=train.parquet", files={"train.parquet": b"PAR1 not really"})),
    Case("csv-as-json", ("{tmp}/train.csv", "json"), **text("data.source=json")),
    Case("train-label-outside-labels", ("{tmp}/train.csv", "record 0's label", "'data.labels'"),
         **text("data.labels=card,lost")),
    Case("test-file-missing", ("{tmp}/test.csv", "'data.test_path'"), **text("data.test_path=test.csv")),
    Case("test-file-unseen-label", ("test.csv", "record 1's label"),
         **text("data.test_path=test.csv", files={"test.csv": "text,label\nx,card\ny,refund\n"})),
    Case("test-file-no-label-column", ("{tmp}/test.csv", "'data.label_field'"),
         **text("data.test_path=test.csv", files={"test.csv": "text,category\nx,card\n"})),
    Case("too-few-records-for-sites", ("'data.num_sites'", "{tmp}/train.csv"),
         **text("data.num_sites=20", "strategy.min_sites=2")),
    Case("max-samples-too-small", ("'data.max_samples'",),
         **text("data.max_samples=3")),
    # ------------------------------------------------------------------ image data files
    Case("npz-missing", ("{tmp}/x.npz", "data.path"), yaml=NPZ),
    Case("npz-12-bit-images", ("{tmp}/x.npz", "'train_images'", "uint16 values up to", "data.pixel_max"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(12).astype(np.uint16) * 16, train_labels=labels(12),
                             test_images=images(4), test_labels=labels(4))}),
    Case("npz-unit-float-images", ("{tmp}/x.npz", "floats up to", "data.pixel_max", "1 for images in [0, 1]"),
         yaml=NPZ, files={"x.npz": npz(train_images=images(12) / 255.0, train_labels=labels(12),
                                       test_images=images(4), test_labels=labels(4))}),
    Case("npz-standardised-images", ("{tmp}/x.npz", "negative values"), yaml=NPZ,
         files={"x.npz": npz(train_images=(images(12) - 128.0) / 64, train_labels=labels(12),
                             test_images=images(4), test_labels=labels(4))}),
    Case("npz-above-pixel-max", ("{tmp}/x.npz", "above data.pixel_max=1"), yaml=NPZ, sets=("data.pixel_max=1",),
         files={"x.npz": npz(train_images=images(12) / 100.0, train_labels=labels(12),
                             test_images=images(4), test_labels=labels(4))}),
    Case("npz-test-images-12-bit", ("{tmp}/x.npz", "'test_images'", "data.pixel_max"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(12), train_labels=labels(12),
                             test_images=images(4).astype(np.uint16) * 16, test_labels=labels(4))}),
    Case("npz-no-records", ("{tmp}/x.npz", "'train_images' holds no images"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(0), train_labels=labels(0), test_images=images(4),
                             test_labels=labels(4))}),
    Case("npz-label-minus-one", ("{tmp}/x.npz", "'train_labels'", "negative", "non-negative integers"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(12), train_labels=labels(12) - 1, test_images=images(4),
                             test_labels=labels(4))}),
    Case("npz-label-fraction", ("{tmp}/x.npz", "'train_labels'", "fraction"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(12), train_labels=labels(12) + 0.5, test_images=images(4),
                             test_labels=labels(4))}),
    Case("npz-test-label-fraction", ("{tmp}/x.npz", "'test_labels'", "fraction"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(12), train_labels=labels(12), test_images=images(4),
                             test_labels=labels(4) + 0.25)}),
    Case("npz-not-an-archive", ("{tmp}/x.npz", "not an .npz archive"), yaml=NPZ, files={"x.npz": b"hello"}),
    Case("npz-wrong-array-names", ("{tmp}/x.npz", "'train_images'"), yaml=NPZ,
         files={"x.npz": npz(images=images(4), labels=labels(4))}),
    Case("npz-count-mismatch", ("{tmp}/x.npz", "5 images", "4 labels"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(5), train_labels=labels(4))}),
    Case("npz-no-test-arrays", ("{tmp}/x.npz", "'test_images'"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(12), train_labels=labels(12))}),
    Case("npz-multi-label", ("{tmp}/x.npz", "one label per image"), yaml=NPZ,
         files={"x.npz": npz(train_images=images(4), train_labels=np.zeros((4, 3)))}),
    Case("npz-images-wrong-shape", ("{tmp}/x.npz", "'train_images'", "shape"), yaml=NPZ,
         files={"x.npz": npz(train_images=np.zeros((4, 2, 2, 2, 2)), train_labels=labels(4))}),
    Case("npz-object-arrays", ("{tmp}/x.npz", "numeric", "data.path"), yaml=NPZ,
         files={"x.npz": npz(train_images=np.array([None] * 4, dtype=object), train_labels=labels(4))}),
    Case("imagefolder-missing", ("{tmp}/imgs", "data.path"), yaml=FOLDER),
    Case("imagefolder-is-a-file", ("{tmp}/imgs", "data.path"), yaml=FOLDER, files={"imgs": "a file"}),
    Case("imagefolder-empty", ("{tmp}/imgs", "no images"), yaml=FOLDER, files={"imgs": directory}),
    Case("imagefolder-unreadable-image", ("{tmp}/imgs/a/broken.png", "unreadable"), yaml=FOLDER,
         files={"imgs": image_folder({"a": 3, "b": 3}, broken="a/broken.png")}),
    Case("imagefolder-mixed-sizes", ("{tmp}/imgs", "'data.image_size'"), yaml=FOLDER,
         files={"imgs": image_folder({"a": 3, "b": 3}, sizes=(8, 9))}),
    # ------------------------------------------------------------------ model files
    Case("bert-checkpoint-missing-relative", ("'model.checkpoint'", "{tmp}/models/my-bert"),
         **text("model.checkpoint=./models/my-bert")),
    Case("bert-checkpoint-not-a-checkpoint", ("'model.checkpoint'", "{tmp}/my-bert", "config.json"),
         **text("model.checkpoint=my-bert", files={"my-bert": directory})),
    Case("bert-checkpoint-is-a-file", ("'model.checkpoint'", "{tmp}/bert.bin"),
         **text("model.checkpoint=./bert.bin", files={"bert.bin": b"weights"})),
    Case("weights-missing", ("'model.weights'", "{tmp}/w.pt"), sets=("model.weights=w.pt",)),
    Case("weights-garbage", ("'model.weights'", "{tmp}/w.pt"), sets=("model.weights=w.pt",),
         files={"w.pt": b"not a torch file"}),
    Case("weights-a-list", ("'model.weights'", "{tmp}/w.pt", "list"), sets=("model.weights=w.pt",),
         files={"w.pt": torch_save([1, 2, 3])}),
]
# fmt: on


def _param(case: Case):  # -> pytest.ParameterSet
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def _own_keys(case: Case) -> set[str]:
    """The config keys a case writes itself, right or wrong: its --set keys and its YAML's keys."""
    keys = {s.split("=", 1)[0] for s in case.sets}
    try:
        raw = yaml.safe_load(case.yaml or "")
    except yaml.YAMLError:
        raw = None
    if isinstance(raw, dict):
        keys |= set(config_mod.flatten(raw)) | {str(k) for k in raw}
    return keys - {""}


def _names_the_place(case: Case, fragment: str) -> bool:
    """Whether an expected fragment points at where the mistake is: a file under the test folder or
    one the case passes, a config key (a real one or the case's own misspelt one), or its --set."""
    files = {*case.files, *case.argv} | {s.split("=", 1)[1] for s in case.sets if "path=" in s}
    keys = set(config_mod.flat_keys()) | _own_keys(case)
    tokens = set(re.findall(r"[\w.]+", fragment))
    return (
        "{tmp}" in fragment
        or any(f and f in fragment for f in files)
        or bool(tokens & keys)
        or (bool(case.sets) and ("--set" in fragment or "override" in fragment))
    )


def _inputs(case: Case) -> tuple:
    """What a case feeds the entry point; writers compare by what they would write."""

    def content(value: object) -> object:
        if callable(value):
            cells = tuple(repr(c.cell_contents) for c in getattr(value, "__closure__", None) or ())
            return (getattr(value, "__qualname__", repr(value)), cells)
        return value

    return case.yaml, case.sets, case.argv, tuple(sorted((k, repr(content(v))) for k, v in case.files.items()))


def test_every_case_is_distinct_and_its_expected_message_names_the_place() -> None:
    """Each id and each input appears once (a copied case would count twice without testing more),
    and every case expects the message to name where the mistake is (claim b above), not only
    what kind of mistake it is."""
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    seen: dict[tuple, str] = {}
    copies = []
    for case in CASES:
        if _inputs(case) in seen:
            copies.append(f"{case.id} feeds the same input as {seen[_inputs(case)]}")
        seen.setdefault(_inputs(case), case.id)
    assert copies == []
    unplaced = [c.id for c in CASES if not any(_names_the_place(c, f) for f in c.expect)]
    assert unplaced == [], f"cases whose expected message names no file, key or --set: {unplaced}"


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_refused_in_one_line_before_the_simulation_starts(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def engine_started(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{case.id}: not refused before Flower's simulation engine started")

    monkeypatch.setattr("flwr.simulation.run_simulation", engine_started)
    for name in logs.PACKAGES:  # a fresh log handler on this test's captured stderr
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # never attach to (or probe) a Ray cluster
    monkeypatch.chdir(tmp_path)
    if case.yaml is not None:
        (tmp_path / "exp.yaml").write_text(case.yaml)
    write_files(tmp_path, case.files)
    argv = [*case.argv, *(a for s in case.sets for a in ("--set", s))]

    start = time.monotonic()
    code = local.main(argv)
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()

    assert code == 2, f"exit code {code}\n{out}\n{err}"
    assert "Traceback" not in out + err, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("confide: "), err
    assert sum(line.startswith("confide: ") for line in lines) == 1, err
    message = lines[-1]
    for fragment in case.expect:
        assert fragment.format(tmp=tmp_path) in message, f"{fragment!r} not in: {message}"
    assert elapsed < 30, f"{case.id} took {elapsed:.1f} s"
