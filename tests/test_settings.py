"""The one settings object: every MEDIR_* variable (and .env line) goes through it, the query
defaults come from it, and a query parses its sampling spec once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medir.config import DEFAULT_SAMPLING, DEFAULT_SIGMA, SearchSettings, Settings
from search.query import QueryOptions, configured_options
from search.sampling import Sampling

REPO = Path(__file__).resolve().parents[1]


def test_plugins_and_downloads_are_settings(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.delenv("MEDIR_PLUGINS", raising=False)
    monkeypatch.delenv("MEDIR_ALLOW_DOWNLOADS", raising=False)
    env = tmp_path / ".env"
    env.write_text("MEDIR_PLUGINS=tests.plugin_embedder, mypkg.embedders\n"
                   "MEDIR_ALLOW_DOWNLOADS=1\n")
    s = Settings(_env_file=env)  # type: ignore[call-arg]
    assert s.plugin_modules == ("tests.plugin_embedder", "mypkg.embedders")
    assert s.allow_downloads
    monkeypatch.setenv("MEDIR_PLUGINS", "other.mod")
    monkeypatch.setenv("MEDIR_ALLOW_DOWNLOADS", "no")
    s = Settings(_env_file=env)  # type: ignore[call-arg]
    assert s.plugin_modules == ("other.mod",) and not s.allow_downloads
    assert Settings(_env_file=None).plugin_modules == ("other.mod",)  # type: ignore[call-arg]


def test_plugins_from_a_dotenv_register_their_models(tmp_path: Path) -> None:
    """A fresh process whose .env names the plugin: the CLI lists its model."""
    (tmp_path / ".env").write_text("MEDIR_PLUGINS=tests.plugin_embedder\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from medir.config import get_settings; "
            "from runner.local import LocalRunner; LocalRunner(get_settings()); "
            "from ingest.embedders import model_names; print('test-tiny' in model_names())")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code, str(REPO)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


def test_query_defaults_come_from_the_settings() -> None:
    default = configured_options(SearchSettings(), intensity="auto")
    assert (default.sampling, default.weighting, default.k, default.top) == (
        DEFAULT_SAMPLING, "gaussian", 1, 10)
    conf = SearchSettings(sampling="every-mm:10", sigma=0.5, k=3, top=4)
    opts = configured_options(conf, intensity="ct")
    assert (opts.sampling, opts.weighting, opts.k, opts.top, opts.intensity) == (
        "every-mm:10", "gaussian:0.5", 3, 4, "ct")
    assert opts.parsed()[1].sigma == 0.5
    given = configured_options(conf, intensity="auto", sampling="all", weighting="none", k=2,
                               top=9)
    assert (given.sampling, given.weighting, given.k, given.top) == ("all", "none", 2, 9)
    explicit = configured_options(SearchSettings(weighting="gaussian:0.3", sigma=0.9),
                                  intensity="auto")
    assert explicit.parsed()[1].sigma == 0.3  # a spec's own sigma wins
    assert QueryOptions().parsed()[1].sigma == DEFAULT_SIGMA


def test_a_query_parses_its_sampling_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = Sampling.parse.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Sampling], spec: str) -> Sampling:
        calls.append(spec)
        return original(cls, spec)  # type: ignore[no-any-return]

    monkeypatch.setattr(Sampling, "parse", classmethod(counting))
    opts = configured_options(SearchSettings(max_slices=0), intensity="auto")  # no cap spec
    for _ in range(3):  # the runner, the query and the vote each ask for it
        sampling, _w = opts.parsed()
        assert str(sampling) == DEFAULT_SAMPLING
    assert calls == [DEFAULT_SAMPLING]
    opts.sampling = "every-n:2"  # a changed spec is parsed again, not served stale
    assert str(opts.parsed()[0]) == "every-n:2" and len(calls) == 2


def test_configuration_page_is_current() -> None:
    """docs/configuration.md is what scripts/settings_table.py prints (every MEDIR_* setting)."""
    r = subprocess.run([sys.executable, "scripts/settings_table.py"], cwd=REPO,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                            "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = (REPO / "docs" / "configuration.md").read_text()
    assert r.stdout.strip() == page.strip()
    for name in ("MEDIR_PLUGINS", "MEDIR_ALLOW_DOWNLOADS", "MEDIR_SEARCH__SAMPLING"):
        assert f"`{name}`" in page


@pytest.mark.parametrize("field", ["k", "top"])
def test_query_limits_are_one_pair_for_settings_and_options(field: str) -> None:
    """A k or top the settings accept is one a query accepts, and one past the query's limit
    is refused by the settings already (not by every query later)."""
    from pydantic import ValidationError

    from medir.config import MAX_K, MAX_TOP

    limit = {"k": MAX_K, "top": MAX_TOP}[field]
    search = SearchSettings(**{field: limit})
    assert getattr(configured_options(search, intensity="auto"), field) == limit
    with pytest.raises(ValidationError):
        SearchSettings(**{field: limit + 1})
