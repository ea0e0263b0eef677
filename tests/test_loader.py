"""curate.loader: manifest verification, exactly-once rows across ranks and dataloader
workers, a deterministic per-epoch order, mid-epoch resume, and a PyTorch DataLoader with
2 workers; plus a real job's output read back."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.loader import CuratedDataset, LoaderState, ManifestError, torch_dataset


def make_job(folder, shards=(700, 0, 1300, 45), row_group=128):
    """A finished job's output folder: shards of known ids and the manifest the job writes."""
    files = []
    for s, n in enumerate(shards):
        path = folder / "data" / f"{s:05d}-s{s}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"s{s}-{i}" for i in range(n)], "text": [f"text {s} {i}" for i in range(n)]}),
                       path, row_group_size=row_group)
        files.append({"path": str(path.relative_to(folder)), "rows": n, "bytes": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "source": f"in/s{s}.parquet"})
    (folder / "manifest.json").write_text(json.dumps({"job_id": "j", "files": files}))
    return folder


def ids_of(batches):
    return [i for b in batches for i in b.column("id").to_pylist()]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2])
def test_every_row_exactly_once_across_ranks_and_workers(tmp_path, world_size, num_workers):
    data = CuratedDataset(make_job(tmp_path))
    everything = [f"s{s}-{i}" for s, n in enumerate((700, 0, 1300, 45)) for i in range(n)]
    for epoch in (0, 1):
        seen = []
        for rank in range(world_size):
            for worker in range(num_workers):
                got = ids_of(data.iter_batches(100, ["id"], rank=rank, world_size=world_size, worker_id=worker,
                                               num_workers=num_workers, seed=7, epoch=epoch, shuffle_buffer=300))
                assert len(got) == data.rows_of(rank=rank, world_size=world_size, worker_id=worker,
                                                num_workers=num_workers)
                seen += got
        assert Counter(seen) == Counter(everything)  # no overlap, no gap
    sizes = [data.rows_of(rank=r, world_size=world_size, worker_id=w, num_workers=num_workers)
             for r in range(world_size) for w in range(num_workers)]
    assert max(sizes) - min(sizes) <= 1


def test_the_order_is_deterministic_per_seed_and_epoch(tmp_path):
    data = CuratedDataset(make_job(tmp_path))
    first = ids_of(data.iter_batches(64, ["id"], seed=3, epoch=0))
    assert first == ids_of(data.iter_batches(64, ["id"], seed=3, epoch=0))
    assert first != ids_of(data.iter_batches(64, ["id"], seed=3, epoch=1))
    assert first != ids_of(data.iter_batches(64, ["id"], seed=4, epoch=0))
    in_order = ids_of(data.iter_batches(64, ["id"], shuffle=False))
    assert in_order == [f"s{s}-{i}" for s, n in enumerate((700, 0, 1300, 45)) for i in range(n)]
    batches = list(data.iter_batches(64, seed=3))
    assert all(b.num_rows == 64 for b in batches[:-1]) and batches[0].schema.names == ["text"]  # text only


def test_resuming_mid_epoch_yields_exactly_the_remaining_rows(tmp_path):
    data = CuratedDataset(make_job(tmp_path))
    full = ids_of(data.iter_batches(50, ["id"], rank=1, world_size=2, seed=9, epoch=2, shuffle_buffer=200))
    state = LoaderState(epoch=2)
    done = []
    for batch in data.iter_batches(50, ["id"], rank=1, world_size=2, seed=9, epoch=2, shuffle_buffer=200):
        done += batch.column("id").to_pylist()
        state.rows += batch.num_rows
        if state.rows >= 350:
            break  # a crash after 7 batches; the checkpoint holds state.state_dict()
    restored = LoaderState()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    rest = ids_of(data.iter_batches(50, ["id"], rank=1, world_size=2, seed=9, epoch=restored.epoch,
                                    shuffle_buffer=200, skip=restored.rows))
    assert done + rest == full and len(set(done) & set(rest)) == 0


def test_a_tampered_missing_or_short_shard_is_named(tmp_path):
    folder = make_job(tmp_path / "a")
    shard = folder / "data" / "00002-s2.parquet"
    pq.write_table(pq.read_table(shard).slice(1), shard)
    with pytest.raises(ManifestError, match=r"data/00002-s2.parquet: sha256 .* does not match the manifest"):
        CuratedDataset(folder)
    folder = make_job(tmp_path / "b")
    (folder / "data" / "00003-s3.parquet").unlink()
    with pytest.raises(ManifestError, match="data/00003-s3.parquet: listed in the manifest but missing"):
        CuratedDataset(folder)
    with pytest.raises(ManifestError, match="no manifest.json"):
        CuratedDataset(tmp_path)
    folder = make_job(tmp_path / "c")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0]["rows"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="data/00000-s0.parquet: 700 rows, the manifest says 701"):
        CuratedDataset(folder)


def test_a_pytorch_dataloader_with_two_workers_reads_each_row_once(tmp_path):
    torch = pytest.importorskip("torch")
    data = CuratedDataset(make_job(tmp_path))
    dataset = torch_dataset(data, columns=["id", "text"], seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=2, collate_fn=list)
    epochs = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        rows = [row for batch in loader for row in batch]
        assert sorted(r["id"] for r in rows) == sorted(f"s{s}-{i}" for s, n in enumerate((700, 0, 1300, 45))
                                                       for i in range(n))
        assert all(r["text"] == "text " + r["id"][1:].replace("-", " ") for r in rows)
        epochs.append([r["id"] for r in rows])
    assert epochs[0] != epochs[1]
    assert data.data_files() == [str(tmp_path / "data" / f"{s:05d}-s{s}.parquet") for s in range(4)]


@pytest.mark.usefixtures("ray_cluster")
def test_a_real_jobs_output_reads_back_exactly(tmp_path):
    from conftest import GOOD, run_cli, write_shard

    for s in range(3):
        write_shard(tmp_path / "in" / f"s{s}.parquet", [GOOD + f" Shard {s}, doc {i}." for i in range(40)]
                    + ["Too short."], ids=[f"s{s}-{i}" for i in range(41)])
    spec = {"name": "load", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
            "stages": [{"stage": "quality_rules_v1"}]}
    (tmp_path / "load.json").write_text(json.dumps(spec))
    run_cli("run", str(tmp_path / "load.json"), "--no-progress")
    data = CuratedDataset(tmp_path / "out")
    assert data.num_rows == json.loads((tmp_path / "out" / "manifest.json").read_text())["output"]["rows"] == 120
    got = ids_of(b for r in range(2) for b in data.iter_batches(16, ["id"], rank=r, world_size=2, seed=0))
    assert sorted(got) == sorted(f"s{s}-{i}" for s in range(3) for i in range(40))
