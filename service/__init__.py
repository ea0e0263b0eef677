"""Control plane: CLI, lineage catalog (the single DuckDB writer), and later the REST API."""
