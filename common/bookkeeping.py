"""Book-keeping per-sample clipping (Bu et al., "Differentially private optimization on large
model at small cost", 2023; the fastDP library): DP-SGD's clipped gradient sum in ONE backward pass.

Opacus's ghost clipping runs two backward passes (one for the per-sample gradient norms, one
for the re-weighted loss). Book-keeping keeps each layer's input activations ``a`` and output
gradients ``g`` from a single backward pass in which the parameters do not compute their own
(unclipped) gradients at all, and then builds, per layer:

- per-sample gradient norms: the ghost-norm identity ``||sum_t g_t a_t^T||^2 =
  <A A^T, G G^T>`` where T^2 is small, else the instantiated per-sample gradient (whichever
  costs less, per layer: "mixed" ghost clipping);
- the clipped sum ``sum_i c_i g_i^T a_i`` with ``c_i = min(1, C / (||grad_i|| + 1e-6))``, as Opacus.

Memory: a norm layer's per-sample gradients are tiny, (B, C), so they are formed as soon as its
output gradient arrives and its activations are let go during the backward pass; only Linear,
Conv2d and Embedding layers keep (a, g) until the clipping coefficients are known. Layers fed the
same input tensor (BERT's query/key/value) share one activation Gram matrix.

Pure torch; ``common.privacy`` pairs it with Opacus's optimizer (noise, accounting) and data
loader (Poisson sampling). Supported layers: Linear, Conv2d (groups=1), Embedding, LayerNorm,
GroupNorm, which covers BERT-family models (with or without LoRA) and DP-ready ResNets;
``supports`` says whether a model can use it. Correctness is tested against per-sample
gradients computed one sample at a time (tests/test_bookkeeping.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm, nn.GroupNorm)
_CHUNK = 16  # samples per unfolded-convolution-input block when forming conv per-sample norms


def _own_trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def supports(model: nn.Module) -> list[str]:
    """Names of modules with trainable parameters that book-keeping cannot handle (empty = all fine)."""
    bad = []
    for name, module in model.named_modules():
        if not _own_trainable(module):
            continue
        conv_ok = not isinstance(module, nn.Conv2d) or (
            module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
        )
        if not isinstance(module, SUPPORTED) or not conv_ok:
            bad.append(f"{name} ({type(module).__name__})")
    return bad


class BookKeeping:
    """Hooks a model's trainable layers; ``backward(per_sample_losses)`` leaves in every trainable
    parameter's ``.grad`` the sum over samples of the per-sample gradients clipped to ``max_grad_norm``."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        bad = supports(model)
        if bad:
            raise ValueError(f"book-keeping clipping does not support: {', '.join(bad[:5])}")
        self.model, self.c = model, max_grad_norm
        self.layers = [m for m in model.modules() if _own_trainable(m)]
        self.params = [p for m in self.layers for p in _own_trainable(m)]
        self.trainable = frozenset(id(p) for p in self.params)

        self.saved: dict[nn.Module, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self.early: dict[nn.Module, _Prepared] = {}  # norm layers, reduced during backward
        self.last_norms = torch.zeros(0)
        self.handles = [m.register_forward_hook(self._forward_hook) for m in self.layers]
        self.handles.append(model.register_forward_pre_hook(self._freeze))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._unfreeze()

    def _freeze(self, module: nn.Module, inputs: tuple) -> None:
        """Training forward: parameters stop requiring grad, so the backward pass computes only
        activation gradients (the parameters' clipped gradients are built from a and g)."""
        if module.training and torch.is_grad_enabled():
            for p in self.params:
                p.requires_grad_(False)

    def _unfreeze(self) -> None:
        for p in self.params:
            p.requires_grad_(True)

    # -- capture --------------------------------------------------------------------------

    def _forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not (module.training and torch.is_grad_enabled()):
            return None
        replaced = None
        if not output.requires_grad:  # first trainable layer: start the graph at its output
            output = replaced = output.detach().requires_grad_()
        self.saved[module] = (inputs[0].detach(), None)

        def keep_grad(g: torch.Tensor, module: nn.Module = module) -> None:
            a = self.saved[module][0]
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):  # (B, C) per-sample grads: form now
                self.early[module] = _prepare_norm(module, a, g.detach(), self.trainable)
                self.saved[module] = (None, None)
            elif isinstance(module, nn.Conv2d) and _conv_instantiate(module, a, g):
                self.early[module] = _conv_per_sample(module, a, g.detach(), self.trainable)
                self.saved[module] = (None, None)
            else:
                self.saved[module] = (a, g.detach())

        output.register_hook(keep_grad)
        return replaced

    # -- one step -------------------------------------------------------------------------

    def backward(self, per_sample_losses: torch.Tensor) -> None:
        try:
            per_sample_losses.sum().backward()
        finally:
            self._unfreeze()
        norms_sq = torch.zeros(per_sample_losses.shape[0], dtype=torch.float64)
        prepared, grams = dict(self.early), {}
        self.early.clear()
        for module in self.layers:
            a, g = self.saved.pop(module, (None, None))
            if module not in prepared and g is not None:  # else: not on the loss's graph this step
                prepared[module] = _prepare(module, a, g, grams)
            if module in prepared:
                norms_sq += prepared[module].norm_sq().double()
        grams.clear()
        norms = norms_sq.sqrt().float()
        coef = (self.c / (norms + 1e-6)).clamp(max=1.0)
        for module in self.layers:
            grads = prepared.pop(module).clipped_sum(coef) if module in prepared else {}
            for p in _own_trainable(module):
                grad = grads.get(id(p))
                p.grad = grad if grad is not None else torch.zeros_like(p)
        self.saved.clear()
        self.last_norms = norms.detach()


