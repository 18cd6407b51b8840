"""The search page: a query volume in, a ranking of similar volumes out, with the reasons.

The query is an uploaded file (NIfTI or NRRD, within ``ui.upload_limit_mb``), an uploaded DICOM
series (a ``.zip`` or several ``.dcm`` files: :mod:`ui.dicom_uploads`; of several series the
largest is the query) or an indexed volume (its stored slice vectors are reused). Results show
the weighted vote per volume, each result's mid-slice, which query slices voted for whom along
z, and matched slice pairs; the ranking downloads as a cohort (CSV or JSON, as
``medir search --export`` writes it).

An uploaded query is checked when it arrives and written to disk only while its query runs, in
this browser session's folder outside every ingest root (:func:`ui.uploads.query_upload`,
:func:`ui.dicom_uploads.query_dicom_upload`); the display slices of the pair viewer are kept in
the session, not the file. Text from outside (ids, labels, sources, file names, error messages)
reaches markdown only through :func:`ui.common.md`.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from numpy.typing import NDArray

from medir.config import DEFAULT_SAMPLING, MAX_K, MAX_TOP, Settings
from medir.errors import MedirError
from runner.library import (
    LABEL_KEYS,
    Limits,
    QueryOptions,
    Sampling,
    Weighting,
    configured_options,
)
from runner.library import display_volume as read_display_volume
from ui import backend, views
from ui.common import (
    collection_models,
    collection_of,
    forget_stats,
    header,
    indexed_volumes,
    md,
    model_names,
    show_error,
    store_stats,
)
from ui.dicom_uploads import DICOM_TYPES, query_dicom_upload
from ui.pacs_links import viewer_url
from ui.uploads import UPLOAD_TYPES, query_upload

RESULT_KEY = "search_result"
QUERY_SLICES_KEY = "search_query_slices"  # display slices of an uploaded query, by index
CHECKED_KEY = "search_upload_checked"  # (file id, error or "") of the last checked upload
SESSION_KEY = "search_upload_session"  # this browser session's query-upload folder name
DICOM_CHECKED_KEY = "search_dicom_checked"  # (file ids, error, note) of the last DICOM upload
UPLOADED = "(uploaded file)"  # the query of the search form when it is an upload
UPLOADED_DICOM = "(uploaded DICOM series)"  # ... when it is an uploaded DICOM series
UPLOAD_VOLUME, UPLOAD_DICOM = "Upload a volume", "Upload a DICOM series"
FILTER_KEYS = [k for k in LABEL_KEYS if k in ("modality", "region", "organ", "dataset")]


@st.cache_resource(max_entries=24, show_spinner=False)
def _display_volume(source: str, index_4d: int | None, mtime: float,
                    limits: tuple[int, int, int]) -> NDArray[np.uint8]:
    return read_display_volume(source, index_4d, Limits(*limits))


def display_volume(s: Settings, source: str, volume_id: str = "") -> NDArray[np.uint8] | None:
    """8-bit slices of a volume file, or None when the file is not readable from here."""
    path = Path(source)
    try:
        mtime = path.stat().st_mtime
        lim = Limits.of(s.limits)
        return _display_volume(str(path), views.index_4d_of(volume_id), mtime,
                               dataclasses.astuple(lim))
    except (OSError, MedirError):
        return None


@st.cache_data(max_entries=256, show_spinner=False)
def _thumbnail(source: str, volume_id: str, _settings: Settings) -> str | None:
    vol = display_volume(_settings, source, volume_id)
    if vol is None:
        return None
    return views.png_data_uri(views.slice_image(vol, views.mid_slice(vol), size=96))


def render(s: Settings) -> None:
    """Draw the search page (``s``: the settings, read where the UI starts)."""
    header("Search similar volumes",
           "Every chosen axial slice of the query votes for the volumes of its nearest "
           "database slices; the most-voted volumes are the answer.", s)
    try:
        stats = store_stats(s)
    except Exception as exc:
        show_error(exc)
        return
    stored = collection_models(stats, s)
    if not stored:
        st.info("**The store is empty.** Index volumes on the **Ingest** page (or with "
                "`medir ingest PATH`) before searching.", icon=":material/inbox:")
        return
    query = _query_inputs(s, stats, stored)
    if query is not None:
        _run(s, *query, upload=st.session_state.get("upload") if query[0] == UPLOADED else None,
             dicom=st.session_state.get("upload_dicom") if query[0] == UPLOADED_DICOM else None)
    result = st.session_state.get(RESULT_KEY)
    if result is not None:
        _results(s, result)


SAMPLING_KINDS = ["all", "every-n", "every-mm", "random"]


def _sampling_input(s: Settings, c1: Any, c2: Any) -> str:
    """The sampling widgets, starting from the configured sampling (``MEDIR_SEARCH__SAMPLING``);
    a kind not configured starts from the default's step, else the widget's own."""
    base = Sampling.parse(DEFAULT_SAMPLING)
    try:
        conf = Sampling.parse(s.search.sampling)
    except MedirError as exc:  # a typo in the settings: say so, start from the default
        st.warning(f"MEDIR_SEARCH__SAMPLING: {md(exc)}", icon=":material/warning:")
        conf = base

    def start(kind: str, fallback: float) -> float:
        if conf.kind == kind:
            return conf.value
        return base.value if base.kind == kind else fallback

    kind = c1.selectbox("Slice sampling", SAMPLING_KINDS, index=SAMPLING_KINDS.index(conf.kind),
                        key="sampling")
    if kind == "every-n":
        n = min(max(int(start("every-n", 2)), 1), 100)
        return f"every-n:{c2.number_input('every n slices', 1, 100, n, key='n')}"
    if kind == "every-mm":
        mm = min(max(float(start("every-mm", 5.0)), 0.5), 100.0)
        return f"every-mm:{c2.number_input('every x mm', 0.5, 100.0, mm, key='mm')}"
    if kind == "random":
        k = min(max(int(start("random", 20)), 1), 2000)
        seed = f":{conf.seed}" if conf.kind == "random" and conf.seed else ""
        return f"random:{c2.number_input('k random slices', 1, 2000, k, key='kr')}{seed}"
    return "all"


def _weighting_input(s: Settings, c1: Any, c2: Any) -> str:
    """The weighting widgets, from the configured weighting and σ (``MEDIR_SEARCH__SIGMA``)."""
    try:
        conf = Weighting.parse(s.search.weighting, default_sigma=s.search.sigma)
    except MedirError as exc:
        st.warning(f"MEDIR_SEARCH__WEIGHTING: {md(exc)}", icon=":material/warning:")
        conf = Weighting("gaussian", s.search.sigma)
    gauss = c1.selectbox("Weighting", ["gaussian", "none"],
                         index=0 if conf.kind == "gaussian" else 1, key="weighting",
                         help="Gaussian: slices near the query's centre count more.")
    if gauss != "gaussian":
        return "none"
    start = conf.sigma if conf.kind == "gaussian" else s.search.sigma
    sigma = c2.number_input("σ (fraction of depth)", 0.05, 2.0, min(max(start, 0.05), 2.0),
                            step=0.05, key="sigma")
    return f"gaussian:{sigma:g}"


def _query_inputs(s: Settings, stats: dict[str, Any], stored: list[str]
                  ) -> tuple[str, str, QueryOptions, bool] | None:
    """The query form; returns (query, model, options, by_id) when Search is pressed."""
    names = model_names(s)
    choices = stored + [m for m in names if m not in stored]
    default = s.model if s.model in stored else stored[0]
    left, right = st.columns([3, 2], gap="large")
    with right:
        st.subheader("Options")
        model = st.selectbox("Model", choices, index=choices.index(default), key="model",
                             help="The embedder of the collection to search. Models without a "
                                  "collection in the store are listed after those with one.")
        if model not in stored:
            st.warning(f"No volumes are indexed with **{md(model)}**; the store holds "
                       f"{md(', '.join(stored))}.", icon=":material/explore_off:")
        c1, c2 = st.columns(2)
        sampling = _sampling_input(s, c1, c2)
        c1, c2 = st.columns(2)
        weighting = _weighting_input(s, c1, c2)
        c1, c2 = st.columns(2)
        k = int(c1.number_input("k neighbours per slice", 1, MAX_K, s.search.k, key="k"))
        top = int(c2.number_input("Top-N volumes", 1, MAX_TOP, s.search.top, key="top"))
        filters = _filter_inputs(collection_of(stats, model, s))
        cross = st.checkbox("Cross-modality search", value=False, key="cross_modality",
                            help="By default a CT query (voxels in Hounsfield units) only meets "
                                 "CT volumes and an MR query only non-CT ones; tick to search "
                                 "all.")
    with left:
        st.subheader("Query volume")
        choices = [UPLOAD_VOLUME, UPLOAD_DICOM, "An indexed volume"] + (
            ["A PACS series"] if s.pacs.url else [])
        source = st.radio("Query", choices, horizontal=True,
                          label_visibility="collapsed", key="source")
        query: str | None = None
        by_id = source == "An indexed volume"
        if by_id:
            query = _indexed_input(s, model)
        elif source == "A PACS series":
            uid = st.text_input("SeriesInstanceUID", key="pacs_series",
                                help="Retrieved from the PACS over DICOMweb (WADO-RS).")
            uid = uid.strip()
            query = f"pacs/series/{uid}" if uid else None
        elif source == UPLOAD_DICOM:
            query = _dicom_input(s)
        else:
            upload = st.file_uploader(
                f"NIfTI (.nii, .nii.gz) or NRRD (.nrrd), up to {s.ui.upload_limit_mb} MB",
                type=list(UPLOAD_TYPES), max_upload_size=s.ui.upload_limit_mb, key="upload")
            if upload is not None:
                error = _check_upload(s, upload)
                if error:
                    st.error(f"**Bad upload.** {md(error)}", icon=":material/block:")
                else:
                    query = UPLOADED
                    st.caption("Kept on the server only while its query runs; a 4D file is "
                               "searched with its first volume.")
        pressed = st.button("Search", type="primary", icon=":material/search:",
                            disabled=query is None, key="go")
    if pressed and query is not None:
        try:
            opts = configured_options(s.search, sampling=sampling, weighting=weighting, k=k,
                                      top=top, filters=filters, intensity=s.intensity,
                                      cross_modality=cross)
        except MedirError as exc:  # e.g. a sampling spec typed wrong: one line, no query
            show_error(exc)
            return None
        return query, model, opts, by_id
    return None


def _dicom_input(s: Settings) -> str | None:
    """The DICOM series uploader: a .zip of a series or its .dcm files, checked on arrival."""
    uploads = st.file_uploader(
        f"A DICOM series: a .zip, or its .dcm files, up to {s.ui.upload_limit_mb} MB each",
        type=list(DICOM_TYPES), accept_multiple_files=True,
        max_upload_size=s.ui.upload_limit_mb, key="upload_dicom")
    if not uploads:
        return None
    error, note = _check_dicom(s, uploads)
    if error:
        st.error(f"**Bad upload.** {md(error)}", icon=":material/block:")
        return None
    st.caption(f"{note}  \nKept on the server only while its query runs.")
    return UPLOADED_DICOM


def _dicom_items(uploads: list[Any]) -> list[tuple[str, bytes]]:
    return [(up.name, up.getvalue()) for up in uploads]


def _check_dicom(s: Settings, uploads: list[Any]) -> tuple[str, str]:
    """(why the DICOM upload cannot be used or "", what it holds): checked once per set of
    files, by reading it from a copy deleted right after."""
    ids = tuple(up.file_id for up in uploads)
    checked = st.session_state.get(DICOM_CHECKED_KEY)
    if checked is not None and checked[0] == ids:
        return str(checked[1]), str(checked[2])
    error = note = ""
    try:
        with query_dicom_upload(_dicom_items(uploads), s, _session_id()) as q:
            what = md(q.description)
            note = (f"{q.n_series} image series in the upload: the largest ({what}) is the "
                    "query." if q.n_series > 1 else f"DICOM series: {what}.")
            if q.left_out:
                note += " Left out: " + ", ".join(f"{n} {md(k)}" for k, n in q.left_out.items())
    except MedirError as exc:
        error = str(exc)
    st.session_state[DICOM_CHECKED_KEY] = (ids, error, note)
    return error, note


def _session_id() -> str:
    """This browser session's name for its query-upload folder (random, per session)."""
    sid: str = st.session_state.setdefault(SESSION_KEY, secrets.token_hex(16))
    return sid


