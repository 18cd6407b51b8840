"""Query with a volume: open the source (a file, a DICOM folder, a PACS series), window it,
embed the chosen slices (or reuse the stored vectors of indexed content), then search.

This is application work (it reads and embeds, :mod:`ingest`), on top of the query steps of
:mod:`search.query`; :class:`runner.local.LocalRunner` calls it.
"""

from __future__ import annotations

import time
from pathlib import Path

from ingest.embedders.base import Embedder
from ingest.intensity_domain import intensity_domain
from ingest.preprocess import input_size_of, preprocess_slices, resolve_intensity
from ingest.reader import Limits, open_volume
from ingest.volume import Volume
from medir.config import PacsSettings, Settings, vector_space_id
from search.query import (
    QueryOptions,
    SearchResult,
    check_collection,
    result_options,
    search_vectors,
    stored_vectors,
)
from search.store import SliceStore, content_id


def search_volume(
    volume: Volume, store: SliceStore, embedder: Embedder, options: QueryOptions
) -> SearchResult:
    """Query with a volume read from a file (embedding only the chosen slices), in the vector
    space of the model and the options' preprocessing, kept to the query's intensity domain
    (decided here from its voxels) unless the options ask for cross-modality search."""
    space = vector_space_id(embedder.embedder_id, options.intensity)
    coll = check_collection(store, embedder, space)
    sampling, _ = options.parsed()
    chosen = sampling.select(volume.n_slices, volume.spacing[2])
    exclude = content_id(volume.sha256, volume.index_4d)
    t0 = time.perf_counter()
    mode = resolve_intensity(volume.data, options.intensity)  # concrete: decided once
    dom = intensity_domain(volume.data)  # from the voxels: CT in HU or not
    stored = stored_vectors(store, coll, exclude, space, mode, chosen)
    t_lookup = time.perf_counter() - t0
    if stored is None:
        vectors = embedder.embed(preprocess_slices(volume.data, volume.spacing, mode,
                                                   input_size_of(embedder), chosen))
    else:
        vectors = stored
    t_embed = time.perf_counter() - t0 - t_lookup
    found = search_vectors(
        store, coll, vectors, volume.n_slices, volume.spacing[2], options,
        exclude_content=exclude, slice_indices=chosen, embedder_id=space, domain=dom.domain,
    )
    return SearchResult(volume.volume_id, volume.source, embedder.name, volume.n_slices,
                        found.chosen_slices, found.weights, result_options(options),
                        found.vote.ranking, found.vote.slice_predictions,
                        {"lookup_s": t_lookup, "embed_s": t_embed, **found.timings},
                        "embedded" if stored is None else "stored", dom.domain, dom.reason,
                        found.answer)


def search_file(
    path: str | Path, store: SliceStore, embedder: Embedder, options: QueryOptions,
    index_4d: int | None = None, *, limits: Limits | None = None,
    pacs: Settings | PacsSettings | None = None,
) -> SearchResult:
    """Query with a volume file; a 4D file needs ``index_4d`` (default: its first volume).

    A PACS series (``dicomweb+http://.../series/<uid>`` or ``pacs/series/<uid>``) is retrieved
    over DICOMweb (in memory, from the ``pacs`` settings: the whole :class:`Settings` also give
it their reader limits) and used like a file. ``limits``:
    what the file may declare (the settings', :meth:`ingest.reader.Limits.of`).
    """
    from ingest.dicomweb import is_dicomweb_source, open_pacs_source

    if is_dicomweb_source(str(path)):
        vf = open_pacs_source(str(path), pacs or PacsSettings())
    elif Path(path).is_dir():  # the folder of one DICOM series
        from ingest.dicom import open_dicom_folder

        vf = open_dicom_folder(Path(path), limits)
    else:
        vf = open_volume(path, limits)
    vol = vf.read((index_4d or 0) if vf.is_4d else None)
    return search_volume(vol, store, embedder, options)
