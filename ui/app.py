"""medir's web UI: ``streamlit run ui/app.py``.

Three pages: Search (the default), Ingest and Collection. Settings come from the ``MEDIR_``
environment (see ``medir/config.py``); the upload limit is ``MEDIR_UI__UPLOAD_LIMIT_MB``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from ui import collection_page, ingest_page, search_page  # noqa: E402


def main() -> None:
    """Configure the page and run the selected one."""
    st.set_page_config(page_title="medir · volume search", page_icon=":material/radiology:",
                       layout="wide")
    pages = [
        st.Page(search_page.render, title="Search", icon=":material/search:",
                url_path="search", default=True),
        st.Page(ingest_page.render, title="Ingest", icon=":material/upload:", url_path="ingest"),
        st.Page(collection_page.render, title="Collection", icon=":material/dataset:",
                url_path="collection"),
    ]
    from medir.config import get_settings
    from medir.errors import ConfigError
    from medir.secrets import check_secrets

    try:
        check_secrets(get_settings())
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    nav = st.navigation(pages)
    with st.sidebar:
        st.markdown("### :material/radiology: medir")
        st.caption("Search 3D CT and MR volumes by weighted voting over 2D slice embeddings.")
    nav.run()


main()
