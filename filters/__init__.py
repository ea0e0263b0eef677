"""Pure stage logic over Arrow tables. Never imports ray, duckdb or fastapi."""