def _check_upload(s: Settings, upload: Any) -> str:
    """Why an uploaded query cannot be used ("" when it can): checked once per file, by reading
    it from a copy deleted right after."""
    checked = st.session_state.get(CHECKED_KEY)
    if checked is not None and checked[0] == upload.file_id:
        return str(checked[1])
    try:
        with query_upload(upload.name, upload.getvalue(), s, _session_id()):
            error = ""
    except MedirError as exc:
        error = str(exc)
    st.session_state[CHECKED_KEY] = (upload.file_id, error)
    return error


def _query_slices(s: Settings, path: Path, result: dict[str, Any]) -> dict[int, NDArray[np.uint8]]:
    """The 8-bit display slices the pair viewer shows of a query file (its chosen slices)."""
    try:
        vol = read_display_volume(str(path), None, Limits.of(s.limits))
    except (OSError, MedirError):
        return {}
    return {int(k): vol[int(k)].copy() for k in result["query"]["chosen_slices"]
            if 0 <= int(k) < vol.shape[0]}


def _indexed_input(s: Settings, model: str) -> str | None:
    try:
        ids = indexed_volumes(s, model)
    except Exception as exc:
        show_error(exc)
        return None
    if not ids:
        st.warning(f"No volumes are indexed with {md(model)}.", icon=":material/explore_off:")
        return None
    picked: str | None = st.selectbox("Indexed volume", ids, key="volume_id")
    return picked


