"""A sweep file: one base experiment plus a grid of dotted config keys, expanded into cells.

    name: pneumonia-privacy-utility
    base: ../configs/hospital_resnet_pneumonia.yaml   # experiment file (relative to this file) or a mapping
    set:                                               # fixed overrides for every cell
      strategy.rounds: 8
    grid:                                              # every combination is one cell
      privacy.target_epsilon: [1, 3, 8, inf]           # inf: no DP (privacy.mode off)
      data.alpha: [0.5, 100]
      seed: [0]
    audit: {site: 0, max_records: 500, reference_models: 1}
    deterministic_sites: true
    cpus_per_site: 1

Every cell is resolved and validated through ``common.config`` before any cell runs, so an
unknown key or a bad value stops the sweep naming the key. A finite ``privacy.target_epsilon``
(or a positive ``privacy.noise_multiplier``) turns on DP-SGD at every site (``privacy.mode:
local``) unless the base or the grid sets ``privacy.mode``; ``inf`` (or a noise multiplier of 0)
means ``privacy.mode: off`` for that cell, whose other ``privacy.*`` keys are reset (they are the
private cells' settings); a grid that writes ``privacy.mode: off`` beside other ``privacy.*`` values
is refused (that cell would train without DP under a DP label). A cell's id is a hash of its resolved config and the
study settings, so the same cell always lands in the same folder and a rerun can skip it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import config as config_mod
from common import yamlfile
from common.config import ExperimentConfig
from common.errors import ConfigError

EPSILON_KEY = "privacy.target_epsilon"
NOISE_KEY = "privacy.noise_multiplier"
MODE_KEY = "privacy.mode"
TOP_KEYS = ("name", "base", "set", "grid", "audit", "deterministic_sites", "cpus_per_site")


@dataclass(frozen=True)
class AuditSettings:
    """The membership-inference audit run on every cell's final global model."""

    site: int = 0  # whose training records are the members
    max_records: int = 500  # members (= non-members) at most; 0: all that can be label-matched
    reference_models: int = 1  # for the calibrated attack; 0: loss-threshold attack only

    def __post_init__(self) -> None:
        _require(self.site >= 0, "audit.site", "must be >= 0")
        _require(self.max_records >= 0, "audit.max_records", "must be >= 0")
        _require(self.reference_models >= 0, "audit.reference_models", "must be >= 0")


@dataclass(frozen=True)
class Cell:
    id: str
    axes: dict[str, Any]  # this cell's grid values (epsilon as float, inf = no DP)
    exp: ExperimentConfig


@dataclass(frozen=True)
class Sweep:
    name: str
    source: str
    grid: dict[str, list[Any]]
    fixed: dict[str, Any]
    audit: AuditSettings = field(default_factory=AuditSettings)
    # Seed every site's RNGs per message (DP noise and sampling included) from the experiment seed,
    # so the same sweep gives the same table. Simulation studies only: see determinism.py.
    deterministic_sites: bool = True
    cpus_per_site: float = 1.0
    cells: tuple[Cell, ...] = ()

    @property
    def privacy_axis(self) -> str | None:
        return next((k for k in (EPSILON_KEY, NOISE_KEY) if k in self.grid), None)

    def settings(self) -> dict[str, Any]:
        """What besides the experiment config decides a cell's result (part of its id)."""
        return {"audit": asdict(self.audit), "deterministic_sites": self.deterministic_sites}


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None, axes: dict[str, Any] | None = None) -> Sweep:
    """Read, expand and validate a sweep file.

    ``overrides`` set a config key in every cell (e.g. a reduced budget); ``axes`` replace the
    values of existing grid axes (e.g. fewer seeds).
    """
    path = Path(path)
    raw = yamlfile.read_mapping(path, "sweep file")
    if axes:
        grid = _mapping(raw.get("grid") or {}, "grid", str(path))
        for key, values in axes.items():
            if key not in grid:
                raise ConfigError(f"'{key}' is not a grid axis of {path}; axes: {', '.join(grid) or 'none'}")
            grid[key] = values if isinstance(values, list) else [values]
        raw = {**raw, "grid": grid}
    return build_sweep(raw, base_dir=path.parent, source=str(path), overrides=overrides)


