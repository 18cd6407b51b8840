"""Pieces shared by the pages: cached store statistics, models, error messages, and
:func:`md`, through which every piece of text from outside reaches Streamlit markdown.

The settings are read once per run where the UI starts (``ui/app.py``) and handed to each
page's ``render(settings)``; the helpers here take them as an argument.
"""

from __future__ import annotations

import html
import re
from typing import Any

import streamlit as st

from medir.config import Settings
from medir.terminal import visible_text
from runner.library import collection_name
from runner.library import model_names as registered_models
from ui import backend

# ASCII punctuation that Markdown or Streamlit's extensions give a meaning: emphasis, code,
# links and images, headings, lists, tables, block quotes, strike-through, LaTeX ($),
# directives and icons (:red[...], :material/...:); backslash-escaped (CommonMark).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:$=\"'^])")
# What Streamlit still reads in a text after the escapes: emoji and icon shortcodes
# (``:smile:``, ``:material/home:``) are matched on the parsed text, so a word joiner (U+2060,
# invisible) follows each colon.
_JOINED_COLON = ":\u2060"


def md(text: object) -> str:
    """Text from outside (a volume id, label, source, file name, error message) made safe to
    put into a Streamlit markdown string, where it shows literally: control characters as
    escapes (``\\x1b``, as the CLI shows them), HTML special characters as entities, Markdown
    punctuation backslash-escaped, and shortcodes broken."""
    out = html.escape(visible_text(text), quote=False)
    out = _MD_SPECIAL.sub(r"\\\1", out)
    return out.replace(":", _JOINED_COLON)


def _key(s: Settings) -> str:
    return f"{s.store_path}|{s.qdrant_url}|{s.redis_url}"


@st.cache_data(ttl=15, show_spinner=False)
def _stats(key: str, _settings: Settings) -> dict[str, Any]:
    return backend.stats(_settings)


def store_stats(s: Settings) -> dict[str, Any]:
    """Collection statistics, cached for a few seconds (cleared after searches and ingests)."""
    return _stats(_key(s), s)


def forget_stats() -> None:
    _stats.clear()


@st.cache_data(ttl=15, show_spinner=False)
def _volumes(key: str, model: str, _settings: Settings) -> list[str]:
    return backend.indexed_volumes(_settings, model)


def indexed_volumes(s: Settings, model: str) -> list[str]:
    return _volumes(_key(s), model, s)


@st.cache_data(show_spinner=False)
def _model_names(plugins: tuple[str, ...]) -> list[str]:
    return registered_models(plugins)


def model_names(s: Settings) -> list[str]:
    """The registered models, with the settings' plugins."""
    return _model_names(s.plugin_modules)


def model_of(collection: dict[str, Any], s: Settings) -> str:
    """The model a collection was built with: from its embedder ids (``name@version``), else
    the registered model whose collection name it is, else the collection's name."""
    for emb in collection.get("embedders", []):
        return str(emb).rsplit("@", 1)[0]
    by_name = {collection_name(m): m for m in model_names(s)}
    return by_name.get(collection["name"], collection["name"])


def collection_models(stats: dict[str, Any], s: Settings) -> list[str]:
    """Models that have a collection in the store."""
    return [model_of(c, s) for c in stats.get("collections", [])]


def collection_of(stats: dict[str, Any], model: str, s: Settings) -> dict[str, Any] | None:
    return next((c for c in stats.get("collections", []) if model_of(c, s) == model), None)


def show_error(exc: BaseException) -> None:
    """One clear message per kind of failure, with what to do next (credentials masked)."""
    from medir.errors import MedirError, error_kind
    from medir.secrets import mask_secrets

    text = md(mask_secrets(exc))
    kind = error_kind(exc)
    if not isinstance(exc, MedirError):  # a bug: name the exception
        text = f"{kind.title} {md(type(exc).__name__)}: {text}"
    elif kind.title:
        text = f"**{kind.title}** {text}"
    if kind.hint:
        text = f"{text} {kind.hint}"
    show = st.warning if kind.level == "warning" else st.error
    show(text, icon=kind.icon)


def header(title: str, caption: str, s: Settings) -> None:
    st.title(title)
    st.caption(f"{caption}  \n{md(backend.mode_text(s))}")
