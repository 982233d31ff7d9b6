"""The whole experiment, and the checks that span sections (a value that is fine on its own but not
with another section's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config.baseline import BaselineConfig
from common.config.data import DataConfig
from common.config.faults import FaultConfig
from common.config.model import TEXT_FEATURES, ModelConfig
from common.config.privacy import PrivacyConfig
from common.config.require import _require
from common.config.secagg import SecAggConfig
from common.config.strategy import ROBUST, SERVER_OPTIMIZERS, StrategyConfig
from common.config.tracking import TrackingConfig
from common.config.train import TrainConfig
from common.config.transport import TransportConfig
from common.errors import ConfigError


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole federated experiment."""

    name: str = "default"
    seed: int = 0
    # Where run folders are written (relative paths: see resolve_path).
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)

    def _check_secagg(self) -> None:
        _secagg_checks(self)

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", "must not be empty")
        _require(0 <= self.seed < 2**32, "seed", f"must be in [0, 2^32); got {self.seed}")
        if self.model.is_text != self.data.is_text:
            kind = "text" if self.model.is_text else "image"
            raise ConfigError(
                f"model.name '{self.model.name}' is a {kind} model but data.source "
                f"'{self.data.source}' is not {kind} data"
            )
        _require(
            self.strategy.min_sites <= self.data.num_sites,
            "strategy.min_sites",
            f"({self.strategy.min_sites}) exceeds data.num_sites ({self.data.num_sites})",
        )
        st, need, n = self.strategy, self.strategy.min_replies(), self.data.num_sites
        for key, frac in (("fraction_train", st.fraction_train), ("fraction_evaluate", st.fraction_evaluate)):
            _require(
                frac == 0 or int(n * frac) >= 1,
                f"strategy.{key}",
                f"({frac:g}) x data.num_sites ({n}) selects no site per round (Flower would fall back to "
                "strategy.min_sites without a word); raise it",
            )
        _require(
            st.num_selected <= n,
            "strategy.num_selected",
            f"({st.num_selected}) exceeds data.num_sites ({n})",
        )
        _require(
            st.min_sites >= need,
            "strategy.min_sites",
            f"({st.min_sites}) is below the {need} valid updates strategy '{st.name}' needs per round with "
            f"strategy.num_malicious={st.num_malicious}; raise strategy.min_sites (and data.num_sites)",
        )
        _require(
            not (self.privacy.local and self.train.class_weight == "balanced"),
            "train.class_weight",
            "'balanced' is computed from the site's label counts, a statistic outside DP-SGD's per-record "
            "accounting; under privacy.mode 'local' give one weight per class (e.g. '1.9,0.7', from a known "
            "prevalence) or 'none'",
        )
        _require(
            not (self.privacy.local and self.train.precision != "fp32"),
            "train.precision",
            f"'{self.train.precision}' is for non-private training; DP-SGD runs in fp32 (per-sample "
            "clipping needs exact gradient norms)",
        )
        for key in ("crash_site", "corrupt_site", "label_flip_site"):
            _require(
                getattr(self.faults, key) < self.data.num_sites,
                f"faults.{key}",
                f"({getattr(self.faults, key)}) is not a site of this simulation "
                f"(data.num_sites={self.data.num_sites})",
            )
        _require(
            self.train.augment == "none" or not self.model.is_text,
            "train.augment",
            f"'{self.train.augment}' is image augmentation; model '{self.model.name}' reads text (use 'none')",
        )
        _require(
            self.train.augment == "none" or self.model.name != "linear",
            "train.augment",
            f"'{self.train.augment}' augments images in training; model 'linear' reads features computed once "
            "per site (use 'none')",
        )
        _require(
            not (self.privacy.local and self.train.augment_multiplicity > 1)
            or self.privacy.grad_sample_mode in ("auto", "hooks"),
            "privacy.grad_sample_mode",
            f"'{self.privacy.grad_sample_mode}' cannot average a record's augmented copies before clipping "
            "(train.augment_multiplicity > 1); use 'hooks' or 'auto'",
        )
        if self.privacy.mode == "central":
            _require(
                st.name not in ROBUST and st.name != "qfedavg",
                "strategy.name",
                f"'{st.name}' cannot be used with privacy.mode 'central': the noise covers one site's "
                "clipped update in an equal-weight mean, not a median, trimmed mean, selection or "
                "loss-weighted step; use fedavg, fedprox or a server optimizer "
                f"({', '.join(SERVER_OPTIMIZERS)})",
            )
            _require(
                st.reject_norm_ratio == 0,
                "strategy.reject_norm_ratio",
                "must be 0 with privacy.mode 'central': rejecting a site by the round's median norm makes which "
                "updates are summed depend on the other sites, beyond the one-site sensitivity the noise covers",
            )
        if self.secagg.enabled:
            self._check_secagg()
        _personalize_checks(self)
        _baseline_checks(self)
        if st.name == "qfedavg" and self.privacy.mode != "off":
            _require(
                self.privacy.site_metrics == "exact",
                "strategy.name",
                "'qfedavg' weights sites by their training loss, which DP sites release only with "
                "privacy.site_metrics 'exact' (unprotected); use another strategy or set it",
            )


