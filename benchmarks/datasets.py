"""Benchmark datasets: the Medical Segmentation Decathlon layout and the sample collection.

A dataset is a list of :class:`Case` (one file each) with labels and a split. Two protocols:

- ``split`` (MSD): ``imagesTr`` cases are the database, ``imagesTs`` cases are the queries.
  Labels come from the task, through the paper's Table I (:data:`MSD_TASKS`); no metadata of
  the file is used.
- ``leave-one-out`` (the sample collection, or any labelled folder without a split): every case
  is a query once, against a database of all the other cases.

A 4D file (BRATS: FLAIR/T1w/T1gd/T2w; prostate: T2/ADC) is split per protocol into 3D volumes
(``<case>#<k>``) by the reader. The case stays the unit of evaluation: a query case pools the
slices of all its protocols, and a database hit votes for the case it belongs to, so the
number of queries per task equals the paper's test counts (Table I, Fig. 2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ingest.labels import MANIFEST_NAME, read_manifest
from ingest.reader import is_volume_file
from medir.errors import ConfigError
from medir.ids import case_id_of


@dataclass(frozen=True)
class TaskLabels:
    """One row of the paper's Table I: what an MSD task's volumes show."""

    organ: str
    modality: str
    region: str


#: The paper's Table I, keyed by MSD task number. Modality is the acquisition (CT or MR; MR
#: protocols are not distinguished); the organ is the task's target.
MSD_TASKS: dict[int, TaskLabels] = {
    1: TaskLabels("brain", "MR", "head"),  # Task01_BrainTumour (BRATS), 4D
    2: TaskLabels("heart", "MR", "chest"),  # Task02_Heart (left atrium)
    3: TaskLabels("liver", "CT", "abdomen"),  # Task03_Liver
    4: TaskLabels("hippocampus", "MR", "head"),  # Task04_Hippocampus
    5: TaskLabels("prostate", "MR", "pelvis"),  # Task05_Prostate, 4D
    6: TaskLabels("lung", "CT", "chest"),  # Task06_Lung
    7: TaskLabels("pancreas", "CT", "abdomen"),  # Task07_Pancreas
    8: TaskLabels("hepatic vessel", "CT", "abdomen"),  # Task08_HepaticVessel
    9: TaskLabels("spleen", "CT", "abdomen"),  # Task09_Spleen
    10: TaskLabels("colon", "CT", "abdomen"),  # Task10_Colon
}
#: The organ order of the paper's confusion matrix (Fig. 2).
ORGAN_ORDER = ("brain", "hippocampus", "lung", "heart", "colon", "hepatic vessel", "liver",
               "pancreas", "spleen", "prostate")
REGION_ORDER = ("abdomen", "chest", "head", "pelvis")
MODALITY_ORDER = ("CT", "MR")
LABEL_ORDERS: dict[str, tuple[str, ...]] = {
    "modality": MODALITY_ORDER, "region": REGION_ORDER, "organ": ORGAN_ORDER,
}
_TASK_RE = re.compile(r"^Task0*(\d+)_", re.IGNORECASE)

SPLIT, LEAVE_ONE_OUT = "split", "leave-one-out"
TRAIN, TEST = "train", "test"


@dataclass(frozen=True)
class Case:
    """One file of a dataset: a unique id, its labels and its split (train/test or '')."""

    case_id: str
    path: Path
    labels: dict[str, str] = field(hash=False, compare=False)
    split: str = ""
    group: str = ""  # the MSD task, or the dataset name
    #: The patient/study for leave-one-case-out (the manifest's ``case`` column); the case id
    #: when unset. Volumes of one study (a 4D file, a crop, a second series) leave together.
    study: str = ""

    @property
    def study_id(self) -> str:
        return self.study or self.case_id


@dataclass
class Dataset:
    """Labelled cases and how they divide into database and queries."""

    name: str
    protocol: str  # SPLIT | LEAVE_ONE_OUT
    cases: list[Case]
    root: Path

    @property
    def database(self) -> list[Case]:
        return [c for c in self.cases if c.split == TRAIN] if self.protocol == SPLIT \
            else list(self.cases)

    @property
    def queries(self) -> list[Case]:
        return [c for c in self.cases if c.split == TEST] if self.protocol == SPLIT \
            else list(self.cases)

    def summary(self) -> dict[str, object]:
        """Counts per split and per label, for the results JSON."""
        per_group: dict[str, dict[str, int]] = {}
        for c in self.cases:
            g = per_group.setdefault(c.group, {"train": 0, "test": 0, "all": 0})
            g["all"] += 1
            if c.split in (TRAIN, TEST):
                g[c.split] += 1
        return {"name": self.name, "protocol": self.protocol, "root": str(self.root),
                "n_cases": len(self.cases), "n_database": len(self.database),
                "n_queries": len(self.queries), "groups": per_group}


def msd_task_labels(task_dir: Path) -> TaskLabels:
    """Table I labels of an MSD task folder (``Task09_Spleen`` → spleen, CT, abdomen)."""
    m = _TASK_RE.match(task_dir.name)
    if m is None or int(m.group(1)) not in MSD_TASKS:
        known = ", ".join(f"Task{n:02d}" for n in MSD_TASKS)
        raise ConfigError(f"{task_dir}: not a Medical Segmentation Decathlon task folder with a "
                          f"Table I mapping (known: {known})")
    return MSD_TASKS[int(m.group(1))]


def _volume_files(folder: Path) -> list[Path]:
    """Volume files of an MSD images folder (macOS ``._`` resource forks skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and is_volume_file(p) and not p.name.startswith("."))


