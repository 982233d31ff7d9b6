"""Book-keeping per-sample clipping (Bu et al., "Differentially private optimization on large
model at small cost", 2023; the fastDP library): DP-SGD's clipped gradient sum in ONE backward pass.

Opacus's ghost clipping runs two backward passes (one for the per-sample gradient norms, one
for the re-weighted loss). Book-keeping keeps each layer's input activations ``a`` and output
gradients ``g`` from a single backward pass in which the parameters do not compute their own
(unclipped) gradients at all, and then builds, per layer:

- per-sample gradient norms: the ghost-norm identity ``||Σ_t g_t a_t^T||^2 =
  <A A^T, G G^T>`` where T^2 is small, else the instantiated per-sample gradient (whichever
  costs less, per layer: "mixed" ghost clipping);
- the clipped sum ``sum_i c_i g_i^T a_i`` with ``c_i = min(1, C / (||grad_i|| + 1e-6))``, as Opacus.

Reused modules (ALBERT's shared layers, any module called more than once per forward pass): a
layer keeps one (a, g) pair per call. A sample's gradient is the sum over calls, which for
Linear, Embedding and unfolded Conv2d is the one-call formula with the calls' tokens (positions)
concatenated, so the ghost norm stays exact; per-sample gradients formed early (norm layers, small
convolutions) are summed over calls. Tied parameters (one ``nn.Parameter`` owned by two modules)
are refused: their per-sample gradient is not a per-module quantity.

Memory: a norm layer's per-sample gradients are tiny, (B, C), so they are formed as soon as its
output gradient arrives and its activations are let go during the backward pass; only Linear,
Conv2d and Embedding layers keep (a, g) until the clipping coefficients are known. Layers fed the
same input tensor (BERT's query/key/value) share one activation Gram matrix. A module called once
works on the captured tensors themselves (only a reused module's calls are concatenated), each
layer's (a, g) is freed as soon as its clipped sum is formed, and nothing captured outlives the step
(the caller's loss keeps the graph and its hooks alive until the next forward pass).

Pure torch; ``common.privacy.mechanism.clipping`` pairs it with Opacus's optimizer (noise, accounting) and
data loader (Poisson sampling). Supported layers: Linear, Conv2d (groups=1), Embedding, LayerNorm,
GroupNorm, which covers BERT-family models (with or without LoRA, ALBERT's shared layers included)
and DP-ready ResNets; ``supports`` says whether a model can use it. Correctness is tested against
per-sample gradients computed one sample at a time (tests/test_bookkeeping.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm, nn.GroupNorm)
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm)
_CHUNK = 16  # samples per unfolded-convolution-input block when forming conv per-sample norms


def _own_trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def tied_parameters(model: nn.Module) -> list[str]:
    """Modules owning a trainable parameter that another module also owns (tied weights), each
    as ``"name (Type) shares 'param' with other"``; empty if none."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                owners.setdefault(id(p), []).append(f"{name}.{pname}" if name else pname)
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    out = []
    for names in (n for n in owners.values() if len(n) > 1):
        for full in names:
            module, others = full.rpartition(".")[0], [o for o in names if o != full]
            out.append(f"{module} ({types[module]}) shares '{full}' with {', '.join(others)}")
    return out


def supports(model: nn.Module) -> list[str]:
    """What book-keeping cannot clip correctly: modules with trainable parameters of an
    unsupported type, and modules whose parameters are tied to another's (empty = all fine)."""
    bad = []
    for name, module in model.named_modules():
        if not _own_trainable(module):
            continue
        conv_ok = not isinstance(module, nn.Conv2d) or (
            module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
        )
        if not isinstance(module, SUPPORTED) or not conv_ok:
            bad.append(f"{name} ({type(module).__name__})")
    return bad + tied_parameters(model)


