"""The one grammar of query methods for the benchmarks: the grid's columns (``medir bench
paper --variants``, ``benchmarks/configs/paper.json``), the quality evaluation's methods
(``medir bench quality --methods``); ``medir bench perf query-latency --sampling`` takes its
``<sampling>`` part. A method is::

    [W:|SW:]<sampling>[,max=N][,sigma=S][+maxsim|+zorder][+domain]

- ``<sampling>``: which query slices take part, the product's sampling
  (:mod:`search.sampling`): ``all`` | ``every-n:N`` | ``every-mm:X`` | ``random:K[:SEED]``;
  ``,max=N`` keeps at most N of them, evenly spaced (the query's ``max_slices``).
- no prefix: the count vote (every chosen slice's neighbours count alike).
- ``W:``: the vote with Gaussian weights along z (``gaussian``; ``,sigma=S`` sets σ as a
  fraction of the volume's depth, default :data:`medir.config.DEFAULT_SIGMA`).
- ``SW:``: slice-wise, the paper's baseline without aggregation: each chosen slice's nearest
  volume is a prediction of its own.
- ``W`` and ``SW`` alone (or followed by ``,`` options) are over all slices: ``W`` = ``W:all``.
- ``+maxsim`` / ``+zorder``: re-rank the vote's first volumes (:mod:`search.rerank`);
  ``+domain`` (last): keep the query to its intensity domain, as ``medir search`` does unless
  ``--cross-modality``. Both are the quality evaluation's; the grid's columns are votes only.

The product's default query is ``W:every-mm:7,max=20+domain`` (:mod:`medir.config`).

Older spellings that mean one thing keep working: the grid's ``<sampling>+gaussian[:S]`` is
``W:<sampling>[,sigma=S]`` (and ``+none`` changes nothing). The grid's ``W:<number>`` (a σ) is
refused with its new spelling ``W,sigma=<number>``: ``W:`` is always followed by a sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

from medir.errors import ConfigError
from search.rerank import RERANKERS
from search.sampling import Sampling, Weighting

GRAMMAR = "[W:|SW:]<sampling>[,max=N][,sigma=S][+maxsim|+zorder][+domain]"
#: The ``key=value`` options after a sampling (the CLI glues them back to their method when it
#: splits a comma-separated list).
OPTION_KEYS = ("max", "sigma")
_OLD_WEIGHTINGS = ("gaussian", "w", "none", "count", "uniform")


@dataclass(frozen=True)
class Method:
    """A query method: which slices take part (``sampling``), with what vote weight
    (``weighting``), or each on its own (``slice_wise``), then an optional re-ranker and the
    domain restriction. ``name`` is the method as reports show it."""

    name: str
    sampling: Sampling
    weighting: Weighting
    rerank: str = "none"
    slice_wise: bool = False
    #: keep the query in its intensity domain (ingest.intensity_domain), as medir's query does
    domain: bool = False


def _bad(spec: str, why: str) -> ConfigError:
    return ConfigError(f"bad method {spec!r}: {why}; methods are {GRAMMAR}, e.g. W, SW, all, "
                       "W:every-mm:7,max=20, W+zorder, W:every-mm:7+domain")


def parse_method(spec: str) -> Method:
    """The method of ``spec`` (module docstring), or one :class:`ConfigError` line."""
    text = "".join(str(spec).split())
    body, *plus = text.split("+")
    rerank, domain, old_weighting = "none", False, None
    for i, token in enumerate(t.lower() for t in plus):
        if token == "domain" and i == len(plus) - 1:
            domain = True
        elif token in RERANKERS and rerank == "none":
            rerank = token
        elif i == 0 and token.split(":")[0] in _OLD_WEIGHTINGS:
            try:  # the grid's <sampling>+gaussian[:S]
                old_weighting = Weighting.parse(token)
            except ConfigError as exc:
                raise _bad(spec, str(exc)) from None
        else:
            raise _bad(spec, "after '+' come at most one re-ranker (maxsim or zorder), then "
                             "domain")
    first, *options = body.split(",")
    prefix, _, sampling_text = first.partition(":")
    prefix = prefix.upper()
    if prefix not in ("W", "SW"):
        prefix, sampling_text = "", first
    elif not sampling_text:
        if ":" in first:
            raise _bad(spec, "'W:' and 'SW:' are followed by a sampling")
        sampling_text = "all"
    elif prefix == "W" and _is_number(sampling_text):
        raise ConfigError(f"bad method {spec!r}: 'W:' is followed by a sampling now "
                          f"(W:every-mm:7); a Gaussian σ is written W,sigma={sampling_text}")
    sigma = [o.partition("=")[2] for o in options if o.lower().startswith("sigma=")]
    cap = [o for o in options if not o.lower().startswith("sigma=")]
    if not sampling_text:
        raise _bad(spec, "no sampling")
    try:
        sampling = Sampling.parse(",".join([sampling_text, *cap]))
    except ConfigError as exc:
        raise _bad(spec, str(exc)) from None
    if old_weighting is not None:
        if prefix:
            raise _bad(spec, f"'{prefix}' already says how slices count")
        if old_weighting.kind == "gaussian":
            prefix = "W"
            if ":" in plus[0]:
                sigma = [plus[0].partition(":")[2]]
    if len(sigma) > 1:
        raise _bad(spec, "one sigma")
    if sigma and prefix != "W":
        raise _bad(spec, "sigma=S is the width of the Gaussian weights: W:<sampling>,sigma=S")
    if prefix == "SW" and rerank != "none":
        raise _bad(spec, "SW scores slices, it has no ranking to re-rank")
    try:
        weighting = Weighting.parse(f"gaussian:{sigma[0]}" if sigma else "gaussian") \
            if prefix == "W" else Weighting("none")
    except ConfigError as exc:
        raise _bad(spec, str(exc)) from None
    core = sampling_text.lower()
    name = prefix if prefix and core == "all" else ":".join(p for p in (prefix, core) if p)
    name += "".join(f",{o.lower()}" for o in cap) + (f",sigma={sigma[0]}" if sigma else "")
    name += (f"+{rerank}" if rerank != "none" else "") + ("+domain" if domain else "")
    return Method(name, sampling, weighting, rerank, prefix == "SW", domain)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_sampling(spec: str) -> Sampling:
    """A bare ``<sampling>`` (the perf query bench's ``--sampling``: it always runs the
    product's query, Gaussian weights and the domain filter, over it), or one error line."""
    try:
        return Sampling.parse(spec)
    except ConfigError:
        head = spec.strip().upper()
        if head in ("W", "SW") or head.startswith(("W:", "W,", "SW:", "SW,")) or "+" in spec:
            raise ConfigError(f"bad sampling {spec!r}: this option takes the <sampling> of a "
                              f"method ({GRAMMAR}), e.g. every-mm:7,max=20; the query is the "
                              "product's (Gaussian weights, the domain filter)") from None
        raise
