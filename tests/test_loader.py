"""curate.loader: manifest verification, exactly-once rows across ranks and dataloader
workers, a deterministic per-epoch order, mid-epoch resume (also through CuratedLoader's
DataLoader with 2 workers), fsspec paths, synthetic rows by lineage, weighted mixtures,
Hugging Face datasets; plus a real job's output read back. Downloads from a running
service are tested in test_serve.py."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.loader import CuratedDataset, LoaderState, ManifestError
from curate.torch_data import torch_dataset


def make_job(folder, shards=(700, 0, 1300, 45), row_group=128, created_every=0):
    """A finished job's output folder: shards of known ids and the manifest the job writes.
    ``created_every`` k: every k-th row is a created (synthetic) document, with the
    ``parent_id`` and ``detail`` columns a job adds when a stage creates documents."""
    files = []
    for s, n in enumerate(shards):
        path = folder / "data" / f"{s:05d}-s{s}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"id": [f"s{s}-{i}" for i in range(n)], "text": [f"text {s} {i}" for i in range(n)]})
        if created_every:
            parents = [f"s{s}-{i - 1}" if i % created_every == created_every - 1 else None for i in range(n)]
            table = table.append_column("parent_id", pa.array(parents, pa.string()))
            table = table.append_column("detail", pa.array([p and "{}" for p in parents], pa.string()))
        pq.write_table(table, path, row_group_size=row_group)
        files.append({"path": str(path.relative_to(folder)), "rows": n, "bytes": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "source": f"in/s{s}.parquet"})
    (folder / "manifest.json").write_text(json.dumps({"job_id": "j", "files": files}))
    return folder


def ids_of(batches):
    return [i for b in batches for i in b.column("id").to_pylist()]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_row_exactly_once_across_ranks_and_workers(tmp_path, world_size, num_workers):
    data = CuratedDataset(make_job(tmp_path))
    everything = [f"s{s}-{i}" for s, n in enumerate((700, 0, 1300, 45)) for i in range(n)]
    for epoch in (0, 1):
        seen = []
        for rank in range(world_size):
            for worker in range(max(num_workers, 1)):
                got = ids_of(data.iter_batches(100, ["id"], rank=rank, world_size=world_size, worker_id=worker,
                                               num_workers=num_workers, seed=7, epoch=epoch, shuffle_buffer=300))
                assert len(got) == data.rows_of(rank=rank, world_size=world_size, worker_id=worker,
                                                num_workers=num_workers)
                seen += got
        assert Counter(seen) == Counter(everything)  # no overlap, no gap
    sizes = [data.rows_of(rank=r, world_size=world_size, worker_id=w, num_workers=num_workers)
             for r in range(world_size) for w in range(max(num_workers, 1))]
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
    with pytest.raises(ManifestError, match=r"data/00002-s2.parquet: cannot read row group"):
        shard = tmp_path / "a" / "data" / "00002-s2.parquet"
        shard.write_bytes(shard.read_bytes()[:200] + b"\0" * 4000 + shard.read_bytes()[4200:])
        list(CuratedDataset(tmp_path / "a", verify=False).iter_batches(100, ["id", "text"], shuffle=False))
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
    assert data.data_files() == [str(tmp_path / "data" / f"{s:05d}-s{s}.parquet") for s in (0, 2, 3)]  # no empty


EVERYTHING = [f"s{s}-{i}" for s, n in enumerate((700, 0, 1300, 45)) for i in range(n)]


def read_all(source, world_size=1, num_workers=1, columns=("id",), **kw):
    """Every reader's rows (as dicts), reader after reader."""
    return [row for r in range(world_size) for w in range(num_workers)
            for b in source.iter_batches(64, list(columns), rank=r, world_size=world_size, worker_id=w,
                                         num_workers=num_workers, **kw)
            for row in b.to_pylist()]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_curated_loader_resumes_mid_epoch_exactly(tmp_path, num_workers):
    pytest.importorskip("torch")
    from curate.torch_data import CuratedLoader

    data = CuratedDataset(make_job(tmp_path))
    settings = {"batch_size": 64, "columns": ["id"], "world_size": 2, "num_workers": num_workers, "seed": 5}
    everything = []
    for rank in range(2):
        loader = CuratedLoader(data, rank=rank, **settings)
        loader.set_epoch(1)
        full = [i for b in loader for i in b["id"]]
        assert loader.epoch == 2 and loader.rows == [0] * max(num_workers, 1)  # read to the end: the next epoch
        assert len(full) == sum(data.rows_of(rank=rank, world_size=2, worker_id=w, num_workers=num_workers)
                                for w in range(max(num_workers, 1)))
        crashed = CuratedLoader(data, rank=rank, **settings)
        crashed.set_epoch(1)
        before = []
        for k, batch in enumerate(crashed):
            before += batch["id"]
            if k == 4:
                state = json.loads(json.dumps(crashed.state_dict()))  # the checkpoint, then a crash
                break
        resumed = CuratedLoader(data, rank=rank, **settings)
        resumed.load_state_dict(state)
        resumed.set_epoch(1)  # a training loop's set_epoch for the epoch it resumes keeps the place
        after = [i for b in resumed for i in b["id"]]
        assert not set(before) & set(after) and Counter(before + after) == Counter(full)
        if num_workers == 0:
            assert before + after == full
        everything += full
    assert Counter(everything) == Counter(EVERYTHING)
    with pytest.raises(ValueError, match="num_workers=3"):
        CuratedLoader(data, rank=1, **{**settings, "num_workers": 3}).load_state_dict(state)
    with pytest.raises(ValueError, match="differs in shuffle_buffer"):
        CuratedLoader(data, rank=1, shuffle_buffer=100, **settings).load_state_dict(state)
    with pytest.raises(ValueError, match="differs in the data"):
        CuratedLoader(CuratedDataset(make_job(tmp_path / "other", (9,))), rank=1, **settings).load_state_dict(state)


