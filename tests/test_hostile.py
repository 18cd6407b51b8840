"""Hostile input and faults (issue 17): files that read or allocate what they should not, query
options, non-finite voxels, credentials in output, transient store errors. Each test fails on
the code before the fix."""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.embedders import get_embedder
from ingest.pipeline import ingest_paths
from ingest.reader import Limits, open_volume
from medir.config import Settings, get_settings
from medir.errors import ConfigError, StoreUnavailable, VolumeError
from medir.secrets import SecretFilter, mask_secrets, safe_url
from runner.query_service import search_file
from search.query import QueryOptions
from search.store import READY, Filter, SlicePoint, collection_name
from search.store_edge import EdgeStore
from tests.test_cli import medir
from tests.test_pipeline import _blob_volume

SECRET = "planted-Pa55word-for-tests"  # noqa: S105


# ---- 1. NRRD detached data -------------------------------------------------------------------
def _nhdr(folder: Path, data_file: str, sizes: str = "4 4 4", encoding: str = "raw",
          name: str = "vol.nhdr") -> Path:
    p = folder / name
    p.write_text(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {sizes}\nencoding: {encoding}\n"
                 f"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace: RAS\n"
                 f"data file: {data_file}\n\n")
    return p


def _err(path: Path, limits: Limits | None = None) -> str:
    with pytest.raises(VolumeError) as info:
        open_volume(path, limits).read()
    return str(info.value)


def test_detached_nrrd_next_to_its_header_reads(tmp_path: Path) -> None:
    (tmp_path / "vol.raw").write_bytes(bytes(range(64)))
    vol = open_volume(_nhdr(tmp_path, "vol.raw")).read()
    assert vol.data.shape == (4, 4, 4) and float(vol.data.max()) == 63.0


def test_detached_nrrd_outside_its_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.env"
    secret.write_bytes(b"MEDIR_QDRANT_API_KEY=" + b"x" * 43)  # 64 bytes: would fit 4x4x4
    inner = tmp_path / "uploads"
    inner.mkdir()
    assert "absolute path" in _err(_nhdr(inner, str(secret)))
    assert "outside the header's folder" in _err(_nhdr(inner, "../secret.env"))
    (inner / "link.raw").symlink_to(secret)
    assert "outside the header's folder" in _err(_nhdr(inner, "link.raw"))
    assert "absolute path" in _err(_nhdr(inner, "/dev/zero", sizes="1024 1024 1000"))
    assert "too large" in _err(_nhdr(inner, "/dev/zero", sizes="4096 4096 4096"))
    (inner / "zero.raw").symlink_to("/dev/zero")
    assert "outside" in _err(_nhdr(inner, "zero.raw"))
    os.mkfifo(inner / "fifo.raw")
    assert "not a regular file" in _err(_nhdr(inner, "fifo.raw"))
    assert "single data file" in _err(_nhdr(inner, "LIST"))
    assert "single data file" in _err(_nhdr(inner, "slice%03d.raw 1 4 1"))


def test_upload_refuses_a_detached_nrrd(tmp_path: Path) -> None:
    from ui.uploads import UploadError, save_upload

    data = _nhdr(tmp_path, "vol.raw").read_bytes()
    with pytest.raises(UploadError, match="detached data file"):
        save_upload("innocent.nrrd", data, tmp_path / "up", 10)
    with pytest.raises(UploadError, match="detached .nhdr header"):
        save_upload("x.nhdr", data, tmp_path / "up", 10)


