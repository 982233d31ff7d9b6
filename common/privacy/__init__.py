"""Differential privacy: the trust boundary of a site, and the only package that imports Opacus.

Small modules, dependencies pointing one way (no module here imports ``common.batches`` except
``dpsgd``, and nothing here is imported by ``common.batches``):

- ``accounting``: (epsilon, delta) of a history of (noise multiplier, sample rate, steps) entries,
  noise calibration, the default and the validity of delta.
- ``ledger``: a party's on-disk record of every DP mechanism it ran (reserve, then commit).
- ``policy``: a site's own privacy policy, enforced before the job's config is trusted.
- ``compat``: model changes DP-SGD needs (GroupNorm, out-of-place residuals) and a readiness report.
- ``bookkeeping`` and ``clipping``: per-sample clipping engines (book-keeping, Opacus ghost, Opacus
  hooks) behind one interface.
- ``dpsgd``: one round of DP-SGD at a site.
- ``release``: what a site may release beside its weights (withheld, noised and accounted, or exact).
- ``central``: site-level DP with Flower's strategy wrappers (plan and accounting; no flwr import).
- ``randomness``: the secret generators for noise and sampling.
- ``statement``: the privacy statement a run writes (``privacy.json``, the model card's section).

Import the submodule you need (``from common.privacy.accounting import epsilon``): this package
re-exports nothing, so importing it never pulls in torch-heavy modules or creates cycles.
"""
