"""A site's own privacy policy: what it will accept from any job, whatever the coordinator sends.

Where it comes from (the site's, never the job's):
- its node config (``flower-supernode --node-config``), keys below in kebab-case;
- a JSON policy file the site owns, named by the node-config key ``privacy-policy`` (the same keys;
  the site image ships a strict one, docker/site-policy.json). A key in the node config wins
  over the file; a key in neither takes the built-in default below.

Built-in defaults: a deployed site (one with its own ``data-path``) is strict: local DP only,
epsilon at most 8 over everything it ever trains, delta at most 1e-5, noise multiplier at least
0.5, no record-derived metric released, and a persistent ledger folder required. A simulated site
(a partition of a shared dataset, where the researcher plays every party) allows every mode,
with no caps, exact metrics, and a ledger per run beside the run's outputs.

``check_job`` runs before anything of the job is used: a job that asks for less privacy than the
policy is refused with one message naming the rule. ``check_round`` does the same for the noise
and delta a round will actually use (after calibration at the site).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from common.config import PrivacyConfig, resolve_path
from common.errors import ConfigError, PolicyRefused

MODES = ("off", "local", "central")
# What a site may release beside its weights, from the least to the most.
RELEASES = ("withhold", "noisy", "exact")
NODE_KEYS = {
    "allowed-modes": "allowed_modes",
    "max-epsilon": "max_epsilon",
    "max-delta": "max_delta",
    "min-noise-multiplier": "min_noise_multiplier",
    "accountants": "accountants",
    "accountant": "accountant",
    "require-client-clipping": "require_client_clipping",
    "require-secure-aggregation": "require_secure_aggregation",
    "site-metrics": "site_metrics",
    "ledger-dir": "ledger_dir",
    "require-ledger": "require_ledger",
}
POLICY_FILE_KEY = "privacy-policy"


@dataclass(frozen=True)
class SitePolicy:
    allowed_modes: tuple[str, ...] = ("local",)
    max_epsilon: float = 8.0  # cumulative, over everything the site ever trained or released
    max_delta: float = 1e-5
    min_noise_multiplier: float = 0.5  # DP-SGD and metric releases alike
    accountants: tuple[str, ...] = ("rdp", "prv")  # what a job may ask for (to calibrate its noise)
    # The accountant the site calibrates, checks its cap and reports its epsilon with, whatever the
    # job asks: one accountant per ledger, so the site's printed epsilon never moves backwards.
    # "" (simulation): the job's privacy.accountant, the researcher playing every party.
    accountant: str = "rdp"
    # Central DP: refuse a round that would send the raw update (the coordinator clips it) ...
    require_client_clipping: bool = False
    # ... or send any update unmasked (without Flower's SecAgg+), whatever the privacy mode.
    require_secure_aggregation: bool = False
    site_metrics: str = "withhold"  # the most a job may ask for (privacy.site_metrics)
    ledger_dir: str = ""
    require_ledger: bool = True  # a DP job is refused without a persistent ledger-dir
    source: str = "built-in strict default"

    def __post_init__(self) -> None:
        bad = [m for m in self.allowed_modes if m not in MODES]
        _check(not bad and bool(self.allowed_modes), "allowed-modes", f"must be some of {', '.join(MODES)}")
        _check(self.max_epsilon > 0, "max-epsilon", "must be > 0")
        _check(0 < self.max_delta <= 1, "max-delta", "must be in (0, 1]")
        _check(self.min_noise_multiplier >= 0, "min-noise-multiplier", "must be >= 0")
        _check(bool(self.accountants) and set(self.accountants) <= {"rdp", "prv"}, "accountants", "must be rdp, prv")
        _check(self.accountant in ("", "rdp", "prv"), "accountant", "must be rdp or prv")
        _check(self.site_metrics in RELEASES, "site-metrics", f"must be one of {', '.join(RELEASES)}")

    def check_job(self, cfg: PrivacyConfig, secure_aggregation: bool = False) -> None:
        """Refuse a job that asks for less privacy than this policy allows (naming the rule)."""
        if cfg.mode not in self.allowed_modes:
            self._refuse(
                "allowed-modes", f"the job asks privacy.mode={cfg.mode!r}; allowed: {', '.join(self.allowed_modes)}"
            )
        if self.require_secure_aggregation and not secure_aggregation:
            self._refuse(
                "require-secure-aggregation", "the job would send this site's update unmasked (secagg.enabled off)"
            )
        if cfg.mode == "off":
            return
        if cfg.mode == "central" and self.require_client_clipping and cfg.clip_side != "client":
            self._refuse(
                "require-client-clipping",
                f"the job asks privacy.clip_side={cfg.clip_side!r}: the coordinator would see the raw update",
            )
        if cfg.accountant not in self.accountants:
            self._refuse("accountants", f"the job asks privacy.accountant={cfg.accountant!r}")
        if cfg.delta and cfg.delta > self.max_delta:
            self._refuse("max-delta", f"the job asks privacy.delta={cfg.delta:g} > {self.max_delta:g}")
        if cfg.target_epsilon is None and cfg.noise_multiplier < self.min_noise_multiplier:  # local or central noise
            self._refuse(
                "min-noise-multiplier",
                f"the job asks privacy.noise_multiplier={cfg.noise_multiplier:g} < {self.min_noise_multiplier:g}",
            )
        if cfg.target_epsilon is not None and cfg.target_epsilon > self.max_epsilon:
            self._refuse(
                "max-epsilon", f"the job asks privacy.target_epsilon={cfg.target_epsilon:g} > {self.max_epsilon:g}"
            )
        if RELEASES.index(cfg.site_metrics) > RELEASES.index(self.site_metrics):
            self._refuse(
                "site-metrics",
                f"the job asks privacy.site_metrics={cfg.site_metrics!r}; allowed up to {self.site_metrics!r}",
            )
        if cfg.site_metrics == "noisy" and cfg.release_noise_multiplier < self.min_noise_multiplier:
            self._refuse(
                "min-noise-multiplier",
                f"the job asks privacy.release_noise_multiplier={cfg.release_noise_multiplier:g} "
                f"< {self.min_noise_multiplier:g}",
            )
        if self.require_ledger and not self.ledger_dir:
            self._refuse("ledger-dir", "a DP job needs a persistent privacy ledger on the site's own disk")

    def accountant_for(self, cfg: PrivacyConfig) -> str:
        """The accountant this site's epsilon is calibrated, capped and reported with."""
        return self.accountant or cfg.accountant

    def check_round(self, noise_multiplier: float, delta: float) -> None:
        """The noise and delta a round will actually use (after the site's own calibration)."""
        if noise_multiplier < self.min_noise_multiplier:
            self._refuse(
                "min-noise-multiplier",
                f"this round's noise multiplier {noise_multiplier:.4g} < {self.min_noise_multiplier:g}",
            )
        if delta > self.max_delta:
            self._refuse("max-delta", f"this round's delta {delta:.3g} > {self.max_delta:g}")

    def _refuse(self, rule: str, why: str) -> None:
        raise PolicyRefused(f"site policy refuses the job: rule '{rule}' ({self.source}): {why}")

    def as_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def from_node_config(node_config: Mapping[str, Any], deployed: bool) -> SitePolicy:
    """The site's policy: built-in default < its policy file < its node config keys. Each layer
    is checked on its own, so a bad value is named with the file or node config it came from."""
    policy = STRICT if deployed else SIMULATION
    sources = [policy.source]
    policy_file = str(node_config.get(POLICY_FILE_KEY, "") or "")
    if policy_file:
        where = f"policy file {policy_file}"
        policy = _layer(policy, _read_file(Path(policy_file)), where)
        sources.append(where)
    inline = {k: v for k, v in node_config.items() if k in NODE_KEYS and v != ""}
    if inline:
        values = {NODE_KEYS[k]: _parse(k, v, "node config") for k, v in inline.items()}
        policy = _layer(policy, values, "node config")
        sources.append("node config")
    return replace(policy, source=" < ".join(sources))


