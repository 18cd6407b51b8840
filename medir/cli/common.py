"""What every ``medir`` sub-command shares: user errors as one line and exit status 2."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from medir.errors import MedirError, error_kind
from medir.secrets import mask_secrets

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def user_errors(fn: F) -> F:
    """Turn :class:`MedirError` into one line on stderr and exit status 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedirError as exc:
            err_console.print("[bold red]error:[/] " + escape(mask_secrets(exc)),
                              highlight=False, soft_wrap=True)
            raise typer.Exit(error_kind(exc).exit_code) from None

    return wrapper  # type: ignore[return-value]
