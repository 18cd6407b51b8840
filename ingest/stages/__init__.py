"""The stages of bulk ingest, each a small piece with one job, wired by
:func:`ingest.pipeline.ingest_paths` and each timed in :class:`ingest.stages.stats.PipelineStats`:

=========  ===============  ==========================================================
thread     stage            job
=========  ===============  ==========================================================
reader     ``read``         a source (file, DICOM series, PACS series) → its volumes
reader     ``prepare``      a volume → intensity window → chunks for the device
—          ``handover``     the bounded queue between the threads (memory stays bounded)
calling    ``batch``        chunks → batches of exactly ``batch_size`` rows, rows back
calling    ``embed``        a batch → its vectors (forward pass)
calling    ``write``        skip/relabel, write complete volumes, flush, report in order
=========  ===============  ==========================================================

A new kind of source (another archive, another format) is a :class:`ingest.stages.read.Source`
subclass, not another ingest loop: it then gets batching across volumes, the flush interval,
the reports in input order and the bounded memory of every other source.
"""
