"""Answers you can trust: physical scale as a product preprocessing, the intensity domain (CT in
HU or not) decided from voxels and kept by every query, and the answer's confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.embedders import get_embedder
from ingest.intensity_domain import HU, NON_HU, intensity_domain, opposite
from ingest.pipeline import ingest_paths
from ingest.preprocess import (
    Preprocessing,
    normalize_intensity,
    physical_scale,
    preprocess_slices,
    resolve_intensity,
)
from medir.config import check_intensity, vector_space_id
from medir.errors import ConfigError, ModelMismatch
from runner.base import IngestOptions
from runner.query_service import search_file
from search.query import QueryOptions, search_indexed
from search.store import READY, Filter, collection_name
from search.store_edge import EdgeStore

COLL = collection_name("test-tiny")


# ---- synthetic volumes of known domain ---------------------------------------------------------
def _body(z: int = 16, y: int = 64, x: int = 64) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.mgrid[0:z, 0:y, 0:x]
    r = np.hypot((yy - y / 2) / (0.42 * y), (xx - x / 2) / (0.42 * x))
    return r, zz


def ct_hu(seed: int = 0) -> np.ndarray:
    """A body in air: air −1000, a fat rim −100, soft tissue 40, a bone core 700 (HU)."""
    rng = np.random.default_rng(seed)
    r, _ = _body()
    d = np.where(r < 1, 40.0, -1000.0)
    d = np.where((r > 0.85) & (r < 1), -100.0, d)
    d = np.where(r < 0.2, 700.0, d)
    return (d + rng.normal(0, 10, d.shape)).round().astype(np.float32)


def mr(seed: int = 0) -> np.ndarray:
    """A magnitude image: background ≈ 0 (Rician), tissue 300…900 in arbitrary units."""
    rng = np.random.default_rng(seed)
    r, zz = _body()
    d = np.where(r < 1, 600.0 + 300.0 * np.cos(6 * r) + zz * 2.0, 0.0)
    re, im = d + rng.normal(0, 8, d.shape), rng.normal(0, 8, d.shape)
    return np.sqrt(re * re + im * im).astype(np.float32)


def test_domain_of_calibrated_ct_and_of_mr() -> None:
    assert intensity_domain(ct_hu()).domain == HU
    assert intensity_domain(mr()).domain == NON_HU
    assert opposite(HU) == NON_HU and opposite(NON_HU) == HU and opposite("") == ""


def test_domain_survives_the_intensity_perturbations() -> None:
    ct = ct_hu()
    no_hu = np.maximum(ct + 1024.0, 0.0)  # stored without the rescale
    assert intensity_domain(no_hu).domain == HU
    assert "1024" in intensity_domain(no_hu).reason
    # another MR scanner's scale (an MR squeezed into 0…100 would read as a brain-windowed CT:
    # the documented limit of ingest.intensity_domain)
    for scale, offset in ((3.0, 200.0), (0.5, 0.0), (10.0, 1000.0), (0.001, 0.0)):
        assert intensity_domain(mr() * scale + offset).domain == NON_HU, (scale, offset)
    z = (mr() - mr().mean()) / mr().std()  # a z-scored MR: negatives, but a few units deep
    assert intensity_domain(z).domain == NON_HU


def test_domain_of_a_ct_crop_without_air_and_of_a_brain_windowed_ct() -> None:
    ct = ct_hu()
    crop = ct[:, 20:44, 20:44]  # inside the body: no air at all ...
    crop = np.concatenate([crop, np.full((4, 24, 24), -100.0, np.float32)])  # ... some fat
    assert float(np.mean(crop < -500)) == 0.0
    d = intensity_domain(crop)
    assert d.domain == HU and "without air" in d.reason
    # a CT head in a 0…80 HU window: background 0, brain ≈ 30 HU, clipped bone 80
    r, _ = _body()
    head = np.where(r < 1, 30.0, 0.0)
    head = np.where((r > 0.9) & (r < 1), 80.0, head)
    head = np.clip(head + np.random.default_rng(1).normal(0, 4, head.shape) * (r < 1), 0, 80)
    assert intensity_domain(head.round()).domain == HU
    # an MR of the same shape but a wider range stays MR
    assert intensity_domain(head * 4.0).domain == NON_HU


def test_domain_of_degenerate_volumes() -> None:
    assert intensity_domain(np.zeros((3, 8, 8), np.float32)).domain == NON_HU
    assert intensity_domain(np.full((3, 8, 8), np.nan, np.float32)).domain == NON_HU


# ---- the preprocessing spec ----------------------------------------------------------------------
def test_preprocessing_spec_round_trips_and_rejects_bad_specs() -> None:
    assert str(Preprocessing.parse("auto+fov:400")) == "auto+fov:400"
    assert check_intensity("auto+fov:400.0") == "auto+fov:400"
    assert Preprocessing.parse("ct") == Preprocessing("ct", None)
    for bad in ("auto+fov:", "auto+fov:-1", "auto+zoom:400", "mri", "auto+fov:5"):
        with pytest.raises(ConfigError, match="intensity mode|preprocessing"):
            Preprocessing.parse(bad)
        with pytest.raises(ConfigError):
            QueryOptions(intensity=bad)
        with pytest.raises(ConfigError):
            IngestOptions(model="test-tiny", intensity=bad)
    assert vector_space_id("m@1", "auto") == "m@1"
    assert vector_space_id("m@1", "percentile+fov:400") == "m@1+fov:400"
    assert resolve_intensity(ct_hu(), "auto+fov:400") == "ct+fov:400"
    assert resolve_intensity(mr(), "auto+fov:400") == "percentile+fov:400"


def test_preprocess_slices_is_the_window_then_the_field_of_view() -> None:
    d = ct_hu()
    plain = preprocess_slices(d, (0.8, 0.8, 2.0), "ct", 32, [1, 5])
    np.testing.assert_array_equal(plain, normalize_intensity(d, "ct", slices=[1, 5]))
    scaled = preprocess_slices(d, (0.8, 0.8, 2.0), "ct+fov:400", 32, [1, 5])
    np.testing.assert_array_equal(
        scaled, physical_scale(normalize_intensity(d, "ct", slices=[1, 5]), (0.8, 0.8), 400, 32))
    assert scaled.shape == (2, 32, 32)


# ---- ingest and query: separate vector spaces, the domain in the payload and the filter -----
def _files(make_nifti) -> dict[str, Path]:
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    return {"ct0": make_nifti(ct_hu(0), aff, name="ct0.nii.gz"),
            "ct1": make_nifti(ct_hu(1), aff, name="ct1.nii.gz"),
            "mr0": make_nifti(mr(0), aff, name="mr0.nii.gz"),
            "mr1": make_nifti(mr(1), aff, name="mr1.nii.gz")}


def test_physical_scale_is_its_own_vector_space(tmp_path: Path, make_nifti) -> None:
    files = _files(make_nifti)
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        reports = ingest_paths([files["ct0"], files["mr0"]], store, emb,
                               intensity="auto+fov:400")
        assert [r.status for r in reports] == ["indexed", "indexed"]
        p = next(store.scroll(COLL, Filter({"volume_id": "ct0", "slice": 0}))).payload
        assert p["embedder"] == "test-tiny@1+fov:400" and p["intensity"] == "ct+fov:400"
        # a query in the default space meets no vector of this one: one clear line
        with pytest.raises(ModelMismatch, match=r"fov:400.*--intensity"):
            search_file(files["ct1"], store, emb, QueryOptions())
        res = search_file(files["ct1"], store, emb, QueryOptions(intensity="auto+fov:400"))
        assert res.ranking[0].volume_id == "ct0"
        # an indexed file reuses its stored vectors, which were made at the same scale
        again = search_file(files["ct0"], store, emb,
                            QueryOptions(intensity="auto+fov:400", cross_modality=True))
        assert again.vectors == "stored"
        # re-ingest in the default space re-embeds (another vector space), never mixes
        back = ingest_paths([files["ct0"]], store, emb, intensity="auto")
        assert back[0].status == "indexed"
        assert set(store.facet(COLL, "embedder", READY)) == {"test-tiny@1",
                                                              "test-tiny@1+fov:400"}


def test_a_query_stays_in_its_intensity_domain(tmp_path: Path, make_nifti) -> None:
    files = _files(make_nifti)
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        ingest_paths([files["ct0"], files["mr0"], files["mr1"]], store, emb)
        doms = {v: next(store.scroll(COLL, Filter({"volume_id": v, "slice": 0}))).payload[
            "domain"] for v in ("ct0", "mr0", "mr1")}
        assert doms == {"ct0": HU, "mr0": NON_HU, "mr1": NON_HU}
        opts = QueryOptions(k=5, top=10)
        res = search_file(files["ct1"], store, emb, opts)
        assert res.domain == HU and [r.volume_id for r in res.ranking] == ["ct0"]
        assert res.to_dict()["query"]["domain"] == HU
        cross = search_file(files["ct1"], store, emb, QueryOptions(k=5, top=10,
                                                                    cross_modality=True))
        assert {r.volume_id for r in cross.ranking} == {"ct0", "mr0", "mr1"}
        assert cross.to_dict()["options"]["cross_modality"] is True
        by_id = search_indexed("mr0", store, emb, opts)
        assert by_id.domain == NON_HU and [r.volume_id for r in by_id.ranking] == ["mr1"]
        # a volume stored before domains (no payload key) is never kept out
        store.delete_payload(COLL, Filter({"volume_id": "mr1"}), ["domain"])
        res = search_file(files["ct1"], store, emb, opts)
        assert {r.volume_id for r in res.ranking} == {"ct0", "mr1"}


# ---- confidence ----------------------------------------------------------------------------------
def test_confidence_is_high_when_vote_slices_and_similarity_agree() -> None:
    from search.confidence import Calibration, Evidence, judge

    cal = Calibration(low=0.80, mid=0.90, n=20)
    sure = judge(Evidence(0.7, 0.95, 1.0, 0.93), cal)
    assert not sure.uncertain and sure.confidence > 0.9 and 0 <= sure.confidence <= 1
    # the same agreement, but the query's best matches are far weaker than the collection's
    # own: its class is probably not there
    novel = judge(Evidence(0.7, 0.95, 1.0, 0.70), cal)
    assert novel.uncertain and novel.familiarity == 0.0 and "no close match" in novel.reason
    # close matches, but the vote is torn between classes and the slices disagree along z
    split = judge(Evidence(0.3, 0.35, 0.3, 0.92), cal)
    assert split.uncertain and "split" in split.reason
    # monotone in each piece of evidence
    assert judge(Evidence(0.5, 0.6, 0.6, 0.86), cal).confidence < judge(
        Evidence(0.5, 0.6, 0.6, 0.88), cal).confidence
    assert judge(Evidence(0.5, 0.5, 0.6, 0.88), cal).confidence < judge(
        Evidence(0.5, 0.7, 0.6, 0.88), cal).confidence
    # without a calibration only the agreement counts
    assert judge(Evidence(0.7, 0.95, 1.0, 0.1), None).familiarity == 1.0
    assert Calibration.of([0.9, 0.8]) is None
    assert Calibration.of([0.7, 0.8, 0.9, float("nan")]).n == 3


def test_evidence_groups_the_ranking_by_class_and_reads_slices_along_z() -> None:
    from search.confidence import evidence

    ranking = [("a", 3.0, "CT/chest"), ("b", 2.0, "CT/chest"), ("c", 1.0, "MR/head")]
    tops = [(1.0, 0.9, "CT/chest"), (2.0, 0.8, "MR/head"), (1.0, 0.7, "CT/chest")]
    ev = evidence(ranking, 6.0, tops)
    assert ev.top_share == pytest.approx(0.5) and ev.class_share == pytest.approx(5 / 6)
    assert ev.z_agreement == pytest.approx(0.5) and ev.similarity == pytest.approx(0.8)
    assert evidence([], 0.0, []).class_share == 0.0


def test_auroc() -> None:
    from search.confidence import auroc

    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5], [True]) is None


def test_every_answer_carries_its_confidence(tmp_path: Path, make_nifti) -> None:
    files = _files(make_nifti)
    extra = {f"mr{k}": make_nifti(mr(k), np.diag([0.8, 0.8, 2.0, 1.0]), name=f"mr{k}.nii.gz")
             for k in range(2, 5)}
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        ingest_paths([files["ct0"], files["mr0"], *extra.values()], store, emb,
                     labels={v: {"modality": "MR", "region": "head"} for v in
                             ("mr0", *extra)} | {"ct0": {"modality": "CT", "region": "chest"}})
        res = search_file(files["mr1"], store, emb, QueryOptions(k=3))
        d = res.to_dict()
        a = d["answer"]
        assert a["volume_id"] == res.ranking[0].volume_id and a["labels"]["modality"] == "MR"
        assert 0.0 <= a["confidence"] <= 1.0 and isinstance(a["uncertain"], bool)
        assert a["uncertain"] == (a["confidence"] < a["threshold"]) and a["reason"]
        assert {"confidence", "uncertain", "reason"} <= set(d["ranking"][0])
        assert "confidence_s" in d["timings"]
        # a query unlike anything stored (stripes in a CT-like scale, cross-modality on so the
        # filter does not empty the ranking) is judged less sure than a familiar one
        stripes = np.zeros((16, 64, 64), np.float32)
        stripes[:, :, ::4] = 1000.0
        odd = make_nifti(stripes, np.diag([0.8, 0.8, 2.0, 1.0]), name="odd.nii.gz")
        far = search_file(odd, store, emb, QueryOptions(k=3, cross_modality=True))
        assert far.answer["confidence"] < a["confidence"]


def test_cli_says_the_domain_and_the_verdict(tmp_path: Path, make_nifti) -> None:
    import json

    from tests.test_cli import medir

    files = _files(make_nifti)
    r = medir("ingest", files["ct0"], files["mr0"], files["mr1"], "--model", "test-tiny")
    assert r.returncode == 0, r.stderr
    r = medir("search", files["ct1"], "--model", "test-tiny", "--json", "--k", "5")
    assert r.returncode == 0, r.stderr
    ranking = json.loads(r.stdout)
    assert [x["volume_id"] for x in ranking] == ["ct0"]  # the MR volumes are kept out
    assert 0.0 <= ranking[0]["confidence"] <= 1.0 and isinstance(ranking[0]["uncertain"], bool)
    r = medir("search", files["ct1"], "--model", "test-tiny", "--cross-modality", "--k", "5")
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "domain: CT in HU" in out and "all domains searched" in out
    assert ("answer: " in out) != ("uncertain: " in out)
    r = medir("search", files["ct1"], "--model", "test-tiny", "--intensity", "auto+fov:1")
    assert r.returncode == 2 and "fov" in r.stderr and "Traceback" not in r.stderr
