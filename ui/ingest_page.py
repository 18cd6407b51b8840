"""The ingest page: index uploaded files, or a server-side folder inside the configured roots.

With a broker configured the files become queue jobs (one per volume) and the page follows
them; without one they are ingested here, file by file, with a progress bar per volume and
overall, and one line per failed file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from medir.config import Settings
from medir.errors import MedirError
from runner.library import IngestReport, Limits, VolumeSource, scan_paths
from ui import backend, jobs
from ui.common import forget_stats, header, model_names, show_error
from ui.paths import resolve_in_roots, resolved_roots
from ui.uploads import UPLOAD_TYPES, save_upload, upload_dir, upload_source

JOBS_KEY = "ingest_jobs"
REPORTS_KEY = "ingest_reports"


def render(s: Settings) -> None:
    """Draw the ingest page (``s``: the settings, read where the UI starts)."""
    header("Ingest volumes", "Each axial slice of each volume is embedded once and stored; a "
                             "volume becomes searchable when all its slices are in.", s)
    names = model_names(s)
    c1, c2 = st.columns([2, 3])
    model = c1.selectbox("Model", names, index=names.index(s.model) if s.model in names else 0,
                         key="ingest_model")
    with c2.expander("Labels for these volumes (optional)"):
        st.caption("Shown with results and usable as filters; never used for ranking.")
        lc = st.columns(4)
        given = {key: lc[i].text_input(key, key=f"label_{key}").strip()
                 for i, key in enumerate(("modality", "region", "organ", "dataset"))}
    labels = {k: v for k, v in given.items() if v}
    files: list[VolumeSource] | None = None
    upload_tab, folder_tab = st.tabs(["Upload files", "Server folder"])
    with upload_tab:
        uploads = st.file_uploader(
            f"NIfTI or NRRD volumes, up to {s.ui.upload_limit_mb} MB each",
            type=list(UPLOAD_TYPES), accept_multiple_files=True,
            max_upload_size=s.ui.upload_limit_mb, key="ingest_uploads")
        if st.button("Ingest uploaded files", type="primary", disabled=not uploads,
                     key="ingest_upload_go"):
            files = _save_uploads(uploads or [], s)
    with folder_tab:
        roots = resolved_roots(s.ui.ingest_roots)
        st.caption("Allowed folders: " + ", ".join(f"`{r}`" for r in roots)
                   + " (MEDIR_UI__INGEST_ROOTS). Relative paths start at the first one.")
        raw = st.text_input("Folder or file on the server", key="ingest_folder",
                            placeholder="samples")
        if st.button("Ingest folder", type="primary", disabled=not raw.strip(),
                     key="ingest_folder_go"):
            files = _folder_files(raw, roots, s)
    if files:
        label_map = {f.volume_id: labels for f in files} if labels else None
        if backend.queue_mode(s):
            _submit(s, files, model, label_map)
        else:
            _ingest_here(s, files, model, label_map)
    if backend.queue_mode(s) and st.session_state.get(JOBS_KEY):
        _follow_jobs(s)
    elif st.session_state.get(REPORTS_KEY):
        _report_table(st.session_state[REPORTS_KEY])


def _save_uploads(uploads: list[Any], s: Settings) -> list[VolumeSource]:
    saved: list[VolumeSource] = []
    for up in uploads:
        try:
            saved.append(upload_source(save_upload(up.name, up.getvalue(),
                                                   upload_dir(s.data_dir), s.ui.upload_limit_mb,
                                                   Limits.of(s.limits))))
        except MedirError as exc:
            st.error(f"**Bad upload.** {exc}", icon=":material/block:")
    return saved


def _folder_files(raw: str, roots: list[Path], s: Settings) -> list[VolumeSource]:
    try:
        target = resolve_in_roots(raw, roots, private=[s.query_uploads])
        scan = scan_paths([target])
    except MedirError as exc:
        st.error(f"**Folder not allowed.** {exc}", icon=":material/block:")
        return []
    left = scan.skipped_by_kind()
    if left:
        st.info("Left out: " + ", ".join(f"{n} {kind}" for kind, n in left.items()),
                icon=":material/filter_alt:")
    if not scan.sources:
        st.warning(f"No NIfTI, NRRD or DICOM volumes in `{target}`.",
                   icon=":material/search_off:")
    return scan.sources


def _ingest_here(s: Settings, files: list[VolumeSource], model: str,
                 labels: dict[str, dict[str, str]] | None) -> None:
    st.session_state.pop(REPORTS_KEY, None)
    st.markdown(f"##### Ingesting {len(files)} file(s) with {model}")
    overall = st.progress(0.0, text=f"0 / {len(files)} files")
    box = st.container()
    bars: dict[str, Any] = {}
    reports: list[IngestReport] = []
    t0 = time.perf_counter()
    slices = 0

    def progress(vid: str, done: int, total: int) -> None:
        if vid not in bars:
            bars[vid] = box.progress(0.0, text=vid)
        bars[vid].progress(min(done / max(total, 1), 1.0),
                           text=f"{vid} · {done} / {total} slices")

    def on_report(r: IngestReport) -> None:
        nonlocal slices
        reports.append(r)
        if r.status == "failed":
            box.error(f"**{Path(r.path).name}** failed: {r.error}", icon=":material/cancel:")
            return
        slices += r.n_slices if r.status == "indexed" else 0
        bar = bars.get(r.volume_id) or box.progress(1.0)
        bar.progress(1.0, text=f"{r.volume_id} · {r.status} · {r.n_slices} slices")

    for i, f in enumerate(files):
        try:
            backend.ingest_here(s, [f], model, labels, progress, on_report)
        except Exception as exc:  # store or model failure: stop, say why
            show_error(exc)
            break
        rate = slices / max(time.perf_counter() - t0, 1e-9)
        overall.progress((i + 1) / len(files),
                         text=f"{i + 1} / {len(files)} files · {rate:.1f} slices/s")
    forget_stats()
    st.session_state[REPORTS_KEY] = [r.to_dict() for r in reports]


def _report_table(reports: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(reports)
    ok = int((frame["status"] != "failed").sum())
    failed = len(frame) - ok
    msg = f"{ok} volume(s) indexed or already present" + (f", {failed} failed" if failed else "")
    if failed:
        st.warning(msg, icon=":material/warning:")
    else:
        st.success(msg, icon=":material/check_circle:")
    frame["file"] = [Path(p).name for p in frame["path"]]
    st.dataframe(frame[["file", "volume_id", "status", "n_slices", "seconds", "error"]],
                 hide_index=True, key="ingest_reports_table",
                 column_config={"seconds": st.column_config.NumberColumn(format="%.1f")})


def _submit(s: Settings, files: list[VolumeSource], model: str,
            labels: dict[str, dict[str, str]] | None) -> None:
    try:
        ids = jobs.submit(s, files, model, labels)
    except Exception as exc:
        show_error(exc)
        return
    st.session_state[JOBS_KEY] = ids
    st.toast(f"Submitted {len(ids)} job(s)", icon=":material/send:")


@st.fragment(run_every=2.0)
def _follow_jobs(s: Settings) -> None:
    ids: list[str] = st.session_state.get(JOBS_KEY, [])
    try:
        states = jobs.states(s, ids)
    except Exception as exc:
        show_error(exc)
        return
    try:
        jobs.check_worker(s, states)
    except jobs.NoWorker as exc:
        st.warning(f"**Worker not running.** {exc}", icon=":material/power_off:")
    done = sum(1 for j in states if j.finished)
    total_slices = sum(j.total for j in states)
    done_slices = sum(j.done for j in states)
    st.markdown(f"##### Jobs: {done} / {len(states)} finished")
    st.progress(done_slices / total_slices if total_slices else done / max(len(states), 1),
                text=f"{done_slices} / {total_slices} slices")
    for j in states:
        label = f"{j.name} · {j.state}"
        if j.state == "FAILURE":
            st.error(f"**{j.name}** failed: {j.error}", icon=":material/cancel:")
        else:
            st.progress(j.fraction, text=f"{label} · {j.done} / {j.total} slices")
    if states and done == len(states):
        forget_stats()
