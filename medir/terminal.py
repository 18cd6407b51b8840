"""Text from outside shown on a terminal: file and folder names, labels, volume ids, sources and
error messages that carry them.

Such text may hold Rich markup (a folder ``p001[`` with a file ``]ct.nii.gz`` makes the volume
id ``p001[/]ct``) and control characters (an ESC sequence in a file name would clear a line or
move the cursor and so spoof the output). :func:`safe_text` makes one piece of it safe to put
into a Rich markup string; every ``print`` of the CLI (and of the queue client's progress)
passes such text through it, credentials masked first (:func:`medir.secrets.mask_secrets`).
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0 controls (ESC, CR, LF, TAB, BEL, ...), DEL, C1 controls (CSI 0x9b among them), and the
# Unicode format characters that reorder or break lines (bidirectional overrides and isolates,
# the line and paragraph separators): shown as escapes instead.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                      "\u2066-\u2069]")


def _visible(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible_text(text: object) -> str:
    """``text`` with every control character replaced by its escape (``\\x1b``), for output
    that is not markup (plain ``print``, ``typer.echo``)."""
    return _CONTROL.sub(_visible, str(text))


def safe_text(text: object) -> str:
    """``text`` as it should appear, ready to go into a Rich markup string: control characters
    as escapes (``\\x1b``), square brackets escaped so nothing in it is read as a tag."""
    return escape(visible_text(text))
