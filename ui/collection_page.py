"""The collection page: which store is in use, and per model its volumes, points and labels."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from medir.config import Settings
from ui.common import forget_stats, header, md, model_of, show_error, store_stats


def render(s: Settings) -> None:
    """Draw the collection page (``s``: the settings, read where the UI starts)."""
    header("Collection", "What the store holds: one collection per embedding model.", s)
    if st.button("Refresh", icon=":material/refresh:", key="refresh"):
        forget_stats()
    try:
        stats = store_stats(s)
    except Exception as exc:
        show_error(exc)
        return
    c = st.columns(3)
    c[0].metric("Store mode", str(stats.get("mode", "?")))
    c[1].metric("Collections", len(stats.get("collections", [])))
    c[2].metric("Volumes (all models)",
                sum(int(col["volumes"]) for col in stats.get("collections", [])))
    st.caption(f"Location: {md(stats.get('location', '?'))}")
    if not stats.get("collections"):
        st.info("**The store is empty.** Index volumes on the **Ingest** page or with "
                "`medir ingest PATH`.", icon=":material/inbox:")
        return
    st.dataframe(_summary(stats, s), hide_index=True, key="collections_table")
    for col in stats["collections"]:
        _collection(col, s)


def _summary(stats: dict[str, Any], s: Settings) -> pd.DataFrame:
    return pd.DataFrame([
        {"model": model_of(c, s), "collection": c["name"],
         "volumes": c["volumes"], "points (slices)": c["points"],
         "searchable points": c["ready_points"], "dim": c["dim"],
         "embedder versions": ", ".join(c.get("embedders", []))}
        for c in stats["collections"]
    ])


def _collection(col: dict[str, Any], s: Settings) -> None:
    st.subheader(md(model_of(col, s)))
    pending = int(col["points"]) - int(col["ready_points"])
    st.caption(f"{col['volumes']} volumes · {col['points']} points · {col['dim']}-d"
               + (f" · {pending} points of volumes still being ingested" if pending else ""))
    facets = {k: v for k, v in col.get("facets", {}).items() if v}
    if not facets:
        st.caption("No labels: volumes were indexed without a labels table.")
        return
    cols = st.columns(min(len(facets), 3))
    for i, (key, values) in enumerate(facets.items()):
        with cols[i % len(cols)]:
            st.markdown(f"**Volumes per {md(key)}**")
            st.altair_chart(_facet_chart(key, values), width="stretch")


def _facet_chart(key: str, values: dict[str, int]) -> alt.LayerChart:
    """Horizontal bars: number of complete volumes per value of one label."""
    frame = pd.DataFrame({"value": list(values), "volumes": list(values.values())})
    base = alt.Chart(frame).encode(
        y=alt.Y("value:N", sort="-x", title=None, axis=alt.Axis(labelLimit=160)),
        x=alt.X("volumes:Q", title=None, axis=alt.Axis(tickMinStep=1)),
        tooltip=["value:N", "volumes:Q"],
    )
    bars = base.mark_bar(color="#2563eb", cornerRadiusEnd=3)
    text = base.mark_text(align="left", dx=4).encode(text="volumes:Q")
    return (bars + text).properties(height=alt.Step(26))
