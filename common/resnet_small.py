"""CIFAR-style ResNets for small images, built for DP-SGD from scratch (no pretrained weights).

He et al. 2016's CIFAR variant ("Deep residual learning", section 4.2): a 3x3 stem with 16
channels, three stages of ``n`` basic blocks with 16/32/64 channels (the 2nd and 3rd start with
stride 2), global average pooling and a linear head ``fc``: ResNet-8 (n=1), ResNet-20 (n=3,
~0.27M parameters). The stride-2 shortcuts are parameter-free (the paper's option A: subsample
and zero-pad the new channels), so ResNet-20 keeps the paper's size.

As in De et al. 2022 ("Unlocking high-accuracy differentially private image classification
through scale"): GroupNorm (16 groups, no batch statistics, so per-sample gradients exist) after
every convolution, and weight-standardized convolutions (``WSConv2d``).

Weight standardization and per-sample clipping. The trainable tensor is the raw kernel V; the
convolution sees W = (V - mean) / std per output channel, so a sample's gradient w.r.t. V is the
WS Jacobian (transposed) applied to its gradient w.r.t. W, and has another norm. An engine that
treats the layer as ``y = conv(x, V)`` clips the wrong vector. Hence ``WSConv2d`` is deliberately
NOT an ``nn.Conv2d`` subclass (nor a ``torch.nn.utils.parametrize`` conv, whose raw kernel lives in
a ``ParametrizationList`` that Opacus would hook as a layer without inputs):

- the book-keeping engine (``common.privacy.mechanism.bookkeeping``) checks ``isinstance(m, nn.Conv2d)`` and
  refuses this unknown type, naming the module, so ``choose_mode('auto')`` picks ghost;
- Opacus (ghost and hooks) looks grad samplers up by exact type and has none for ``WSConv2d``, so
  it computes the layer's per-sample gradients with functorch: ``vmap(grad(...))`` of this
  module's own ``forward`` w.r.t. its own parameters (the raw V), i.e. by autograd through the
  standardization, exact by construction. (A hand-written grad sampler with the WS chain rule was
  tried: no faster on CPU at 8-32 px, so none is registered.)

tests/test_resnet_small.py checks the clipped sum of every accepting engine against gradients
computed one sample at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_CHANNELS = (16, 32, 64)
BLOCKS = {8: 1, 20: 3}  # depth -> basic blocks per stage (depth = 6n + 2)
WS_EPS = 1e-6  # kaiming-initialized 3x3 kernels have variance ~1e-3..1e-2


def _groups(channels: int) -> int:
    return min(16, channels)


class WSConv2d(nn.Module):
    """A convolution whose kernel is standardized per output channel (zero mean, unit variance
    over in_channels x kh x kw) at every forward pass (Qiao et al. 2019). Parameters ``weight``
    (the raw kernel) and optional ``bias`` keep ``nn.Conv2d``'s names and shapes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        eps: float = WS_EPS,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.eps = (kernel_size, kernel_size), stride, padding, eps
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def standardized_weight(self) -> torch.Tensor:
        """The kernel the convolution uses: (V - mean) / sqrt(var + eps) per output channel."""
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), correction=0, keepdim=True)
        return (w - mean) * torch.rsqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, eps={self.eps}"
        )


class PadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """conv3x3 - GN - ReLU - conv3x3 - GN, plus the shortcut, then ReLU (all out of place)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = WSConv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = WSConv2d(channels, channels, 3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        same = stride == 1 and in_channels == channels
        self.shortcut: nn.Module = nn.Identity() if same else PadShortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-(6n+2) for small images (any size >= 4 px; 8, 28 and 32 px tested)."""

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"depth must be one of {sorted(BLOCKS)}, got {depth}")
        n = BLOCKS[depth]
        width = STAGE_CHANNELS[0]
        self.conv1 = WSConv2d(in_channels, width, 3, stride=1, padding=1)
        self.norm1 = nn.GroupNorm(_groups(width), width)
        stages = []
        for i, channels in enumerate(STAGE_CHANNELS):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(width, channels, stride=2 if i > 0 and j == 0 else 1))
                width = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_resnet(depth: int, in_channels: int, num_classes: int) -> SmallResNet:
    return SmallResNet(depth, in_channels, num_classes)
