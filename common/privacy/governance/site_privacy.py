"""A site's one privacy entry point: what it trains under, what it releases, what it is charged.

``SitePrivacy`` holds the job's privacy settings, the site's policy, its name, its ledger and its
record count, and makes every decision a round needs: which ledger entries a round costs (the
site's share of a central-DP round, a noisy metric release, DP-SGD), charged BEFORE anything is
computed from the records so that a round past the site's cap is refused with nothing done; which
scalar metrics the reply may carry (common/privacy/governance/release.py). The site itself keeps
the data and model plumbing and hands training or personalisation steps in as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.augment import Augmenter
from common.config import ExperimentConfig
from common.privacy.governance import release
from common.privacy.governance.ledger import Ledger
from common.privacy.governance.policy import SitePolicy
from common.train import TrainResult


@dataclass(frozen=True)
class Release:
    """The scalar metrics a site may send for one round, and the kinds of the ledger entries
    charged for them (in the order they were charged; empty when nothing was)."""

    metrics: Mapping[str, float]
    charged: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        return dict(self.metrics)


def _release(metrics: dict[str, float], entries: list[dict[str, Any]]) -> Release:
    return Release(MappingProxyType(dict(metrics)), tuple(str(e["kind"]) for e in entries))


def central_entry(exp: ExperimentConfig) -> dict[str, Any]:
    """The site's own record of answering a central-DP round: the coordinator's Gaussian mechanism
    on the sum of clipped updates (noise multiplier sigma, no amplification by site sampling), as the
    coordinator's ledger composes it. Protecting the whole site's contribution protects each of its
    records, so it composes with the site's record-level entries in one ledger."""
    from common.privacy.governance.central import central_plan

    return {"noise_multiplier": central_plan(exp).noise_multiplier, "sample_rate": 1.0, "steps": 1, "kind": "central"}


@dataclass(frozen=True)
class SitePrivacy:
    """One site's privacy decisions for one job. ``ledger``: the site's ledger file, or how to find
    it (found only when a round is charged: finding it may hash the site's data file). ``records``:
    the site's training-record count (its delta and its accounting follow it)."""

    exp: ExperimentConfig
    policy: SitePolicy
    site: str
    ledger: Path | Callable[[], Path]
    records: int

    @cached_property
    def ledger_path(self) -> Path:
        return self.ledger() if callable(self.ledger) else self.ledger

    @property
    def level(self) -> str:
        """What the site releases beside its weights: "exact", "noisy" or "withhold"."""
        return release.level(self.exp.privacy)

    @property
    def without_dp(self) -> bool:
        """No DP at all (privacy.mode off): steps outside any DP mechanism may be run and reported."""
        return self.exp.privacy.mode == "off"

    def train_round(
        self,
        model: nn.Module,
        train_set: Dataset,
        train_plain: Callable[[], TrainResult],
        *,
        server_round: int,
        run_id: str,
        phase: str = "",
        augment: Augmenter | None = None,
    ) -> Release:
        """One round of local training. Without local DP, ``train_plain`` trains the model, after the
        round's entries (its central-DP share, a noisy count) are charged; with local DP the round
        is DP-SGD on ``train_set``, its noisy count reserved with it. ``phase``: the job's part
        ("" the model, "baseline" its baseline), tagged on the DP-SGD round's entries."""
        cfg = self.exp.privacy
        noisy = self.level == "noisy"  # never without DP
        if not cfg.local:
            entries = [central_entry(self.exp)] if cfg.mode == "central" else []
            if noisy:
                entries.append(release.release_entry(cfg, "count"))
            if entries:  # before training: a round past the site's cap is refused, nothing computed
                self.charge(entries, run_id, server_round, what="answer this round")
            result = train_plain()
            return _release(release.train_metrics(cfg, self.records, result), entries)
        from common.privacy.governance.dpsgd import train_private

        releases = [release.release_entry(cfg, "count")] if noisy else []
        result, privacy = train_private(
            model,
            train_set,
            self.exp.train,
            cfg,
            rounds=self.exp.strategy.rounds,
            ledger=Ledger.open(self.ledger_path),
            policy=self.policy,
            site=self.site,
            run=run_id,
            server_round=server_round,
            releases=releases,
            proximal_mu=self.exp.strategy.local_proximal_mu,
            augment=augment,
            phase=phase,
        )
        metrics = release.train_metrics(cfg, self.records, result)
        metrics.update(privacy.as_metrics(with_clip_fraction=self.level == "exact"))
        return _release(metrics, [{"kind": "dpsgd"}, *releases])

    def evaluate_round(
        self,
        model: nn.Module,
        loader: DataLoader,
        num_labels: int,
        *,
        server_round: int,
        run_id: str,
        before_release: Callable[[], dict[str, float]] | None = None,
    ) -> Release:
        """Held-out evaluation, as privacy.site_metrics allows (noisy: charged first). ``before_release``
        runs after the charge and before the evaluation (it may change the model, e.g. fine-tune it);
        the metrics it returns are released beside the evaluation's."""
        entries = [release.release_entry(self.exp.privacy, "evaluation")] if self.level == "noisy" else []
        if entries:
            self.charge(entries, run_id, server_round)
        extra = before_release() if before_release is not None else {}
        metrics = release.evaluation_metrics(self.exp.privacy, model, loader, num_labels)
        return _release(metrics | extra, entries)

    def charge(
        self, entries: list[dict[str, Any]], run_id: str, server_round: int, what: str = "release metrics"
    ) -> None:
        """Charge a release that is not a DP-SGD round to the site's ledger (refused past the policy's cap)."""
        from common.privacy.governance.dpsgd import charge, site_delta

        tags = {"run": run_id, "round": server_round, "delta": site_delta(self.exp.privacy, self.records)}
        ledger = Ledger(self.ledger_path)  # reserve() reads it under the lock
        charge(ledger, self.exp.privacy, self.policy, self.records, self.site, [{**e, **tags} for e in entries], what)
