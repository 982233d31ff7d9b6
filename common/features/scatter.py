"""A 2-D wavelet scattering transform (Mallat 2012; Bruna & Mallat 2013), orders 0-2, in torch.

Fixed, parameter-free image features: Morlet wavelets at ``J`` scales and ``L`` orientations,
modulus, and a Gaussian low-pass averaging over 2^J pixels, as in kymatio's ``Scattering2D``
(Andreux et al. 2020), whose filter parameters this follows (sigma = 0.8 * 2^j, centre frequency
3 pi / 4 / 2^j, slant 4 / L). Tramer & Boneh (ICLR 2021) showed a linear model on such features
beats end-to-end CNNs under DP-SGD on small image sets. kymatio itself is not used: its 0.3 release
fails to import with current SciPy (``scipy.special.sph_harm`` was removed).

Convolutions are products in the Fourier domain on a reflect-padded grid; the output is sampled
every 2^J pixels: (N, C * K, ceil(H / 2^J), ceil(W / 2^J)) with K = 1 + J L + L^2 J (J - 1) / 2
coefficients per input channel (81 for J = 2, L = 8).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch


def channels(J: int, L: int) -> int:
    """Scattering coefficients per input channel: order 0, order 1 (J L), order 2 (j2 > j1)."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A 2-D Gabor filter on a size x size periodic grid (origin at index 0), kymatio's gabor_2d."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    out = np.zeros((size, size), dtype=np.complex128)
    # Sum over neighbouring periods: the filter on the torus, not a truncated one.
    for ex in (-2, -1, 0, 1, 2):
        for ey in (-2, -1, 0, 1, 2):
            x, y = np.mgrid[ex * size : (ex + 1) * size, ey * size : (ey + 1) * size].astype(np.float64)
            arg = -(curv[0, 0] * x * x + (curv[0, 1] + curv[1, 0]) * x * y + curv[1, 1] * y * y)
            arg = arg + 1j * (x * xi * math.cos(theta) + y * xi * math.sin(theta))
            out += np.exp(arg)
    return out * slant / (2 * math.pi * sigma * sigma)


def _morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter minus the Gaussian envelope that makes its mean zero (a wavelet)."""
    wave = _gabor(size, sigma, theta, xi, slant)
    envelope = _gabor(size, sigma, theta, 0.0, slant)
    return wave - envelope * (wave.sum() / envelope.sum())


@functools.lru_cache(maxsize=8)
def filter_bank(size: int, J: int, L: int) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """(low-pass phi, {(j, theta): psi}) as real Fourier transforms on a size x size grid."""
    phi = np.fft.fft2(_gabor(size, 0.8 * 2**J, 0.0, 0.0, 1.0)).real
    psi = {}
    for j in range(J):
        for t in range(L):
            theta = (int(L - L / 2 - 1) - t) * math.pi / L
            wavelet = _morlet(size, 0.8 * 2**j, theta, 3 * math.pi / 4 / 2**j, 4 / L)
            psi[(j, t)] = torch.from_numpy(np.fft.fft2(wavelet).real)
    return torch.from_numpy(phi), psi


def scatter(images: torch.Tensor, J: int = 2, L: int = 8) -> torch.Tensor:
    """Scattering coefficients of (N, C, H, W) float images: (N, C * K, ceil(H/2^J), ceil(W/2^J)).

    Each input channel is transformed alone; its K coefficient maps are consecutive channels,
    ordered order 0, then order 1 by (j, theta), then order 2 by (j1, theta1, j2, theta2)."""
    if images.dim() != 4:
        raise ValueError(f"scatter expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    pad, step = 2**J, 2**J
    if h != w or h <= pad:
        raise ValueError(f"scatter expects square images larger than {pad} px, got {h} x {w}")
    out_h = out_w = -(-h // step)
    # Reflect padding (the borders are not wrapped onto each other), to a multiple of the step.
    size = step * (out_h + 2)
    x = torch.nn.functional.pad(
        images.reshape(n * c, 1, h, w).float(), (pad, size - w - pad, pad, size - h - pad), mode="reflect"
    )[:, 0]
    phi, psi = filter_bank(size, J, L)
    phi = phi.float()
    keys = list(psi)
    bank = torch.stack([psi[k] for k in keys]).float()  # (J L, size, size)

    def low(u_hat: torch.Tensor) -> torch.Tensor:  # (..., size, size) spectra -> sampled averages
        # Sampling every `step` pixels in space is folding the spectrum into step x step blocks: one
        # small inverse transform instead of a full one.
        s = size // step
        folded = (u_hat * phi).unflatten(-2, (step, s)).unflatten(-1, (step, s)).sum(dim=(-4, -2)) / step**2
        return torch.fft.ifft2(folded).real[..., 1 : 1 + out_h, 1 : 1 + out_w]

    x_hat = torch.fft.fft2(x)  # (M, size, size)
    u1_hat = torch.fft.fft2(torch.fft.ifft2(x_hat[:, None] * bank).abs())  # (M, J L, size, size)
    maps = [low(x_hat)[:, None], low(u1_hat)]
    for a, (j1, _) in enumerate(keys):
        later = [b for b, (j2, _) in enumerate(keys) if j2 > j1]
        if later:
            u2 = torch.fft.ifft2(u1_hat[:, a, None] * bank[later]).abs()
            maps.append(low(torch.fft.fft2(u2)))
    out = torch.cat(maps, dim=1)  # (N*C, K, h', w')
    return out.reshape(n, c * out.shape[1], out.shape[2], out.shape[3])
