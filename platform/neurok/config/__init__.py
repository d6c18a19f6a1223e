"""Typed configuration: OmegaConf structured configs, YAML files and dotted `key=value` overrides.

Every stage declares its config as a dataclass next to its code; this module loads, validates and
saves them, so an unknown key or a wrong type is one clear error naming the key and its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from neurok.errors import ConfigError

T = TypeVar("T")

PIPELINES = Path("pipelines")  # relative: the commands run from the repository root


def config_path(given: str | Path | None, pipeline: str) -> Path | None:
    """The config file to load: `given` when set (load_config then requires it to exist), else
    pipelines/<pipeline>.yaml when present, else None: the schema's own defaults, so the commands also
    run outside a checkout of the repository."""
    if given:
        return Path(given)
    default = PIPELINES / f"{pipeline}.yaml"
    return default if default.is_file() else None


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(
            f"{source}: bad config key '{key}': {exc.msg if hasattr(exc, 'msg') else exc}"
        ) from None


def read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """(source, mapping) of a config file, after those of the file it `extends` (a path relative to it),
    base first: a pipeline builds on another by naming it and writing only what differs."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the pipeline's YAML file, e.g. pipelines/train.yaml")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` goes round in a circle ({' -> '.join(map(str, seen))})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return [(str(path), raw)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `extends` must name one YAML file, got {base!r}")
    return [*read_yaml(path.parent / base, (*seen, path.resolve())), (str(path), raw)]


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `schema` from its defaults, then the YAML file at `path` (after the files it extends), then
    `key=value` overrides."""
    cfg = OmegaConf.structured(schema)
    for source, raw in read_yaml(path) if path is not None else []:
        cfg = _merge(cfg, raw, source)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"command line override '{item}'")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def to_dict(cfg: Any) -> dict:
    """A resolved plain-dict copy of a structured config (for storing with outputs, or sending to Ray)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)
