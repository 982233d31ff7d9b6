"""Compressed updates (the ``transport`` config section): pure encode/decode, numpy in, numpy out.

A site sends its **update** (its weights minus the model it received this round), not its
weights, and the coordinator may send the global model itself quantised (``transport.broadcast``).
Floating-point tensors are compressed; integer tensors (BatchNorm's ``num_batches_tracked``)
travel as they are (a site's absolute value, as without compression).

Per floating-point tensor ``<name>`` a payload holds:

- ``<name>``: the values: float16 (``fp16``), bfloat16 bits as uint16 (``bf16``: numpy has no
  bfloat16), int8 (``int8``) or float32 (``none``, with top-k only); the tensor's shape when dense,
  ``(k,)`` with top-k;
- ``<name>::scale`` (int8 only): float32, one scale per tensor (``block_size`` 0) or per block of
  ``block_size`` consecutive elements (row-major), symmetric: ``value = q * scale``,
  ``scale = max|x| / 127`` over the block, so every element is off by at most ``scale / 2``;
- ``<name>::idx`` (top-k only): int32 flat indices of the ``k = ceil(topk * size)`` elements of
  largest magnitude, distinct; every other element of the update is 0. What was not sent (the
  other elements, and the quantisation error of those sent) is the site's **residual**, added to
  its next update (error feedback), so over rounds nothing is lost, only delayed.

Everything here is post-processing of what the site would otherwise send: compression after DP
noise leaves epsilon unchanged. With client-side clipping (central DP) ``encode_update`` also
keeps the decoded update within the clipping norm, which the coordinator verifies.
A malformed payload raises UpdateError naming its source and tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from common.config import TransportConfig
from common.errors import UpdateError
from common.weights import Weights

DENSE_KEY = "transport.dense"  # train config: the tensors sites send dense with top-k (statistics)
SEP = "::"
SCALE = SEP + "scale"
IDX = SEP + "idx"
INT8_MAX = 127
VALUE_DTYPES = {"none": np.dtype(np.float32), "fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16),
                "int8": np.dtype(np.int8)}  # fmt: skip
_SHRINK = 1 - 1e-3  # how far below the clipping norm a decoded update that came out above it is pulled


def active(t: TransportConfig) -> bool:
    """Whether site replies are compressed at all (the default, float32 and dense, is not)."""
    return t.quantize != "none" or t.topk > 0


def compresses_broadcast(t: TransportConfig) -> bool:
    return t.broadcast and t.quantize != "none"


def is_float(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


# -- elementary codecs ---------------------------------------------------------------------------


def to_bf16(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (round to nearest even, as torch casts) as uint16."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16).copy()


def from_bf16(bits: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(bits, dtype=np.uint16).view(np.int16)).view(torch.bfloat16)
    return t.to(torch.float32).numpy()


def num_blocks(size: int, block_size: int) -> int:
    return 1 if block_size == 0 or size == 0 else math.ceil(size / block_size)


def _blocks(flat: np.ndarray, block_size: int) -> np.ndarray:
    """``flat`` as rows of ``block_size`` (the last row zero-padded); one row when block_size is 0."""
    if block_size == 0 or flat.size == 0:
        return flat.reshape(1, -1)
    rows = num_blocks(flat.size, block_size)
    return np.pad(flat, (0, rows * block_size - flat.size)).reshape(rows, block_size)


def int8_encode(x: np.ndarray, block_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8: (q with x's shape, float32 scales, one per block). Non-finite input gives a
    non-finite scale, so the decoded tensor is non-finite and refused by the coordinator's checks."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return np.zeros(np.shape(x), np.int8), np.zeros(1, np.float32)
    rows = _blocks(flat, block_size)
    with np.errstate(invalid="ignore"):
        scale = (np.abs(rows).max(axis=1) / INT8_MAX).astype(np.float32)
    divisor = np.where(scale > 0, scale, 1).astype(np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        q = np.clip(np.rint(np.nan_to_num(rows / divisor)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q.reshape(-1)[: flat.size].reshape(np.shape(x)), scale


def int8_decode(q: np.ndarray, scale: np.ndarray, block_size: int = 0) -> np.ndarray:
    rows = _blocks(q.reshape(-1).astype(np.float32), block_size)
    return (rows * scale.astype(np.float32)[:, None]).reshape(-1)[: q.size].reshape(q.shape)


def topk_indices(x: np.ndarray, fraction: float) -> np.ndarray:
    """Flat int32 indices of the ``topk_count`` elements of largest magnitude (ties: lowest index)."""
    flat = np.asarray(x).reshape(-1)
    k = topk_count(flat.size, fraction)
    magnitude = np.nan_to_num(np.abs(flat).astype(np.float64), nan=np.inf)  # non-finite is sent, and refused
    order = np.argsort(-magnitude, kind="stable")[:k]
    return np.sort(order).astype(np.int32)


def topk_count(size: int, fraction: float) -> int:
    return min(size, max(1, math.ceil(fraction * size))) if size else 0


# -- one tensor ------------------------------------------------------------------------------------


def encode_values(x: np.ndarray, t: TransportConfig) -> dict[str, np.ndarray]:
    """One float tensor's values, quantised: {suffix: array} ('' the values, '::scale')."""
    if t.quantize == "int8":
        q, scale = int8_encode(x, t.block_size)
        return {"": q, SCALE: scale}
    if t.quantize == "fp16":
        return {"": np.asarray(x, dtype=np.float16)}
    if t.quantize == "bf16":
        return {"": to_bf16(x)}
    return {"": np.asarray(x, dtype=np.float32)}


