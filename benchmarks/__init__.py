"""Quality and speed benchmarks; each script prints a table and can write JSON."""

import pipelines  # noqa: F401  (before diffusers: its import-time settings)
