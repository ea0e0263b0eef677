"""Where everything of one job lives inside its output folder.

    job.json                          spec, spec hash, code version, inputs
    manifest.json                     written last: its presence means "complete"
    data/<shard>.parquet              curated shards
    stages/<NN>-<stage>/scores/<shard>.parquet
    stages/<NN>-<stage>/decisions/<shard>.parquet   lineage, one row per doc that reached the stage
    stages/<NN>-<stage>/stats/<shard>.json
    stages/<NN>-<stage>/fit.parquet   corpus-wide result (e.g. duplicate groups)
    _done/...                         completion markers, one per shard x step
"""

from __future__ import annotations

from pathlib import Path


class JobLayout:
    def __init__(self, output: str | Path) -> None:
        self.root = Path(output)

    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def stage_dir(self, index: int, stage: str) -> Path:
        return self.root / "stages" / f"{index:02d}-{stage}"

    def scores(self, index: int, stage: str, shard_key: str) -> Path:
        return self.stage_dir(index, stage) / "scores" / f"{shard_key}.parquet"

    def decisions(self, index: int, stage: str, shard_key: str) -> Path:
        return self.stage_dir(index, stage) / "decisions" / f"{shard_key}.parquet"

    def decisions_glob(self) -> str:
        return str(self.root / "stages" / "*" / "decisions" / "*.parquet")

    def stats(self, index: int, stage: str, shard_key: str) -> Path:
        return self.stage_dir(index, stage) / "stats" / f"{shard_key}.json"

    def fit(self, index: int, stage: str) -> Path:
        return self.stage_dir(index, stage) / "fit.parquet"

    def output(self, shard_key: str) -> Path:
        return self.data_dir / f"{shard_key}.parquet"

    def marker(self, step: str, shard_key: str | None = None) -> Path:
        """``step`` is e.g. ``01-exact_dedup_v1.score``; ``shard_key`` None for global steps."""
        return self.root / "_done" / (f"{shard_key}.{step}.json" if shard_key else f"{step}.json")