def build_sweep(
    raw: dict[str, Any], base_dir: Path, source: str = "<sweep>", overrides: dict[str, Any] | None = None
) -> Sweep:
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key '{unknown[0]}' in {source}; known keys: {', '.join(TOP_KEYS)}")
    name = _name(raw.get("name"), source)
    grid = _grid(raw.get("grid") or {}, source)
    fixed = {**_mapping(raw.get("set") or {}, "set", source), **(overrides or {})}
    clash = sorted(set(fixed) & set(grid))
    if clash:
        raise ConfigError(f"sweep key '{clash[0]}' is a grid axis in {source}; change the grid, not an override")
    sweep = Sweep(
        name=name,
        source=source,
        grid=grid,
        fixed=fixed,
        audit=_audit(raw.get("audit") or {}, source),
        deterministic_sites=_bool(raw.get("deterministic_sites", True), "deterministic_sites"),
        cpus_per_site=_positive(raw.get("cpus_per_site", 1.0), "cpus_per_site"),
    )
    base_path, base_overrides = _base(raw.get("base"), base_dir, source)
    if base_path is not None:  # checked once here, not once per cell
        yamlfile.read_mapping(base_path, f"sweep key 'base' in {source}: experiment file")
    cells: list[Cell] = []
    errors: list[tuple[str, str]] = []  # (cell, why)
    for values in _combinations(grid):  # every cell is checked, and all bad cells named at once
        try:
            cells.append(_cell(sweep, base_path, base_overrides, values))
        except ConfigError as exc:
            errors.append((", ".join(f"{k}={v}" for k, v in values.items()), str(exc)))
    if errors:
        raise ConfigError(_cell_errors(source, errors, len(cells)))
    return dataclasses.replace(sweep, cells=tuple(cells))


def _cell_errors(source: str, errors: list[tuple[str, str]], valid: int) -> str:
    """One line for the invalid cells: the reason once when every cell fails for the same one."""
    reasons = {why for _, why in errors}
    if not valid and len(errors) > 1 and len(reasons) == 1:
        return f"sweep {source}, every cell: {reasons.pop()}"
    more = f" ({len(errors)} of {len(errors) + valid} cells are invalid)" if len(errors) > 1 else ""
    return "; ".join(f"sweep {source}, cell ({where}): {why}" for where, why in errors) + more


def _cell(sweep: Sweep, base_path: Path | None, base_overrides: dict[str, Any], values: dict[str, Any]) -> Cell:
    mode = _base_mode(base_path, {**base_overrides, **sweep.fixed})
    cell_overrides = _privacy_overrides(values, mode)
    overrides = {**base_overrides, **sweep.fixed, **cell_overrides, "name": sweep.name}
    if cell_overrides.get(MODE_KEY) == "off":
        overrides.update(_NO_DP)
        if MODE_KEY in values:  # 'off' in the grid: its other DP values stay, so config names them
            overrides.update({k: v for k, v in values.items() if k.startswith("privacy.") and not _no_dp(k, v)})
    exp = config_mod.load(base_path, overrides)
    if sweep.audit.site >= exp.data.num_sites:
        raise ConfigError(
            f"sweep key 'audit.site' ({sweep.audit.site}) names no site: partition ids are 0..{exp.data.num_sites - 1}"
        )
    return Cell(id=cell_id(exp, sweep.settings()), axes=dict(values), exp=exp)


