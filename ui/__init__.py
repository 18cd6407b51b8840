"""Streamlit UI (search, ingest and collection pages)."""