def _filter_inputs(coll: dict[str, Any] | None) -> dict[str, list[str]]:
    facets: dict[str, dict[str, int]] = (coll or {}).get("facets", {})
    keys = [k for k in FILTER_KEYS if facets.get(k)]
    if not keys:
        return {}
    st.markdown("**Label filters** (restrict the database, never used for ranking)")
    cols = st.columns(2)
    out: dict[str, list[str]] = {}
    for i, key in enumerate(keys):
        col = cols[i % 2]
        counts = facets[key]
        opts = list(counts)
        names = {v: f"{v} ({counts[v]})" for v in opts}
        chosen = col.multiselect(key, opts, key=f"filter_{key}", format_func=names.__getitem__)
        if chosen:
            out[key] = chosen
    return out


def _run(s: Settings, query: str, model: str, options: QueryOptions, by_id: bool,
         upload: Any = None, dicom: list[Any] | None = None) -> None:
    """Answer a query; an uploaded query file (or DICOM series) exists on disk only during this
    call."""
    st.session_state.pop(RESULT_KEY, None)
    st.session_state.pop(QUERY_SLICES_KEY, None)
    slices: dict[int, NDArray[np.uint8]] = {}
    try:
        with st.spinner("Embedding the query's slices and voting…"):
            if dicom:
                with query_dicom_upload(_dicom_items(dicom), s, _session_id()) as dq:
                    result = backend.search(s, str(dq.folder), model, options, by_id=False)
                    slices = _query_slices(s, dq.folder, result)
            elif upload is None:
                result = backend.search(s, query, model, options, by_id=by_id)
            else:
                with query_upload(upload.name, upload.getvalue(), s, _session_id()) as path:
                    result = backend.search(s, str(path), model, options, by_id=False)
                    slices = _query_slices(s, path, result)
    except Exception as exc:
        show_error(exc)
        return
    forget_stats()
    if upload is not None or dicom:
        result["query"]["file"] = ""  # deleted: the pair viewer uses the kept slices
        result["query"]["source"] = (upload.name if upload is not None
                                     else ", ".join(up.name for up in dicom or []))
        st.session_state[QUERY_SLICES_KEY] = slices
    elif not by_id:
        result["query"]["file"] = query
    st.session_state[RESULT_KEY] = result


