"""What a site contributes to a secure-aggregation round (no Flower here: client/secagg.py wraps it).

Under SecAgg+ a site sends its update, w_site - w_global over the floating-point tensors, masked;
with central DP it first adds its share of the Gaussian noise (server/secagg.py explains the
calibration), drawn from the OS's entropy like all of Confide's DP noise.
"""

from __future__ import annotations

import numpy as np
import torch

from common.errors import UpdateError
from common.privacy.mechanism.randomness import secret_generator

# Keys of the train config under SecAgg+: the aggregated (floating-point) tensors' names, every
# tensor's name in order (Flower's legacy layout numbers them), each site's noise standard
# deviation (0: none), and the site's name in its reply's metrics.
NAMES_KEY = "secagg-names"
TENSORS_KEY = "secagg-tensors"
NOISE_KEY = "secagg-noise-std"
SITE_NAME_KEY = "site-name"


def site_update(
    weights: dict[str, np.ndarray], global_weights: dict[str, np.ndarray], names: list[str], noise_std: float
) -> list[np.ndarray]:
    """The site's contribution, in ``names`` order: its update, plus N(0, noise_std^2) per element
    when ``noise_std`` > 0."""
    missing = [n for n in names if n not in weights or n not in global_weights]
    if missing:
        raise UpdateError(f"secure aggregation: the model has no tensor '{missing[0]}' the coordinator named")
    generator = secret_generator() if noise_std > 0 else None
    out = []
    for name in names:
        update = np.asarray(weights[name], np.float64) - np.asarray(global_weights[name], np.float64)
        if generator is not None:
            noise = torch.normal(0.0, noise_std, size=update.shape, generator=generator, dtype=torch.float64)
            update = update + noise.numpy()
        out.append(update)
    return out
