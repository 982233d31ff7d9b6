"""common/privacy/mechanism/bookkeeping.py: the one-backward clipped gradient sum and per-sample norms equal
the textbook DP-SGD quantities sum_i min(1, C/||g_i||) g_i and ||g_i||, with g_i computed one
sample at a time by plain autograd, for the layer types of Confide's models (BERT full and LoRA,
DP-ready ResNet with GroupNorm), for modules that run more than once per forward pass (ALBERT's
shared layers with and without LoRA; reused Linear, Embedding, LayerNorm, GroupNorm and both
Conv2d paths; a call off the loss's graph), and on the ghost-norm branch with a shared Gram matrix
(BERT at 64 tokens, as MiniLM); that parameters get no stray unclipped gradient; and that what it
cannot clip (unsupported layers, parameters tied between modules) is refused, naming the module."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from common import config as config_mod
from common.models import build_model
from common.privacy.mechanism import bookkeeping
from common.privacy.mechanism.bookkeeping import BookKeeping, supports

pytestmark = pytest.mark.unit

Grads = dict[str, torch.Tensor]


def tiny_bert(lora: bool = False, hidden: int = 16, layers: int = 2, positions: int = 12) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=40, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 3 // 2, max_position_embeddings=positions, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    return with_lora(BertForSequenceClassification(cfg)) if lora else BertForSequenceClassification(cfg)


def tiny_albert(lora: bool = False) -> nn.Module:
    """Two hidden layers sharing one layer group: every encoder module runs twice per forward."""
    from transformers import AlbertConfig, AlbertForSequenceClassification

    torch.manual_seed(0)
    cfg = AlbertConfig(
        vocab_size=40, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_hidden_groups=1,
        num_attention_heads=2, intermediate_size=24, max_position_embeddings=12, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    model = AlbertForSequenceClassification(cfg)
    return with_lora(model) if lora else model


def with_lora(model: nn.Module) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"]))
    for n, p in model.named_parameters():  # non-zero B so LoRA A gets a gradient too
        if "lora_B" in n:
            nn.init.normal_(p, std=0.1)
    return model


def bert_batch(n: int = 5, t: int = 10) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (n, t), generator=g)
    ids[:, t - 3 :] = 0  # padding, and repeated tokens within a sample
    ids[:, 1] = ids[:, 2]
    mask = (ids != 0).long()
    pos = torch.arange(t).expand(n, t).contiguous()
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "position_ids": pos}
    return inputs, torch.randint(0, 3, (n,), generator=g)


def forward(model: nn.Module, inputs) -> torch.Tensor:
    return model(**inputs).logits if isinstance(inputs, dict) else model(inputs)


def per_sample(model: nn.Module, inputs, labels: torch.Tensor) -> tuple[list[Grads], torch.Tensor]:
    """Each sample's gradient by plain autograd, one sample at a time, and its norm."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = []
    for i in range(len(labels)):
        one = {k: v[i : i + 1] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[i : i + 1]
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(model, one), labels[i : i + 1]).backward()
        grads.append({n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in params.items()})
    model.zero_grad(set_to_none=True)
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in gs.values())) for gs in grads])
    return grads, norms


def clipped_sum(grads: list[Grads], norms: torch.Tensor, c: float) -> Grads:
    """sum_i min(1, C / (||g_i|| + 1e-6)) g_i, by hand (Opacus's coefficient)."""
    coefs = [min(1.0, c / (float(n) + 1e-6)) for n in norms]
    return {name: sum(gs[name] * k for gs, k in zip(grads, coefs)) for name in grads[0]}


def reference(model: nn.Module, inputs, labels: torch.Tensor, c: float) -> tuple[Grads, torch.Tensor]:
    """Per-sample gradients one sample at a time, clipped and summed; and their norms."""
    grads, norms = per_sample(model, inputs, labels)
    return clipped_sum(grads, norms, c), norms


def check(model: nn.Module, inputs, labels: torch.Tensor) -> None:
    model.train()
    grads, norms = per_sample(model, inputs, labels)
    c = float(norms.median())  # some samples clipped, some not
    expected = clipped_sum(grads, norms, c)
    engine = BookKeeping(model, c)
    losses = nn.functional.cross_entropy(forward(model, inputs), labels, reduction="none")
    engine.backward(losses)
    engine.remove()
    torch.testing.assert_close(engine.last_norms, norms.float(), rtol=1e-4, atol=1e-6)
    got = dict(model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(got[name].grad, value, rtol=1e-4, atol=1e-6, msg=name)
    assert all(got[name].requires_grad for name in expected)  # frozen only during the step


def calls_per_module(model: nn.Module, inputs) -> dict[str, int]:
    counts = {name: 0 for name, _ in model.named_modules()}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: counts.__setitem__(n, counts[n] + 1))
               for n, m in model.named_modules()]  # fmt: skip
    with torch.no_grad():
        forward(model, inputs)
    for h in handles:
        h.remove()
    return counts


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple]:
    """Record the arguments and result of every call of ``bookkeeping.<name>``."""
    seen: list[tuple] = []
    real: Callable = getattr(bookkeeping, name)

    def wrapper(*args):
        out = real(*args)
        seen.append((*args, out))
        return out

    monkeypatch.setattr(bookkeeping, name, wrapper)
    return seen


