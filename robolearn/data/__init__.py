"""Episode storage: the Zarr episode store, its writer, sequence datasets and tools."""
