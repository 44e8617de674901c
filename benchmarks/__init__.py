"""Quality and speed benchmarks; each script prints a table and can write JSON."""
