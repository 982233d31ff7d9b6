"""Where a DP-SGD step's time and memory go: one training step at a FIXED batch size, split into
phases, non-private against book-keeping, each variant in its own fresh process.

``benchmarks/dp_throughput.py`` measures whole rounds (Poisson-sampled batches, the round's
set-up included); this probe removes both so that what is left is the engine's own cost:

- CPU seconds (process time, one thread) per phase: forward, backward, optimizer step; for
  book-keeping the backward is further split into the autograd pass (activation gradients only),
  the per-sample norms, the clipped sums and the early per-sample gradients (norm layers, early
  convolutions), and the optimizer step includes Opacus's Gaussian noise;
- the live heap's peak per phase (glibc ``mallinfo2``: bytes handed out by malloc and mmap), so
  live tensors can be told apart from the allocator's resident but free memory (RSS).

Steps run on the same real inputs as the throughput benchmark; ``--repeats`` interleaves the
variants and keeps the median.

    python -m benchmarks.dp_throughput_profile --models minilm resnet18 --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from benchmarks._util import save, table

PHASES = ("forward", "backward", "optimizer")
ENGINE_PARTS = {  # book-keeping internals timed inside the backward phase
    "_keep_grad": "early per-sample grads",
    "norm_sq": "per-sample norms",
    "clipped_sum": "clipped sums",
}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")
    ]  # fmt: skip


def _heap_reader() -> Callable[[], float] | None:
    """MiB handed out by glibc malloc (heap and mmapped chunks); None where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def read() -> float:
        info = libc.mallinfo2()
        return (info.uordblks + info.hblkhd) / 2**20

    return read


class _PeakSampler:
    """Samples the live heap every millisecond in a thread; keeps each phase's peak."""

    def __init__(self) -> None:
        self.read, self.phase, self.peaks = _heap_reader(), "setup", dict[str, float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.read is not None and not self._stop.is_set():
            value = self.read()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), value)
            time.sleep(0.001)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _timed_engine_parts(seconds: dict[str, float]) -> Iterator[None]:
    """Adds the CPU seconds spent in book-keeping's norm, clipped-sum and early per-sample code."""
    from common.privacy.mechanism import bookkeeping as bk

    owners = [(bk.BookKeeping, "_keep_grad")]
    owners += [(cls, name) for cls in (bk._Matmul, bk._Conv, bk._Embedding, bk._PerSample)
               for name in ("norm_sq", "clipped_sum")]  # fmt: skip
    saved = [(cls, name, cls.__dict__[name]) for cls, name in owners if name in cls.__dict__]

    def timed(fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args)
            finally:
                seconds[part] = seconds.get(part, 0.0) + time.process_time() - start

        return run

    for cls, name, fn in saved:
        setattr(cls, name, timed(fn, ENGINE_PARTS[name]))
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def profile_one(model_name: str, variant: str, steps: int) -> dict[str, Any]:
    """``steps`` training steps (after one warm-up step) at the benchmark's batch size."""
    from benchmarks.dp_throughput import _experiment, _records
    from common.batches import make_dataset, make_loader
    from common.models import build_model
    from common.privacy.mechanism.clipping import make_private
    from common.train import logits, make_optimizer

    torch.set_num_threads(1)
    exp, _ = _experiment(model_name, variant)
    raw = _records(exp, model_name)
    net = build_model(exp, int(raw.labels.max()) + 1)
    dataset = make_dataset(raw, exp.model)
    batch = next(iter(make_loader(dataset, exp.train.batch_size, shuffle=False)))
    optimizer: Any = make_optimizer(net, exp.train)
    criterion: Callable[..., Any] = torch.nn.CrossEntropyLoss()
    net.train()
    if exp.privacy.local:
        step = make_private(
            net, optimizer, make_loader(dataset, exp.train.batch_size, shuffle=True), mode=exp.privacy.grad_sample_mode,
            noise_multiplier=exp.privacy.noise_multiplier, max_grad_norm=exp.privacy.max_grad_norm, accountant="rdp",
            noise_generator=torch.Generator(),
        )  # fmt: skip
        optimizer, criterion = step.optimizer, step.criterion
    seconds: dict[str, float] = {}
    with _PeakSampler() as sampler, _timed_engine_parts(seconds):
        for i in range(steps + 1):
            if i == 1:  # the first step allocates the optimizer state: warm-up
                seconds.clear()
                sampler.peaks.clear()
            marks = [time.process_time()]
            optimizer.zero_grad(set_to_none=True)
            sampler.phase = "forward"
            loss = criterion(logits(net, batch), batch["labels"])
            marks.append(time.process_time())
            sampler.phase = "backward"
            loss.backward()
            marks.append(time.process_time())
            sampler.phase = "optimizer"
            optimizer.step()
            marks.append(time.process_time())
            sampler.phase = "between"
            for phase, (start, end) in zip(PHASES, zip(marks, marks[1:])):
                seconds[phase] = seconds.get(phase, 0.0) + end - start
    return {
        "model": model_name,
        "variant": variant,
        "batch_size": exp.train.batch_size,
        "steps": steps,
        "cpu_s_per_step": {k: v / steps for k, v in seconds.items()},
        "heap_peak_mib": sampler.peaks,
    }


