"""Cohort export: the rows of a ranking as CSV/JSON that pandas and the labels CSV reader read."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from ingest.labels import load_labels_csv
from search.cohort import cohort_rows, cohort_text, slice_range
from search.vote import SliceMatch, VolumeResult


def _ranking() -> list[VolumeResult]:
    a = VolumeResult(1, "p001/ct", 3.0, 3, 0.75, 0.91, {"modality": "CT", "region": "chest"},
                     "/data/p001/ct.nii.gz",
                     [SliceMatch(4, "p001/ct", 10, 0.9, 1.0),
                      SliceMatch(9, "p001/ct", 15, 0.92, 1.0),
                      SliceMatch(6, "p001/ct", 12, 0.9, 1.0)])
    b = VolumeResult(2, "1.2.3.4", 1.0, 1, 0.25, 0.8, {"modality": "=cmd|' /C calc'!A0"},
                     "dicomweb+http://pacs/dicom-web/studies/1.2/series/1.2.3.4",
                     [SliceMatch(5, "1.2.3.4", 2, 0.8, 1.0)],
                     {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3.4"})
    return [a, b]


def test_cohort_csv_reads_in_pandas_and_as_a_labels_csv(tmp_path: Path) -> None:
    rows = cohort_rows(_ranking(), confidence=0.8)
    text = cohort_text(rows, ".csv")
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert list(df["volume_id"]) == ["p001/ct", "1.2.3.4"]
    assert list(df["query_slices"]) == ["4-9", "5-5"] and df["db_slices"][0] == "10-15"
    assert df["confidence"][0] == "0.8" and df["confidence"][1] == ""
    assert df["series_uid"][1] == "1.2.3.4" and df["region"][0] == "chest"
    # a formula planted in a label is neutralised for spreadsheets
    assert df["modality"][1].startswith("'=")
    path = tmp_path / "cohort.csv"
    path.write_text(text)
    labels = load_labels_csv(path)
    assert labels["p001/ct"]["region"] == "chest"


def test_cohort_json_and_bad_format() -> None:
    rows = cohort_rows(_ranking(), confidence={"1.2.3.4": 0.3})
    back = json.loads(cohort_text(rows, ".json"))
    assert back[0]["confidence"] == "" and back[1]["confidence"] == 0.3
    assert back[1]["study_uid"] == "1.2"
    with pytest.raises(ValueError, match=".csv"):
        cohort_text(rows, ".xlsx")
    assert slice_range([]) == "" and slice_range([3, 1, 2]) == "1-3"