# --------------------------------------------------------------------------- models run once per forward


def test_bert_full_fine_tuning() -> None:
    inputs, labels = bert_batch()
    check(tiny_bert(), inputs, labels)


def test_bert_lora() -> None:
    inputs, labels = bert_batch()
    model = tiny_bert(lora=True)
    check(model, inputs, labels)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)


def test_dp_ready_resnet() -> None:
    exp = config_mod.load(None, {"model.name": "resnet18", "privacy.mode": "local"})
    # GroupNorm, out-of-place residuals; in float64: ResNet-18's float32 sums differ in the 7th digit
    # by summation order alone (1.3e-6 on fc.weight against one-sample-at-a-time autograd)
    model = build_model(exp, 3).double()
    g = torch.Generator().manual_seed(2)
    check(model, torch.randn(4, 1, 12, 12, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1]))


def test_both_conv_paths_with_bias_and_chunked_batch() -> None:
    """A large-map conv takes the early per-sample path, a small-map one keeps (a, g) for the
    weight-gradient kernel; both with biases and more samples than one unfold chunk."""
    torch.manual_seed(3)
    early, late = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 32, 3, stride=2, padding=1)
    model = nn.Sequential(early, nn.GroupNorm(1, 3), nn.ReLU(), late, nn.Flatten(), nn.Linear(32 * 16, 3))
    x = torch.randn(bookkeeping._CHUNK + 3, 2, 8, 8)
    b = len(x)
    assert bookkeeping._conv_instantiate(early, b, x.numel() + b * 3 * 8 * 8)
    assert not bookkeeping._conv_instantiate(late, b, b * 3 * 8 * 8 + b * 32 * 4 * 4)
    check(model, x, torch.arange(b) % 3)


# --------------------------------------------------------------------------- modules run more than once


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_albert_shared_layers(lora: bool) -> None:
    """ALBERT runs its one layer group twice: per-sample gradients are sums over both calls."""
    inputs, labels = bert_batch()
    model = tiny_albert(lora)
    counts = calls_per_module(model, inputs)
    shared = [n for n, k in counts.items() if k == 2 and n.endswith(("query", "value", "lora_A.default", "ffn"))]
    assert len(shared) >= (4 if lora else 3)  # the premise: trainable layers that run twice
    assert supports(model) == []
    check(model, inputs, labels)


class SharedLayers(nn.Module):
    """Embedding, Linear and LayerNorm each run twice per forward; a third Linear call is off the
    loss's graph (its output unused), so it gets no output gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.emb, self.lin = nn.Embedding(20, 8, padding_idx=0), nn.Linear(8, 8)
        self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 3)
        self.alias = self.lin  # one module under two names: reuse, not a tie

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.emb(ids.flip(1))
        h = self.norm(h + torch.tanh(self.lin(h)))
        h = self.norm(h + torch.tanh(self.alias(h)))
        self.lin(h)  # unused
        return self.head(h.mean(1))


class SharedConvs(nn.Module):
    """Two convolutions each run twice: ``early`` on 4x4 and 2x2 maps (instantiated per-sample
    gradients, decided for both calls together: the 2x2 call alone would keep (a, g)), ``late`` on
    the unfold path; a GroupNorm also runs twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.early, self.late = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 32, 3, stride=2, padding=1)
        self.norm, self.head = nn.GroupNorm(2, 4), nn.Linear(32 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.norm(self.early(nn.functional.avg_pool2d(x, 2))).repeat_interleave(2, -1)
        h = torch.tanh(self.norm(self.early(x))) + torch.tanh(coarse.repeat_interleave(2, -2))
        return self.head((self.late(h) + self.late(h.flip(-2))).flatten(1))


def test_reused_linear_embedding_layernorm_and_a_call_off_the_graph() -> None:
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 20, (6, 7), generator=g)
    ids[:, 5:] = 0
    model = SharedLayers()
    assert calls_per_module(model, ids)["lin"] == 3
    check(model, ids, torch.randint(0, 3, (6,), generator=g))


def test_reused_convolutions_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    model = SharedConvs()
    instantiated = spy(monkeypatch, "_conv_per_sample")
    x = torch.randn(bookkeeping._CHUNK + 2, 2, 4, 4, generator=torch.Generator().manual_seed(7))
    assert not bookkeeping._conv_instantiate(model.early, 1, 2 * 2 * 2 + 4 * 2 * 2)  # the 2x2 call alone
    check(model, x, torch.arange(len(x)) % 3)
    assert [args[0] for args in instantiated] == [model.early, model.early]  # late: unfold path, twice


# --------------------------------------------------------------------------- ghost norm with a shared Gram matrix


