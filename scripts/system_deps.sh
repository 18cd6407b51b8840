#!/usr/bin/env bash
# System packages the tests use: redis-server (queue tests start their own), chromium (the
# UI's browser test), docker-compose (validates docker-compose.yml; no engine is needed),
# orthanc + orthanc-dicomweb (the DICOMweb tests start their own PACS).
# Installs with apt-get when missing and permitted; otherwise says what is missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# The browser tests drive ${MEDIR_CHROMIUM:-/usr/bin/chromium} (tests/e2e/test_ui_browser.py):
# check that very path, not just any chromium on PATH.
[ -x "${MEDIR_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[system] installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "[system] missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]});"\
       "tests that need them are skipped and scripts/test.sh fails" >&2
fi
