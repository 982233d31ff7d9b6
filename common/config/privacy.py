"""The ``privacy`` section: differential privacy for the whole training."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from common.config.require import _require


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy for the whole training.

    mode "local": DP-SGD (Opacus) at every site; record-level (epsilon, delta) per site, accounted
    cumulatively over all rounds. Either ``noise_multiplier`` is set directly, or ``target_epsilon``
    (> 0) calibrates it from rounds, local epochs, batch size and the site's record count.
    mode "central": site-level DP with Flower's DP strategy wrappers (clip each site's update,
    add Gaussian noise to the aggregate), accounted over rounds.
    A site's own node config can only tighten this: its epsilon cap and noise floor always win.
    """

    mode: Literal["off", "local", "central"] = "off"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    # > 0; null: not given (noise_multiplier is used as set).
    target_epsilon: float | None = None
    # 0: min(1e-5, 1/(10 n)) with n the site's training records (local) or the number of sites
    # (central); a delta >= 1/n is refused (it guarantees nothing).
    delta: float = 0.0
    accountant: Literal["rdp", "prv"] = "rdp"
    # How per-sample gradients are clipped: "bookkeeping" (one backward pass, common/privacy/mechanism/bookkeeping.py),
    # Opacus "ghost" clipping (two passes) or Opacus "hooks" (per-sample gradients materialized);
    # "auto" = bookkeeping where it can clip the model correctly, else ghost, else hooks (tied parameters,
    # reused layers: common/privacy/mechanism/clipping.py). All give the same DP-SGD step.
    grad_sample_mode: Literal["auto", "bookkeeping", "ghost", "hooks"] = "auto"
    # Split each Poisson-sampled batch into physical batches of at most this many records (Opacus's
    # BatchMemoryManager): the same DP step in bounded memory. 0: train.batch_size, so a Poisson batch
    # above its expected size never holds more activations than a non-private step of that size.
    max_physical_batch_size: int = 0

    # central mode: Flower's DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping
    clip_side: Literal["server", "client"] = "server"
    clipping: Literal["fixed", "adaptive"] = "fixed"
    clipping_norm: float = 1.0
    # Where the coordinator's site-level (central) privacy ledger lives; "" = central.json in the
    # simulation ledger folder (privacy.ledger_dir). Runs that share it share the sites' cumulative
    # site-level epsilon.
    central_ledger: str = ""
    # The coordinator's cap on any site's cumulative site-level epsilon in its central ledger
    # (0: none): a job that would take a site past it is refused before it starts.
    central_max_epsilon: float = 0.0
    # Simulation only: the folder where simulated sites (and the coordinator) keep their privacy
    # ledgers, one sub-folder per data set; "" = $CONFIDE_STATE_DIR/ledgers, else
    # ~/.local/state/confide/ledgers. Never the run folder, so resumes, reruns and sweeps on the
    # same data compose. A deployed site's ledger is its own policy's ledger-dir, never the job's.
    ledger_dir: str = ""

    # What sites release beside their weights under DP (a site's policy caps it): "withhold"
    # (nothing derived from records: no loss, accuracy, clip fraction or exact count), "noisy"
    # (held-out count, accuracy and loss, and the training count, with Gaussian noise charged to
    # the site's ledger; training loss and clip fraction withheld), "exact" (all, unprotected).
    site_metrics: Literal["withhold", "noisy", "exact"] = "withhold"
    release_noise_multiplier: float = 10.0

    def __post_init__(self) -> None:
        _require(self.noise_multiplier >= 0, "privacy.noise_multiplier", "must be >= 0")
        _require(self.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
        _require(
            self.target_epsilon is None or self.target_epsilon > 0,
            "privacy.target_epsilon",
            "must be > 0 (leave it out to set privacy.noise_multiplier directly)",
        )
        _require(0 <= self.delta < 1, "privacy.delta", "must be in [0, 1)")
        _require(self.clipping_norm > 0, "privacy.clipping_norm", "must be > 0")
        _require(
            self.mode != "central" or self.clipping == "fixed",
            "privacy.clipping",
            "'adaptive' is not available with central DP: its noisy clipped-count release is not accounted "
            "in Confide's site-level ledger; use 'fixed'",
        )
        _require(self.release_noise_multiplier > 0, "privacy.release_noise_multiplier", "must be > 0")
        _require(self.max_physical_batch_size >= 0, "privacy.max_physical_batch_size", "must be >= 0")
        _require(self.central_max_epsilon >= 0, "privacy.central_max_epsilon", "must be >= 0 (0: no cap)")
        if self.mode == "off":
            # A privacy product never drops a privacy setting silently: without a mode it would train
            # with no DP at all while the file reads as if it had some.
            changed = [f for f in dataclasses.fields(self) if f.name != "mode" and getattr(self, f.name) != f.default]
            given = [f.name for f in changed]
            if given:
                key = f"privacy.{given[0]}"
                _require(
                    False,
                    key,
                    "is set but privacy.mode is 'off', so it would be ignored and the job would train without "
                    f"differential privacy: set privacy.mode to 'local' or 'central', or remove {key}",
                )
        if self.mode != "off" and self.target_epsilon is None:
            _require(
                self.noise_multiplier > 0,
                "privacy.noise_multiplier",
                "must be > 0 when privacy is on and no target_epsilon is given",
            )

    @property
    def local(self) -> bool:
        return self.mode == "local"
