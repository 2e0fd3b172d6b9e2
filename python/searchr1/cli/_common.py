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


#: A path that must name an existing file.
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def overrides_option(help: str) -> Callable[[FC], FC]:
    """``--set SECTION.FIELD=VALUE`` (repeatable): changes to a run config, to the
    parameter ``overrides``."""
    return click.option(
        "--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE", help=help
    )


def field_option(config: type, name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    """An option for field ``name`` of the dataclass ``config``: the field's help text
    and default (shown), unless ``kwargs`` say otherwise. ``decls``: the flags (default
    ``--name-with-dashes``); the value goes to the parameter ``name``."""
    spec = config.__dataclass_fields__[name]  # type: ignore[attr-defined]
    kwargs.setdefault("help", spec.metadata["help"])
    default = spec.default
    known = default is not MISSING and default is not None
    if "default" not in kwargs and known:
        kwargs.update(default=default, show_default=True)
    elif kwargs.get("default") is not None:
        kwargs.setdefault("show_default", True)
    elif known:  # None: the option falls back to the field's default
        kwargs["help"] += f" [default: {default}]"
    flags = [d for d in decls if d.startswith("-")] or [f"--{name.replace('_', '-')}"]
    dest = next((d for d in decls if not d.startswith("-")), name)
    return click.option(*flags, dest, **kwargs)
