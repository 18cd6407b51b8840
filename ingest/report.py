"""What ingest says about one volume (:class:`IngestReport`): the one record every way in
(files, DICOM folders, PACS series, a queued job) returns, shown by the CLI and the UI and sent
back by a worker as a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class IngestReport:
    """What happened to one volume (one 3D volume of a file)."""

    path: str
    volume_id: str
    status: str  # indexed | skipped | relabelled | superseded | failed
    n_slices: int = 0
    seconds: float = 0.0
    error: str = ""
    warnings: list[str] = field(default_factory=list)  # repaired input (e.g. NaN voxels)
    # other volume ids holding the same content (kept as separate volumes, reported)
    duplicate_of: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
