"""The shipped configurations (package data of the installed package) and the rule that finds one.

`--config X` is looked up, in order: X as given (absolute, or relative to the working directory); X inside this
folder, with or without a leading `configs/` (`configs/localize/release.yaml`, `localize/release.yaml`); a bare
file name that exactly one shipped config has (`release.yaml`). So a non-editable install finds its configs from
any folder, and a file of your own with the same name in the working directory wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CONFIG_FLAGS = ("--config", "-c")


def shipped_dir() -> Path:
    """The folder holding the shipped configs (the source tree's `configs/`, or the installed package's)."""
    return Path(__file__).resolve().parent


def resolve_config(path: str | Path, shipped: Path | None = None) -> Path:
    """The config file `path` names (see the module docstring); `path` unchanged when nothing matches, so the caller's
    own 'not found' error names what the user wrote. Raises ValueError for a bare name that several shipped configs
    have, listing them. `shipped`: the folder of shipped configs (default `shipped_dir()`)."""
    shipped = shipped_dir() if shipped is None else Path(shipped)
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    inside = shipped.joinpath(*parts) if parts else None
    if inside is not None and inside.is_file():
        return inside
    if len(given.parts) == 1:
        matches = sorted(shipped.rglob(given.name))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(str(m.relative_to(shipped)) for m in matches)
            raise ValueError(f"{path}: several shipped configs have this name ({names}); give its folder too")
    return given


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """`argv` with the value of every `--config X` / `--config=X` / `-c X` resolved by `resolve_config`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = _resolved(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _resolved(arg.removeprefix("--config="))
    return out


def _resolved(value: str) -> str:
    found = resolve_config(value)
    return value if found == Path(value).expanduser() else str(found)
