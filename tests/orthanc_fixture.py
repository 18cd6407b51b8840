"""A real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) for the DICOMweb tests.

Started on a free port with its own storage folder and credentials, remote access off, the
DICOM port disabled; ready once ``/system`` answers (bounded wait on readiness).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pydicom.dataset import Dataset

from tests.conftest import free_port

ORTHANC = os.environ.get("MEDIR_TEST_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get("MEDIR_TEST_ORTHANC_DICOMWEB",
                                 "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER = "medir-test"
PASSWORD = "Pw-9f3e-not-in-output"  # must never appear in any output


@dataclass
class Orthanc:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def source(self) -> str:
        return f"dicomweb+{self.dicomweb}"

    def session(self) -> requests.Session:
        s = requests.Session()
        s.auth = (USER, PASSWORD)
        return s

    def upload(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS with dicomweb-client (Part 10 encoded, preamble included)."""
        from dicomweb_client.api import DICOMwebClient

        for ds in datasets:
            ds.preamble = b"\0" * 128  # dicomweb-client writes datasets like the original
        with self.session() as s:
            DICOMwebClient(self.dicomweb, session=s).store_instances(list(datasets))

    def env(self) -> dict[str, str]:
        return {"MEDIR_PACS__URL": self.dicomweb, "MEDIR_PACS__USERNAME": USER,
                "MEDIR_PACS__PASSWORD": PASSWORD}


def _wait_ready(server: Orthanc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with server.session() as s:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {server.log.read_text()[-2000:]}")
            try:
                if s.get(server.rest + "/system", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"Orthanc not ready after {timeout} s")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if not (shutil.which(ORTHANC) or Path(ORTHANC).exists()) or not Path(DICOMWEB_PLUGIN).exists():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed "
                    "(apt-get install orthanc orthanc-dicomweb; scripts/system_deps.sh)")
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "medir-test", "HttpPort": port, "DicomServerEnabled": False,
        "DicomPort": free_port(), "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"), "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [DICOMWEB_PLUGIN], "StableAge": 1,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = root / "orthanc.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=root)
    server = Orthanc(port, proc, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