def test_even_shares_give_every_rank_the_same_number_of_steps(tmp_path):
    data = CuratedDataset(make_job(tmp_path, shards=(1001,)))
    exact = [len(list(data.iter_batches(500, ["id"], rank=r, world_size=2))) for r in range(2)]
    assert exact == [1, 2] and [data.rows_of(rank=r, world_size=2) for r in range(2)] == [500, 501]  # DDP hangs
    for epoch in (0, 1):
        steps = [list(data.iter_batches(250, ["id"], rank=r, world_size=2, epoch=epoch, even=True))
                 for r in range(2)]
        assert [len(s) for s in steps] == [2, 2] and all(b.num_rows == 250 for s in steps for b in s)
        ids = [i for s in steps for b in s for i in b.column("id").to_pylist()]
        assert len(set(ids)) == 1000  # one row of 1,001 left for this epoch, none twice


def test_a_shuffled_epoch_over_many_shards_keeps_few_files_open(tmp_path):
    import psutil

    from curate.loader import OPEN_FILES, READERS

    data = CuratedDataset(make_job(tmp_path, shards=(20,) * 60, row_group=5), verify=False)
    me, most, rows = psutil.Process(), 0, 0
    for batch in data.iter_batches(10, ["id"], seed=1, shuffle_buffer=10):
        most = max(most, sum(f.path.endswith(".parquet") for f in me.open_files()))
        rows += batch.num_rows
    assert rows == 1200 and 0 < most <= READERS * (OPEN_FILES + 1)  # (+1: opened before the oldest is closed)


def test_an_fsspec_url_reads_like_the_local_folder(tmp_path):
    import fsspec

    folder = make_job(tmp_path / "job")
    memory = fsspec.filesystem("memory")
    for path in folder.rglob("*.*"):
        memory.pipe_file(f"/jobs/a/{path.relative_to(folder)}", path.read_bytes())
    remote, local = CuratedDataset("memory://jobs/a"), CuratedDataset(folder)
    assert ids_of(remote.iter_batches(100, ["id"], seed=2, epoch=1, rank=1, world_size=2)) == \
        ids_of(local.iter_batches(100, ["id"], seed=2, epoch=1, rank=1, world_size=2))
    assert remote.data_files()[0] == "memory:///jobs/a/data/00000-s0.parquet"
    memory.pipe_file("/jobs/a/data/00003-s3.parquet", b"PAR1 not the shard")
    with pytest.raises(ManifestError, match="data/00003-s3.parquet: sha256"):
        CuratedDataset("memory://jobs/a")