def _task_dirs(root: Path) -> list[Path]:
    if (root / "dataset.json").is_file() and _TASK_RE.match(root.name):
        return [root]
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and _TASK_RE.match(p.name) and (p / "dataset.json").is_file())


def is_msd(root: Path) -> bool:
    """Whether ``root`` is an MSD task folder or a folder of them."""
    return root.is_dir() and bool(_task_dirs(root))


def load_msd(root: Path, tasks: list[int] | None = None, limit: int | None = None) -> Dataset:
    """The MSD layout under ``root`` (a ``TaskXX_*`` folder or a folder holding several).

    Each task needs ``dataset.json``; ``imagesTr`` is the database and ``imagesTs`` the
    queries. ``tasks`` keeps only those task numbers; ``limit`` keeps the first N files of each
    split of each task (quick runs).
    """
    root = Path(root)
    dirs = _task_dirs(root)
    if not dirs:
        raise ConfigError(f"{root}: no MSD task folder (TaskXX_*/dataset.json) found")
    cases: list[Case] = []
    for d in dirs:
        labels = msd_task_labels(d)
        number = int(_TASK_RE.match(d.name).group(1))  # type: ignore[union-attr]
        if tasks and number not in tasks:
            continue
        try:
            json.loads((d / "dataset.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{d / 'dataset.json'}: unreadable ({exc})") from None
        for split, sub in ((TRAIN, "imagesTr"), (TEST, "imagesTs")):
            files = _volume_files(d / sub)[: limit if limit else None]
            for f in files:
                cases.append(Case(f"{d.name}/{case_id_of(f)}", f,
                                  {"modality": labels.modality, "region": labels.region,
                                   "organ": labels.organ}, split, d.name))
    if not any(c.split == TRAIN for c in cases) or not any(c.split == TEST for c in cases):
        raise ConfigError(f"{root}: the MSD benchmark needs both imagesTr (database) and "
                          "imagesTs (queries) files")
    return Dataset(root.name, SPLIT, cases, root)


def load_manifest_dataset(root: Path, limit: int | None = None) -> Dataset:
    """A folder with a medir ``manifest.csv`` (the sample collection): labels from the
    manifest; train/test from its ``split`` column when every row has one, else leave-one-out."""
    root = Path(root)
    rows = read_manifest(root / MANIFEST_NAME)
    cases: list[Case] = []
    for row in rows:
        path = root / row["file"]
        if not path.is_file():
            raise ConfigError(f"{path}: listed in {root / MANIFEST_NAME} but missing; run "
                              "`medir samples fetch`")
        labels = {"modality": row.get("modality", "").upper(),
                  "region": row.get("region", "").lower(),
                  "organ": row.get("organ", "").lower()}
        split = row.get("split", "").lower()
        cases.append(Case(row["case_id"], path, labels, split, row.get("dataset", "") or root.name,
                          row.get("case", "")))
    cases = cases[: limit if limit else None]
    has_split = cases and all(c.split in (TRAIN, TEST) for c in cases) \
        and {c.split for c in cases} == {TRAIN, TEST}
    return Dataset(root.name, SPLIT if has_split else LEAVE_ONE_OUT, cases, root)


def load_dataset(root: Path, limit: int | None = None, tasks: list[int] | None = None) -> Dataset:
    """MSD when ``root`` holds ``TaskXX_*`` folders, else a folder with ``manifest.csv``."""
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"{root}: dataset folder not found")
    if is_msd(root):
        return load_msd(root, tasks=tasks, limit=limit)
    if (root / MANIFEST_NAME).is_file():
        return load_manifest_dataset(root, limit=limit)
    raise ConfigError(f"{root}: neither an MSD layout (TaskXX_*/dataset.json, imagesTr, "
                      f"imagesTs) nor a folder with {MANIFEST_NAME}")
