"""What every ``medir`` sub-command shares: user errors as one line and exit status 2, and
consoles that show untrusted text literally (:func:`medir.terminal.safe_text`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from medir.errors import MedirError, error_kind
from medir.secrets import mask_secrets
from medir.terminal import safe_text

F = TypeVar("F", bound=Callable[..., Any])


def console(stderr: bool = False) -> Console:
    """A console of the CLI: emoji codes (``:smile:``) in names stay text."""
    return Console(stderr=stderr, emoji=False)


err_console = console(stderr=True)


def error_line(exc: BaseException) -> None:
    """The one line of a user error on stderr: credentials masked, the message shown
    literally (it carries file names and ids)."""
    err_console.print("[bold red]error:[/] " + safe_text(mask_secrets(exc)), highlight=False,
                      soft_wrap=True)


def parse_filters(values: list[str] | None) -> dict[str, list[str]]:
    """``--filter KEY=VALUE[,VALUE]`` options (``medir search``, ``medir volumes``) as
    {key: [values]}; a malformed one is a user error."""
    filters: dict[str, list[str]] = {}
    for raw in values or []:
        key, sep, val = raw.partition("=")
        if not sep or not key or not val:
            raise MedirError(f"bad filter {raw!r}; use KEY=VALUE, e.g. modality=MR")
        filters.setdefault(key.strip(), []).extend(v.strip() for v in val.split(","))
    return filters


def user_errors(fn: F) -> F:
    """Turn :class:`MedirError` into one line on stderr and exit status 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedirError as exc:
            error_line(exc)
            raise typer.Exit(error_kind(exc).exit_code) from None

    return wrapper  # type: ignore[return-value]
