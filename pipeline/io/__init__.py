"""Storage (any fsspec URL, atomic writes, retries), logging and the Ray runtime: what every other part stands on."""
