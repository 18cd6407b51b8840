"""Credentials never leave the process: one helper masks them in every text medir shows.

:func:`mask_secrets` replaces the password of any ``scheme://user:password@host`` URL and every
secret value the settings and the environment hold (``MEDIR_QDRANT_API_KEY``, the Redis URL's
password, any ``*_KEY`` / ``*_PASSWORD`` / ``*_SECRET`` / ``*_TOKEN`` variable) with ``***``.
It is applied to the UI's mode line and error messages, the CLI's error lines and ``--json``,
job records and log records (:class:`SecretFilter`, installed by :func:`install_log_filter`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "***"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*)"
                              r"(?::(?P<password>[^@/\s]*))?@")
_SECRET_NAMES = re.compile(r"(KEY|PASSWORD|PASSWD|SECRET|TOKEN)$", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values would mask ordinary words ("auto", "true")


def safe_url(url: str | None) -> str:
    """The URL with its password (or a lone user token) replaced by ``***``."""
    if not url:
        return ""
    return _mask_urls(url)


def _mask_urls(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        user = m.group("user")
        if m.group("password") is not None:
            return f"{m.group('scheme')}{user}:{MASK}@"
        return f"{m.group('scheme')}{MASK}@"  # redis://token@host: the token is the password

    return _URL_CREDENTIALS.sub(repl, text)


def secret_values(extra: Iterable[str | None] = ()) -> list[str]:
    """The secret values known here: settings, environment, and ``extra``."""
    values: set[str] = {v for v in extra if v}
    for name, value in os.environ.items():
        if not value:
            continue
        if _SECRET_NAMES.search(name):
            values.add(value)
        if "://" in value:
            values.add(urlsplit(value).password or "")
    try:
        from medir.config import get_settings

        s = get_settings()
        values.update(v for v in (s.qdrant_api_key,) if v)
        for url in (s.redis_url, s.qdrant_url):
            if url and "://" in url:
                values.add(urlsplit(url).password or "")
    except Exception:  # settings that do not validate must not hide the original error
        pass
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


def mask_secrets(text: object, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every credential replaced by ``***``."""
    out = _mask_urls(str(text))
    for value in secret_values(extra):
        out = out.replace(value, MASK)
    return out


class SecretFilter(logging.Filter):
    """Masks credentials in log records (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        masked = mask_secrets(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


_FILTER = SecretFilter()


def install_log_filter(*names: str) -> None:
    """Mask credentials in everything the handlers of the root logger (and of the loggers
    ``names``) write (idempotent)."""
    for name in ("", *names):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


MIN_SECRET_LENGTH = 16
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "your-", "example",
                 "placeholder", "password", "secret", "xxxx", "todo")


def weak_secret(value: str | None) -> str | None:
    """Why ``value`` is not a usable secret (empty, short, a placeholder), or None."""
    if not value:
        return "empty"
    if len(value) < MIN_SECRET_LENGTH:
        return f"shorter than {MIN_SECRET_LENGTH} characters"
    lower = value.lower()
    if any(p in lower for p in _PLACEHOLDERS) or len(set(value)) < 6:
        return "a placeholder"
    return None


def check_secrets(settings: object) -> None:
    """Refuse to start a service with weak credentials (``MEDIR_REQUIRE_SECRETS=1``, set by
    docker-compose): the Redis password and, with a Qdrant server, the Qdrant API key.
    Without the flag only a secret that is set but weak is refused."""
    from medir.errors import ConfigError

    required = bool(getattr(settings, "require_secrets", False))
    checks: list[tuple[str, str | None]] = []
    redis_url = getattr(settings, "redis_url", None)
    if redis_url:
        checks.append(("the Redis password in MEDIR_REDIS_URL", urlsplit(redis_url).password))
    if getattr(settings, "qdrant_url", None):
        checks.append(("MEDIR_QDRANT_API_KEY", getattr(settings, "qdrant_api_key", None)))
    for what, value in checks:
        why = weak_secret(value)
        if why and (required or value):
            raise ConfigError(f"refusing to start: {what} is {why}; set a random secret of at "
                              f"least {MIN_SECRET_LENGTH} characters (openssl rand -hex 32)")