def _results(s: Settings, result: dict[str, Any]) -> None:
    ranking = result["ranking"]
    q = result["query"]
    st.divider()
    if not ranking:
        st.warning("No volume matched (are the label filters too narrow?).",
                   icon=":material/search_off:")
        return
    best = ranking[0]
    t = result.get("timings", {})
    st.subheader("Results")
    left, right = st.columns([3, 2], vertical_alignment="center")
    answer = result.get("answer") or {}
    said = (f"from {md(best['volume_id'])}, the most-voted volume "
            f"({best['score']:.0%} of the weighted vote)")
    labels = md(views.labels_text(best.get("labels", {})))
    if answer.get("uncertain"):  # amber, not green: the nearest volumes are still listed
        left.warning(f"**Uncertain: nearest is {labels}** (confidence "
                     f"{answer['confidence']:.0%})  \n{md(answer['reason'])}.  \n" + said,
                     icon=":material/help:")
    else:
        conf = f", confidence {answer['confidence']:.0%}" if answer else ""
        left.success(f"**Prediction: {labels}**  \n" + said + conf, icon=":material/target:")
    if q.get("domain"):
        scope = ("all domains searched" if result.get("options", {}).get("cross_modality")
                 else "results kept to this domain")
        left.caption(f"Query intensity domain: {md(q['domain'])} "
                     f"({md(q.get('domain_reason', ''))}); {scope}.")
    c = right.columns(2)
    c[0].metric("Query slices", f"{len(q['chosen_slices'])} / {q['n_slices']}")
    c[1].metric("Search time", f"{t.get('embed_s', 0) + t.get('knn_s', 0):.1f} s",
                help=f"embedding {t.get('embed_s', 0):.2f} s · k-NN {t.get('knn_s', 0):.3f} s "
                     f"· vote {t.get('vote_s', 0):.4f} s")
    thumbs = {r["volume_id"]: _thumbnail(r.get("source", ""), r["volume_id"], s) for r in ranking}
    frame = views.results_frame(result, thumbs)
    frame["viewer"] = [viewer_url(s.pacs.viewer_url_template, r.get("dicom", {}))
                       for r in ranking]
    st.dataframe(
        frame, hide_index=True, key="results_table",
        column_order=["rank", "thumbnail", "volume", "votes", "hits", "score", "similarity",
                      "modality", "region", "organ", "viewer"],
        column_config={
            "rank": st.column_config.NumberColumn("#", width="small"),
            "thumbnail": st.column_config.ImageColumn("mid-slice", width="small"),
            "score": st.column_config.ProgressColumn("vote share", min_value=0.0,
                                                     max_value=1.0, format="percent"),
            "similarity": st.column_config.NumberColumn("mean cos", format="%.3f"),
            "viewer": st.column_config.LinkColumn("PACS", display_text="open study"),
        },
        row_height=64,
    )
    _export_buttons(result)
    st.markdown("##### Votes along the query's z axis")
    order = [r["volume_id"] for r in ranking[:5]]
    st.altair_chart(views.vote_chart(views.vote_frame(result), int(q["n_slices"]), order),
                    width="stretch")
    _pair_viewer(s, result)


