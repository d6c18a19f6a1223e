"""The 4D dataset: schema, Zarr store, generation, ingestion, validation and (later) the loader."""
