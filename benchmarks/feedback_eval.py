"""``medir bench feedback``: how much one "more like this" / "not this" mark helps a query.

Every volume of a collection queries the others with its stored vectors, its own case left out
(leave-one-case-out), through the product's query (``search.query.search_indexed`` on a
temporary embedded store). A simulated user then marks **one** result, the way a person
scanning the first page would:

- *like*: the highest-ranked result of the query's own class (modality/region) in the top
  ``page`` results, when there is one;
- *unlike*: the first result, when it is of another class;

and the query runs again with that mark. Reported per variant, over the queries where that
mark was possible: rank-1 class accuracy and the share of the query's class among the first
``k`` results (precision@k), *before* (the first answer without the marked volumes, which the
user has seen) and *after* (the answer with the mark). Labels only simulate the
user's eye; the ranking never reads them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.cache import ArrayCache, SliceEmbedder
from benchmarks.datasets import Dataset
from benchmarks.quality import read_volumes
from benchmarks.quality_embed import Prep, embed_slices, stride_slices
from ingest.intensity_domain import intensity_domain
from medir.config import vector_space_id
from search.query import QueryOptions, search_indexed
from search.store import COMPLETE, LAYOUT, SlicePoint, collection_name, point_id
from search.store_edge import EdgeStore
from search.vote import VolumeResult


def _class(labels: dict[str, str]) -> str:
    return f"{labels.get('modality', '')}/{labels.get('region', '')}"


def _precision(ranking: Sequence[VolumeResult], cls: str, k: int) -> float:
    top = list(ranking)[:k]
    return sum(_class(r.labels) == cls for r in top) / k if top else 0.0


def _top(ranking: Sequence[VolumeResult]) -> str:
    return ranking[0].volume_id if ranking else ""


def run_feedback_eval(dataset: Dataset, embedder: SliceEmbedder, cache: ArrayCache, *,
                      prep: str = "auto", stride_mm: float = 5.0, max_slices: int = 40,
                      options: QueryOptions | None = None, page: int = 10, k: int = 5,
                      progress: bool = True) -> dict[str, Any]:
    """Leave-one-case-out queries before and after one simulated mark (module docstring)."""
    p = Prep.parse(prep)
    base_opts = replace(options or QueryOptions(sampling="every-mm:7", weighting="gaussian"),
                        top=max(page, k), intensity=str(p))
    coll = collection_name(embedder.name)
    space = vector_space_id(embedder.embedder_id, str(p))
    variants = ("like", "unlike", "like+unlike")
    tallies: dict[str, dict[str, Any]] = {name: {"n": 0, "before": {"rank1": 0, "precision": 0.0},
                      "after": {"rank1": 0, "precision": 0.0}} for name in variants}
    marks = {"like": 0, "unlike": 0}
    rows = []
    with tempfile.TemporaryDirectory(prefix="medir-feedback-") as tmp:
        store = EdgeStore(Path(tmp) / "store")
        try:
            store.ensure_collection(coll, embedder.dim)
            queries = []
            for vol, case, labels in read_volumes(dataset):
                sl = stride_slices(vol.n_slices, vol.spacing[2], stride_mm, max_slices)
                vec = embed_slices(vol, sl, embedder, p, cache)
                store.upsert(coll, [SlicePoint(
                    point_id(vol.volume_id, "fb", i, embedder.embedder_id, "g"), vec[i],
                    {"volume_id": vol.volume_id, "slice": int(s), "n_slices": vol.n_slices,
                     "z_mm": float(s) * vol.spacing[2], "spacing": list(vol.spacing),
                     "state": COMPLETE, "gen": "g", "embedder": space, "layout": LAYOUT,
                     "domain": intensity_domain(vol.data).domain,
                     "case_id": case, "source": vol.volume_id, **labels})
                    for i, s in enumerate(sl)])
                queries.append((vol.volume_id, case, _class(labels)))
            store.flush()
            for vid, case, cls in tqdm(queries, desc="feedback", disable=not progress,
                                       leave=False):
                opts = replace(base_opts, exclude_cases=[case])
                first = search_indexed(vid, store, embedder, opts).ranking  # type: ignore[arg-type]
                like = next((r.volume_id for r in first[:page] if _class(r.labels) == cls),
                            None)
                unlike = first[0].volume_id if first and _class(first[0].labels) != cls \
                    else None
                runs: dict[str, list[VolumeResult]] = {"query": first}
                if like:
                    marks["like"] += 1
                    runs["like"] = search_indexed(vid, store, embedder, replace(  # type: ignore[arg-type]
                        opts, like=[like])).ranking
                if unlike:
                    marks["unlike"] += 1
                    runs["unlike"] = search_indexed(vid, store, embedder, replace(  # type: ignore[arg-type]
                        opts, unlike=[unlike])).ranking
                if like and unlike:
                    runs["like+unlike"] = search_indexed(vid, store, embedder, replace(  # type: ignore[arg-type]
                        opts, like=[like], unlike=[unlike])).ranking
                row: dict[str, Any] = {"volume": vid, "class": cls, "like": like,
                                       "unlike": unlike, "top": {"query": _top(first)}}
                marked = {"like": [like], "unlike": [unlike], "like+unlike": [like, unlike]}
                for name in variants:
                    if name not in runs:
                        continue  # no such mark on this query's first page
                    # before: the first answer without the marked volumes (a user who marked
                    # them knows them already); after: the answer with the mark
                    before = [r for r in first if r.volume_id not in marked[name]]
                    t = tallies[name]
                    t["n"] += 1
                    for when, ranking in (("before", before), ("after", runs[name])):
                        t[when]["rank1"] += int(bool(ranking)
                                                and _class(ranking[0].labels) == cls)
                        t[when]["precision"] += _precision(ranking, cls, k)
                    row["top"][name] = _top(runs[name])
                rows.append(row)
        finally:
            store.close()
    for t in tallies.values():
        for when in ("before", "after"):
            t[when]["precision"] = round(t[when]["precision"] / max(t["n"], 1), 4)
    return {"dataset": dataset.name, "prep": str(p), "page": page, "k": k,
            "options": base_opts.to_dict(), "marks": marks, "results": tallies, "queries": rows}