# ---- 2. size before data ---------------------------------------------------------------------
def test_header_declaring_2048_cubed_is_refused_before_reading(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((2048, 2048, 2048))
    p = tmp_path / "huge.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        zero = b"\0" * (1 << 20)
        for _ in range(16):  # 16 MiB of zeros: a small file that claims 16 GiB
            fh.write(zero)
    msg = _err(p)
    assert "huge.nii.gz" in msg and "2048x2048x2048 = 8589934592 voxels" in msg
    assert str(1 << 30) in msg and "MEDIR_LIMITS__MAX_VOXELS" in msg


def test_limit_is_a_setting(make_nifti, monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_nifti(np.ones((10, 10, 11), np.float32))
    monkeypatch.setenv("MEDIR_LIMITS__MAX_VOXELS", "1000")
    get_settings.cache_clear()
    assert "= 1100 voxels per volume, the limit is 1000" in _err(p, Limits.of(
        get_settings().limits))
    monkeypatch.setenv("MEDIR_LIMITS__MAX_VOXELS", "1100")
    monkeypatch.setenv("MEDIR_LIMITS__MAX_BYTES", "100")
    get_settings.cache_clear()
    assert "4400 bytes of data, the limit is 100" in _err(p, Limits.of(get_settings().limits))


def test_gzip_nrrd_bomb_is_stopped_while_streaming(tmp_path: Path) -> None:
    """pynrrd decompresses a gzip body whole before comparing sizes: 64 declared bytes and a
    stream of 256 MiB must be refused without inflating it."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    body = b"".join(comp.compress(chunk) for _ in range(256)) + comp.flush()
    p = tmp_path / "bomb.nrrd"
    p.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: gzip\n"
                  b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace: RAS\n\n" + body)
    assert len(body) < 1 << 20
    msg = _err(p)
    assert "bomb.nrrd" in msg and "decompression bomb" in msg and "declares 64" in msg


def test_truncated_gzip_nifti_is_refused_with_sizes(make_nifti) -> None:
    p = make_nifti(np.arange(32 * 32 * 32, dtype=np.float32).reshape(32, 32, 32))
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    assert "truncated" in _err(p)


# ---- 4. query options -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"k": 0}, {"top": 0}, {"k": -3}, {"k": 10**6}, {"top": 10**9}, {"k": 1.5},
    {"sampling": "random:5:-1"}, {"sampling": "every-mm:1e-6"}, {"sampling": "every-mm:nan"},
    {"sampling": "every-mm:inf"}, {"sampling": "slices:4"}, {"sampling": "every-n:0"},
    {"weighting": "gaussian:nan"}, {"weighting": "gaussian:inf"}, {"weighting": "median"},
    {"filters": {"PatientName": ["x"]}}, {"filters": {"modality": "CT"}},
    {"intensity": "loud"},
])
def test_bad_query_options_give_one_clear_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        QueryOptions(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_cli_rejects_bad_options_before_reading_the_volume(tmp_path: Path) -> None:
    missing = tmp_path / "not-there.nii.gz"  # never opened: the options fail first
    for args in (["--k", "0"], ["--top", "0"], ["--sampling", "every-mm:1e-6"],
                 ["--filter", "PatientID=1"]):
        r = medir("search", missing, "--model", "test-tiny", *args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "not-there" not in lines[0], (args, r.stderr)


def test_search_never_compares_two_embedder_versions(tmp_path: Path, make_nifti) -> None:
    """Points of another version of the model, identical vectors, must not be hits."""
    emb = get_embedder("test-tiny", device="cpu")
    coll = collection_name("test-tiny")
    files = [make_nifti(_blob_volume(k % 3, seed=k), np.diag([1, 1, 2.0, 1]),
                        name=f"case{k}.nii.gz") for k in range(4)]
    with EdgeStore(tmp_path / "s") as store:
        ingest_paths(files, store, emb)
        twins = [SlicePoint(f"00000000-0000-4000-8000-{i:012d}", np.asarray(r.vector),
                            {**r.payload, "volume_id": "old-version", "case_id": "old-version",
                             "content_id": "old", "embedder": "test-tiny@0"})
                 for i, r in enumerate(store.scroll(coll, Filter({"volume_id": "case0"}),
                                                    with_vectors=True))]
        store.upsert(coll, twins)
        store.flush()
        assert store.count(coll, Filter({"embedder": "test-tiny@0", **READY.must})) == 12
        res = search_file(files[0], store, emb, QueryOptions(weighting="none", top=10))
        assert "old-version" not in [r.volume_id for r in res.ranking]
        assert res.ranking[0].volume_id == "case3"


# ---- 5. real data is not hostile --------------------------------------------------------------
def test_nibabel_resampled_file_with_nan_is_read_with_a_warning(tmp_path: Path) -> None:
    src = Path(nib.__file__).parent / "tests" / "data" / "resampled_anat_moved.nii"
    vf = open_volume(src)
    vol = vf.read()
    raw = np.asarray(nib.Nifti1Image.from_filename(str(src)).dataobj, dtype=np.float32)
    n_nan = int(np.count_nonzero(~np.isfinite(raw)))
    assert n_nan > 0 and np.all(np.isfinite(vol.data))
    assert float(vol.data.min()) == float(np.nanmin(raw))
    assert vol.warnings == [f"{n_nan} NaN/Inf voxels set to the background value "
                            f"{float(np.nanmin(raw)):g}"]
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        (report,) = ingest_paths([src], store, emb)
    assert report.status == "indexed" and report.warnings == vol.warnings


# ---- 6. credentials are never shown -----------------------------------------------------------
def test_mask_secrets_in_urls_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert safe_url(f"redis://:{SECRET}@redis:6379/0") == "redis://:***@redis:6379/0"
    assert safe_url(f"http://admin:{SECRET}@q:6333") == "http://admin:***@q:6333"
    assert safe_url(f"rediss://{SECRET}@r/1") == "rediss://***@r/1"
    assert safe_url("http://qdrant:6333") == "http://qdrant:6333"
    monkeypatch.setenv("MEDIR_QDRANT_API_KEY", SECRET)
    get_settings.cache_clear()
    assert SECRET not in mask_secrets(f"401: api-key {SECRET} refused")


def test_no_credential_in_ui_mode_line_errors_logs_and_jobs(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from ui.backend import mode_text, queue_error

    url = f"redis://:{SECRET}@127.0.0.1:1/0"
    s = Settings(redis_url=url, qdrant_url=f"http://u:{SECRET}@q:6333")
    assert SECRET not in mode_text(s) and "queue at redis://:***@127.0.0.1:1/0" in mode_text(s)
    err = queue_error(ConnectionError(f"cannot reach {url}"), s)
    assert SECRET not in str(err)
    monkeypatch.setenv("MEDIR_REDIS_URL", url)
    get_settings.cache_clear()
    logger = logging.getLogger("medir.test.secrets")
    logger.addFilter(SecretFilter())
    with caplog.at_level(logging.INFO):
        logger.warning("broker %s password %s", url, SECRET)
    assert caplog.records and SECRET not in caplog.text

    class _Pipe:
        def __init__(self) -> None:
            self.written: dict[str, str] = {}

        def hset(self, _key: str, mapping: dict[str, str]) -> None:
            self.written.update(mapping)

        def expire(self, *_: object) -> None: ...

        def zadd(self, *_: object, **__: object) -> None: ...

        def execute(self) -> None: ...

    from runner.queue.jobs import JobStore

    pipe = _Pipe()
    jobs = JobStore.__new__(JobStore)
    jobs.client = type("C", (), {"pipeline": lambda self: pipe})()  # type: ignore[assignment]
    jobs.ttl = 60
    jobs.update("job-1", error=f"Error connecting to {url}", state="FAILURE")
    assert pipe.written["error"] and SECRET not in str(pipe.written)


def test_cli_error_and_info_never_print_the_password(tmp_path: Path) -> None:
    env = {"MEDIR_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0",
           "MEDIR_QDRANT_API_KEY": SECRET}
    for args in (["info"], ["search", tmp_path / "x.nii.gz", "--json"]):
        r = medir(*args, env=env)
        assert SECRET not in r.stdout + r.stderr, args


# ---- 8. store outages are transient -----------------------------------------------------------
def test_qdrant_outage_is_transient() -> None:
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    from search.store_qdrant import classify

    for exc in (ResponseHandlingException(httpx.ConnectError("refused")),
                UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers()),
                httpx.ConnectError("refused"), httpx.ReadTimeout("slow")):
        assert isinstance(classify(exc, "http://q:6333"), StoreUnavailable), exc
    assert classify(UnexpectedResponse(400, "Bad Request", b"bad", httpx.Headers()),
                    "http://q:6333") is None


# ---- 7. services refuse weak secrets ----------------------------------------------------------
@pytest.mark.parametrize("password", ["", "short-pw", "change-me-redis-password",
                                      "aaaaaaaaaaaaaaaaaaaa"])
def test_services_refuse_weak_secrets(password: str) -> None:
    from medir.secrets import check_secrets

    strong = os.urandom(16).hex()
    url = f"redis://:{password}@redis:6379/0" if password else "redis://redis:6379/0"
    with pytest.raises(ConfigError, match="refusing to start") as info:
        check_secrets(Settings(require_secrets=True, redis_url=url,
                               qdrant_url="http://qdrant:6333", qdrant_api_key=strong))
    assert not password or password not in str(info.value)
    check_secrets(Settings(require_secrets=True, redis_url=f"redis://:{strong}@redis:6379/0",
                           qdrant_url="http://qdrant:6333", qdrant_api_key=strong))
    check_secrets(Settings(redis_url="redis://127.0.0.1:6379/0"))  # local, no auth: allowed


def test_worker_refuses_to_start_with_a_placeholder_secret() -> None:
    r = medir("worker", env={"MEDIR_REQUIRE_SECRETS": "1",
                             "MEDIR_REDIS_URL": "redis://:change-me-redis-password@127.0.0.1:1/0"})
    assert r.returncode == 2 and "refusing to start" in r.stderr
    assert "change-me-redis-password" not in r.stderr + r.stdout


# ---- 13. CI fails on a skip that is not about a GPU -------------------------------------------
def test_check_skips_fails_on_a_non_gpu_skip(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "@pytest.mark.skipif(True, reason='needs CUDA')\ndef test_gpu():\n    pass\n"
        "@pytest.mark.xfail(reason='known')\ndef test_xf():\n    assert False\n"
        "def test_redis():\n    pytest.skip('redis-server is not installed')\n")
    check = [sys.executable, str(repo / "scripts" / "check_skips.py")]

    def run(*k: str) -> subprocess.CompletedProcess[str]:
        xml = tmp_path / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", str(tmp_path / "test_x.py"), *k],
                       cwd=tmp_path, capture_output=True, text=True)
        return subprocess.run([*check, str(xml)], capture_output=True, text=True)

    bad = run()
    assert bad.returncode == 1 and "test_redis: redis-server is not installed" in bad.stderr
    assert "test_gpu" not in bad.stderr and "test_xf" not in bad.stderr
    assert run("-k", "not redis").returncode == 0
    assert run("-k", "nothing_matches").returncode == 1  # no test ran


def test_chromium_path_of_tests_and_system_deps_agree() -> None:
    repo = Path(__file__).resolve().parents[1]
    deps = (repo / "scripts" / "system_deps.sh").read_text()
    assert '-x "${MEDIR_CHROMIUM:-/usr/bin/chromium}"' in deps
    assert 'os.environ.get("MEDIR_CHROMIUM", "/usr/bin/chromium")' in (
        repo / "tests" / "e2e" / "test_ui_browser.py").read_text()
    test_sh = (repo / "scripts" / "test.sh").read_text()
    assert "--junitxml" in test_sh and "check_skips.py" in test_sh
    assert "bash scripts/test.sh" in (repo / ".ci" / "run").read_text()


def test_store_outage_on_one_volume_fails_that_volume_only(tmp_path: Path, make_nifti) -> None:
    """A store error while writing one volume: that volume fails with one line naming the
    store, the others are indexed, and nothing of the failed one is visible."""
    emb = get_embedder("test-tiny", device="cpu")
    coll = collection_name("test-tiny")
    files = [make_nifti(_blob_volume(k % 3, seed=k), np.diag([1, 1, 2.0, 1]),
                        name=f"case{k}.nii.gz") for k in range(3)]

    class Flaky(EdgeStore):
        def upsert(self, name: str, points: list[SlicePoint]) -> None:  # type: ignore[override]
            if points and points[0].payload["volume_id"] == "case1":
                raise StoreUnavailable("Qdrant at http://q:6333 is unavailable "
                                       "(ResponseHandlingException: connection refused)")
            super().upsert(name, points)

    with Flaky(tmp_path / "s") as store:
        reports = ingest_paths(files, store, emb)
        assert [r.status for r in reports] == ["indexed", "failed", "indexed"]
        assert "\n" not in reports[1].error and "unavailable" in reports[1].error
        assert store.count(coll, Filter({"volume_id": "case1"})) == 0
        assert store.count(coll, READY) == 2 * 12


def test_ui_pages_never_show_the_broker_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search and ingest pages with a password in MEDIR_REDIS_URL and no broker there."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import free_port

    monkeypatch.setenv("MEDIR_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    for page in ("search_page", "ingest_page", "collection_page"):
        at = AppTest.from_string("from medir.config import get_settings\n"
                                 f"from ui.{page} import render\nrender(get_settings())\n",
                                 default_timeout=180).run()
        assert not at.exception, page
        shown = "\n".join(str(e.value) for kind in ("error", "warning", "info", "success",
                                                     "markdown", "caption")
                          for e in getattr(at, kind))
        assert "redis://:***@127.0.0.1" in shown, (page, shown)
        assert SECRET not in shown, page
