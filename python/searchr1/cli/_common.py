"""What every command shares: the error boundary and options made from config fields."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING
from pathlib import Path
from typing import Any, TypeVar

import click

from searchr1.errors import SearchR1Error

FC = TypeVar("FC", bound=Callable[..., Any])


@contextmanager
def user_errors() -> Iterator[None]:
    """Turns searchr1's own errors (and missing files) into a one-line message, exit 1."""
    try:
        yield
    except (SearchR1Error, OSError) as e:
        raise click.ClickException(str(e)) from e


@contextmanager
def usage_errors() -> Iterator[None]:
    """Turns a config's ``ValueError`` (a bad option value) into a usage error, exit 2."""
    try:
        yield
    except ValueError as e:
        raise click.UsageError(str(e)) from e


def dir_option(flag: str, dest: str, help: str, required: bool = True) -> Callable[[FC], FC]:
    """An option naming a directory that must exist."""
    return click.option(
        flag,
        dest,
        required=required,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help=help,
    )


def field_option(config: type, name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    """An option for field ``name`` of the dataclass ``config``: the field's help text
    and default (shown), unless ``kwargs`` say otherwise. ``decls``: the flags (default
    ``--name-with-dashes``); the value goes to the parameter ``name``."""
    spec = config.__dataclass_fields__[name]  # type: ignore[attr-defined]
    kwargs.setdefault("help", spec.metadata["help"])
    default = spec.default
    if "default" not in kwargs and default is not MISSING and default is not None:
        kwargs.update(default=default, show_default=True)
    flags = [d for d in decls if d.startswith("-")] or [f"--{name.replace('_', '-')}"]
    dest = next((d for d in decls if not d.startswith("-")), name)
    return click.option(*flags, dest, **kwargs)