def test_synthetic_rows_are_included_excluded_or_mixed_by_ratio(tmp_path):
    from curate.mixture import Mixture

    data = CuratedDataset(make_job(tmp_path / "job", created_every=4))
    created = {f"s{s}-{i}" for s, n in enumerate((700, 0, 1300, 45)) for i in range(n) if i % 4 == 3}
    only, real = data.with_synthetic("only"), CuratedDataset(tmp_path / "job", synthetic="exclude")
    assert data.num_rows == len(EVERYTHING) and only.num_rows == len(created) == 511
    for view, expected in ((only, created), (real, set(EVERYTHING) - created), (data, set(EVERYTHING))):
        got = [r["id"] for r in read_all(view, world_size=3, num_workers=2, seed=1)]
        assert Counter(got) == Counter(expected)  # exactly once across 6 readers
    mix = Mixture.real_and_synthetic(data, 0.5, source_column="kind")
    rows = read_all(mix, world_size=2, columns=["id", "parent_id"], seed=3)
    synthetic = [r for r in rows if r["kind"] == "synthetic"]
    assert len(rows) == len(EVERYTHING) and abs(len(synthetic) - len(rows) / 2) <= 2
    assert all(r["parent_id"] is not None for r in synthetic)
    assert all(r["parent_id"] is None for r in rows if r["kind"] == "real")
    assert set(r["id"] for r in synthetic) == created  # upsampled: every synthetic row used, ~twice
    assert max(Counter(r["id"] for r in synthetic).values()) <= 3
    with pytest.raises(ManifestError, match="needs the 'parent_id' column"):
        CuratedDataset(make_job(tmp_path / "plain"), synthetic="only")


def test_a_weighted_mixture_is_exact_reproducible_and_resumable(tmp_path):
    from curate.mixture import Mixture

    web, code = CuratedDataset(make_job(tmp_path / "web")), CuratedDataset(make_job(tmp_path / "code", (30, 20)))
    mix = Mixture({"web": (web, 3), "code": (code, 1)}, rows=2000, source_column="src")
    rows = read_all(mix, world_size=2, seed=4, epoch=0)
    per = Counter(r["src"] for r in rows)
    assert per == {"web": 1500, "code": 500}
    # code (50 rows, 25 per reader) is upsampled 10×: each row exactly 10 times; web is not repeated
    assert set(Counter(r["id"] for r in rows if r["src"] == "code").values()) == {10}
    assert max(Counter(r["id"] for r in rows if r["src"] == "web").values()) == 1
    first = [r["src"] for r in rows[:400]]
    assert abs(first.count("code") - 100) <= 1  # exact proportions at every prefix, not just overall
    assert rows == read_all(mix, world_size=2, seed=4, epoch=0)
    assert rows != read_all(mix, world_size=2, seed=4, epoch=1)
    one = read_all(mix, seed=4, epoch=2)
    rest = [r for b in mix.iter_batches(50, ["id"], seed=4, epoch=2, skip=777) for r in b.to_pylist()]
    assert rest == one[777:]
    with pytest.raises(ValueError, match="weights must be positive"):
        Mixture({"web": (web, 1), "code": (code, 0)})
    torch_data = pytest.importorskip("curate.torch_data")  # the same mixture through DataLoader workers
    loader = torch_data.CuratedLoader(mix, batch_size=100, columns=["id"], num_workers=2, seed=4)
    got = [(i, s) for b in loader for i, s in zip(b["id"], b["src"], strict=True)]
    assert Counter(got) == Counter((r["id"], r["src"]) for r in read_all(mix, num_workers=2, seed=4, epoch=0))


def test_the_readme_training_example_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"### Use in training\n.*?```python\n(.*?)```", readme, re.S).group(1)
    make_job(tmp_path / "runs" / "web-pool-v1")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    state = namespace["state"]  # taken after the last batch of epoch 1
    assert namespace["loader"].epoch == 2 and state["epoch"] == 1 and sum(state["rows"]) == len(EVERYTHING)
    assert len(namespace["texts"]) <= 32


def test_a_cached_job_is_used_when_the_service_is_unreachable(tmp_path):
    import shutil
    import socket

    from curate.remote import FetchError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jobs/j1"
    with pytest.raises(FetchError, match=f"GET http://127.0.0.1:{port}/jobs/j1/manifest: cannot reach the service"):
        CuratedDataset(url, cache_dir=tmp_path / "cache")
    shutil.copytree(make_job(tmp_path / "job"), tmp_path / "cache" / f"127.0.0.1_{port}" / "j1", dirs_exist_ok=True)
    with pytest.warns(UserWarning, match="using the complete copy cached in"):
        data = CuratedDataset(url, cache_dir=tmp_path / "cache")
    assert Counter(ids_of(data.iter_batches(100, ["id"]))) == Counter(EVERYTHING)
    (tmp_path / "cache" / f"127.0.0.1_{port}" / "j1" / "data" / "00003-s3.parquet").write_bytes(b"changed")
    with pytest.warns(UserWarning), pytest.raises(ManifestError, match="00003-s3.parquet: sha256"):
        CuratedDataset(url, cache_dir=tmp_path / "cache")  # the offline copy is verified like any folder


def test_hugging_face_datasets_loads_the_file_list(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = CuratedDataset(make_job(tmp_path / "job"))
    ds = datasets.load_dataset("parquet", data_files=data.data_files(), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == data.num_rows and Counter(ds["id"]) == Counter(EVERYTHING)


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