def _child(model: str, variant: str, steps: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.dp_throughput_profile", "--one", f"{model}:{variant}"]
    cmd += ["--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{model}:{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, variant): the median over repeats of each phase's CPU seconds and heap peak."""
    rows = []
    for key in dict.fromkeys((r["model"], r["variant"]) for r in runs):
        mine = [r for r in runs if (r["model"], r["variant"]) == key]
        parts = dict.fromkeys(k for r in mine for k in r["cpu_s_per_step"])
        phases = dict.fromkeys(k for r in mine for k in r["heap_peak_mib"])
        rows.append({
            "model": key[0], "variant": key[1], "batch_size": mine[0]["batch_size"], "repeats": len(mine),
            "cpu_s_per_step": {k: statistics.median(r["cpu_s_per_step"].get(k, 0.0) for r in mine) for k in parts},
            "heap_peak_mib": {k: statistics.median(r["heap_peak_mib"].get(k, 0.0) for r in mine) for k in phases},
        })  # fmt: skip
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    parts = list(dict.fromkeys(k for r in rows for k in r["cpu_s_per_step"]))
    phases = [p for p in ("forward", "backward", "optimizer") if any(p in r["heap_peak_mib"] for r in rows)]
    body = [
        [r["model"], r["variant"], sum(r["cpu_s_per_step"].get(p, 0.0) for p in PHASES)]
        + [r["cpu_s_per_step"].get(k, float("nan")) for k in parts]
        + [r["heap_peak_mib"].get(p, float("nan")) for p in phases]
        for r in rows
    ]
    heads = ["model", "variant", "CPU s/step"] + [f"{k} s" for k in parts] + [f"heap peak {p} MiB" for p in phases]
    print(table(heads, body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "resnet18"], choices=["minilm", "resnet18"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        raise SystemExit("--steps and --repeats must be at least 1")
    if args.one:
        model, variant = args.one.split(":")
        print(json.dumps(profile_one(model, variant, args.steps)))
        return
    baseline = {"minilm": "plain", "resnet18": "plain-gn"}  # ResNet: the GroupNorm model DP trains
    runs = []
    for rep in range(args.repeats):
        for model in args.models:
            for variant in (baseline[model], "bookkeeping"):
                runs.append(_child(model, variant, args.steps))
                print(f"[{rep + 1}/{args.repeats}] {model} {variant} done", flush=True)
    rows = summarize(runs)
    _print(rows)
    print("saved", save("dp_throughput_profile", {"args": vars(args), "rows": rows, "runs": runs}))


if __name__ == "__main__":
    main()
