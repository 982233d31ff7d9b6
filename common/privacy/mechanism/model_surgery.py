"""Model changes DP-SGD needs, and a readiness report before the first DP round.

``dp_compatible``: BatchNorm -> GroupNorm (Opacus's ModuleValidator) and out-of-place residual
adds in torchvision ResNets. Server and sites both call it through ``common.models.build_model``,
so their state_dict keys match. Imports nothing from ``common`` beyond config and errors.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import torch
from torch import nn

from common.config import PrivacyConfig
from common.errors import ConfigError


def dp_compatible(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Return a DP-SGD-ready model and a list of what was changed."""
    from opacus.validators import ModuleValidator

    changes: list[str] = []
    model.train()  # Opacus validates (and trains) in training mode
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
        if n_bn:
            changes.append(f"{n_bn} BatchNorm layers -> GroupNorm")
    n_res = _non_inplace_residuals(model)
    if n_res:
        changes.append(f"{n_res} residual blocks: in-place add and ReLU -> out-of-place")
    remaining = ModuleValidator.validate(model, strict=False)
    if remaining:
        raise ConfigError(f"model is not DP-SGD compatible after fixes: {remaining[0]} (config key 'privacy.mode')")
    return model, changes


def _non_inplace_residuals(model: nn.Module) -> int:
    """torchvision's ``out += identity`` breaks Opacus hooks; use ``out = out + identity``. A model
    holds torchvision's blocks only if torchvision built it, so torchvision is not imported (most of
    a second per process) to look for them in a model it did not build."""
    resnet = sys.modules.get("torchvision.models.resnet")
    blocks = (resnet.BasicBlock, resnet.Bottleneck) if resnet is not None else ()
    count = 0
    for module in model.modules():
        if blocks and isinstance(module, blocks):
            module.forward = types.MethodType(
                _bottleneck_forward if isinstance(module, blocks[1]) else _basic_forward, module
            )
            module.relu = nn.ReLU(inplace=False)
            count += 1
        elif isinstance(module, nn.ReLU):
            module.inplace = False
    return count


def _basic_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    identity = self.downsample(x) if self.downsample is not None else x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


def _bottleneck_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    identity = self.downsample(x) if self.downsample is not None else x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


@dataclass(frozen=True)
class Readiness:
    grad_sample_mode: str
    trainable_parameters: int
    per_sample_grad_bytes_hooks: int  # what hooks mode materializes per batch
    unsupported: tuple[str, ...] = ()

    def summary(self) -> str:
        mb = self.per_sample_grad_bytes_hooks / 2**20
        return (
            f"DP readiness: mode={self.grad_sample_mode}, trainable parameters={self.trainable_parameters:,}, "
            f"per-sample gradients in hooks mode ~{mb:,.0f} MiB per batch"
            + (f"; unsupported: {', '.join(self.unsupported)}" if self.unsupported else "")
        )


def readiness(model: nn.Module, cfg: PrivacyConfig, batch_size: int) -> Readiness:
    from opacus.validators import ModuleValidator

    from common.privacy.mechanism.clipping import choose_mode

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()
    problems = tuple(str(e) for e in ModuleValidator.validate(model, strict=False))
    return Readiness(
        grad_sample_mode=choose_mode(cfg, model),
        trainable_parameters=trainable,
        per_sample_grad_bytes_hooks=batch_size * trainable * 4,
        unsupported=problems,
    )
