"""DICOMweb against a real Orthanc: ingest, re-run skips, follow across a kill, query, errors."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ingest import dicomweb
from ingest.dicomweb import PacsError, QidoFilters, mask, parse_source
from medir.config import DEFAULT_MODEL, Settings
from medir.errors import ConfigError
from tests.conftest import free_port
from tests.dicom_fixtures import PHI, sr_dataset, volume_to_datasets
from tests.orthanc_fixture import PASSWORD, USER, Orthanc, orthanc  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
TINY = {"MEDIR_PLUGINS": "tests.plugin_embedder", "MEDIR_MODEL": "test-tiny", "COLUMNS": "250"}


def _series(samples_dir: Path, name: str, box: tuple[slice, slice, slice], modality: str,
            study: str | None = None, **kw: float) -> list[Dataset]:
    img = nib.Nifti1Image.from_filename(str(samples_dir / name))
    sub = img.slicer[box]
    return volume_to_datasets(np.asarray(sub.dataobj).astype(np.float64), sub.affine,
                              modality, study=study, **kw)  # type: ignore[arg-type]


CT = "ct_chest_lung1_pyradiomics.nii.gz"
MR = "mr_head_t1c_pyradiomics.nii.gz"


def _ct(samples_dir: Path, z0: int, study: str | None = None) -> list[Dataset]:
    return _series(samples_dir, CT, (slice(192, 256), slice(200, 264), slice(z0, z0 + 5)), "CT",
                   study, slope=1.0, intercept=-1024.0, signed=False)


def _mr(samples_dir: Path, z0: int, study: str | None = None) -> list[Dataset]:
    return _series(samples_dir, MR, (slice(96, 160), slice(96, 160), slice(z0, z0 + 4)), "MR",
                   study)


def medir(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, **TINY, **env}
    return subprocess.run([sys.executable, "-m", "medir.cli", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout)


def _store_volumes(store_path: Path) -> dict[str, dict[str, object]]:
    """volume id → (points, n_slices, payload) of the complete volumes of the tiny collection."""
    from search.store import READY
    from search.store_edge import EdgeStore

    out: dict[str, dict[str, object]] = {}
    with EdgeStore(store_path) as store:
        for rec in store.scroll("medir_test_tiny", READY):
            v = out.setdefault(str(rec.payload["volume_id"]), {"points": 0, **rec.payload})
            v["points"] = int(str(v["points"])) + 1
    return out


def _no_secret(*texts: str) -> None:
    for t in texts:
        assert PASSWORD not in t
        for value in PHI.values():
            assert value.split("^")[0] not in t


@pytest.fixture(scope="module")
def study(samples_dir: Path, orthanc: Orthanc) -> dict[str, list[Dataset]]:  # noqa: F811
    """One study on the PACS: a CT and an MR series made from the samples, plus an SR."""
    st = generate_uid()
    ct, mr = _ct(samples_dir, 10, st), _mr(samples_dir, 8, st)
    orthanc.upload(ct + mr + [sr_dataset(st)])
    return {"ct": ct, "mr": mr}


def _env(orthanc: Orthanc, tmp_path: Path, **extra: str) -> dict[str, str]:  # noqa: F811
    return {**orthanc.env(), "MEDIR_STORE_PATH": str(tmp_path / "store"),
            "MEDIR_PACS__FOLLOW_STATE": str(tmp_path / "follow.json"), **extra}


def test_ingest_exactly_those_series_then_skip(orthanc: Orthanc, study: dict,  # noqa: F811
                                               tmp_path: Path) -> None:
    env = _env(orthanc, tmp_path)
    uids = {study["ct"][0].SeriesInstanceUID: len(study["ct"]),
            study["mr"][0].SeriesInstanceUID: len(study["mr"])}
    st = study["ct"][0].StudyInstanceUID
    r = medir("ingest", orthanc.source, "--study", st, env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    indexed = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("indexed")}
    assert indexed == set(uids)
    assert "non-image DICOM (SR series)" in r.stdout
    vols = _store_volumes(tmp_path / "store")
    assert set(vols) == set(uids)
    for uid, n in uids.items():
        assert vols[uid]["points"] == n == vols[uid]["n_slices"]
        assert vols[uid]["StudyInstanceUID"] == st and vols[uid]["SeriesInstanceUID"] == uid
        assert str(vols[uid]["source"]).startswith(orthanc.source + "/studies/")
    _no_secret(r.stdout, r.stderr, json.dumps(vols))

    again = medir("ingest", orthanc.source, "--study", st, env=env)
    assert again.returncode == 0, again.stderr
    assert not any(ln.startswith("indexed") for ln in again.stdout.splitlines())
    assert f"{orthanc.source}: 0 indexed, 3 skipped, 0 failed" in again.stdout  # the summary
    skipped = {ln.split()[1] for ln in again.stdout.splitlines() if ln.startswith("skipped")}
    assert set(uids) <= skipped

    # filters: only the MR; a date range with no study
    only_mr = medir("ingest", "pacs", "--modality", "MR", "--date-from", "20240101",
                    "--date-to", "20240131", env=env)
    assert "1 series match" in only_mr.stdout, only_mr.stdout
    none = medir("ingest", "pacs", "--date-from", "20300101", env=env)
    assert "0 series match" in none.stdout

    # the CT series from the PACS as a query: the only other volume is an MR, which the
    # modality guard keeps out by default ...
    q = medir("search", "--pacs-series", study["ct"][0].SeriesInstanceUID, "--json",
              "--top", "5", env=env)
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == []
    # ... and results carry the UIDs: asked across modalities, the MR is found
    q = medir("search", "--pacs-series", study["ct"][0].SeriesInstanceUID, "--json",
              "--top", "5", "--cross-modality", env=env)
    assert q.returncode == 0, q.stderr
    ranking = json.loads(q.stdout)
    assert [r["volume_id"] for r in ranking] == [study["mr"][0].SeriesInstanceUID]
    assert ranking[0]["dicom"] == {"StudyInstanceUID": st,
                                   "SeriesInstanceUID": study["mr"][0].SeriesInstanceUID,
                                   "Modality": "MR", "BodyPartExamined": "HEAD"}
    _no_secret(q.stdout, q.stderr, again.stdout, again.stderr)


def test_pacs_series_obey_the_configured_voxel_limit(orthanc: Orthanc, study: dict,  # noqa: F811
                                                    tmp_path: Path) -> None:
    """A PACS series is a volume like any file: ingesting it and querying with it are refused
    under the settings' voxel limit, with one line each, and nothing is stored."""
    env = _env(orthanc, tmp_path, MEDIR_LIMITS__MAX_VOXELS="100")
    st = study["ct"][0].StudyInstanceUID
    r = medir("ingest", orthanc.source, "--study", st, env=env)
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith("failed")]
    assert len(failed) == 2 and r.stdout.count("(MEDIR_LIMITS__MAX_VOXELS)") == 2, r.stdout
    from search.store import READY
    from search.store_edge import EdgeStore

    with EdgeStore(tmp_path / "store") as store:  # nothing searchable was stored
        assert all(store.count(c, READY) == 0 for c in store.collections())
    q = medir("search", "--pacs-series", study["ct"][0].SeriesInstanceUID, env=env)
    assert q.returncode == 2 and "MEDIR_LIMITS__MAX_VOXELS" in q.stderr, q.stderr
    assert q.stderr.count("\n") == 1