def cell_id(exp: ExperimentConfig, settings: dict[str, Any]) -> str:
    """A stable id: the hash of the resolved config (not its name, output folder or tracking) and study settings."""
    cfg = config_mod.to_dict(exp)
    for key in ("name", "output_dir", "tracking"):  # tracking: what is logged, not what is computed
        cfg.pop(key)
    cfg["train"].pop("threads")  # does not change results: simulate() runs one thread per site
    blob = json.dumps({"experiment": cfg, "study": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _privacy_overrides(values: dict[str, Any], base_mode: str) -> dict[str, Any]:
    """The cell's grid values as config overrides, with epsilon = inf meaning 'no DP'."""
    out = dict(values)
    explicit_mode = MODE_KEY in values
    if EPSILON_KEY in values:
        eps = values[EPSILON_KEY]
        if math.isinf(eps):
            out[MODE_KEY] = "off"
        elif not explicit_mode and base_mode == "off":
            out[MODE_KEY] = "local"
    if NOISE_KEY in values and values[NOISE_KEY] == 0:
        out[MODE_KEY] = "off"
    elif NOISE_KEY in values and not explicit_mode and base_mode == "off" and out.get(MODE_KEY) != "off":
        out[MODE_KEY] = "local"
    return out


def _no_dp(key: str, value: Any) -> bool:
    """The grid values that mean 'this cell has no DP' (or set the mode itself)."""
    return key == MODE_KEY or (key == EPSILON_KEY and math.isinf(value)) or (key == NOISE_KEY and value == 0)


def _base(base: Any, base_dir: Path, source: str) -> tuple[Path | None, dict[str, Any]]:
    if base is None:
        return None, {}
    if isinstance(base, str):
        path = Path(base) if Path(base).is_absolute() else base_dir / base
        return path, {}
    if isinstance(base, dict):
        return None, config_mod.flatten(base)
    raise ConfigError(f"sweep key 'base' in {source} must be an experiment file or a mapping; got {base!r}")


def _base_mode(base_path: Path | None, overrides: dict[str, Any]) -> str:
    """privacy.mode as the base and the sweep's fixed keys set it (each cell is validated on its own)."""
    raw = config_mod.flatten(config_mod.read_yaml(base_path)) if base_path is not None else {}
    return str({**raw, **overrides}.get(MODE_KEY, "off"))


# A no-DP cell (epsilon inf, noise 0) of a grid whose other cells are private: the DP settings the
# base or the sweep's fixed keys give apply to those cells only, so this cell resets them (a single
# experiment with privacy.mode off and DP settings is refused instead: config.PrivacyConfig).
_NO_DP = {
    f"privacy.{f.name}": f.default for f in dataclasses.fields(config_mod.PrivacyConfig) if f.name not in ("mode",)
}


def _grid(grid: Any, source: str) -> dict[str, list[Any]]:
    grid = _mapping(grid, "grid", source)
    known = set(config_mod.flat_keys())
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{key}' in the grid of {source}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid key '{key}' in {source} must be a non-empty list; got {values!r}")
        if len({json.dumps(v, default=str) for v in values}) != len(values):
            raise ConfigError(f"grid key '{key}' in {source} has duplicate values")
        out[key] = [_epsilon(v) for v in values] if key == EPSILON_KEY else list(values)
    return out


def _epsilon(value: Any) -> float:
    """A grid epsilon: a positive number, or inf (also written 'inf', 'infinity' or null) for no DP."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "∞")):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"config key '{EPSILON_KEY}' in the grid must be a positive number or inf; got {value!r}")
    return float(value)


def _combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]


def _audit(raw: Any, source: str) -> AuditSettings:
    raw = _mapping(raw, "audit", source)
    names = {f for f in AuditSettings.__dataclass_fields__}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown sweep key 'audit.{unknown[0]}' in {source}; known: {', '.join(sorted(names))}")
    values = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"sweep key 'audit.{key}' must be an integer; got {value!r}")
        values[key] = value
    return AuditSettings(**values)


def _name(value: Any, source: str) -> str:
    """The sweep's name (default: the file's stem); it names the default output folder, so one plain part."""
    if value is None:
        return Path(source).stem
    name = str(value).strip()
    if isinstance(value, (dict, list, bool)) or not name or name in (".", "..") or any(c in name for c in "/\\"):
        raise ConfigError(
            f"sweep key 'name' in {source} must be a plain name (it names the output folder runs/sweeps/<name>); "
            f"got {value!r}"
        )
    return name


def _mapping(value: Any, key: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"sweep key '{key}' in {source} must be a mapping; got {value!r}")
    return {str(k): v for k, v in value.items()}


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"sweep key '{key}' must be true or false; got {value!r}")
    return value


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"sweep key '{key}' must be a positive number; got {value!r}")
    return float(value)


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"sweep key '{key}' {why}")
