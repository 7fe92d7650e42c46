"""The one config resolver: defaults < recipe YAML < flags, for the settings dataclass of every command (#11).

A config is a dataclass whose fields have defaults and type hints: int, float, bool, str, `X | None`, `list[X]`
or Any (any other hint takes the value as it is). `resolve(cls, recipe, flags)` starts from the defaults (or from
`base`), lays the recipe's mapping over them, then the flags that were given (None means "not given"):

* every value is coerced to its field's type: an int where a float goes, YAML's string "1e-4" where a number
  goes; a list stays a list. A value that does not fit, an empty value for a field that needs one and an unknown
  key are one-line errors that name the key and where it came from ("recipe r.yaml", "command line");
* exclusive groups: a level that gives one key of a group clears the group's keys of the levels below (a flag
  `compute` replaces a recipe's `schedule`); two keys of one group in the same level are an error;
* `flag_only` keys come from the flags only, never from a recipe (e.g. an output folder);
* `validate(cfg, where)` checks the resolved config as a whole (ranges, choices), if given;
* a field named `recipe`, if the dataclass has one, records the recipe's path (provenance).

`save_resolved(cfg, path, header)` writes the resolved config as YAML beside a run's outputs (atomically), and
`load_resolved(cls, path)` reads it back, e.g. to resume the run.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from flexcli.errors import FlexcliError
from flexcli.recipes import read_recipe

T = TypeVar("T")
Layer = tuple[Mapping[str, Any], str]  # (values, where they came from)
Validate = Callable[[Any, str], None]


def resolve(cls: type[T], recipe: str | Path | None = None, flags: Mapping[str, Any] | None = None, *,
            base: T | None = None, exclusive: Iterable[Iterable[str]] = (), flag_only: Iterable[str] = (),
            validate: Validate | None = None, noun: str = "setting", where: str = "command line") -> T:
    """`base` (default: the dataclass's defaults) < `recipe` < `flags` (None values: not given), checked.

    `noun` names a setting in errors ("unknown classifier setting 'x'"); `where` names the flags' source.
    """
    layers: list[Layer] = []
    if recipe is not None:
        values = read_recipe(recipe)
        source = f"recipe {recipe}"
        misplaced = sorted(set(values) & set(flag_only))
        if misplaced:
            raise FlexcliError(f"{source}: '{misplaced[0]}' cannot be set in a recipe", "give it on the command line")
        if "recipe" in _fields(cls):
            values = {**values, "recipe": str(recipe)}
        layers.append((values, source))
    layers.append(({k: v for k, v in (flags or {}).items() if v is not None}, where))
    return resolve_layers(cls, layers, base=base, exclusive=exclusive, validate=validate, noun=noun)


def resolve_layers(cls: type[T], layers: Iterable[Layer], *, base: T | None = None,
                   exclusive: Iterable[Iterable[str]] = (), validate: Validate | None = None,
                   noun: str = "setting") -> T:
    """`base` updated with each (values, where) layer in turn, lowest first; then `validate(cfg, where)`."""
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    groups = [tuple(g) for g in exclusive]
    merged = dataclasses.asdict(base if base is not None else cls())
    sources = []
    for values, where in layers:
        if not isinstance(values, Mapping):
            raise FlexcliError(f"{where} is not a mapping of settings", "write it as 'key: value' lines")
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise FlexcliError(f"{where}: unknown {noun} '{unknown[0]}'",
                               f"rename or remove unknown keys; the known ones: {', '.join(fields)}")
        for group in groups:
            given = [k for k in group if values.get(k) is not None]
            if len(given) > 1:
                raise FlexcliError(f"{where}: {' and '.join(given)} are both given",
                                   f"give only one of {', '.join(group)}")
            if given:
                merged.update({k: None for k in group})
        merged.update({k: _coerce(hints[k], v, k, where, fields[k]) for k, v in values.items()})
        if values:
            sources.append(where)
    cfg = cls(**merged)
    if validate is not None:
        validate(cfg, f"config ({' < '.join(sources)})" if sources else "config")
    return cfg


def load_resolved(cls: type[T], path: str | Path, *, validate: Validate | None = None, noun: str = "setting") -> T:
    """A config saved by `save_resolved` (checked like a recipe, its `recipe` field kept as saved)."""
    return resolve_layers(cls, [(read_recipe(path), str(path))], validate=validate, noun=noun)


def save_resolved(cfg, path: str | Path, header: str) -> Path:
    """Write `cfg` as YAML to `path` atomically, under `header` as a comment (one '# ' line per line)."""
    import yaml

    from flexcli.io.atomic import atomic_path

    path = Path(path)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    with atomic_path(path) as tmp:
        tmp.write_text(comment + yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------
def _coerce(hint, value, key: str, where: str, default=None):
    """`value` as the type `hint` names, or a FlexcliError naming `key`, `where` and (as an example) `default`."""
    try:
        return _convert(hint, value)
    except _Empty:
        raise FlexcliError(f"{where}: '{key}' must not be empty", f"give '{key}' a value") from None
    except (TypeError, ValueError):
        name = _type_name(hint)
        article = "an" if name[0] in "aeiou" else "a"
        example = f", e.g. {key}: {_example(default)}" if default is not None else ""
        raise FlexcliError(f"{where}: '{key}' = {value!r} is not a valid {name}",
                           f"'{key}' has the wrong type: write {article} {name}{example}") from None


class _Empty(Exception):
    pass


def _convert(hint, value):
    if hint is Any:
        return value
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]  # X | None; other unions are not config types
    if value is None:
        raise _Empty
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(item, v) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if hint in (int, float, str) and isinstance(value, (bool, list, tuple, dict)):
        raise TypeError
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise TypeError
        return int(value)
    if hint is float:
        return float(value)
    if hint is str:
        return str(value)
    return value


def _type_name(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _type_name(args[0])
    if typing.get_origin(hint) is list:
        return f"list of {_type_name((typing.get_args(hint) or (Any,))[0])}"
    return getattr(hint, "__name__", str(hint))


def _example(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(_example(v) for v in value)}]"
    return str(value)


def _fields(cls) -> dict[str, Any]:
    """Field name -> default (None where the field has none)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out
