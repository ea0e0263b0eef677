"""Shared fixtures: one real local Ray cluster per test session (bound to 127.0.0.1),
a fresh catalog home per test, and helpers for inline shards."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WEB_POOL = SHARED_DATA / "web" / "combined_web_pool.parquet"


def needs_shared(path: Path):
    reason = f"shared test data absent: {path} (see ../shared/data/README.md)"
    return pytest.mark.skipif(not path.exists(), reason=reason)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster; subprocess drivers join it through RAY_ADDRESS."""
    import ray

    from workers.driver import connect_ray

    os.environ.pop("RAY_ADDRESS", None)
    connect_ray()
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    yield ray
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(autouse=True)
def curate_home(tmp_path, monkeypatch):
    home = tmp_path / "curate-home"
    monkeypatch.setenv("CURATE_HOME", str(home))
    return home


def write_shard(path: Path, texts: list, ids: list | None = None, **extra) -> Path:
    columns = {"text": pa.array(texts, pa.string())}
    if ids is not None:
        columns = {"id": pa.array(ids, pa.string()), **columns}
    columns.update({k: pa.array(v) for k, v in extra.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


GOOD = (
    "The history of the city is long and varied, and many of its buildings still stand today. "
    "Visitors come to see the old bridge that was built with stone from the nearby hills, and they "
    "often stay to walk along the river. The local museum has a collection of maps that show how "
    "the streets have changed over the centuries, and it is open to the public every day of the week."
)
