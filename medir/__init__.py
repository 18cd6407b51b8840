"""medir: search 3D medical volumes by weighted voting over 2D slice embeddings.

Top-level packages: ``ingest`` (read, preprocess, embed), ``search`` (store, sampling, vote,
query), ``runner`` (where work runs: in-process or the Celery queue), ``ui`` (Streamlit),
``benchmarks``. This package holds what they share (settings, errors, secret masking) and, in
``medir.cli``, the ``medir`` command line above them all.
"""

__version__ = "0.1.0"
