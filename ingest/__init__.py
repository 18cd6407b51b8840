"""Ingest: read volumes, preprocess slices, embed them and upsert them into the store."""
