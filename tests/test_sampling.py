"""Slice selection and weights: exact expected indices and weights for every option."""

from __future__ import annotations

import numpy as np
import pytest

from medir.errors import ConfigError
from search.query import QueryOptions
from search.sampling import Sampling, Weighting, evenly_among


def test_all() -> None:
    np.testing.assert_array_equal(Sampling.parse("all").select(5), [0, 1, 2, 3, 4])


@pytest.mark.parametrize(("n", "expected"), [(3, [0, 3, 6, 9]), (5, [0, 5]), (10, [0]),
                                             (1, list(range(10)))])
def test_every_n(n: int, expected: list[int]) -> None:
    np.testing.assert_array_equal(Sampling.parse(f"every-n:{n}").select(10), expected)


def test_every_mm_uses_spacing() -> None:
    # 20 slices at 2.5 mm: z = 0, 2.5, ..., 47.5; every 5 mm -> every second slice
    np.testing.assert_array_equal(Sampling.parse("every-mm:5").select(20, 2.5),
                                  np.arange(0, 20, 2))
    # every 7 mm at 2.5 mm spacing: targets 0,7,14,...,42 -> nearest slices
    expected = np.unique(np.clip(np.rint(np.arange(0, 47.5 + 1e-9, 7) / 2.5), 0, 19))
    np.testing.assert_array_equal(Sampling.parse("every-mm:7").select(20, 2.5), expected)
    assert list(Sampling.parse("every-mm:7").select(20, 2.5)) == [0, 3, 6, 8, 11, 14, 17]
    # spacing coarser than the step: every slice once
    np.testing.assert_array_equal(Sampling.parse("every-mm:3").select(4, 6.0), [0, 1, 2, 3])


def test_random_is_seeded_sorted_distinct() -> None:
    a = Sampling.parse("random:5:7").select(100)
    b = Sampling.parse("random:5:7").select(100)
    c = Sampling.parse("random:5:8").select(100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(set(a.tolist())) == 5 and list(a) == sorted(a)
    expected = np.sort(np.random.default_rng(7).choice(100, size=5, replace=False))
    np.testing.assert_array_equal(a, expected)
    # more than available: all slices
    np.testing.assert_array_equal(Sampling.parse("random:80").select(10), np.arange(10))


def test_empty_volume() -> None:
    assert Sampling.parse("every-n:3").select(0).size == 0


@pytest.mark.parametrize("bad", ["", "every-n:0", "every-n", "every-mm:-1", "random:0",
                                 "random:x", "foo", "all:3"])
def test_bad_sampling(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad sampling"):
        Sampling.parse(bad)


def test_round_trip_strings() -> None:
    for spec in ["all", "every-n:3", "every-mm:7.5", "random:20:3"]:
        assert str(Sampling.parse(spec)) == spec
    assert str(Weighting.parse("gaussian:0.5")) == "gaussian:0.5"


def test_uniform_weights() -> None:
    np.testing.assert_array_equal(Weighting.parse("none").weights(np.array([0, 4, 9]), 10),
                                  [1, 1, 1])


def test_gaussian_weights_exact() -> None:
    w = Weighting.parse("gaussian:0.25").weights(np.arange(11), 11)
    # centre 5, sigma = 0.25 * 10 = 2.5
    expected = np.exp(-0.5 * ((np.arange(11) - 5) / 2.5) ** 2)
    np.testing.assert_allclose(w, expected)
    assert w[5] == 1.0 and w[0] == pytest.approx(np.exp(-2.0))
    np.testing.assert_allclose(w, w[::-1])  # symmetric about the middle slice
    # even depth: centre between two slices
    w2 = Weighting.parse("gaussian:0.5").weights(np.array([0, 1, 2, 3]), 4)
    assert w2[1] == w2[2] and w2[0] == w2[3] and w2[1] > w2[0]


@pytest.mark.parametrize("bad", ["gaussian:0", "gaussian:-1", "gauss", "none:1"])
def test_bad_weighting(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad weighting"):
        Weighting.parse(bad)


@pytest.mark.parametrize("mode", ["percentile", "ct", "auto", "ct-windows", "auto-windows"])
def test_normalising_chosen_slices_equals_slicing_the_normalised_volume(mode: str) -> None:
    """A query normalises only the slices it embeds; the window still comes from the whole
    volume, so the result equals the whole volume's normalisation, sliced."""
    from ingest.preprocess import normalize_intensity

    rng = np.random.default_rng(5)
    vol = rng.normal(0.0, 400.0, size=(40, 12, 10)).astype(np.float32) - 300.0
    vol[:10] = -1024.0  # air: looks like HU
    chosen = np.array([0, 7, 14, 21, 39])
    whole = normalize_intensity(vol, mode)
    np.testing.assert_array_equal(normalize_intensity(vol, mode, slices=chosen), whole[chosen])


@pytest.mark.parametrize("m,cap", [(43, 12), (300, 7), (10, 9), (5, 1), (2, 2), (40, 39)])
def test_cap_picks_evenly_among_the_chosen(m: int, cap: int) -> None:
    """``,max=N`` (the query's ``max_slices``): N distinct slices of the sampling's, in order,
    evenly spaced (gaps differ by at most one), the ends left alike, one = the middle one."""
    chosen = np.arange(m) * 3 + 1
    got = evenly_among(chosen, cap)
    assert len(got) == min(cap, m) and set(got.tolist()) <= set(chosen.tolist())
    pos = np.searchsorted(chosen, got)
    assert np.all(np.diff(pos) > 0)
    if 1 < cap < m:
        gaps = np.diff(pos)
        assert gaps.max() - gaps.min() <= 1
        assert abs(pos[0] - (m - 1 - pos[-1])) <= 1
    if cap == 1:
        assert pos[0] == m // 2


def test_capped_sampling_parses_and_composes() -> None:
    s = Sampling.parse("every-mm:7,max=12")
    assert str(s) == "every-mm:7,max=12" and Sampling.parse(str(s)) == s
    picked = s.select(300, 1.0)
    assert len(picked) == 12
    assert set(picked.tolist()) <= set(Sampling.parse("every-mm:7").select(300, 1.0).tolist())
    assert s.capped(20) == s and s.capped(5).max_slices == 5 and s.capped(0) == s
    assert len(Sampling.parse("all,max=50").select(30)) == 30  # a cap above the count: all
    opts = QueryOptions(sampling="every-mm:7", max_slices=10)
    assert len(opts.parsed()[0].select(300, 1.0)) == 10
    for bad in ({"max_slices": -1}, {"max_slices": 2.5}, {"max_slices": True}):
        with pytest.raises(ConfigError):
            QueryOptions(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["all,", "all,max=0", "every-mm:7,max=x", "all,min=3",
                                 "all,max=2,max=3"])
def test_bad_cap(bad: str) -> None:
    with pytest.raises(ConfigError):
        Sampling.parse(bad)
