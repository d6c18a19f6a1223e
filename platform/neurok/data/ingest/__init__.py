"""`neurok data ingest`: convert public 4D formats into the Zarr store, one reader module per format."""

from neurok.data.ingest.pipeline import FORMATS, IngestConfig, ingest, iter_sequences

__all__ = ["FORMATS", "IngestConfig", "ingest", "iter_sequences"]