def decode_values(parts: Mapping[str, np.ndarray], t: TransportConfig) -> np.ndarray:
    values = parts[""]
    if t.quantize == "int8":
        return int8_decode(values, parts[SCALE], t.block_size)
    if t.quantize == "bf16":
        return from_bf16(values)
    return values.astype(np.float32)


def encode_tensor(x: np.ndarray, t: TransportConfig) -> dict[str, np.ndarray]:
    """One float tensor (an update, or a broadcast weight when ``t.topk`` is 0): {suffix: array}."""
    if t.topk <= 0:
        return encode_values(x, t)
    idx = topk_indices(x, t.topk)
    return {**encode_values(np.asarray(x).reshape(-1)[idx], t), IDX: idx}


def decode_tensor(parts: Mapping[str, np.ndarray], shape: tuple[int, ...], t: TransportConfig) -> np.ndarray:
    values = decode_values(parts, t)
    if t.topk <= 0:
        return values.reshape(shape)
    out = np.zeros(int(np.prod(shape)), np.float32)
    out[parts[IDX]] = values
    return out.reshape(shape)


# -- a site's update -------------------------------------------------------------------------------


def encode_update(
    new: Weights,
    received: Weights,
    t: TransportConfig,
    residual: Weights | None = None,
    max_norm: float | None = None,
    dense: frozenset[str] = frozenset(),
) -> tuple[Weights, Weights]:
    """(payload, residual) for a site's new weights against the model it ``received``.

    With top-k the previous ``residual`` (if it fits) is added to the update first and the new
    residual is what this payload leaves out. ``max_norm`` (client-side clipping): the update is
    clipped to it, and the decoded update is kept within it too (quantisation can lengthen it).
    ``dense``: tensors never sparsified (statistics such as BatchNorm's running mean and variance:
    a model whose weights moved but whose statistics stayed behind normalises with the wrong scale)."""
    floats = [k for k in new if is_float(new[k])]
    update = {k: np.asarray(new[k], np.float32) - np.asarray(received[k], np.float32) for k in floats}
    if t.topk > 0 and _fits(residual, update):
        update = {k: u + residual[k] for k, u in update.items()}  # type: ignore[index]
    if max_norm is not None:
        update = _clipped(update, max_norm)
    encoded = {k: encode_tensor(u, _codec(t, k, dense)) for k, u in update.items()}
    decoded = {k: decode_tensor(parts, update[k].shape, _codec(t, k, dense)) for k, parts in encoded.items()}
    for _ in range(8):  # quantisation rounds away from zero: pull the update in until it decodes within the norm
        if max_norm is None or _norm(decoded) <= max_norm:
            break
        update = {k: u * (max_norm / _norm(decoded) * _SHRINK) for k, u in update.items()}
        encoded = {k: encode_tensor(u, _codec(t, k, dense)) for k, u in update.items()}
        decoded = {k: decode_tensor(parts, update[k].shape, _codec(t, k, dense)) for k, parts in encoded.items()}
    payload = {k + suffix: a for k, parts in encoded.items() for suffix, a in parts.items()}
    payload |= {k: np.asarray(v) for k, v in new.items() if k not in update}
    left = {k: update[k] - decoded[k] for k in update} if t.topk > 0 else {}
    if not all(np.isfinite(v).all() for v in left.values()):
        left = {}  # a non-finite update is refused by the coordinator; it is not carried into the next round
    return payload, left


def decode_update(
    payload: Mapping[str, np.ndarray],
    reference: Weights,
    t: TransportConfig,
    source: str,
    dense: frozenset[str] = frozenset(),
) -> Weights:
    """The weights a site's payload stands for: ``reference`` (what the site received) plus the
    decoded update; integer tensors as sent. Raises UpdateError naming ``source`` and the tensor
    for a payload that is not what ``t`` makes (missing or extra parts, wrong dtype or shape,
    indices out of range or repeated, negative scales)."""
    _check_keys(payload, reference, t, source, dense)
    out: Weights = {}
    for key, ref in reference.items():
        if not is_float(ref):
            out[key] = np.asarray(payload[key])
            continue
        codec = _codec(t, key, dense)
        parts = _parts(payload, key, codec)
        _check_parts(parts, key, ref.shape, codec, f"update from {source}")
        update = decode_tensor(parts, ref.shape, codec)
        out[key] = (ref.astype(np.float32) + update).astype(ref.dtype)
    return out


# -- the coordinator's broadcast --------------------------------------------------------------------


