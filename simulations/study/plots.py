"""The sweep's plots (matplotlib, PNG, small enough to commit).

- ``privacy_utility.png``: final test accuracy (and worst site), macro-F1, and membership-inference
  AUC against epsilon, one line per setting, mean and spread over seeds (the privacy-utility curve).
- ``accuracy_by_round.png``: test accuracy by round, one panel per setting, one line per epsilon.
- ``site_spread.png``: every site's final held-out accuracy per epsilon, one panel per setting.

A setting is every grid axis but the privacy axis and the seed (axes with one value are not
named). Epsilon is the cell's target (``privacy.target_epsilon``; every site spends it to within
0.1%), or with another privacy axis the largest epsilon any site spent (mean over seeds); no DP
is drawn at the right end, marked infinity.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from simulations.study.results import Study  # noqa: E402
from simulations.study.sweep_spec import EPSILON_KEY  # noqa: E402

DPI = 80
NAMES = {
    "data.num_sites": "sites",
    "data.alpha": "α",
    "model.lora_r": "LoRA r",
    "model.name": "model",
    "strategy.rounds": "rounds",
    "privacy.max_grad_norm": "clip",
    "privacy.noise_multiplier": "σ",
    "privacy.target_epsilon": "ε",
    "data.partitioner": "split",
}

Groups = dict[str, dict[Any, list[dict[str, Any]]]]  # setting label -> privacy level -> cell results


def make_plots(study: Study, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    groups = group_results(study)
    if not groups:
        return []
    return [
        privacy_utility(groups, folder / "privacy_utility.png"),
        accuracy_by_round(groups, folder / "accuracy_by_round.png"),
        site_spread(groups, folder / "site_spread.png"),
    ]


def group_results(study: Study) -> Groups:
    """Results by setting (label of the varying non-privacy axes) and privacy level."""
    axis = study.plan.get("privacy_axis")
    varying = [
        a
        for a in study.axes
        if a not in ("seed", axis) and len({json.dumps(r["axes"][a], default=str) for r in study.results}) > 1
    ]
    groups: Groups = {}
    for result in study.results:
        label = ", ".join(f"{NAMES.get(a, a.split('.')[-1])}={result['axes'][a]}" for a in varying) or "all"
        level = result["axes"][axis] if axis else "-"
        groups.setdefault(label, {}).setdefault(level, []).append(result)
    return groups


def epsilon_of(results: list[dict[str, Any]]) -> float:
    """Where a privacy level sits on the epsilon axis: its target when the grid sets one
    (sites spend it to within 0.1%), else the mean over seeds of the largest epsilon spent."""
    targets = [r["axes"].get(EPSILON_KEY) for r in results]
    if all(t is not None for t in targets):
        return math.inf if any(t == "inf" or math.isinf(float(t)) for t in targets) else float(targets[0])
    values = [r["metrics"]["epsilon_spent"] for r in results]
    return math.inf if any(map(math.isinf, values)) else statistics.fmean(values)


def privacy_utility(groups: Groups, path: Path) -> Path:
    panels = [
        ("final_accuracy", "test accuracy (dashed: worst site)"),
        ("final_macro_f1", "test macro-F1"),
        ("mia_loss_auc", "MIA AUC (dotted: calibrated)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    xpos = _x_positions(groups)
    for color, (label, levels) in zip(_colors(len(groups)), groups.items()):
        order = sorted(levels, key=lambda lv: epsilon_of(levels[lv]))
        xs = [xpos(epsilon_of(levels[lv])) for lv in order]
        for ax, (metric, _) in zip(axes, panels):
            mean, std = _stats(levels, order, metric)
            ax.errorbar(xs, mean, yerr=std, color=color, marker="o", capsize=3, label=label)
        for ax, metric, style in ((axes[0], "final_worst_site_accuracy", "--"), (axes[2], "mia_calibrated_auc", ":")):
            mean, _ = _stats(levels, order, metric)
            ax.plot(xs, mean, linestyle=style, color=color, marker=".")
    axes[2].axhline(0.5, color="grey", linewidth=0.8)
    low, high = axes[2].get_ylim()
    axes[2].set_ylim(min(low, 0.4), max(high, 0.7))  # do not blow noise around chance up to a trend
    for ax, (_, title) in zip(axes, panels):
        _epsilon_axis(ax, groups, xpos)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def accuracy_by_round(groups: Groups, path: Path) -> Path:
    fig, axes = _panels(len(groups))
    for ax, (label, levels) in zip(axes, groups.items()):
        order = sorted(levels, key=lambda lv: epsilon_of(levels[lv]))
        for color, level in zip(_colors(len(order), "viridis"), order):
            curves = [[p["central_accuracy"] for p in r["curve"]] for r in levels[level]]
            mean = [statistics.fmean(v) for v in zip(*curves)]
            ax.plot(range(len(mean)), mean, marker=".", color=color, label=f"ε={_eps_text(epsilon_of(levels[level]))}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
    return _save(fig, path)


def site_spread(groups: Groups, path: Path) -> Path:
    fig, axes = _panels(len(groups))
    for ax, (label, levels) in zip(axes, groups.items()):
        order = sorted(levels, key=lambda lv: epsilon_of(levels[lv]))
        data = [[a for r in levels[lv] for a in r["site_accuracy"].values()] for lv in order]
        ax.boxplot(data, widths=0.5)
        for i, values in enumerate(data, 1):
            ax.scatter([i] * len(values), values, s=12, color="tab:blue", alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(order) + 1), [_eps_text(epsilon_of(levels[lv])) for lv in order])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("ε")
        ax.set_ylabel("site held-out accuracy")
    return _save(fig, path)


def _stats(levels: dict[Any, list[dict[str, Any]]], order: list[Any], metric: str) -> tuple[list[float], list[float]]:
    mean, std = [], []
    for level in order:
        values = [float(r["metrics"].get(metric, math.nan)) for r in levels[level]]
        values = [v for v in values if not math.isnan(v)]
        mean.append(statistics.fmean(values) if values else math.nan)
        std.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return mean, std


def _x_positions(groups: Groups) -> Callable[[float], float]:
    finite = [epsilon_of(rs) for levels in groups.values() for rs in levels.values() if math.isfinite(epsilon_of(rs))]
    inf_at = max(finite) * 4 if finite else 1.0
    return lambda eps: inf_at if math.isinf(eps) else eps


def _epsilon_axis(ax: Any, groups: Groups, xpos: Callable[[float], float]) -> None:
    eps = sorted({epsilon_of(rs) for levels in groups.values() for rs in levels.values()})
    ax.set_xscale("log")
    ax.set_xticks([xpos(e) for e in eps], [_eps_text(e) for e in eps])
    ax.minorticks_off()
    ax.set_xlabel("ε")
    ax.grid(alpha=0.3)


def _eps_text(eps: float) -> str:
    return "∞ (no DP)" if math.isinf(eps) else f"{eps:.3g}"


def _panels(n: int) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _colors(n: int, cmap: str = "tab10") -> list[Any]:
    if cmap == "tab10":
        return [plt.get_cmap("tab10")(i % 10) for i in range(n)]
    return [plt.get_cmap(cmap)(0.85 * i / max(n - 1, 1)) for i in range(n)]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
