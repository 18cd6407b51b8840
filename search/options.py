"""A query's options (:class:`QueryOptions`), validated once on construction, and the options
the settings make (:func:`configured_options`).

They travel as plain JSON (the CLI, the queue's message, a saved query: :meth:`QueryOptions.to_dict`
and :meth:`QueryOptions.from_dict`), so the sampling and the weighting are spec strings here,
parsed once (:meth:`QueryOptions.parsed`) for the query steps (:mod:`search.steps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from medir.config import (
    DEFAULT_K,
    DEFAULT_SIGMA,
    DEFAULT_TOP,
    DEFAULT_WEIGHTING,
    MAX_K,
    MAX_TOP,
    SearchSettings,
    check_intensity,
)
from medir.errors import ConfigError
from search.feedback import check_marks
from search.rerank import check_rerank
from search.sampling import Sampling, Weighting
from search.store import LABEL_KEYS

__all__ = ["MAX_K", "MAX_TOP", "QueryOptions", "configured_options", "default_weighting"]


@dataclass
class QueryOptions:
    """A query's options, validated on construction (before any file is read or embedded).

    The sampling and weighting specs are strings (they travel through the CLI, the queue and
    JSON), parsed once here: :meth:`parsed` hands the parsed objects to every step of the query.
    The defaults are the library's (all slices); the configured ones (``MEDIR_SEARCH__*``) are
    applied by :func:`configured_options`.
    """

    sampling: str = "all"
    weighting: str = DEFAULT_WEIGHTING
    k: int = DEFAULT_K
    top: int = DEFAULT_TOP
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exact: bool = False
    #: The preprocessing spec ``<intensity>[+fov:<mm>]`` (ingest.preprocess.Preprocessing).
    intensity: str = "auto"
    # Case ids whose volumes are left out of the results (leave-one-case-out evaluation).
    exclude_cases: Sequence[str] = ()

    #: Stage 2 over the vote's top ``rerank_top`` volumes: none | maxsim | zorder (search.rerank).
    rerank: str = "none"
    rerank_top: int = 10
    #: At most this many query slices, evenly spaced among the sampling's (0: no cap): the
    #: model's cost of a query is one forward pass per slice.
    max_slices: int = 0
    #: Relevance feedback (search.feedback): indexed volume ids marked "more like these" and
    #: "not like those"; their own votes re-rank the query's, and they are left out.
    like: Sequence[str] = ()
    unlike: Sequence[str] = ()
    #: Search volumes of every intensity domain; by default a query whose voxels are CT in HU
    #: (ingest.intensity_domain) only meets stored volumes that are not non-HU, and vice versa.
    cross_modality: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One :class:`ConfigError` line for the first bad option."""
        for name, value, hi in (("k", self.k, MAX_K), ("top", self.top, MAX_TOP)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if not 1 <= int(value) <= hi:
                raise ConfigError(f"{name} must be between 1 and {hi}, got {value}")
        if not isinstance(self.sampling, str) or not isinstance(self.weighting, str):
            raise ConfigError("sampling and weighting must be strings")
        self.parsed()
        check_rerank(self.rerank)
        for name, marks in (("like", self.like), ("unlike", self.unlike)):
            if isinstance(marks, str) or not all(isinstance(v, str) and v for v in marks):
                raise ConfigError(f"{name} takes a list of volume ids, got {marks!r}")
        check_marks(self.like, self.unlike)
        if not isinstance(self.cross_modality, bool):
            raise ConfigError(f"cross_modality must be true or false, got {self.cross_modality!r}")
        if isinstance(self.rerank_top, bool) or not isinstance(self.rerank_top, int) \
                or not 1 <= self.rerank_top <= MAX_TOP:
            raise ConfigError(f"rerank_top must be between 1 and {MAX_TOP}, got {self.rerank_top}")
        if isinstance(self.max_slices, bool) or not isinstance(self.max_slices, int | np.integer) \
                or self.max_slices < 0:
            raise ConfigError(f"max_slices must be an integer >= 0 (0: no cap), got "
                              f"{self.max_slices!r}")
        check_intensity(self.intensity)  # <intensity>[+fov:<mm>]
        if not isinstance(self.filters, Mapping):
            raise ConfigError("filters must map a label to its values")
        for key, values in self.filters.items():
            if key not in LABEL_KEYS:
                raise ConfigError(f"cannot filter on {key!r}; label filters: "
                                  f"{', '.join(LABEL_KEYS)}")
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"filter {key!r} takes a list of strings, got {values!r}")

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON values (the queue's message, a saved query); the inverse
        of :meth:`from_dict`."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["filters"] = {k: list(v) for k, v in dict(self.filters).items()}
        for name in ("exclude_cases", "like", "unlike"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueryOptions:
        """Options from :meth:`to_dict`'s form, validated (a :class:`ConfigError` line)."""
        filters = data.get("filters") or {}
        if not isinstance(filters, Mapping):
            raise ConfigError("filters must map a label to its values")
        return cls(**{**data, "filters": {k: list(v) for k, v in filters.items()}})

    def parsed(self) -> tuple[Sampling, Weighting]:
        """The parsed sampling (capped at ``max_slices``) and weighting (parsed on
        construction; again only if a spec was changed since)."""
        specs = (self.sampling, self.weighting, self.max_slices)
        cached = self.__dict__.get("_parsed")
        if cached is None or cached[0] != specs:
            cached = (specs, (Sampling.parse(self.sampling).capped(int(self.max_slices)),
                              Weighting.parse(self.weighting)))
            self.__dict__["_parsed"] = cached
        return cached[1]


def configured_options(search: SearchSettings, *, intensity: str, sampling: str | None = None,
                       weighting: str | None = None, k: int | None = None,
                       top: int | None = None, max_slices: int | None = None,
                       **rest: Any) -> QueryOptions:
    """Query options from the settings' query defaults (``search``, ``MEDIR_SEARCH__*``) with
    what the user gave (None: the setting). A ``gaussian`` weighting without ``:SIGMA`` takes
    the settings' ``sigma``."""
    return QueryOptions(sampling=sampling or search.sampling,
                        weighting=weighting or default_weighting(search),
                        k=search.k if k is None else k, top=search.top if top is None else top,
                        max_slices=search.max_slices if max_slices is None else max_slices,
                        intensity=intensity, **rest)


def default_weighting(search: SearchSettings) -> str:
    """The configured weighting spec, its σ from ``search.sigma`` when the spec has none."""
    w = Weighting.parse(search.weighting, default_sigma=search.sigma)
    return search.weighting if w.kind == "none" or w.sigma == DEFAULT_SIGMA else str(w)