def encode_weights(weights: Weights, t: TransportConfig) -> Weights:
    """The global model quantised (dense, whatever ``t.topk``): its float tensors as ``encode_values``
    makes them, integer tensors as they are."""
    dense = _dense(t)
    payload: Weights = {}
    for key, value in weights.items():
        parts = encode_values(value, dense) if is_float(value) else {"": np.asarray(value)}
        payload |= {key + suffix: a for suffix, a in parts.items()}
    return payload


def decode_weights(payload: Mapping[str, np.ndarray], t: TransportConfig, source: str) -> Weights:
    """The weights ``encode_weights`` encoded (float32 where they were quantised)."""
    dense = _dense(t)
    marker = VALUE_DTYPES[t.quantize]
    out: Weights = {}
    for key in (k for k in payload if SEP not in k):
        value = np.asarray(payload[key])
        if value.dtype != marker:  # an integer tensor, sent as it is
            out[key] = value
            continue
        parts = _parts(payload, key, dense)
        _check_parts(parts, key, value.shape, dense, f"weights from {source}")
        out[key] = decode_tensor(parts, value.shape, dense)
    used = {k + s for k in out for s in _expected_parts(dense)}
    extra = sorted(set(payload) - used)
    if extra:
        raise UpdateError(f"weights from {source} have unexpected tensor '{extra[0]}' ({t.quantize=})")
    return out


def payload_bytes(payload: Mapping[str, np.ndarray]) -> int:
    """The bytes of every array's data (as ``common.weights.num_bytes`` counts a plain model)."""
    return int(sum(np.asarray(v).nbytes for v in payload.values()))


# -- helpers -----------------------------------------------------------------------------------------


def _dense(t: TransportConfig) -> TransportConfig:
    return TransportConfig(quantize=t.quantize, block_size=t.block_size)


def _fits(residual: Weights | None, update: Weights) -> bool:
    return (
        residual is not None
        and set(residual) == set(update)
        and all(np.shape(residual[k]) == u.shape for k, u in update.items())
    )


def _norm(weights: Mapping[str, np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in weights.values())))


def _clipped(update: Weights, max_norm: float) -> Weights:
    norm = _norm(update)
    if norm <= max_norm or norm == 0:
        return update
    return {k: (u * (max_norm / norm)).astype(np.float32) for k, u in update.items()}


def _expected_parts(t: TransportConfig) -> tuple[str, ...]:
    return ("",) + ((SCALE,) if t.quantize == "int8" else ()) + ((IDX,) if t.topk > 0 else ())


def _parts(payload: Mapping[str, np.ndarray], key: str, t: TransportConfig) -> dict[str, np.ndarray]:
    return {suffix: np.asarray(payload[key + suffix]) for suffix in _expected_parts(t) if key + suffix in payload}


def _codec(t: TransportConfig, key: str, dense: frozenset[str]) -> TransportConfig:
    return _dense(t) if key in dense else t


def _check_keys(
    payload: Mapping[str, np.ndarray], reference: Weights, t: TransportConfig, source: str, dense: frozenset[str]
) -> None:
    parts = {k: _expected_parts(_codec(t, k, dense)) if is_float(ref) else ("",) for k, ref in reference.items()}
    expected = {k + s for k, suffixes in parts.items() for s in suffixes}
    missing = sorted(expected - set(payload))
    extra = sorted(set(payload) - expected)
    setting = f"transport.quantize={t.quantize}, transport.topk={t.topk:g}"
    if missing:
        raise UpdateError(f"update from {source} lacks tensor '{missing[0]}' ({len(missing)} missing; {setting})")
    if extra:
        raise UpdateError(f"update from {source} has unexpected tensor '{extra[0]}' ({len(extra)} extra; {setting})")


def _check_parts(
    parts: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], t: TransportConfig, source: str
) -> None:
    """The parts of one float tensor's payload have the dtypes and shapes ``t`` makes."""
    where = f"{source}: tensor '{key}'"
    if set(parts) != set(_expected_parts(t)):
        raise UpdateError(f"{where} lacks part(s) {sorted(set(_expected_parts(t)) - set(parts))}")
    size = math.prod(shape)
    sent = (topk_count(size, t.topk),) if t.topk > 0 else tuple(shape)
    _expect(parts[""], VALUE_DTYPES[t.quantize], sent, where, f"values (transport.quantize={t.quantize})")
    if t.topk > 0:
        idx = parts[IDX]
        _expect(idx, np.dtype(np.int32), sent, where, "indices")
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise UpdateError(f"{where} has top-k indices outside 0..{size - 1}")
        if np.unique(idx).size != idx.size:
            raise UpdateError(f"{where} has repeated top-k indices")
    if t.quantize == "int8":
        scale = parts[SCALE]
        _expect(scale, np.dtype(np.float32), (num_blocks(math.prod(sent), t.block_size),), where, "scales")
        if (scale < 0).any():
            raise UpdateError(f"{where} has negative int8 scales")


def _expect(a: np.ndarray, dtype: np.dtype, shape: tuple[int, ...], where: str, what: str) -> None:
    if a.dtype != dtype:
        raise UpdateError(f"{where}: {what} have dtype {a.dtype}, expected {dtype}")
    if a.shape != shape:
        raise UpdateError(f"{where}: {what} have shape {a.shape}, expected {shape}")
