"""Benchmarks: the paper's FAISS LSH/HNSW grid, Qdrant vs FAISS, and performance."""