# --------------------------------------------------------------------------- per layer type


class _Prepared:
    """A layer's stored (a, g) put in the form its norm and clipped-sum formulas need."""

    norm_sq: Callable[[], torch.Tensor]
    clipped_sum: Callable[[torch.Tensor], dict[int, torch.Tensor]]


Grams = dict[tuple, torch.Tensor]  # activation Gram matrices by input storage, shared within one step


def _prepare(module: nn.Module, a: torch.Tensor, g: torch.Tensor, grams: Grams) -> _Prepared:
    if isinstance(module, nn.Linear):
        return _Matmul(module.weight, module.bias, a, g, grams)
    if isinstance(module, nn.Conv2d):
        return _Conv(module, a, g)
    if isinstance(module, nn.Embedding):
        if module.padding_idx is not None:  # torch gives the padding row no gradient
            g = g * (a != module.padding_idx).unsqueeze(-1).to(g.dtype)
        return _Embedding(module.weight, a, g)
    raise TypeError(type(module).__name__)  # pragma: no cover - excluded by supports()


def _conv_instantiate(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> bool:
    """Early convolutions (large maps, few weights): per-sample weight gradients (B, d, p) are
    smaller than the (a, g) pair they replace, and one batched matmul gives both the norms and the
    clipped sum (instead of an unfold for the norms plus the weight-gradient kernel)."""
    return a.shape[0] * m.weight.numel() <= a.numel() + g.numel()


def _conv_per_sample(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, trainable: frozenset[int]) -> _Prepared:
    parts = []
    for a_part, g_part in zip(a.split(_CHUNK), g.split(_CHUNK)):  # the unfolded input is large: chunk it
        cols = F.unfold(a_part, m.kernel_size, m.dilation, m.padding, m.stride)  # (b, p, L)
        parts.append(torch.bmm(g_part.flatten(2), cols.transpose(1, 2)))  # (b, d, p): per-sample grads
    bias = g.sum((2, 3)) if m.bias is not None else torch.zeros(0)
    return _PerSample(m.weight, m.bias, torch.cat(parts), bias, trainable)


def _prepare_norm(module: nn.Module, a: torch.Tensor, g: torch.Tensor, trainable: frozenset[int]) -> _Prepared:
    """LayerNorm / GroupNorm; called during backward, while parameters are frozen (hence ``trainable``)."""
    if isinstance(module, nn.LayerNorm):
        xhat = F.layer_norm(a, module.normalized_shape, eps=module.eps)
        reduce = tuple(range(1, a.dim() - len(module.normalized_shape)))  # token dims, if any
        gw, gb = g * xhat, g
        gw, gb = (gw.sum(reduce), gb.sum(reduce)) if reduce else (gw, gb)
    else:
        xhat = F.group_norm(a, module.num_groups, eps=module.eps)
        reduce = tuple(range(2, a.dim()))
        gw, gb = (g * xhat).sum(reduce), g.sum(reduce)
    return _PerSample(module.weight, module.bias, gw, gb, trainable)


class _Matmul(_Prepared):
    """y = a W^T + b over tokens/positions: a (B, T, p), g (B, T, d) (or (B, p), (B, d))."""

    def __init__(
        self, weight: nn.Parameter, bias: nn.Parameter | None, a: torch.Tensor, g: torch.Tensor, grams: Grams
    ) -> None:
        if a.dim() == 2:
            a, g = a.unsqueeze(1), g.unsqueeze(1)
        self.weight, self.bias, self.grams = weight, bias, grams
        self.a, self.g = a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])

    def norm_sq(self) -> torch.Tensor:
        return _matmul_norm_sq(self.weight, self.bias, self.a, self.g, self.grams)

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        gc = self.g * coef.view(-1, 1, 1).to(self.g.dtype)
        out = {}
        if self.weight.requires_grad:
            w = torch.einsum("btd,btp->dp", gc, self.a)
            out[id(self.weight)] = w.reshape(self.weight.shape)
        if self.bias is not None and self.bias.requires_grad:
            out[id(self.bias)] = gc.sum((0, 1))
        return out


