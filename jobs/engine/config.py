"""Typed job configs: dataclass defaults, the YAML file (configs/<job>.yaml, shipped in the
package), then flags, then `key=value` overrides.

Every job's config is a dataclass (nested dataclasses for groups such as `ray`), so a typo
in a YAML key or an override fails at start with the list of valid keys. Each default is
defined once, in the dataclass; the YAML files repeat them as documentation, and a test
fails when the two disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import re
import types
import typing
from pathlib import Path

import yaml

from jobs.engine.logs import setup_logging

CONFIG_DIR = Path(str(importlib.resources.files("configs")))


SRC_DST = (("SRC", "input"), ("DST", "output"))  # the positional paths of a job that reads SRC, writes DST


def default_config_path(job: str) -> Path:
    return CONFIG_DIR / f"{job.replace('-', '_')}.yaml"


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(tp, value, key: str):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value, key) if len(args) == 1 else value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (typing.Any,)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(item, v, key) for v in items]
    if tp is float and isinstance(value, int):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def require(cfg, keys: tuple[str, ...], usage: str | None = None) -> None:
    """A usage error naming the settings of `keys` that `cfg` leaves unset, and how to give them."""
    missing = [k for k in keys if not getattr(cfg, k)]
    if missing:
        raise ValueError(f"missing setting(s): {', '.join(missing)} ({usage or 'flags --' + ' --'.join(missing)})")


def from_dict(cls, data: dict, prefix: str = ""):
    types_ = _field_types(cls)
    unknown = set(data) - set(types_)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {sorted(prefix + k for k in unknown)}; valid: {sorted(prefix + k for k in types_)}"
        )
    return cls(**{k: _coerce(types_[k], v, prefix + k) for k, v in data.items()})


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flat_items(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested config dict -> [("ray.num_actors", 1), ...]."""
    out: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += flat_items(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, value))
    return out


class JobParser(argparse.ArgumentParser):
    """A job's parser: `--config` (its packaged YAML by default), `-v`, positional paths and
    `key=value` overrides, and a help text that ends with every config key and its default.

    A flag whose `dest` is a config key (dotted for groups: `dest="ray.num_actors"`) sets
    that key when given, so `parse_config` needs no per-job mapping. `paths` names the
    positionals and the keys they fill, e.g. (("SRC", "input"), ("DST", "output")); positionals
    fill, in order, the keys no flag gave."""

    def __init__(self, job: str, cls, description: str, paths: tuple[tuple[str, str], ...] = (), paths_help: str = ""):
        path = default_config_path(job)
        defaults = flat_items(to_dict(load_config(cls, path)))
        epilog = f"config keys (defaults from {path}; override any as key=value):\n" + "\n".join(
            f"  {k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in defaults
        )
        super().__init__(
            prog=f"codecsep {job}",
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.cls, self.paths, self.keys = cls, paths, {k for k, _ in defaults}
        self.add_argument("--config", default=str(path), help="YAML config file (default: %(default)s)")
        self.add_argument("-v", "--verbose", action="store_true", help="debug logging and library warnings")
        names = " ".join(name for name, _ in paths)
        self.add_argument(
            "args",
            nargs="*",
            metavar=f"{names} [key=value ...]" if paths else "key=value",
            help=f"{paths_help}, then config overrides" if paths_help else "config overrides, e.g. ray.batch_size=8",
        )

    def parse_config(self, argv: list[str] | None):
        """argv -> the job's config: YAML <- flags and paths <- overrides."""
        args = self.parse_intermixed_args(argv)
        setup_logging(args.verbose)
        overrides = [v for v in args.args if _OVERRIDE.match(v)]
        given = [v for v in args.args if not _OVERRIDE.match(v)]
        values = {k: v for k, v in vars(args).items() if k in self.keys}
        free = [(name, key) for name, key in self.paths if values.get(key) is None]
        if len(given) > len(free):
            self.error(f"expected {' '.join(n for n, _ in free) or 'only key=value overrides'}, got {given}")
        values.update((key, value) for (_, key), value in zip(free, given))
        return load_config(self.cls, args.config, overrides, **values)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` overrides; values are parsed as YAML scalars/lists (`x=[1,2]`, `y=null`)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return data


def _set(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def load_config(cls, path: str | Path | None, overrides: list[str] | None = None, **values):
    """YAML file (if any) <- keyword values that are not None <- key=value overrides."""
    data: dict = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at top level")
        data = loaded
    for key, value in values.items():  # CLI flags; dotted keys reach nested groups
        if value is not None and value != []:
            _set(data, key, value)
    apply_overrides(data, overrides or [])
    return from_dict(cls, data)


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