class _Call:
    """One forward call of a hooked layer: its input, and its output gradient once known."""

    __slots__ = ("a", "g", "out_numel")

    def __init__(self, a: torch.Tensor, out_numel: int) -> None:
        self.a: torch.Tensor | None = a
        self.g: torch.Tensor | None = None
        self.out_numel = out_numel


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

        self.calls: dict[nn.Module, list[_Call]] = {}  # this forward pass's calls, per layer
        self.early: dict[nn.Module, list[torch.Tensor]] = {}  # per-sample (weight, bias) grads, summed over calls
        self.conv_early: dict[nn.Module, bool] = {}  # per conv: instantiate (decided once per step)
        self.last_norms = torch.zeros(0)
        # Adding this zero starts the graph at the first trainable layer's output. A detached leaf
        # would do too, but the graph (which the caller's loss keeps until its next forward pass)
        # would then hold that output and its accumulated gradient, the largest maps of a CNN.
        self._graph_root = torch.zeros((), requires_grad=True)
        self.handles = [m.register_forward_hook(self._forward_hook) for m in self.layers]
        self.handles.append(model.register_forward_pre_hook(self._start))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._unfreeze()

    def _start(self, module: nn.Module, inputs: tuple) -> None:
        """Training forward: forget the previous pass's captures; parameters stop requiring grad, so
        the backward pass computes only activation gradients (clipped gradients are built from a, g)."""
        if module.training and torch.is_grad_enabled():
            self._clear()
            for p in self.params:
                p.requires_grad_(False)

    def _unfreeze(self) -> None:
        for p in self.params:
            p.requires_grad_(True)

    def _clear(self) -> None:
        """Drop this step's captures. The calls' tensors are released explicitly: the caller's loss
        keeps the autograd graph, and with it the gradient hooks that reference the calls, alive
        until its next forward pass, which would otherwise hold every (a, g) through that pass."""
        for calls in self.calls.values():
            for call in calls:
                call.a = call.g = None
        self.calls.clear()
        self.early.clear()
        self.conv_early.clear()

    # -- capture --------------------------------------------------------------------------

    def _forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not (module.training and torch.is_grad_enabled()):
            return None
        replaced = None
        if not output.requires_grad:  # first trainable layer: start the graph at its output
            output = replaced = output + self._graph_root
        call = _Call(inputs[0].detach(), output.numel())
        self.calls.setdefault(module, []).append(call)
        output.register_hook(partial(self._keep_grad, module, call))
        return replaced

    def _keep_grad(self, module: nn.Module, call: _Call, g: torch.Tensor) -> None:
        a, g = call.a, g.detach()
        assert a is not None
        if isinstance(module, NORM_LAYERS):  # (B, C) per-sample grads: form now
            self._add_early(module, _norm_per_sample(module, a, g))
        elif isinstance(module, nn.Conv2d) and self._conv_instantiate(module, a.shape[0]):
            self._add_early(module, _conv_per_sample(module, a, g))
        else:
            call.g = g
            return
        call.a = None

    def _conv_instantiate(self, module: nn.Conv2d, batch: int) -> bool:
        """Decided once per step over all the layer's calls (at its first output gradient, when every
        call still holds its input), so a reused convolution's calls are all instantiated or all kept."""
        if module not in self.conv_early:
            kept = sum(c.a.numel() + c.out_numel for c in self.calls[module] if c.a is not None)
            self.conv_early[module] = _conv_instantiate(module, batch, kept)
        return self.conv_early[module]

    def _add_early(self, module: nn.Module, grads: list[torch.Tensor]) -> None:
        prev = self.early.get(module)
        self.early[module] = grads if prev is None else [x + y for x, y in zip(prev, grads)]

    # -- one step -------------------------------------------------------------------------

    def backward(self, per_sample_losses: torch.Tensor) -> None:
        try:
            per_sample_losses.sum().backward()
        finally:
            self._unfreeze()
        try:
            prepared = self._prepare_all()
            norms_sq = torch.zeros(per_sample_losses.shape[0], dtype=torch.float64)
            for part in prepared.values():
                norms_sq += part.norm_sq().double()
            norms = norms_sq.sqrt().float()
            coef = (self.c / (norms + 1e-6)).clamp(max=1.0)
            for module in self.layers:  # each layer's (a, g) is freed once its clipped sum is formed
                grads = prepared.pop(module).clipped_sum(coef) if module in prepared else {}
                for p in _own_trainable(module):
                    grad = grads.get(id(p))
                    p.grad = grad if grad is not None else torch.zeros_like(p)
        finally:
            self._clear()
        self.last_norms = norms.detach()

    def _prepare_all(self) -> dict[nn.Module, _Prepared]:
        """Every layer on the loss's graph this step, in the form its norm and clipped sum need. The
        calls hand their tensors over, so each layer's storage is owned by its prepared form alone."""
        grams: Grams = {}
        prepared: dict[nn.Module, _Prepared] = {}
        for module in self.layers:
            if module in self.early:
                weight, bias = module.weight, module.bias
                prepared[module] = _PerSample(weight, bias, *self.early.pop(module), self.trainable)
                continue
            calls = self.calls.pop(module, [])
            pairs = [(c.a, c.g) for c in calls if c.a is not None and c.g is not None]
            for call in calls:
                call.a = call.g = None
            if pairs:  # else: not on the loss's graph this step
                prepared[module] = _prepare(module, pairs, grams)
        return prepared


