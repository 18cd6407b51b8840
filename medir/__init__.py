"""medir: search 3D medical volumes by weighted voting over 2D slice embeddings.

Top-level packages: ``ingest`` (read, preprocess, embed, queue), ``search`` (store, sampling,
vote, query), ``ui`` (Streamlit), ``benchmarks``. This package holds what they share:
settings, errors and the ``medir`` command line.
"""

__version__ = "0.1.0"