def test_ghost_norm_branch_and_shared_gram_at_64_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """MiniLM's regime: at T = 64 tokens and hidden size 128, attention and feed-forward layers take
    the ghost-norm branch, and query/key/value (same input tensor) share one Gram matrix."""
    branches, grams, computed = spy(monkeypatch, "_ghost_cheaper"), spy(monkeypatch, "_gram"), []
    real_matrix = bookkeeping._gram_matrix
    monkeypatch.setattr(bookkeeping, "_gram_matrix", lambda a: computed.append(a.shape) or real_matrix(a))
    inputs, labels = bert_batch(n=3, t=64)
    check(tiny_bert(hidden=128, layers=1, positions=64), inputs, labels)
    assert any(t == 64 and ghost for t, p, d, ghost in branches)
    long = [key for a, key, _, _ in grams if a.shape[1] == 64]
    assert len(long) >= 6 and len(set(long)) <= len(long) - 2  # q, k, v hit one cache entry
    assert len(computed) == len({key for _, key, _, _ in grams})  # one Gram matrix per distinct input


class ViewsOfOneTensor(nn.Module):
    """Two layers whose inputs start at the same address: the whole sequence and its first half
    (same data pointer and strides, different shape); both on the ghost-norm branch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.whole, self.prefix, self.head = nn.Linear(128, 128), nn.Linear(128, 128), nn.Linear(128, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.whole(x)).mean(1) + torch.tanh(self.prefix(x[:, :32])).mean(1))


def test_gram_cache_tells_views_of_one_storage_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    branches = spy(monkeypatch, "_ghost_cheaper")
    x = torch.randn(3, 64, 128, generator=torch.Generator().manual_seed(9))
    check(ViewsOfOneTensor(), x, torch.tensor([0, 1, 2]))
    assert {(t, ghost) for t, _, _, ghost in branches} >= {(64, True), (32, True)}


# --------------------------------------------------------------------------- memory


def test_a_module_called_once_keeps_no_copy_of_its_activations_or_gradients() -> None:
    """The single-call path works on the captured tensors themselves: a Linear's input and output
    gradient and an Embedding's ids and output gradient (padding masked without a copy) share
    storage with what the hooks captured; only a reused module's calls are concatenated."""
    g = torch.Generator().manual_seed(11)
    lin, emb = nn.Linear(6, 5), nn.Embedding(9, 5, padding_idx=0)
    a, ga = torch.randn(4, 7, 6, generator=g), torch.randn(4, 7, 5, generator=g)
    ids, ge = torch.randint(0, 9, (4, 7), generator=g), torch.randn(4, 7, 5, generator=g)
    mm = bookkeeping._Matmul(lin.weight, lin.bias, [(a, ga)], {})
    em = bookkeeping._Embedding(emb, [(ids, ge)])
    assert mm.a.data_ptr() == a.data_ptr() and mm.g.data_ptr() == ga.data_ptr()
    assert em.ids.data_ptr() == ids.data_ptr() and em.g.data_ptr() == ge.data_ptr()
    twice = bookkeeping._Matmul(lin.weight, lin.bias, [(a, ga), (a, ga)], {})
    assert twice.a.shape == (4, 14, 6) and twice.g.shape == (4, 14, 5)  # the calls' tokens side by side


def graph_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The tensors the loss's autograd graph accumulates gradients into."""
    seen, todo, leaves = set(), [loss.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        todo += [n for n, _ in node.next_functions]
    return leaves


def test_nothing_captured_outlives_the_step() -> None:
    """A training loop keeps its loss, hence the autograd graph and its hooks, until the next
    forward pass: after the step no captured activation or output gradient may still be held
    (neither by the engine nor by the calls the hooks reference), and the graph holds no
    activation-sized leaf, so the next forward pass starts from the memory of plain training."""
    import gc

    torch.manual_seed(12)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 36, 3))
    engine = BookKeeping(model, 1.0)
    losses = nn.functional.cross_entropy(model(torch.randn(5, 1, 6, 6)), torch.arange(5) % 3, reduction="none")
    engine.backward(losses)
    calls = [o for o in gc.get_objects() if isinstance(o, bookkeeping._Call)]
    assert calls, "the hooks' calls are reachable while the loss lives"
    assert all(c.a is None and c.g is None for c in calls)
    assert not engine.calls and not engine.early
    assert all(isinstance(t, nn.Parameter) or t.numel() <= 1 for t in graph_leaves(losses))
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------- refused


def test_unsupported_layers_are_named() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert supports(model) == ["1 (BatchNorm2d)"]
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BookKeeping(model, 1.0)


class TiedOutput(nn.Module):
    """An embedding matrix reused as the output projection (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.emb, self.mix, self.out = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.emb(ids))).mean(1))


def test_tied_parameters_are_refused_naming_the_modules() -> None:
    model = TiedOutput()
    bad = supports(model)
    assert len(bad) == 2 and bad[0].startswith("emb (Embedding)") and bad[1].startswith("out (Linear)")
    with pytest.raises(ValueError, match=r"emb \(Embedding\).*out \(Linear\)"):
        BookKeeping(model, 1.0)
    model.emb.weight.requires_grad_(False)  # a frozen tied matrix is no one's per-sample gradient
    assert supports(model) == []