# --------------------------------------------------------------------------- per layer type


class _Prepared:
    """A layer's stored (a, g) put in the form its norm and clipped-sum formulas need."""

    norm_sq: Callable[[], torch.Tensor]
    clipped_sum: Callable[[torch.Tensor], dict[int, torch.Tensor]]


Grams = dict[tuple, torch.Tensor]  # activation Gram matrices by input storage, shared within one step
Pairs = list[tuple[torch.Tensor, torch.Tensor]]  # (a, g) per call of one layer


def _prepare(module: nn.Module, pairs: Pairs, grams: Grams) -> _Prepared:
    if isinstance(module, nn.Linear):
        return _Matmul(module.weight, module.bias, pairs, grams)
    if isinstance(module, nn.Conv2d):
        return _Conv(module, pairs)
    if isinstance(module, nn.Embedding):
        return _Embedding(module, pairs)
    raise TypeError(type(module).__name__)  # pragma: no cover - excluded by supports()


def _conv_instantiate(m: nn.Conv2d, batch: int, kept: int) -> bool:
    """Early convolutions (large maps, few weights): per-sample weight gradients (B, d, p) are
    smaller than the ``kept`` elements of (a, g) they replace, and one batched matmul gives both the
    norms and the clipped sum (instead of an unfold for the norms plus the weight-gradient kernel)."""
    return batch * m.weight.numel() <= kept


