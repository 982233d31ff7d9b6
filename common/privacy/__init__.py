"""Differential privacy: the trust boundary of a site, and the only package that imports Opacus.

Two subpackages, dependencies pointing one way (governance imports mechanism, never the reverse;
tests/test_imports.py checks it):

- ``mechanism``: the DP mechanisms and their mathematics, knowing nothing of policies or files:
  ``accounting`` ((epsilon, delta) of a history of (noise multiplier, sample rate, steps) entries,
  noise calibration, delta's default and validity), ``accounting_notes``, the per-sample clipping
  engines ``bookkeeping`` and ``clipping`` (book-keeping, Opacus ghost, Opacus hooks behind one
  interface), ``model_surgery`` (model changes DP-SGD needs: GroupNorm, out-of-place residuals, and
  a readiness report), ``randomness`` (the secret generators for noise and sampling) and
  ``secagg`` (a site's noised, masked contribution to a secure-aggregation round).
- ``governance``: what a party decides and records: ``policy`` (a site's own privacy policy,
  enforced before the job's config is trusted), ``ledger`` and ``ledger_home`` (every mechanism a
  party ran, reserve then commit, and where it lives), ``dpsgd`` (one DP-SGD round at a site: the
  plan, the checks against the site's cap and the job's target, the charge around the mechanism),
  ``release`` (what a site may release beside its weights), ``site_privacy`` (a site's one entry
  point for what a round trains under, releases and is charged), ``central`` (site-level DP: plan
  and the coordinator's ledger), ``plan`` (``confide plan``), ``check`` (recomputing a ledger's epsilon),
  ``statement`` and ``inventory`` (what a run states: ``privacy.json``, the model card's section).

Import the submodule you need (``from common.privacy.mechanism.accounting import epsilon``): these
packages re-export nothing, so importing them never pulls in torch-heavy modules or creates cycles.
"""
