"""Performance benchmarks (``medir bench perf``): ingest by stage against the forward-only
ceiling, query latency by stage, the embedded store at scale, and ingest peak memory.

Every run writes one JSON document with the machine, library versions, load average and git
commit (:func:`benchmarks.machine.stamp`). See ``docs/perf.md`` for the figures and targets.
"""