def _conv_weight_per_sample(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients (b, d, p) of one call, by the convolution weight-gradient kernel
    run once with the samples as groups: sample i's input channels meet only sample i's output
    gradients, so group i's weight gradient is sample i's. On CPU this is about twice as fast as an
    explicit unfold (im2col) followed by a batched matmul, and never materializes the unfolded input."""
    b, c_in, d = a.shape[0], a.shape[1], g.shape[1]
    if b == 0:
        return a.new_zeros(0, d, m.weight[0].numel())
    weight = a.new_empty(()).expand(b * d, c_in, *m.kernel_size)  # only its shape is read
    _, grad, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, b * d, *g.shape[2:]), a.reshape(1, b * c_in, *a.shape[2:]), weight, None,
        m.stride, m.padding, m.dilation, False, (0, 0), b, (False, True, False),
    )  # fmt: skip
    return grad.view(b, d, -1)


def _conv_per_sample(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    chunks = zip(a.split(_CHUNK), g.split(_CHUNK))  # bounds the kernel's working memory
    weight = torch.cat([_conv_weight_per_sample(m, a_part, g_part) for a_part, g_part in chunks])
    bias = g.sum((2, 3)) if m.bias is not None else torch.zeros(0)
    return [weight, bias]


def _norm_per_sample(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """LayerNorm / GroupNorm per-sample (weight, bias) gradients."""
    if isinstance(module, nn.LayerNorm):
        xhat = F.layer_norm(a, module.normalized_shape, eps=module.eps)
        reduce = tuple(range(1, a.dim() - len(module.normalized_shape)))  # token dims, if any
        gw, gb = g * xhat, g
        return [gw.sum(reduce), gb.sum(reduce)] if reduce else [gw, gb]
    xhat = F.group_norm(a, module.num_groups, eps=module.eps)
    reduce = tuple(range(2, a.dim()))
    return [(g * xhat).sum(reduce), g.sum(reduce)]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, ..., f) -> (B, T, f); (B, f) -> (B, 1, f)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])  # explicit: a batch may be empty


def _join(calls: list[torch.Tensor]) -> torch.Tensor:
    """The calls' tokens side by side, (B, T_1 + T_2 + ..., f); a single call's tensor as it is
    (a module called once keeps no copy of its activations or gradients)."""
    return calls[0] if len(calls) == 1 else torch.cat(calls, 1)


def _gram_key(a: torch.Tensor) -> tuple:
    """Identifies a layer input by its storage and view. Keys are taken from the inputs the layers'
    calls keep until the step ends, so no address is reused by another tensor while cached."""
    return (a.data_ptr(), tuple(a.shape), a.stride(), a.dtype)


class _Matmul(_Prepared):
    """y = a W^T + b over tokens/positions: a (B, T, p), g (B, T, d) (or (B, p), (B, d)) per call;
    the calls' tokens are concatenated (a sample's gradient is the sum over calls)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, pairs: Pairs, grams: Grams) -> None:
        self.weight, self.bias, self.grams = weight, bias, grams
        self.key = tuple(_gram_key(a) for a, _ in pairs)  # layers fed the same inputs share a Gram matrix
        self.a = _join([_tokens(a) for a, _ in pairs])
        self.g = _join([_tokens(g) for _, g in pairs])

    def norm_sq(self) -> torch.Tensor:
        return _matmul_norm_sq(self.weight, self.bias, self.a, self.g, self.grams, self.key)

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        gc = self.g * coef.view(-1, 1, 1).to(self.g.dtype)
        out = {}
        if self.weight.requires_grad:
            w = torch.einsum("btd,btp->dp", gc, self.a)
            out[id(self.weight)] = w.reshape(self.weight.shape)
        if self.bias is not None and self.bias.requires_grad:
            out[id(self.bias)] = gc.sum((0, 1))
        return out


def _ghost_cheaper(t: int, p: int, d: int) -> bool:
    """Ghost norm (two (T, T) Gram matrices) costs less than the instantiated (d, p) gradient."""
    return t * t * (p + d) <= t * p * d


def _gram_matrix(a: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a, a.transpose(1, 2))


def _gram(a: torch.Tensor, key: tuple | None, grams: Grams | None) -> torch.Tensor:
    """A A^T per sample, shared between layers whose inputs are the same tensors (same ``key``)."""
    if grams is None or key is None:
        return _gram_matrix(a)
    if key not in grams:
        grams[key] = _gram_matrix(a)
    return grams[key]


def _matmul_norm_sq(
    weight: nn.Parameter,
    bias: nn.Parameter | None,
    a: torch.Tensor,
    g: torch.Tensor,
    grams: Grams | None = None,
    key: tuple | None = None,
) -> torch.Tensor:
    """Per-sample squared gradient norm of y_t = W a_t + b summed over t; a (B, T, p), g (B, T, d)."""
    t, p, d = a.shape[1], a.shape[2], g.shape[2]
    total = torch.zeros(a.shape[0], dtype=a.dtype)
    if weight.requires_grad:
        if _ghost_cheaper(t, p, d):
            total = total + (_gram(a, key, grams) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        else:
            total = total + torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))
    if bias is not None and bias.requires_grad:
        total = total + g.sum(1).pow(2).sum(1)
    return total


