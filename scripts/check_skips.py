"""Fail when a test was skipped for a reason other than the absence of a GPU.

    python scripts/check_skips.py test-artifacts/junit.xml

Reads pytest's JUnit XML (``--junitxml``). A skip whose message names CUDA or a GPU is
expected on a CPU machine; any other skip (no redis-server, no chromium, no compose binary, a
missing Python package) means the run did not test what CI claims, so the exit status is 1 and
each such test is listed with its reason. Expected failures (xfail) are not skips.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ALLOWED = re.compile(r"\b(CUDA|GPUs?)\b", re.IGNORECASE)


def bad_skips(xml_path: Path) -> tuple[int, list[str]]:
    """(number of test cases, 'test: reason' of each skip that is not about a GPU)."""
    root = ET.parse(xml_path).getroot()
    cases = list(root.iter("testcase"))
    bad = []
    for case in cases:
        for skipped in case.findall("skipped"):
            if skipped.get("type", "") == "pytest.xfail":
                continue
            reason = skipped.get("message") or (skipped.text or "").strip() or "(no reason)"
            if not ALLOWED.search(reason):
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                bad.append(f"{name}: {reason}")
    return len(cases), bad


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_skips.py JUNIT_XML", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"check_skips: {path}: no JUnit XML (did pytest run?)", file=sys.stderr)
        return 2
    n, bad = bad_skips(path)
    if n == 0:
        print(f"check_skips: {path}: no test ran", file=sys.stderr)
        return 1
    if bad:
        print(f"check_skips: {len(bad)} test(s) skipped for a reason other than a missing GPU:",
              file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