def _export_buttons(result: dict[str, Any]) -> None:
    """Download the ranking as a cohort: CSV (a labels CSV for ``medir ingest --labels`` too)
    or JSON, the table ``medir search --export`` writes."""
    c1, c2, _ = st.columns([1, 1, 3])
    for col, fmt, mime, icon in ((c1, ".csv", "text/csv", ":material/table:"),
                                 (c2, ".json", "application/json", ":material/data_object:")):
        col.download_button(f"Cohort {fmt[1:].upper()}", backend.cohort_text(result, fmt),
                            file_name=f"cohort{fmt}", mime=mime, icon=icon,
                            key=f"export_{fmt[1:]}", on_click="ignore",
                            help="The ranking: volume id, source, labels, score, confidence, "
                                 "matched slice ranges")


def _pair_viewer(s: Settings, result: dict[str, Any]) -> None:
    q = result["query"]
    chosen = [int(c) for c in q["chosen_slices"]]
    if not chosen:
        return
    st.markdown("##### Matched slices")
    ids = [r["volume_id"] for r in result["ranking"]]
    c1, c2 = st.columns([1, 2])
    target = c1.selectbox("Compare with", ids, key="pair_volume",
                          format_func=lambda v: f"#{ids.index(v) + 1} {v}")
    weights = dict(zip(chosen, q["weights"], strict=True))
    centre = max(chosen, key=lambda s: weights.get(s, 0.0))
    qs = int(c2.select_slider("Query slice", chosen, value=centre, key="pair_slice"))
    in_volume, best = views.match_for(result, target, qs)
    match = in_volume or best
    kept = st.session_state.get(QUERY_SLICES_KEY)
    query_img = None
    if kept is not None:  # an uploaded query: its file is gone, its slices were kept
        if qs in kept:
            query_img = views.slice_image(kept[qs][None], 0, size=420)
    else:
        query_vol = display_volume(s, q.get("file") or q.get("source", ""), q["volume_id"])
        if query_vol is not None:
            query_img = views.slice_image(query_vol, qs, size=420)
    left, right = st.columns(2)
    with left:
        if query_img is not None:
            st.image(query_img, width=420, caption=f"Query · slice {qs} of {q['n_slices']} · "
                                                   f"weight {weights.get(qs, 0):.2f}")
        else:
            st.info("The query file is not readable from this server.")
    with right:
        if match is None:
            st.info("This slice cast no vote.")
            return
        rank = next((r for r in result["ranking"] if r["volume_id"] == match["volume_id"]),
                    None)
        source = rank.get("source", "") if rank else ""
        db_vol = display_volume(s, source, match["volume_id"]) if source else None
        note = "" if in_volume else f" (no hit in {md(target)}; this slice's best match)"
        caption = (f"{md(match['volume_id'])} · slice {match['db_slice']} · cos "
                   f"{float(match['similarity']):.3f}{note}")
        if db_vol is not None:
            st.image(views.slice_image(db_vol, int(match["db_slice"]), size=420),
                     width=420, caption=caption)
        else:
            st.info(f"{caption}: the file is not readable from this server.")