def test_rerun_retrieves_nothing(orthanc: Orthanc, study: dict, tmp_path: Path,  # noqa: F811
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Unchanged series are skipped with one QIDO request each, without WADO-RS retrieval."""
    import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
    from ingest.embedders import get_embedder
    from ingest.pacs_ingest import ingest_series
    from search.store_edge import EdgeStore

    for k, v in orthanc.env().items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    spec = parse_source("pacs", settings)
    series = dicomweb.list_series(spec, QidoFilters(study_uid=study["ct"][0].StudyInstanceUID,
                                                    modality="CT"))
    assert [s.volume_id for s in series] == [study["ct"][0].SeriesInstanceUID]
    embedder = get_embedder("test-tiny", device="cpu")
    retrieved: list[str] = []
    original = dicomweb.PacsClient.iter_series

    def counting(self: dicomweb.PacsClient, ref: dicomweb.SeriesRef) -> Iterator[Dataset]:
        retrieved.append(ref.series_uid)
        return original(self, ref)

    monkeypatch.setattr(dicomweb.PacsClient, "iter_series", counting)
    with EdgeStore(tmp_path / "store") as store:
        first = ingest_series(series, store, embedder, target=spec.target)
        second = ingest_series(series, store, embedder, target=spec.target)
    assert [r.status for r in first] == ["indexed"] and [r.status for r in second] == ["skipped"]
    assert retrieved == [series[0].volume_id]  # the re-run retrieved nothing
    assert second[0].n_slices == len(study["ct"])
    # the content hash is stable across retrievals
    a, b = series[0].open(), series[0].open()
    assert a.sha256 == b.sha256 and a.case_id == series[0].volume_id


def _reader(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))
    lines.put("<eof>")


def _wait_line(lines: queue.Queue[str], prefix: str, seen: list[str],
               timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line {prefix!r}; got {seen}")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        seen.append(line)
        if line == "<eof>":
            raise AssertionError(f"follow ended before {prefix!r}: {seen}")
        if line.startswith(prefix):
            return line


def _wait_handled(state: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text()).get("handled", 0) >= n:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"follow state never reached {n} handled series")


def _stable_series(orthanc: Orthanc) -> int:  # noqa: F811
    with orthanc.session() as s:
        ch = s.get(orthanc.rest + "/changes?limit=10000", timeout=5).json()["Changes"]
    return sum(c["ChangeType"] == "StableSeries" for c in ch)


def test_follow_indexes_new_series_once_across_a_kill(samples_dir: Path,
                                                      orthanc: Orthanc,  # noqa: F811
                                                      tmp_path: Path) -> None:
    env = {**os.environ, **TINY, **_env(orthanc, tmp_path), "PYTHONUNBUFFERED": "1"}
    state = tmp_path / "follow.json"
    # start from now: the series already on the PACS are not this follower's business
    proc = subprocess.Popen([sys.executable, "-m", "medir.cli", "follow", "--from-now",
                             "--interval", "0.2"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    try:
        _wait_line(lines, "following", seen)
        x, y = _ct(samples_dir, 30), _mr(samples_dir, 14)
        orthanc.upload(x)  # uploaded while follow runs
        assert x[0].SeriesInstanceUID in _wait_line(lines, "indexed", seen)
        orthanc.upload(y)
        assert y[0].SeriesInstanceUID in _wait_line(lines, "indexed", seen)
        _wait_handled(state, 2)
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown
        proc.wait(timeout=30)
    z = _mr(samples_dir, 2)
    n_stable = _stable_series(orthanc)
    orthanc.upload(z)
    # wait until Orthanc declares z stable, then one pass of the restarted follower
    deadline = time.monotonic() + 60
    while _stable_series(orthanc) <= n_stable and time.monotonic() < deadline:
        time.sleep(0.1)
    again = medir("follow", "--once", env=_env(orthanc, tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    handled = [ln for ln in again.stdout.splitlines()
               if ln.split()[:1] and ln.split()[0] in ("indexed", "skipped", "failed")]
    assert len(handled) == 1 and handled[0].startswith("indexed"), again.stdout
    assert z[0].SeriesInstanceUID in handled[0]
    vols = _store_volumes(tmp_path / "store")
    assert {u: v["points"] for u, v in vols.items()} == {
        x[0].SeriesInstanceUID: len(x), y[0].SeriesInstanceUID: len(y),
        z[0].SeriesInstanceUID: len(z)}
    third = medir("follow", "--once", env=_env(orthanc, tmp_path))
    assert "indexed" not in third.stdout and "skipped" not in third.stdout
    _no_secret(*seen, again.stdout, again.stderr, third.stdout, third.stderr)


def test_wrong_credentials_and_unreachable_one_line(orthanc: Orthanc,  # noqa: F811
                                                    tmp_path: Path) -> None:
    env = {**_env(orthanc, tmp_path), "MEDIR_PACS__PASSWORD": "Wrong-" + PASSWORD}
    r = medir("ingest", "pacs", env=env)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "authentication failed (HTTP 401)" in err[0], r.stderr
    assert orthanc.source in err[0]
    down = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"
    r2 = medir("ingest", down, env=env)
    assert r2.returncode == 2
    err2 = r2.stderr.strip().splitlines()
    assert len(err2) == 1 and "unreachable (connection refused)" in err2[0], r2.stderr
    # credentials in the URL itself are used but never shown
    inline = f"dicomweb+http://{USER}:Wrong-{PASSWORD}@127.0.0.1:{orthanc.port}/dicom-web"
    r3 = medir("ingest", inline, env={"MEDIR_STORE_PATH": str(tmp_path / "s")})
    assert r3.returncode == 2 and "authentication failed" in r3.stderr
    r4 = medir("follow", "--once", env=env)
    assert r4.returncode == 2 and len(r4.stderr.strip().splitlines()) == 1
    _no_secret(r.stdout, r.stderr, r2.stdout, r2.stderr, r3.stdout, r3.stderr, r4.stdout,
               r4.stderr)
    assert "Wrong-" not in r.stderr + r3.stderr + r4.stderr


def test_reingest_without_a_labels_table_keeps_the_stored_labels(
        orthanc: Orthanc, study: dict, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As for files, a series re-ingested without a labels table keeps the labels stored for
    it (here past the cheap QIDO pre-check, as a changed series would be); a table's labels
    replace them."""
    import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
    from ingest import pacs_ingest
    from ingest.embedders import get_embedder
    from search.store_edge import EdgeStore
    from search.volumes import list_volumes

    for k, v in orthanc.env().items():
        monkeypatch.setenv(k, v)
    spec = parse_source("pacs", Settings())
    series = dicomweb.list_series(spec, QidoFilters(study_uid=study["ct"][0].StudyInstanceUID,
                                                    modality="CT"))
    uid = series[0].volume_id
    embedder = get_embedder("test-tiny", device="cpu")

    def labels_now(store: EdgeStore) -> dict[str, str]:
        return {v.volume_id: v.labels for v in list_volumes(store)}[uid]

    with EdgeStore(tmp_path / "store") as store:
        first = pacs_ingest.ingest_series(series, store, embedder, target=spec.target,
                                          labels={uid: {"region": "chest"}})
        assert [r.status for r in first] == ["indexed"]
        assert labels_now(store).get("region") == "chest"
        monkeypatch.setattr(pacs_ingest, "already_indexed", lambda *a, **k: False)
        again = pacs_ingest.ingest_series(series, store, embedder, target=spec.target)
        assert [r.status for r in again] == ["skipped"]
        assert labels_now(store).get("region") == "chest"
        relabel = pacs_ingest.ingest_series(series, store, embedder, target=spec.target,
                                            labels={uid: {"region": "abdomen"}})
        assert [r.status for r in relabel] == ["relabelled"]
        assert labels_now(store).get("region") == "abdomen"


def test_parse_source_and_mask() -> None:
    s = Settings(pacs={"url": "http://pacs:8042/dicom-web", "username": "u",  # type: ignore
                       "password": "sekret", "token": None})
    spec = parse_source("pacs/studies/1.2.3/series/1.2.3.4", s)
    assert spec.target.base_url == "http://pacs:8042/dicom-web"
    assert (spec.study_uid, spec.series_uid) == ("1.2.3", "1.2.3.4")
    assert spec.target.password == "sekret" and "sekret" not in repr(spec) + repr(s)
    # a path-typed argument collapses //: still understood
    assert parse_source("dicomweb+http:/pacs:8042/dicom-web/series/9.8", s).series_uid == "9.8"
    # settings credentials are never sent to another server
    other = parse_source("dicomweb+http://elsewhere:8042/dicom-web", s)
    assert other.target.username is None and other.target.password is None
    inline = parse_source("dicomweb+https://a:b%40c@h/dw", s)
    assert inline.target.display == "dicomweb+https://h/dw" and inline.target.password == "b@c"
    assert mask("x https://a:b@h/y sekret", ["sekret"]) == "x https://***@h/y ***"
    for bad in ("dicomweb+ftp://h/x", "dicomweb+http:///x", "pacs/series/1.2;rm",
                "dicomweb+http://h:99999/x"):
        with pytest.raises(ConfigError):
            parse_source(bad, s)
    with pytest.raises(ConfigError):
        parse_source("pacs", Settings())
    with pytest.raises(ConfigError):
        QidoFilters(date_from="2024-01-01").search_filters()
    assert QidoFilters(date_from="20240101").search_filters() == {"StudyDate": "20240101-"}


def test_viewer_links() -> None:
    from ui.pacs_links import viewer_url

    dicom = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"}
    assert viewer_url("http://o/app/explorer.html#study?uuid={StudyInstanceUID}", dicom) == \
        "http://o/app/explorer.html#study?uuid=1.2.3"
    assert viewer_url("http://ohif/viewer?StudyInstanceUIDs={StudyInstanceUID}&s="
                      "{SeriesInstanceUID}", dicom) == \
        "http://ohif/viewer?StudyInstanceUIDs=1.2.3&s=1.2.3.4"
    assert viewer_url(None, dicom) is None
    assert viewer_url("http://o/{StudyInstanceUID}", {}) is None  # a NIfTI result
    assert viewer_url("http://o/{StudyInstanceUID}", {"StudyInstanceUID": "1.2\"><x"}) is None


def test_follow_state_is_atomic_and_checked(tmp_path: Path) -> None:
    from ingest.follow import FollowState

    path = tmp_path / "s" / "follow.json"
    st = FollowState(server="dicomweb+http://h/dw", mode="changes", last_change=41, handled=3)
    st.save(path)
    assert FollowState.load(path) == st
    assert [p.name for p in path.parent.iterdir()] == ["follow.json"]  # no temp left over
    path.write_text("{not json")
    with pytest.raises(ConfigError) as err:
        FollowState.load(path)
    assert str(path) in str(err.value)


@pytest.mark.slow
def test_query_by_pacs_series_finds_its_twin(samples_dir: Path, orthanc: Orthanc,  # noqa: F811
                                             sample_store: Path, tmp_path: Path) -> None:
    """A few slices of a sample, stored in the PACS as DICOM, find that sample first."""
    ds = _series(samples_dir, MR, (slice(None), slice(None), slice(9, 15)), "MR")
    orthanc.upload(ds)
    env = {**orthanc.env(), "MEDIR_STORE_PATH": str(sample_store), "MEDIR_PLUGINS": "",
           "MEDIR_MODEL": DEFAULT_MODEL}
    r = medir("search", f"{orthanc.source}/series/{ds[0].SeriesInstanceUID}", "--json",
              "--top", "3", env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    ranking = json.loads(r.stdout)
    assert ranking[0]["volume_id"] == MR.removesuffix(".nii.gz")
    _no_secret(r.stdout, r.stderr)


def test_pacs_error_is_medir_error() -> None:
    assert issubclass(PacsError, Exception)
    from medir.errors import MedirError

    assert issubclass(PacsError, MedirError)


def test_ingest_through_the_queue(orthanc: Orthanc, study: dict, tmp_path: Path,  # noqa: F811
                                  queue_env: str, worker: Any) -> None:
    """With --queue each series is one task; the worker retrieves it with its own settings,
    and the series' row of a labels table travels with it, as in-process."""
    store = tmp_path / "qstore"
    w = worker(store_path=store, env={**TINY, **orthanc.env()})
    env = {**orthanc.env(), "MEDIR_REDIS_URL": queue_env, "MEDIR_STORE_PATH": str(store)}
    st = study["ct"][0].StudyInstanceUID
    uid = study["ct"][0].SeriesInstanceUID
    table = tmp_path / "labels.csv"
    table.write_text(f"case_id,modality,region\n{uid},CT,chest\n")
    r = medir("ingest", "pacs", "--study", st, "--modality", "CT", "--queue",
              "--labels", str(table), env=env)
    assert r.returncode == 0, r.stdout + r.stderr + w.tail()
    assert "submitted 1 series" in r.stdout
    w.stop()
    vols = _store_volumes(store)
    assert {u: v["points"] for u, v in vols.items()} == {uid: len(study["ct"])}
    assert vols[uid]["region"] == "chest"
    _no_secret(r.stdout, r.stderr, w.log.read_text(errors="replace"))


def _handled_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines()
            if ln.split()[:1] and ln.split()[0] in ("indexed", "skipped", "failed")]


def test_follow_by_qido_date(samples_dir: Path, orthanc: Orthanc,  # noqa: F811
                             tmp_path: Path) -> None:
    """The fallback feed for any DICOMweb server: QIDO-RS by StudyDate, position kept."""
    env = _env(orthanc, tmp_path)
    first = medir("follow", "--mode", "qido", "--once", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    on_pacs = len(dicomweb.list_series(parse_source("pacs", Settings(**{"pacs": {  # type: ignore
        "url": orthanc.dicomweb, "username": USER, "password": PASSWORD}})), QidoFilters()))
    assert len(_handled_lines(first.stdout)) == on_pacs
    new = _ct(samples_dir, 3)
    orthanc.upload(new)
    second = medir("follow", "--mode", "qido", "--once", env=env)
    lines = _handled_lines(second.stdout)
    assert len(lines) == 1 and lines[0].startswith("indexed"), second.stdout
    assert new[0].SeriesInstanceUID in lines[0]
    third = medir("follow", "--once", env=env)  # the saved mode is kept
    assert _handled_lines(third.stdout) == [] and "qido feed" in third.stdout
    _no_secret(first.stdout, second.stdout, third.stdout, first.stderr)
