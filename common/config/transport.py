"""The ``transport`` section: how updates are compressed on the wire."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config.require import _require


@dataclass(frozen=True)
class TransportConfig:
    """Compressed updates (common/compress.py): how weights travel between sites and coordinator.
    Applied after DP noise, so it is post-processing and leaves epsilon unchanged."""

    # "none" (float32), "fp16", "bf16" or "int8" (symmetric, one scale per tensor or per block).
    quantize: Literal["none", "fp16", "bf16", "int8"] = "none"
    # int8 only: elements per scale block (0: one scale per tensor).
    block_size: int = 0
    # Fraction of each update's elements a site sends (largest magnitudes; the rest is kept at the
    # site and added to the next round's update: error feedback). 0: off (dense).
    topk: float = 0.0
    # Whether the coordinator's broadcast of the global model is quantised the same way.
    broadcast: bool = False

    def __post_init__(self) -> None:
        _require(self.block_size >= 0, "transport.block_size", "must be >= 0 (0: one scale per tensor)")
        _require(0 <= self.topk < 1, "transport.topk", "must be in [0, 1) (0: dense)")
        _require(
            self.block_size == 0 or self.quantize == "int8",
            "transport.block_size",
            f"is for transport.quantize=int8 (got '{self.quantize}'); leave it 0",
        )
        _require(
            not self.broadcast or self.quantize != "none",
            "transport.broadcast",
            "quantises the global model as transport.quantize says; set transport.quantize (fp16, bf16 or int8)",
        )
