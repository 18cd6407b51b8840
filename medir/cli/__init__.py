"""The ``medir`` command line, one tree in one package; it imports the library, never the reverse.

- ``root``: the app; it registers the top-level commands in ``--help`` order, holds demo,
  follow and worker, and mounts the groups below;
- ``ingest``, ``search`` and ``store`` (info, volumes, prune, migrate): the other top-level
  commands, by topic;
- ``samples``: ``medir samples fetch``;
- ``models``: ``medir models [list|prepare]``;
- ``jobs``: ``medir jobs``, the queue's job records;
- ``bench`` and ``bench_perf``: ``medir bench paper|quality|engines|speed`` and
  ``medir bench perf ...``;
- ``pacs``: what ``medir ingest dicomweb+http://...`` and ``medir follow`` run;
- ``progress``: the bars of queued jobs, drawn from the runner's events;
- ``common``: what every command shares (a user error is one line and exit status 2).
"""

from medir.cli.root import app, main

__all__ = ["app", "main"]
