"""The out-of-core view of scores a corpus-wide fit gets (``filters.base.ScoreView``):
Arrow datasets for reading and streaming, and a private DuckDB connection (spilling to a
scratch folder) for SQL. ``FileScoreView`` is what jobs use, over the stored score
files; ``TableScoreView`` wraps an in-memory table, for unit tests of a stage's fit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from filters.base import Bucketed, sql_list


def _non_empty(files: list[Path]) -> list[Path]:
    # Units no document reached have empty score files whose columns may be untyped
    # (null); they hold nothing, so they are left out (one is kept for the schema).
    return [f for f in files if pq.ParquetFile(f).metadata.num_rows > 0] or files[:1]


class SqlView:
    """The SQL half: a DuckDB connection where ``scores`` is the view's data."""

    def __init__(self, scratch: Path | None, other_stage: Callable[[str], list[Path]] | None,
                 memory_limit: str) -> None:
        self._con = duckdb.connect()
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
            self._con.execute(f"SET temp_directory = '{str(scratch).replace(chr(39), chr(39) * 2)}'")
        self._con.execute(f"SET memory_limit = '{memory_limit}'")
        self._con.execute("SET preserve_insertion_order = false")
        self._other_stage = other_stage
        self._others: dict[str, str] = {}
        self.bucketed: Bucketed | None = None

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        return self._con.sql(query, params=params or None).to_arrow_table()

    def execute(self, statement: str, params: list[Any] | None = None) -> None:
        self._con.execute(statement, params or [])

    def register(self, name: str, table: pa.Table) -> None:
        self._con.register(name, table)

    def stream(self, query: str, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        yield from self._con.sql(query).to_arrow_reader(batch_size)

    def stage_scores(self, stage: str) -> str:
        if self._other_stage is None:
            raise ValueError(f"this view has no other stage's scores (asked for {stage!r})")
        if stage not in self._others:
            files = _non_empty(self._other_stage(stage))  # raises ValueError naming the problem
            name = f"stage_scores_{len(self._others)}"
            self._con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet({sql_list(files)})")
            self._others[stage] = name
        return self._others[stage]

    def close(self) -> None:
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileScoreView(SqlView):
    """Scores of one scoring phase across every unit of a job, read lazily from files (in
    unit order, so rows come in input order). ``other_stage(name)`` gives the score files
    of an earlier stage, for ``stage_scores``."""

    def __init__(self, files: list[Path], scratch: Path, other_stage: Callable[[str], list[Path]],
                 memory_limit: str = "2GB", bucketed: Bucketed | None = None) -> None:
        super().__init__(scratch, other_stage, memory_limit)
        self.bucketed = bucketed
        self.files = _non_empty(files)
        self._con.execute(f"CREATE TEMP VIEW scores AS SELECT * FROM read_parquet({sql_list(self.files)})")
        self._dataset = pads.dataset([str(f) for f in self.files], format="parquet")

    @property
    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    @property
    def columns(self) -> list[str]:
        return list(self._dataset.schema.names)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self._dataset.to_table(columns=columns)

    def batches(self, columns: list[str] | None = None, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        return self._dataset.to_batches(columns=columns, batch_size=batch_size)


class TableScoreView(SqlView):
    """A ScoreView over an in-memory table (columns ``id``, ``order`` and the scores)."""

    def __init__(self, table: pa.Table, memory_limit: str = "1GB") -> None:
        super().__init__(None, None, memory_limit)
        self.table = table
        self._con.register("scores", table)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def columns(self) -> list[str]:
        return self.table.column_names

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self.table.select(columns) if columns else self.table

    def batches(self, columns: list[str] | None = None, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        return iter(self.read(columns).to_batches(max_chunksize=batch_size))
