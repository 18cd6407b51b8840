"""What the pages draw: slice images, thumbnails, the vote histogram and slice pairs.

Pure functions on arrays and on the search result dict (no Streamlit), so they are tested
directly. Slices are shown as :class:`~ingest.volume.Volume` stores them: ``data[k]`` is axial
slice k (inferior → superior), anterior at the top, patient's right on the image's left
(radiological convention). Display intensities use the same automatic window as the model
(CT: a fixed HU window, MR: the volume's 0.5–99.5 percentiles), scaled to 8 bits.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from PIL import Image

from medir.ids import split_index

OTHER = "other volumes"


def index_4d_of(volume_id: str) -> int | None:
    """The 4th-axis index of a volume id ``<case>#<k>``, or None for a 3D volume."""
    return split_index(volume_id)[1]


def slice_image(volume: NDArray[np.uint8], index: int, size: int | None = None) -> Image.Image:
    """Axial slice ``index`` (clamped to the volume) as a greyscale image, longest side ``size``."""
    k = int(np.clip(index, 0, volume.shape[0] - 1))
    img = Image.fromarray(np.ascontiguousarray(volume[k]), mode="L")
    if size is not None:
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


def mid_slice(volume: NDArray[np.uint8]) -> int:
    return int(volume.shape[0] // 2)


def png_data_uri(img: Image.Image) -> str:
    """A ``data:image/png`` URI (for image cells of ``st.dataframe``)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def labels_text(labels: Mapping[str, str], keys: Sequence[str] = ("modality", "region", "organ")
                ) -> str:
    """The anatomical labels as one short line: ``CT · chest · lung``."""
    vals = [labels[k] for k in keys if labels.get(k)]
    return " · ".join(vals) if vals else "—"


def results_frame(result: Mapping[str, Any], thumbs: Mapping[str, str | None]) -> pd.DataFrame:
    """The results table: one row per ranked volume (thumbnail URIs keyed by volume id)."""
    rows = []
    for r in result["ranking"]:
        labels = r.get("labels", {})
        rows.append({
            "rank": r["rank"],
            "thumbnail": thumbs.get(r["volume_id"]),
            "volume": r["volume_id"],
            "votes": round(float(r["votes"]), 3),
            "hits": int(r["hits"]),
            "score": float(r["score"]),
            "similarity": round(float(r["similarity"]), 3),
            "modality": labels.get("modality", ""),
            "region": labels.get("region", ""),
            "organ": labels.get("organ", ""),
            "labels": labels_text(labels),
        })
    return pd.DataFrame(rows)


def vote_frame(result: Mapping[str, Any], max_volumes: int = 5) -> pd.DataFrame:
    """Weighted votes per chosen query slice and voted volume (long format for the histogram).

    The first ``max_volumes`` ranked volumes keep their name; every other hit of a slice is
    counted as ``other volumes`` (each chosen slice casts ``k`` hits of its weight).
    """
    query = result["query"]
    k = int(result.get("options", {}).get("k", 1))
    weights = dict(zip(query["chosen_slices"], query["weights"], strict=True))
    named = [r["volume_id"] for r in result["ranking"][:max_volumes]]
    per: dict[tuple[int, str], float] = defaultdict(float)
    for r in result["ranking"][:max_volumes]:
        for m in r.get("matches", []):
            per[(int(m["query_slice"]), r["volume_id"])] += float(m["weight"])
    rows = []
    for qs, w in weights.items():
        cast = 0.0
        for vid in named:
            v = per.get((int(qs), vid), 0.0)
            if v > 0:
                rows.append({"query slice": int(qs), "volume": vid, "votes": v})
                cast += v
        rest = float(w) * k - cast
        if rest > 1e-9:
            rows.append({"query slice": int(qs), "volume": OTHER, "votes": rest})
    return pd.DataFrame(rows, columns=["query slice", "volume", "votes"])


def vote_chart(frame: pd.DataFrame, n_slices: int, order: Sequence[str]) -> alt.Chart:
    """Stacked bars of weighted votes along the query's z axis, one colour per volume."""
    domain = [*order, OTHER]
    palette = ["#2563eb", "#f97316", "#16a34a", "#db2777", "#7c3aed"][: len(order)] + ["#cbd5e1"]
    return (
        alt.Chart(frame)
        .mark_bar(size=max(2, min(12, 600 // max(n_slices, 1))))
        .encode(
            x=alt.X("query slice:Q", scale=alt.Scale(domain=[-0.5, n_slices - 0.5]),
                    title="query slice (inferior → superior)"),
            y=alt.Y("sum(votes):Q", title="weighted votes"),
            color=alt.Color("volume:N", scale=alt.Scale(domain=domain, range=palette),
                            sort=domain, legend=alt.Legend(orient="top", title=None,
                                                           columns=3, labelLimit=260)),
            order=alt.Order("volume_rank:Q"),
            tooltip=["query slice:Q", "volume:N", alt.Tooltip("votes:Q", format=".3f")],
        )
        .transform_calculate(volume_rank=_rank_expr(domain))
        .properties(height=200)
    )


def _rank_expr(domain: Sequence[str]) -> str:
    """A Vega expression giving each volume its position in ``domain`` (stacking order)."""
    expr = str(len(domain))
    for i, vid in reversed(list(enumerate(domain))):
        expr = f"datum.volume === {vid!r} ? {i} : ({expr})"
    return expr


def match_for(result: Mapping[str, Any], volume_id: str, query_slice: int
              ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """For one query slice: its best hit in ``volume_id`` (or None), and its overall best hit."""
    in_volume = None
    for r in result["ranking"]:
        if r["volume_id"] == volume_id:
            cands = [m for m in r.get("matches", []) if int(m["query_slice"]) == query_slice]
            if cands:
                in_volume = max(cands, key=lambda m: float(m["similarity"]))
            break
    best = next((m for m in result.get("slice_predictions", [])
                 if int(m["query_slice"]) == query_slice), None)
    return in_volume, best
