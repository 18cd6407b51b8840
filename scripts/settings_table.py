"""Print the Markdown table of every ``MEDIR_*`` setting (docs/configuration.md is made by it).

Usage: ``python scripts/settings_table.py > docs/configuration.md``. The table is read from the
one settings class (medir/config.py), so names, defaults and meanings cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from medir.config import Settings

HEADER = """# Configuration

Every setting is an environment variable with the `MEDIR_` prefix, or a line of a `.env` file
in the working folder; nested groups use `__` (`MEDIR_SEARCH__K=5`). Settings are read once,
where a command, the UI or a worker starts, and passed down. This page is generated from
`medir/config.py` by `python scripts/settings_table.py > docs/configuration.md`.

| variable | default | meaning |
|---|---|---|
"""


FOOTER = """
Besides these, the Hugging Face libraries read their own variables (`HF_HOME`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE`; `HF_HUB_OFFLINE` also turns `MEDIR_ALLOW_DOWNLOADS` off).
"""


def _default(value: Any) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, SecretStr):
        return "unset"
    if isinstance(value, Path) and str(value).startswith(str(Path.home())):
        value = "~/" + str(value.relative_to(Path.home()))
    if isinstance(value, list):
        value = "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str = "MEDIR_") -> list[str]:
    out = []
    instance = model() if model is not Settings else Settings(_env_file=None)  # type: ignore[call-arg]
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += rows(ann, f"{prefix}{name.upper()}__")
            continue
        doc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{prefix}{name.upper()}` | {_default(getattr(instance, name))} | {doc} |")
    return out


if __name__ == "__main__":
    print(HEADER + "\n".join(rows(Settings)) + "\n" + FOOTER)
