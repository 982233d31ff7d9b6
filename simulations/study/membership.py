"""Empirical privacy audit: membership-inference attacks on a trained model.

Used by the study harness in simulation, on data the researcher owns; per-sample values are
never sent by a site. Members are records a model was trained on, non-members are held-out
records of the same distribution (label-matched, equal counts). Two attacks:

- ``loss``: the loss-threshold attack (Yeom et al. 2018): lower loss means "member".
- ``calibrated``: offline reference-model calibration (Carlini et al. 2022, "LiRA offline" with
  a global variance; Watson et al. 2022): the score is the target model's scaled logit
  confidence ``phi = z_y - logsumexp_{j != y} z_j`` minus its mean under reference models that
  never saw the records, so records that are merely easy do not look like members.

Results are the ROC AUC and the TPR at fixed low FPRs (1% and 0.1%); with n non-members an FPR
below 1/n cannot be resolved, so ``n`` is always reported beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from common.batches import make_loader
from common.device import on_model_device
from common.errors import ConfideError
from common.train import logits

LOW_FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class SampleScores:
    """Per-record cross-entropy loss and scaled logit confidence, in dataset order."""

    loss: np.ndarray
    phi: np.ndarray


@dataclass(frozen=True)
class AttackResult:
    auc: float
    tpr_at_fpr: dict[float, float]
    n_members: int
    n_nonmembers: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_auc": self.auc}
        for fpr, tpr in self.tpr_at_fpr.items():
            out[f"{prefix}_tpr_at_{fpr_label(fpr)}_fpr"] = tpr
        return out


def fpr_label(fpr: float) -> str:
    """0.01 -> '1pct', 0.001 -> '0.1pct' (column-name friendly)."""
    return f"{fpr * 100:g}pct"


@torch.no_grad()
def sample_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int = 128) -> SampleScores:
    """Loss and scaled logit confidence of every record (the model in eval mode)."""
    model.eval()
    losses, phis = [], []
    for batch in make_loader(dataset, batch_size, shuffle=False):
        batch = on_model_device(batch, model)
        z = logits(model, batch).double().cpu()
        y = batch["labels"].cpu()
        z_y = z.gather(1, y[:, None])[:, 0]
        others = z.scatter(1, y[:, None], float("-inf"))
        losses.append((torch.logsumexp(z, dim=1) - z_y).numpy())
        phis.append((z_y - torch.logsumexp(others, dim=1)).numpy())
    if not losses:
        raise ConfideError("membership inference needs at least one record")
    return SampleScores(loss=np.concatenate(losses), phi=np.concatenate(phis))


def matched_sample(
    member_labels: np.ndarray, pool_labels: np.ndarray, max_records: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of members and of non-members from the pool: equal counts, the same label mix.

    Per class, as many of each as both sides have; then at most ``max_records`` pairs (0: all),
    dropped in pairs so the label mix stays matched. Seeded, so the audit is reproducible.
    """
    rng = np.random.default_rng(seed)
    members, nonmembers = [], []
    for label in np.unique(member_labels):
        m = np.flatnonzero(member_labels == label)
        n = np.flatnonzero(pool_labels == label)
        k = min(len(m), len(n))
        members.append(rng.choice(m, k, replace=False))
        nonmembers.append(rng.choice(n, k, replace=False))
    m_idx = np.concatenate(members) if members else np.empty(0, dtype=np.int64)
    n_idx = np.concatenate(nonmembers) if nonmembers else np.empty(0, dtype=np.int64)
    if len(m_idx) == 0:
        raise ConfideError("membership inference: no label is shared by the members and the held-out records")
    if max_records and len(m_idx) > max_records:
        keep = np.sort(rng.choice(len(m_idx), max_records, replace=False))
        m_idx, n_idx = m_idx[keep], n_idx[keep]
    return m_idx.astype(np.int64), n_idx.astype(np.int64)


def roc_attack(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> AttackResult:
    """AUC and TPR at low FPR of a score where higher means "member"."""
    from sklearn.metrics import roc_auc_score, roc_curve

    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if len(m) == 0 or len(n) == 0:
        raise ConfideError("membership inference needs members and non-members")
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    s = np.nan_to_num(np.r_[m, n], nan=-np.inf, posinf=np.finfo(float).max, neginf=-np.finfo(float).max)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return AttackResult(
        auc=float(roc_auc_score(y, s)),
        tpr_at_fpr={target: float(tpr[fpr <= target].max()) for target in LOW_FPRS},
        n_members=len(m),
        n_nonmembers=len(n),
    )


def loss_attack(members: SampleScores, nonmembers: SampleScores) -> AttackResult:
    """Loss-threshold attack: the lower the loss, the likelier a member."""
    return roc_attack(-members.loss, -nonmembers.loss)


def calibrated_attack(
    members: SampleScores,
    nonmembers: SampleScores,
    ref_members: list[SampleScores],
    ref_nonmembers: list[SampleScores],
) -> AttackResult:
    """Offline reference-model attack: target confidence minus its mean under reference models.

    The reference models were trained on population data holding neither the members nor the
    non-members; with a global variance the LiRA offline score is monotone in this difference.
    """
    if not ref_members or len(ref_members) != len(ref_nonmembers):
        raise ConfideError("the calibrated attack needs the same reference models on members and non-members")
    ref_m = np.mean([r.phi for r in ref_members], axis=0)
    ref_n = np.mean([r.phi for r in ref_nonmembers], axis=0)
    return roc_attack(members.phi - ref_m, nonmembers.phi - ref_n)
