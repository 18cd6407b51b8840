"""Links from a result to the PACS viewer (``pacs.viewer_url_template``)."""

from __future__ import annotations

import string
from collections.abc import Mapping
from urllib.parse import quote

from runner.library import UID_RE


def viewer_url(template: str | None, dicom: Mapping[str, str]) -> str | None:
    """The template with ``{StudyInstanceUID}``/``{SeriesInstanceUID}`` filled, or None.

    None when no template is set, the result is not a DICOM volume, or a placeholder has no
    value. Values must be DICOM UIDs (digits and dots) and are URL-quoted anyway.
    """
    if not template:
        return None
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    values: dict[str, str] = {}
    for name in fields:
        value = str(dicom.get(name, ""))
        if not value or not UID_RE.match(value):
            return None
        values[name] = quote(value, safe=".")
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        return None
