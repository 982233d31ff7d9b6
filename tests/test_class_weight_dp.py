"""Explicit class weights under DP-SGD (common/privacy/mechanism/clipping.py): every clipping engine clips
each record's gradient of its weighted loss, w_y * grad l_i, and sums them, as computed one sample
at a time by plain autograd, scaled, clipped and summed by hand (noise_multiplier 0). A weighted
mean that divided by the batch's weight sum would tie each record's gradient to the others'
labels; this checks it does not."""

from __future__ import annotations

import pytest
import torch

from common.privacy.mechanism.clipping import MODES
from tests.test_bookkeeping import clipped_sum, forward, per_sample
from tests.test_clipping import build, private

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")]
WEIGHTS = torch.tensor([0.5, 2.0, 1.0])  # tiny BERT has 3 classes


def weighted_reference() -> tuple[dict[str, torch.Tensor], float]:
    model, inputs, labels = build("bert")
    grads, norms = per_sample(model, inputs, labels)
    scale = WEIGHTS[labels]
    grads = [{k: v * float(s) for k, v in g.items()} for g, s in zip(grads, scale, strict=True)]
    norms = norms * scale
    c = float(norms.median())  # some records clipped, some not
    return clipped_sum(grads, norms, c), c


@pytest.mark.parametrize("mode", MODES)
def test_every_engine_clips_the_weighted_per_record_gradient(mode: str) -> None:
    want, c = weighted_reference()
    model, inputs, labels = build("bert")
    assert len(set(labels.tolist())) > 1  # the weights differ across this batch
    step = private(model, mode, c, len(labels), class_weights=WEIGHTS)
    try:
        step.optimizer.zero_grad(set_to_none=True)
        step.criterion(forward(model, inputs), labels).backward()
        step.optimizer.pre_step()  # clip, add zero noise, scale by 1 / expected batch size
        got = {n: p.grad * len(labels) for n, p in model.named_parameters() if p.requires_grad}
    finally:
        step.close()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")
