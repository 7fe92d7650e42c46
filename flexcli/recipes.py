"""Recipes are YAML data (read with yaml.safe_load, never executed): one reader for every command."""
from __future__ import annotations

from pathlib import Path

from flexcli.errors import FlexcliError


def read_recipe(path: str | Path) -> dict:
    """A recipe file -> its mapping of setting: value (one-line errors for a missing or malformed file)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FlexcliError(f"recipe {path} not found", "check the --recipe path (recipes/ holds the shipped ones)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise FlexcliError(f"recipe {path} is not valid YAML ({str(e).splitlines()[0]})", "fix the file") from e
    if not isinstance(values, dict):
        raise FlexcliError(f"recipe {path} is not a mapping of settings", "write it as 'key: value' lines")
    return values
