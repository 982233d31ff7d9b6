"""Privacy-utility study tooling: sweeps, their cells and store, reports, plots, the study audit,
subsampling and the study-only determinism switch. Never shipped to a site (see fab-include)."""
