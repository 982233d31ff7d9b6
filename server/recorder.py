"""Collects one round's per-site and aggregate results and writes them as one JSONL line.

Plain Python: the strategy feeds it what sites replied (or why they failed), the
server's evaluation closes the round, and the line lands in ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from common.metrics import JsonlLog, summarize_sites

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    round: int
    started: float = field(default_factory=time.perf_counter)
    train_done: float | None = None
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    bytes_down_per_site: int = 0


class RoundRecorder:
    def __init__(self, log_file: JsonlLog | None, run_id: str = "", mode: str = "off") -> None:
        self.log_file = log_file
        self.run_id = run_id  # the Flower run that ran the round (a resumed job spans several)
        self.mode = mode  # the job's privacy.mode: a local-DP round before any site trained is still local
        self.current: RoundRecord | None = None
        self.history: list[dict[str, Any]] = []
        self.last_sites: dict[str, dict[str, float]] = {}
        self.site_privacy: dict[str, dict[str, float]] = {}

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Continue after the rounds a stopped run already logged (its metrics.jsonl lines): the
        history, the sites' latest held-out values and their cumulative privacy figures."""
        self.history = list(history)
        for line in history:
            evaluated = {n: s["evaluate"] for n, s in line.get("sites", {}).items() if s.get("evaluate")}
            if evaluated:
                self.last_sites = evaluated
            privacy = line.get("privacy") or {}
            if privacy.get("mode") == "local":
                self.site_privacy = {n: dict(v) for n, v in privacy.get("sites", {}).items()}

    def begin(self, server_round: int, bytes_down: int) -> None:
        self.current = RoundRecord(round=server_round, bytes_down_per_site=bytes_down)

    def site_trained(self, site: str, metrics: dict[str, float], bytes_up: int) -> None:
        self._cur().train[site] = {**metrics, "bytes_up": float(bytes_up)}

    def train_finished(self) -> None:
        self._cur().train_done = time.perf_counter()

    def site_evaluated(self, site: str, metrics: dict[str, float]) -> None:
        self._cur().evaluate[site] = dict(metrics)

    def site_failed(self, site: str, phase: str, reason: str) -> None:
        reason = _unwrapped(reason)
        log.error("round %s: site %s failed in %s: %s", self._cur().round, site, phase, reason)
        self._cur().failures.append({"site": site, "phase": phase, "reason": reason})

    def close(self, central: dict[str, float] | None, privacy: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the round: build its record, append it to the log, return it.

        ``privacy`` is the server's site-level guarantee (central DP). With local DP each site's
        cumulative (epsilon, delta) comes from its own reports, the latest one kept for sites
        that did not train this round.
        """
        rec = self._cur()
        for name, m in rec.train.items():
            if "epsilon" in m:
                before = self.site_privacy.get(name, {})
                self.site_privacy[name] = {
                    "epsilon": m["epsilon"],
                    "delta": m["delta"],
                    "epsilon_run": m.get("epsilon_run", m["epsilon"]),
                    "noise_multiplier": m.get("noise_multiplier", 0.0),
                    "max_grad_norm": m.get("max_grad_norm", 0.0),
                    "sample_rate": m.get("sample_rate", 0.0),
                    "steps_run": before.get("steps_run", 0.0) + m.get("steps", 0.0),
                    "rounds_run": before.get("rounds_run", 0.0) + 1,
                }
        end = time.perf_counter()
        # Sites send their training time only where they may release their record count (no DP, or
        # privacy.site_metrics=exact): otherwise the slowest site's is unknown (null), and only the
        # coordinator's own clock (wall and train-phase seconds) is recorded.
        train_secs = [m["train_seconds"] for m in rec.train.values() if "train_seconds" in m]
        line: dict[str, Any] = {
            "round": rec.round,
            "run_id": self.run_id,
            "wall_seconds": end - rec.started,
            "train_phase_seconds": (rec.train_done or end) - rec.started,
            "slowest_site_train_seconds": max(train_secs) if train_secs else None,
            "bytes_down_per_site": rec.bytes_down_per_site,
            "federated": summarize_sites(rec.evaluate, weight_key="weight"),
            "central": central or {},
            "train": summarize_sites(rec.train, weight_key="weight"),
            "sites": {
                name: {"train": rec.train.get(name, {}), "evaluate": rec.evaluate.get(name, {})}
                for name in sorted(set(rec.train) | set(rec.evaluate))
            },
            "failures": rec.failures,
            "privacy": privacy
            or (
                {"mode": "local", "sites": dict(sorted(self.site_privacy.items()))}
                if self.site_privacy or self.mode == "local"
                else {"mode": "off"}
            ),
        }
        if rec.evaluate:
            self.last_sites = rec.evaluate
        self.history.append(line)
        if self.log_file is not None:
            self.log_file.append(line)
        self.current = None
        return line

    def _cur(self) -> RoundRecord:
        if self.current is None:
            raise RuntimeError("no round in progress")
        return self.current


_FLOWER_WRAP = re.compile(r"^Exception \w+ occurred\. Message: (.*?)'?>?$", re.DOTALL)
_SUPERNODE_WRAP = re.compile(r"^<class '[\w.]+'>:<'(.*)'>$", re.DOTALL)


def _unwrapped(reason: str) -> str:
    """A ClientApp's error as the site said it, without Flower's wrapping: "Exception
    ClientAppException occurred. Message: ...'>" (simulation) or "<class '...'>:<'...'>" (SuperNode)."""
    reason = reason.strip()
    for wrap in (_FLOWER_WRAP, _SUPERNODE_WRAP):
        match = wrap.match(reason)
        if match:
            return match.group(1).strip()
    return reason