def _baseline_checks(exp: ExperimentConfig) -> None:
    """A baseline (common/baseline.py) the job asks for but cannot have."""
    b = exp.baseline
    _require(
        not b.epsilon_share or exp.privacy.local,
        "baseline.epsilon_share",
        f"({b.epsilon_share:g}) splits a local-DP budget; privacy.mode is '{exp.privacy.mode}' (set it to 0)",
    )
    _require(
        not b.epsilon_share or exp.privacy.target_epsilon is not None,
        "baseline.epsilon_share",
        "needs privacy.target_epsilon (a budget to split); with privacy.noise_multiplier set it to 0",
    )
    if b.features in ("auto", "off"):
        return
    _require(
        exp.privacy.mode != "central",
        "baseline.features",
        f"('{b.features}') cannot run under privacy.mode 'central'; set it to 'off'",
    )
    _require(
        (b.features in TEXT_FEATURES) == exp.data.is_text,
        "baseline.features",
        f"('{b.features}') does not read {'text' if exp.data.is_text else 'image'} data",
    )


def _personalize_checks(exp: ExperimentConfig) -> None:
    """What per-site personalisation rules out (common/personalize.py, docs/privacy.md)."""
    st = exp.strategy
    _require(
        st.local_finetune == 0 or exp.privacy.mode == "off",
        "strategy.local_finetune",
        f"needs privacy.mode 'off': its steps would train on the site's records outside DP-SGD and the site's "
        f"evaluation would release what they learned, uncharged (privacy.mode is '{exp.privacy.mode}')",
    )
    _require(
        st.local_finetune == 0 or st.fraction_evaluate == 1,
        "strategy.local_finetune",
        f"runs in every site's last evaluation, so it needs strategy.fraction_evaluate 1 "
        f"(got {st.fraction_evaluate:g}: the sites left out would never fine-tune)",
    )
    if st.personalize == "off":
        return
    _require(
        exp.model.name != "linear",
        "strategy.personalize",
        "'head' needs a model with a body beside its head; model 'linear' is only a head (use a ResNet or BERT)",
    )
    _require(
        not exp.secagg.enabled,
        "strategy.personalize",
        "'head' is not supported with secagg.enabled (secure aggregation of body-only updates is untested)",
    )
    _require(
        exp.privacy.mode != "central",
        "strategy.personalize",
        "'head' cannot be used with privacy.mode 'central': each site's head would train outside any DP "
        "mechanism and its evaluation would release what it learned; use privacy.mode 'local' (the head is "
        "trained by the same DP-SGD steps as the body) or 'off'",
    )


def _secagg_checks(exp: ExperimentConfig) -> None:
    """What secure aggregation rules out: the coordinator sees only the sum of the updates."""
    st = exp.strategy
    _require(
        st.name not in ROBUST and st.name != "qfedavg",
        "strategy.name",
        f"'{st.name}' needs each site's update (a median, trimmed mean, selection or loss weighting); under "
        "secagg.enabled the coordinator sees only their sum: use fedavg, fedprox or a server optimizer "
        f"({', '.join(SERVER_OPTIMIZERS)})",
    )
    _require(
        st.min_sites >= 2,
        "strategy.min_sites",
        "must be >= 2 under secagg.enabled (a sum of one update is that update)",
    )
    _require(
        st.reject_norm_ratio == 0,
        "strategy.reject_norm_ratio",
        "must be 0 under secagg.enabled: the coordinator never sees an update's norm",
    )
    _require(
        exp.privacy.mode != "central" or exp.privacy.clip_side == "client",
        "privacy.clip_side",
        "must be 'client' with privacy.mode 'central' under secagg.enabled: the coordinator cannot clip "
        "updates it never sees",
    )
    _require(
        exp.transport.quantize == "none" and exp.transport.topk == 0,
        "transport.quantize",
        "must be 'none' (and transport.topk 0) under secagg.enabled: SecAgg+ quantises the update itself",
    )