def _matmul_norm_sq(
    weight: nn.Parameter, bias: nn.Parameter | None, a: torch.Tensor, g: torch.Tensor, grams: Grams | None = None
) -> torch.Tensor:
    """Per-sample squared gradient norm of y_t = W a_t + b summed over t; a (B, T, p), g (B, T, d)."""
    t, p, d = a.shape[1], a.shape[2], g.shape[2]
    total = torch.zeros(a.shape[0], dtype=a.dtype)
    if weight.requires_grad:
        if t * t * (p + d) <= t * p * d:  # ghost norm is cheaper than instantiating
            key = (a.data_ptr(), tuple(a.shape), a.stride())
            gram_a = grams.get(key) if grams is not None else None
            if gram_a is None:
                gram_a = torch.bmm(a, a.transpose(1, 2))
                if grams is not None:
                    grams[key] = gram_a
            total = total + (gram_a * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        else:
            total = total + torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))
    if bias is not None and bias.requires_grad:
        total = total + g.sum(1).pow(2).sum(1)
    return total


class _Conv(_Prepared):
    """Conv2d: norms from the unfolded input (not kept: it is large); the clipped sum is torch's own
    convolution weight-gradient kernel applied to coefficient-scaled output gradients."""

    def __init__(self, module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> None:
        self.m, self.a, self.g = module, a, g

    def norm_sq(self) -> torch.Tensor:
        m, parts = self.m, []
        for a, g in zip(self.a.split(_CHUNK), self.g.split(_CHUNK)):  # the unfolded input is large: chunk it
            cols = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (b, p, L)
            parts.append(_matmul_norm_sq(m.weight, m.bias, cols.transpose(1, 2), g.flatten(2).transpose(1, 2)))
        return torch.cat(parts)

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        m = self.m
        gc = self.g * coef.view(-1, 1, 1, 1).to(self.g.dtype)
        out = {}
        if m.weight.requires_grad:
            out[id(m.weight)] = torch.nn.grad.conv2d_weight(
                self.a, m.weight.shape, gc, stride=m.stride, padding=m.padding, dilation=m.dilation
            )
        if m.bias is not None and m.bias.requires_grad:
            out[id(m.bias)] = gc.sum((0, 2, 3))
        return out


class _Embedding(_Prepared):
    def __init__(self, weight: nn.Parameter, ids: torch.Tensor, g: torch.Tensor) -> None:
        self.weight = weight
        self.ids, self.g = ids.reshape(ids.shape[0], -1), g.reshape(g.shape[0], -1, g.shape[-1])

    def norm_sq(self) -> torch.Tensor:
        same = (self.ids.unsqueeze(2) == self.ids.unsqueeze(1)).to(self.g.dtype)  # (B, T, T)
        return (same * torch.bmm(self.g, self.g.transpose(1, 2))).sum((1, 2))

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        gc = (self.g * coef.view(-1, 1, 1).to(self.g.dtype)).reshape(-1, self.g.shape[-1])
        grad = torch.zeros_like(self.weight)
        grad.index_add_(0, self.ids.reshape(-1), gc)
        return {id(self.weight): grad}


class _PerSample(_Prepared):
    """Instantiated per-sample gradients of a layer's weight and bias: (B, ...) each."""

    def __init__(
        self,
        weight: nn.Parameter | None,
        bias: nn.Parameter | None,
        gw: torch.Tensor,
        gb: torch.Tensor,
        trainable: frozenset[int],
    ) -> None:
        self.parts = [
            (p, gs.reshape(gs.shape[0], -1))
            for p, gs in ((weight, gw), (bias, gb))
            if p is not None and id(p) in trainable
        ]

    def norm_sq(self) -> torch.Tensor:
        return sum((gs.pow(2).sum(1) for _, gs in self.parts), start=torch.zeros(self.parts[0][1].shape[0]))

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        return {id(p): (gs * coef.view(-1, 1)).sum(0).reshape(p.shape) for p, gs in self.parts}