class _Conv(_Prepared):
    """Conv2d: norms from the unfolded input (not kept: it is large; a reused layer's calls
    concatenated along positions); the clipped sum is torch's own convolution weight-gradient
    kernel applied to coefficient-scaled output gradients, summed over calls."""

    def __init__(self, module: nn.Conv2d, pairs: Pairs) -> None:
        self.m, self.pairs = module, pairs

    def norm_sq(self) -> torch.Tensor:
        m = self.m
        positions = sum(g[0].numel() // g.shape[1] for _, g in self.pairs)  # over all calls
        if m.weight.requires_grad and not _ghost_cheaper(positions, m.weight[0].numel(), m.weight.shape[0]):
            return self._instantiated_norm_sq()
        parts, batch = [], self.pairs[0][0].shape[0]
        for start in range(0, batch, _CHUNK):  # the unfolded input is large: chunk it
            rows = slice(start, start + _CHUNK)
            cols = [F.unfold(a[rows], m.kernel_size, m.dilation, m.padding, m.stride) for a, _ in self.pairs]
            a_t = _join([c.transpose(1, 2) for c in cols])  # (b, L, p)
            g_t = _join([g[rows].flatten(2).transpose(1, 2) for _, g in self.pairs])  # (b, L, d)
            parts.append(_matmul_norm_sq(m.weight, m.bias, a_t, g_t))
        return torch.cat(parts)

    def _instantiated_norm_sq(self) -> torch.Tensor:
        """Per-sample weight gradients chunk by chunk (summed over calls), only their norms kept."""
        m, parts, batch = self.m, [], self.pairs[0][0].shape[0]
        for start in range(0, batch, _CHUNK):
            rows = slice(start, start + _CHUNK)
            grads = sum(_conv_weight_per_sample(m, a[rows], g[rows]) for a, g in self.pairs)
            parts.append(grads.pow(2).sum((1, 2)))
        total = torch.cat(parts)
        if m.bias is not None and m.bias.requires_grad:
            total = total + sum(g.sum((2, 3)) for _, g in self.pairs).pow(2).sum(1)
        return total

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        m, out = self.m, {}
        scaled = [(a, g * coef.view(-1, 1, 1, 1).to(g.dtype)) for a, g in self.pairs]
        if m.weight.requires_grad:
            out[id(m.weight)] = sum(self._weight_grad(a, gc) for a, gc in scaled)
        if m.bias is not None and m.bias.requires_grad:
            out[id(m.bias)] = sum(gc.sum((0, 2, 3)) for _, gc in scaled)
        return out

    def _weight_grad(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        m = self.m
        return torch.nn.grad.conv2d_weight(
            a, m.weight.shape, g, stride=m.stride, padding=m.padding, dilation=m.dilation
        )


class _Embedding(_Prepared):
    """Rows picked by ids: per sample, the ids and output gradients of all calls concatenated."""

    def __init__(self, module: nn.Embedding, pairs: Pairs) -> None:
        self.weight, self.padding_idx = module.weight, module.padding_idx
        self.ids = _join([a.flatten(1) for a, _ in pairs])
        self.g = _join([_tokens(g) for _, g in pairs])

    def norm_sq(self) -> torch.Tensor:
        same = self.ids.unsqueeze(2) == self.ids.unsqueeze(1)  # (B, T, T)
        if self.padding_idx is not None:  # torch gives the padding row no gradient
            same &= (self.ids != self.padding_idx).unsqueeze(2)
        return (same.to(self.g.dtype) * torch.bmm(self.g, self.g.transpose(1, 2))).sum((1, 2))

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        gc = (self.g * coef.view(-1, 1, 1).to(self.g.dtype)).reshape(-1, self.g.shape[-1])
        grad = torch.zeros_like(self.weight)
        grad.index_add_(0, self.ids.reshape(-1), gc)
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0
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
            (p, gs.flatten(1)) for p, gs in ((weight, gw), (bias, gb)) if p is not None and id(p) in trainable
        ]

    def norm_sq(self) -> torch.Tensor:
        return sum((gs.pow(2).sum(1) for _, gs in self.parts), start=torch.zeros(self.parts[0][1].shape[0]))

    def clipped_sum(self, coef: torch.Tensor) -> dict[int, torch.Tensor]:
        return {id(p): (gs * coef.view(-1, 1)).sum(0).reshape(p.shape) for p, gs in self.parts}
