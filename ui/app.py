"""medir's web UI: ``streamlit run ui/app.py``.

Three pages: Search (the default), Ingest and Collection. Settings come from the ``MEDIR_``
environment or ``.env`` (see ``medir/config.py``), read here once per run and handed to each
page's ``render(settings)``; the upload limit is ``MEDIR_UI__UPLOAD_LIMIT_MB``.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from ui import collection_page, ingest_page, search_page  # noqa: E402


@st.cache_resource(show_spinner=False)
def _sweep_at_start(base: str, max_age_s: float) -> int:
    """Once per server process: remove the query uploads a previous run left behind."""
    from ui.uploads import sweep_query_uploads

    return sweep_query_uploads(Path(base), max_age_s)


def main() -> None:
    """Configure the page and run the selected one."""
    st.set_page_config(page_title="medir · volume search", page_icon=":material/radiology:",
                       layout="wide")
    from medir.config import get_settings
    from medir.errors import ConfigError
    from medir.secrets import check_secrets

    settings = get_settings()  # the UI's one read of the settings; the pages get them
    pages = [
        st.Page(partial(search_page.render, settings), title="Search", icon=":material/search:",
                url_path="search", default=True),
        st.Page(partial(ingest_page.render, settings), title="Ingest", icon=":material/upload:",
                url_path="ingest"),
        st.Page(partial(collection_page.render, settings), title="Collection",
                icon=":material/dataset:", url_path="collection"),
    ]
    try:
        check_secrets(settings)
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    _sweep_at_start(str(settings.query_uploads), settings.ui.query_upload_ttl_min * 60)
    nav = st.navigation(pages)
    with st.sidebar:
        st.markdown("### :material/radiology: medir")
        st.caption("Search 3D CT and MR volumes by weighted voting over 2D slice embeddings.")
    nav.run()


main()
