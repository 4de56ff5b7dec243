"""User-facing errors.

Each kind of user error has one exception type. The CLI prints ``str(error)`` as one line
and exits with code 2; a traceback is shown only with ``--debug``. Messages name the
problem and where it is (file, line, key).
"""

from __future__ import annotations


class LorarecError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    exit_code = 2


class ConfigError(LorarecError):
    """A run config is invalid: unknown key, wrong type, bad value."""


class DataError(LorarecError):
    """An input data file is missing or malformed."""


class AssetError(LorarecError):
    """An asset cannot be fetched, verified or found."""


class UsageError(LorarecError):
    """The command line asks for something impossible."""


def where(path: object, line: int | None = None) -> str:
    """Format a location as ``path`` or ``path:line``."""
    return f"{path}:{line}" if line is not None else f"{path}"