def _layer(policy: SitePolicy, values: dict[str, Any], where: str) -> SitePolicy:
    try:
        return replace(policy, **values)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {where})") from None


def _read_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(
            f"privacy policy file {path} is a folder; a JSON file is expected (node config '{POLICY_FILE_KEY}')"
        )
    if not path.is_file():
        raise ConfigError(f"privacy policy file not found: {path} (node config '{POLICY_FILE_KEY}')")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_unique_keys)
    except OSError as exc:
        raise ConfigError(f"privacy policy file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"privacy policy file {path} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        what = (
            "is empty"
            if not exc.doc.strip()
            else f"is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        )
        raise ConfigError(f"privacy policy file {path} {what}") from None
    except ValueError as exc:  # a repeated key (_unique_keys)
        raise ConfigError(f"privacy policy file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"privacy policy file {path} must hold a JSON object; got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(NODE_KEYS))
    if unknown:
        raise ConfigError(f"privacy policy file {path}: unknown key '{unknown[0]}'; known: {', '.join(NODE_KEYS)}")
    return {NODE_KEYS[k]: _parse(k, v, f"policy file {path}") for k, v in raw.items()}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (json keeps the last of two silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' appears twice; keep one")
        out[key] = value
    return out


def _parse(key: str, value: Any, where: str) -> Any:
    name = NODE_KEYS[key]
    try:
        if name in ("accountant", "site_metrics", "ledger_dir"):
            if not isinstance(value, str):
                raise ValueError
            if name == "ledger_dir" and value.strip() and resolve_path(value.strip()).is_file():
                raise ConfigError(
                    f"privacy policy key '{key}' in {where}: {value.strip()} is a file; a folder is expected"
                )
            return value.strip()
        if name in ("allowed_modes", "accountants"):
            if not isinstance(value, (str, list)):
                raise ValueError
            items = value.split(",") if isinstance(value, str) else value
            if not all(isinstance(v, str) for v in items):
                raise ValueError
            return tuple(v.strip() for v in items if v.strip())
        if name in ("max_epsilon", "max_delta", "min_noise_multiplier"):
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if math.isnan(out):
                raise ValueError
            return out
        if name in ("require_ledger", "require_client_clipping", "require_secure_aggregation"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise ValueError
        raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"privacy policy key '{key}' in {where} has a bad value {value!r}{_expected(name)}") from None


def _expected(name: str) -> str:
    if name in ("require_ledger", "require_client_clipping", "require_secure_aggregation"):
        return "; expected true or false"
    if name in ("max_epsilon", "max_delta", "min_noise_multiplier"):
        return "; expected a number"
    if name in ("allowed_modes", "accountants"):
        return "; expected names separated by commas (or a JSON list of them)"
    return "; expected a string"


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"privacy policy key '{key}' {why}")


STRICT = SitePolicy()
SIMULATION = SitePolicy(
    allowed_modes=MODES,
    max_epsilon=math.inf,
    max_delta=1.0,
    min_noise_multiplier=0.0,
    site_metrics="exact",
    require_ledger=False,
    accountant="",
    source="built-in simulation default",
)
