"""All settings in one place: environment variables with the ``MEDIR_`` prefix, or a ``.env``.

Nested groups use ``__``: ``MEDIR_HNSW__M=32``, ``MEDIR_SEARCH__K=5``,
``MEDIR_QUEUE__VISIBILITY_TIMEOUT=7200``. The names the issues and
docker-compose use are top level: ``MEDIR_QDRANT_URL``, ``MEDIR_QDRANT_API_KEY``,
``MEDIR_REDIS_URL``, ``MEDIR_WEIGHTS_DIR``, ``MEDIR_STORE_PATH``.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The defaults that code outside the settings falls back to (a library call made without the
# settings, a UI widget's starting value): defined here once, used by the fields below.
#: The int8 build of the packaged DINOv2-S (`dinov2-s-onnx-int8`): on a CPU 2.5x the float
#: model's forward rate at the same rank-1 class on every evaluation query (docs/perf.md); GPU
#: hosts run `dinov2-s-onnx` (fp16 torch on CUDA; docker-compose sets it).
DEFAULT_MODEL = "dinov2-s-onnx-int8"
DEFAULT_SAMPLING = "every-mm:7"
#: Query slices at most (evenly spaced among the sampling's): a query's model cost is one
#: forward pass per slice, and 20 left every evaluation query's top volume unchanged
#: (docs/perf.md, issue22-max-slices-quality.json).
DEFAULT_MAX_SLICES = 20
#: Windowing plus physical scale (every slice resampled to a 400 mm field of view before the
#: model): leave-one-case-out modality/region 12/20 → 15/20 (the reachable ceiling), no class
#: worse, every perturbation at least as good (docs/quality.md). A library call that names no
#: intensity keeps plain ``auto``.
DEFAULT_INTENSITY = "auto+fov:400"
DEFAULT_WEIGHTING = "gaussian"
DEFAULT_SIGMA = 0.25
DEFAULT_K = 1
DEFAULT_TOP = 10
#: The largest k and top a query takes (the settings, the query options and the UI alike).
MAX_K = 1000  # neighbours per slice; the vote needs few, a large k only dilutes it
MAX_TOP = 10_000  # volumes in the ranking
DEFAULT_DATA_DIR = Path("data")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "medir"
DEFAULT_WEIGHTS_DIR = Path("models")
#: How slices are windowed to model input (ingest/preprocess.py): ``auto`` and ``auto-windows``
#: pick ``ct``/``ct-windows`` for HU data and ``percentile`` otherwise.
INTENSITY_MODES: tuple[str, ...] = ("auto", "percentile", "ct", "ct-windows", "auto-windows")
_TRUE = {"1", "true", "yes", "on"}



def check_intensity(mode: object) -> str:
    """``mode`` in its canonical form when it is a preprocessing spec, else one
    :class:`~medir.errors.ConfigError` line (the one check the ingest options, the query options
    and the benchmarks share). A spec is an intensity mode (:data:`INTENSITY_MODES`), optionally
    followed by a physical field of view, ``+fov:<mm>`` with 10 ≤ mm ≤ 2000 (``auto+fov:400``:
    every slice resampled in-plane to 400 × 400 mm before the model, ingest/preprocess.py)."""
    from medir.errors import ConfigError

    text = mode if isinstance(mode, str) else ""
    intensity, plus, geo = text.partition("+")
    if intensity not in INTENSITY_MODES:
        raise ConfigError(f"unknown intensity mode {mode!r}; choose one of "
                          f"{', '.join(INTENSITY_MODES)}, optionally +fov:<mm> (e.g. "
                          "auto+fov:400)")
    if not plus:
        return intensity
    kind, _, value = geo.partition(":")
    try:
        fov = float(value)
    except ValueError:
        fov = -1.0
    if kind != "fov" or not 10.0 <= fov <= 2000.0:
        raise ConfigError(f"bad preprocessing {mode!r}: the geometry is fov:<mm> with "
                          "10 ≤ mm ≤ 2000, e.g. auto+fov:400")
    return f"{intensity}+fov:{fov:g}"


def vector_space_id(embedder_id: str, spec: str) -> str:
    """The id stored as the points' ``embedder`` (and filtered on by every query): the model
    version, plus the geometry of the preprocessing ``spec`` when it has one
    (``dinov2-s-onnx@1+fov:400``), so vectors of two geometries are never compared. The
    intensity mode is not part of it: ``auto`` already mixes ``ct`` and ``percentile``
    volumes in one space, and each point records its concrete mode in ``intensity``."""
    _, plus, geo = check_intensity(spec).partition("+")
    return embedder_id + (plus + geo if plus else "")


class HnswSettings(BaseModel):
    """HNSW graph parameters of the Qdrant collections (server and embedded alike)."""

    m: int = Field(16, ge=4, le=128, description="HNSW links per node")
    ef_construct: int = Field(128, ge=8, description="HNSW candidate list while building")
    ef: int = Field(128, ge=8, description="hnsw_ef at query time")
    full_scan_threshold_kb: int = Field(
        1024, ge=1, description="segments below this size are searched exactly")


class StoreSettings(BaseModel):
    """Vector storage of the Qdrant collections, server and embedded alike
    (``MEDIR_STORE__QUANTIZATION=int8``, ``MEDIR_STORE__DATATYPE=float16``, …; docs/perf.md).

    Applied when a collection is created; an existing collection keeps its configuration.
    ``shards`` and ``replicas`` apply to a Qdrant server (cluster) only (docs/scaling.md)."""

    quantization: Literal["none", "int8"] = Field(
        "none", description="Qdrant scalar quantization of the vectors (the HNSW search uses "
        "the int8 codes, then rescores the oversampled candidates with the full vectors)")
    quantile: float = Field(0.99, gt=0.5, le=1.0, description="int8 range: this quantile")
    always_ram: bool = Field(True, description="keep the int8 codes in RAM")
    rescore: bool = Field(True, description="re-score int8 candidates with the full vectors")
    oversampling: float = Field(2.0, ge=1.0, description="candidates × k rescored")
    datatype: Literal["float32", "float16"] = Field(
        "float32", description="element type of the stored vectors")
    on_disk: bool = Field(False, description="vectors memory-mapped from disk, not in RAM")
    shards: int = Field(1, ge=1, le=1024, description="server: shard_number")
    replicas: int = Field(1, ge=1, le=16, description="server: replication_factor")
    min_free_mb: int = Field(
        256, ge=0, description="embedded store: free disk (MiB) kept beyond what its "
        "memory-mapped files may still claim; below it an ingest refuses to start or stops "
        "with 'disk full' (a full disk under a memory map is a SIGBUS, not an error)")
    lock_wait_s: float = Field(
        30.0, ge=0, le=86400, description="embedded store: seconds a second medir process "
        "waits for the one holding the store (then one clear error; the holder is never "
        "touched)")


class SearchSettings(BaseModel):
    """Defaults of a volume query: a slice every 7 mm (the paper: as good as all slices;
    measured here, docs/perf.md: the same top volume as all slices on every leave-one-out
    query, at 1/7 of the embedding on 1 mm CT), k=1, Gaussian-weighted vote."""

    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="nearest slices per query slice")
    top: int = Field(DEFAULT_TOP, ge=1, le=MAX_TOP, description="volumes in the ranking")
    sampling: str = Field(
        DEFAULT_SAMPLING,
        description="all | every-n:N | every-mm:X | random:K[:SEED], optionally ,max=N")
    max_slices: int = Field(
        DEFAULT_MAX_SLICES, ge=0,
        description="at most this many query slices, evenly spaced among the sampling's "
                    "(0: no cap)")
    weighting: str = Field(DEFAULT_WEIGHTING, description="none | gaussian[:SIGMA]")
    sigma: float = Field(DEFAULT_SIGMA, gt=0, description="Gaussian sigma as a fraction of the "
                         "depth (when the weighting is gaussian without :SIGMA)")


class UiSettings(BaseModel):
    upload_limit_mb: int = Field(1024, ge=1, description="largest UI upload")
    ingest_roots: list[Path] = Field(
        default_factory=lambda: [Path("data")],
        description="server folders the UI may ingest from (a security boundary)")
    query_upload_dir: Path | None = Field(
        None, description="where the Search page keeps a query upload while it answers it, one "
        "folder per browser session, never inside an ingest root (default: <system temp "
        "folder>/medir-uploads); in queue mode the workers must read it too")
    query_upload_ttl_min: float = Field(
        30.0, gt=0, description="minutes after which a query upload left behind (a closed "
        "browser tab, a crash) is removed")
    dicom_max_files: int = Field(
        10_000, ge=1, description="files of one DICOM upload (the members of its zips and its "
        ".dcm files together), checked before anything is extracted")
    dicom_unzipped_limit_mb: int = Field(
        4096, ge=1, description="bytes of one DICOM upload once unzipped: checked against the "
        "sizes its zips declare before extracting, and counted while extracting")


class LimitsSettings(BaseModel):
    """What a volume file may declare before anything is read (``MEDIR_LIMITS__MAX_VOXELS``).

    ``max_voxels`` bounds one 3D volume: 2**30 (1.07 G voxels) holds a 512x512x4096 or a
    1024x1024x1024 CT; it is 4 GiB as float32 and ingest holds about 3 float32 copies at peak
    (see docs/reliability.md). ``max_bytes`` bounds the declared data of a whole file (a 4D file
    is read one volume at a time) and the decompressed size of its stream.
    ``max_volumes_per_file`` bounds the 4th axis of a 4D file (one ingest job per volume); 64
    holds cardiac phases and perfusion series, raise it for fMRI or diffusion.
    """

    max_voxels: int = Field(1 << 30, ge=1, description="voxels of one 3D volume")
    max_bytes: int = Field(16 << 30, ge=1, description="declared data bytes of one file")
    max_volumes_per_file: int = Field(
        64, ge=1, description="volumes of one 4D file (its 4th axis), checked from the header")


class QueueSettings(BaseModel):
    """Celery queue tuning: ``MEDIR_QUEUE__VISIBILITY_TIMEOUT`` and so on."""

    visibility_timeout: int = Field(7200, ge=1, description="seconds; above the longest task")
    restore_interval: int = Field(
        10, ge=1, description="seconds between sweeps that redeliver unacknowledged messages")
    heartbeat_ttl: int = Field(
        30, ge=2, description="seconds a worker counts as alive after its last heartbeat; the "
        "messages of a worker silent that long are delivered again (runner/queue/recovery.py)")
    max_retries: int = Field(6, ge=0, description="retries of a transient failure")
    max_deliveries: int = Field(
        3, ge=1, description="deliveries of one task before it fails as a poison message "
        "(a volume that kills its worker)")
    retry_backoff: float = Field(2.0, gt=0, description="first retry delay, doubled each time")
    retry_backoff_max: float = Field(300.0, gt=0, description="longest retry delay")
    result_expires: int = Field(7 * 24 * 3600, ge=60, description="seconds results are kept")
    job_ttl: int = Field(7 * 24 * 3600, ge=60, description="seconds job records are kept")
    search_timeout: float = Field(600.0, gt=0, description="seconds a client waits for a query")
    worker_name: str | None = Field(None, description="Celery node name, e.g. gpu0@%h")
    roots: list[Path] = Field(
        default_factory=list, description="folders a worker reads volume files from, besides "
        "data_dir and ui.ingest_roots (and, for queries, ui.query_upload_dir); a task naming a "
        "file elsewhere is refused")
    allow_insecure_broker: bool = Field(
        False, description="development only: let a worker start on a broker URL without a "
        "password (never together with require_secrets)")


class PacsSettings(BaseModel):
    """A PACS reached over DICOMweb: ``MEDIR_PACS__URL``, ``MEDIR_PACS__USERNAME``, ...

    Credentials are :class:`SecretStr` (masked in every repr) and are sent only to ``url``'s
    server. ``viewer_url_template`` links results to the PACS viewer, with
    ``{StudyInstanceUID}`` and ``{SeriesInstanceUID}`` placeholders. The server is not trusted:
    every exchange is bounded in time (``timeout`` per read, ``request_timeout`` in all) and
    bytes (``max_response_bytes``; a series retrieval by ``limits.max_bytes``), every query in
    pages (``max_pages``) (docs/pacs.md).
    """

    url: str | None = Field(None, description="DICOMweb root, e.g. http://orthanc:8042/dicom-web")
    username: str | None = Field(None, description="basic auth user")
    password: SecretStr | None = Field(None, description="basic auth password (never shown)")
    token: SecretStr | None = Field(None, description="bearer token (instead of basic auth)")
    timeout: float = Field(30.0, gt=0, description="seconds a connect or one read may stall")
    request_timeout: float = Field(
        600.0, gt=0, description="seconds one HTTP exchange may take in all, body included "
        "(a series retrieval is one exchange); a server that trickles is cut off")
    max_response_bytes: int = Field(
        16 << 20, ge=1024, description="bytes of one JSON answer (a QIDO-RS page, the change "
        "feed); a series retrieval is bounded by limits.max_bytes instead")
    max_pages: int = Field(
        1000, ge=1, description="pages of one QIDO-RS query (1000 rows each), or of the "
        "change feed per poll")
    viewer_url_template: str | None = Field(
        None, description="e.g. http://orthanc:8042/ui/app/#/filtered-studies?"
                          "StudyInstanceUID={StudyInstanceUID} (Orthanc Explorer 2) or "
                          "http://ohif/viewer?StudyInstanceUIDs={StudyInstanceUID}")
    changes_url: str | None = Field(
        None, description="Orthanc REST root for /changes (default: url minus /dicom-web)")
    follow_state: Path = Field(Path("data/pacs_follow.json"),
                               description="where medir follow keeps its position")
    poll_interval: float = Field(10.0, gt=0, description="seconds between polls of follow")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEDIR_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="samples (data/samples), UI uploads")
    cache_dir: Path = Field(DEFAULT_CACHE_DIR,
                            description="downloaded packages, extracted and quantized ONNX graphs")
    weights_dir: Path = Field(DEFAULT_WEIGHTS_DIR,
                              description="weights of the paper's models, <dir>/<model>/")
    allow_downloads: bool = Field(
        False, description="let the paper models' loaders download from Hugging Face (1, true, "
        "yes, on; never while HF_HUB_OFFLINE is set)")
    plugins: str = Field(
        "", description="comma-separated modules that register your own embedders "
        "(e.g. mypkg.embedders)")
    store_path: Path = Field(Path("data/store"), description="embedded store folder")
    qdrant_url: str | None = Field(None, description="use this Qdrant server instead")
    qdrant_api_key: str | None = Field(None, description="its API key (never shown)")
    redis_url: str | None = Field(
        None, description="Celery broker: set, the CLI and the UI go through the queue")
    require_secrets: bool = Field(
        False, description="refuse to start without strong secrets (docker-compose sets it)")
    model: str = Field(DEFAULT_MODEL, description="embedding model (medir models)")
    device: str = Field("auto", description="auto (cuda, mps, cpu) | cuda | cuda:N | cpu")
    batch_size: int = Field(32, ge=1, description="slices per forward pass")
    upsert_batch: int = Field(512, ge=1, description="points per upsert request")
    intensity: str = Field(
        DEFAULT_INTENSITY,
        description="preprocessing of ingest and queries: auto | percentile | ct | "
        "ct-windows | auto-windows, optionally +fov:<mm> (physical scale, e.g. auto+fov:400; "
        "its vectors are a separate space: ingest and query with the same value)")
    hnsw: HnswSettings = HnswSettings()
    store: StoreSettings = StoreSettings()
    search: SearchSettings = SearchSettings()
    ui: UiSettings = UiSettings()
    queue: QueueSettings = QueueSettings()
    limits: LimitsSettings = LimitsSettings()
    pacs: PacsSettings = PacsSettings()

    @field_validator("allow_downloads", mode="before")
    @classmethod
    def _yes(cls, value: object) -> object:
        """Only 1, true, yes or on opt in; any other text (empty, 0, no) means no."""
        return value.strip().lower() in _TRUE if isinstance(value, str) else value

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples"

    @property
    def query_uploads(self) -> Path:
        """The folder of the Search page's query uploads (``ui.query_upload_dir``, else
        ``medir-uploads`` in the system's temporary folder)."""
        return self.ui.query_upload_dir or Path(tempfile.gettempdir()) / "medir-uploads"

    @property
    def plugin_modules(self) -> tuple[str, ...]:
        """The modules of ``plugins``, in order."""
        return tuple(m.strip() for m in self.plugins.split(",") if m.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests call ``get_settings.cache_clear()``)."""
    return Settings()
