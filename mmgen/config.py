"""Recipe loading: YAML + `key=value` overrides, validated against typed dataclass configs.

Every stage declares its recipe as a dataclass (TRL style: a config beside each trainer). `load_config`
merges a YAML file and dotted command-line overrides into it and turns every mistake into one `ConfigError`
line that names the file and the key: unknown keys (with the closest valid key), wrong types, missing files.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmgen.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A recipe problem, phrased as one line that names the file and key and says what to do."""


def strict_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """`cls(**data)` for a saved config dict, refusing keys the dataclass does not have (a newer or foreign file)."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    return cls(**data)


def must_exist(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A path field that must point at an existing file or directory when the recipe is loaded."""
    metadata = {**kwargs.pop("metadata", {}), "must_exist": True}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> T:
    """Build a `schema` instance from an optional YAML recipe plus `a.b=value` overrides.

    Raises `ConfigError` for an unreadable file, unknown keys, wrong types, failed `__post_init__` checks and
    `must_exist` paths that are missing.
    """
    source = str(path) if path is not None else "<defaults>"
    layers = _recipe_layers(Path(path)) if path is not None else []
    # `sources.0.path=...` addresses an item of a list; OmegaConf's dotlist would make "0" a dict key instead.
    indexed = [item for item in overrides if any(part.isdigit() for part in item.split("=", 1)[0].split("."))]
    plain = [item for item in overrides if item not in indexed]
    if plain:
        layers.append(("command line", _parse_overrides(plain)))

    merged = OmegaConf.structured(schema)
    for origin, layer in layers:
        _reject_unknown_keys(schema, layer, origin)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{origin}: {_describe_omegaconf_error(err)}") from None
    for item in indexed:
        _apply_indexed_override(schema, merged, item)
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: {_describe_omegaconf_error(err)}") from None
    except (ValueError, TypeError) as err:  # raised by a dataclass __post_init__ check
        raise ConfigError(f"{source}: {err}") from None
    _check_paths(config, source)
    return config


EXTENDS_KEY = "extends"


def _recipe_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The recipe and the recipes it `extends` (a path relative to it), base first: later layers win."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' forms a cycle through {', '.join(map(str, seen))}")
    layer = _read_yaml(path)
    base = layer.pop(EXTENDS_KEY, None)
    if base is None:
        return [(str(path), layer)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: key '{EXTENDS_KEY}' must be a recipe path, got {base!r}")
    return _recipe_layers(path.parent / base, (*seen, path.resolve())) + [(str(path), layer)]


def read_recipe_key(path: str | os.PathLike, key: str) -> Any:
    """Read one top-level key of a recipe (following `extends`) without validating it, e.g. `stage`."""
    for _, layer in reversed(_recipe_layers(Path(path))):
        if key in layer:
            return layer[key]
    return None


def config_to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path} (check the path; recipes live under recipes/)")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: report the parser's line/column
        message = " ".join(str(err).split())
        raise ConfigError(f"{path}: not valid YAML: {message}") from None
    if loaded is None:
        return OmegaConf.create({})
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values, got a {type(loaded).__name__}")
    return loaded


def _parse_overrides(overrides) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.max_steps=100)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"command line: {_describe_omegaconf_error(err)}") from None


def _apply_indexed_override(schema: type, merged: DictConfig, item: str) -> None:
    """Apply `a.0.b=value` to the merged recipe: every name must be a field, every index an existing item."""
    key, _, _ = item.partition("=")
    node, node_schema, walked = merged, schema, []
    for part in key.split("."):
        where = ".".join(walked) or "the recipe"
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"command line: key '{key}': {where} is a list of {len(node)} item(s); "
                                  f"use an index from 0 to {len(node) - 1}")
            node = node[int(part)]
            node_schema = _dataclass_in(_list_item_hint(node_schema)) if node_schema else None
        else:
            typed = dataclasses.is_dataclass(node_schema)
            fields = {f.name: f for f in dataclasses.fields(node_schema)} if typed else {}
            if typed and part not in fields:
                raise ConfigError(f"command line: unknown key '{key}'{_closest(part, fields, '.'.join(walked + ['']))}")
            hint = typing.get_type_hints(node_schema)[part] if typed else None
            node = node.get(part) if isinstance(node, DictConfig) else None
            node_schema = hint if typing.get_origin(hint) is list else _dataclass_in(hint)
        walked.append(part)
    value = _parse_overrides([f"value={item.partition('=')[2]}"])["value"]
    try:
        OmegaConf.update(merged, key, value, merge=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"command line: {_describe_omegaconf_error(err)}") from None


def _list_item_hint(hint: Any) -> Any:
    args = typing.get_args(hint)
    return args[0] if typing.get_origin(hint) is list and args else None


def _reject_unknown_keys(schema: type, layer: DictConfig | ListConfig, origin: str, prefix: str = "") -> None:
    if not isinstance(layer, DictConfig) or not dataclasses.is_dataclass(schema):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in layer.keys():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{origin}: unknown key '{dotted}'{_closest(str(key), fields, prefix)}")
        sub_schema = _dataclass_in(hints[key])
        if sub_schema is not None:
            _reject_unknown_keys(sub_schema, layer._get_node(key), origin, f"{dotted}.")


def _closest(key: str, fields, prefix: str) -> str:
    match = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    if match:
        return f"; did you mean '{prefix}{match[0]}'?"
    return f"; valid keys here: {', '.join(prefix + name for name in fields)}"


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass inside `hint` (also through Optional[...]), if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _describe_omegaconf_error(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    first_line = str(err).splitlines()[0].strip()
    if key and "Value '" in first_line:  # OmegaConf's "Value 'x' of type 'str' could not be converted to Integer"
        return f"key '{key}' has the wrong type: {first_line}"
    return f"key '{key}': {first_line}" if key else first_line


def _check_paths(config: Any, source: str, prefix: str = "") -> None:
    if not dataclasses.is_dataclass(config):
        return
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        dotted = f"{prefix}{field.name}"
        if field.metadata.get("must_exist") and value not in (None, ""):
            if not Path(value).exists():
                raise ConfigError(f"{source}: key '{dotted}' points to a missing path: {value}")
        _check_paths(value, source, f"{dotted}.")
