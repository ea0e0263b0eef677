"""Object storage against a real local S3-compatible server (moto's, an HTTP server on
127.0.0.1, reached through s3fs with dummy credentials and ``AWS_ENDPOINT_URL``): a job
that reads its input shards from ``s3://`` gives the outputs of the same job over local
files; ``curate publish`` puts a finished job on ``s3://`` and ``CuratedDataset`` reads it
back, verified; an interrupted or refused publication never leaves a manifest that a
reader would trust."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, run_cli, write_shard

from curate.loader import CuratedDataset, ManifestError

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -c requirements.lock -e '.[dev]')")
pytest.importorskip("flask", reason="moto's server needs flask (pip install -c requirements.lock -e '.[dev]')")
moto_server = pytest.importorskip("moto.server", reason="moto is not installed (pip install -c requirements.lock "
                                                        "-e '.[dev]')")

# Credentials and endpoints the tests must not pick up from the machine they run on.
AWS_ENV_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
                 "AWS_DEFAULT_PROFILE", "AWS_CA_BUNDLE")


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on a free loopback port; this process and its subprocesses (the
    CLI, and the Ray workers of the clusters it starts) reach it through the environment."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    empty = tmp_path_factory.mktemp("aws") / "none"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as mp:
        for name in AWS_ENV_UNSET:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        s3fs.S3FileSystem.clear_instance_cache()  # an instance made before this endpoint was set
        try:
            yield f"http://{host}:{port}"
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    """A new empty bucket, and the filesystem the code under test gets for s3:// URLs."""
    fs = s3fs.S3FileSystem()
    name = f"curate-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return name, fs


def finished_job(folder, job_id, shards):
    """A finished job's output folder as a job writes it: ``shards`` maps a shard name to
    its ids; data/<name>.parquet and manifest.json (rows, bytes, sha256)."""
    files = []
    for name, ids in shards.items():
        path = folder / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "text": [f"text of {i}" for i in ids]}), path)
        files.append({"path": f"data/{name}.parquet", "rows": len(ids), "bytes": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (folder / "job.json").write_text(json.dumps({"job_id": job_id}))
    (folder / "manifest.json").write_text(json.dumps({"job_id": job_id, "files": files}))
    return folder


def ids_in(data: CuratedDataset) -> Counter:
    return Counter(i for b in data.iter_batches(64, ["id"], seed=1) for i in b.column("id").to_pylist())


def test_a_job_reads_s3_inputs_like_local_files_and_a_published_job_loads_from_s3(tmp_path, bucket, monkeypatch,
                                                                                   ray_head):
    name, fs = bucket
    texts = [GOOD + f" Shard {s}, document {i}." for s in range(3) for i in range(4)]
    for s in range(3):
        ids = [f"s{s}-{i}" for i in range(5)]
        shard = write_shard(tmp_path / "in" / f"part-{s}.parquet", texts[s * 4:s * 4 + 4] + [texts[0]], ids=ids)
        fs.put_file(str(shard), f"{name}/raw/part-{s}.parquet")  # the last row of each: a duplicate of s0-0
    stages = "stages:\n  - stage: exact_dedup_v1\n  - stage: quality_rules_v1\n    params: {min_words: 20}\n"
    for job, inputs in (("local", f"{tmp_path}/in/*.parquet"), ("remote", f"s3://{name}/raw/*.parquet")):
        (tmp_path / f"{job}.yaml").write_text(f"name: {job}\ninputs: ['{inputs}']\noutput: {tmp_path}/{job}\n"
                                              + stages)
    run_cli("run", str(tmp_path / "local.yaml"), "--no-progress")  # on the session's cluster
    # Its own local Ray cluster, whose workers read the shards with this environment's
    # endpoint and credentials (every node of a cluster needs them the same way).
    monkeypatch.delenv("RAY_ADDRESS")
    run_cli("run", str(tmp_path / "remote.yaml"), "--no-progress")
    local, remote = (json.loads((tmp_path / job / "manifest.json").read_text()) for job in ("local", "remote"))
    assert [f["source"] for f in remote["files"]] == [f"s3://{name}/raw/part-{s}.parquet" for s in range(3)]
    assert [(f["path"], f["rows"], f["sha256"]) for f in remote["files"]] == \
        [(f["path"], f["rows"], f["sha256"]) for f in local["files"]]  # byte-identical shards
    assert remote["funnel"] == local["funnel"] and remote["output"]["rows"] == 12  # the 3 duplicates dropped

    url = f"s3://{name}/published/remote"
    res = run_cli("publish", "remote", url, "--no-progress")  # by job name, through the catalog
    assert f"published job {remote['job_id']}: 3 shards" in res.stdout and url in res.stdout
    stored = sorted(p.removeprefix(f"{name}/published/remote/") for p in fs.find(f"{name}/published/remote"))
    assert stored == ["data/00000-part-0.parquet", "data/00001-part-1.parquet", "data/00002-part-2.parquet",
                      "manifest.json"]
    fs.invalidate_cache()
    data = CuratedDataset(url)  # verifies every shard's rows and sha256 against the manifest
    expected = pa.concat_tables(pq.read_table(tmp_path / "local" / f["path"]) for f in local["files"])
    assert ids_in(data) == Counter(expected["id"].to_pylist())
    assert data.manifest["job_id"] == remote["job_id"] and data.num_rows == 12
    assert data.data_files()[0] == f"{url}/data/00000-part-0.parquet"
    # A stored shard changed after publication: the loader names it.
    fs.pipe_file(f"{name}/published/remote/data/00001-part-1.parquet", b"PAR1 not the shard")
    with pytest.raises(ManifestError, match="data/00001-part-1.parquet: sha256"):
        CuratedDataset(url)


def test_the_manifest_goes_up_last_so_an_interrupted_publication_is_never_read(tmp_path, bucket, monkeypatch):
    from workers.publish import PublishError, publish

    name, fs = bucket
    job = finished_job(tmp_path / "job", "job-a", {f"{i:05d}-s{i}": [f"a{i}-{k}" for k in range(10)]
                                                   for i in range(4)})
    url = f"s3://{name}/runs/a"
    s3 = s3fs.S3FileSystem()
    assert s3 is fs  # the instance publish() gets for the URL: its uploads are the ones that fail
    real_put, uploaded = s3.put_file, []

    def put_then_fail(lpath, rpath, **kwargs):
        if len(uploaded) == 2:
            raise ConnectionResetError("connection reset by peer")
        uploaded.append(rpath)
        return real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(s3, "put_file", put_then_fail)
    with pytest.raises(PublishError, match=r"cannot upload .*00002-s2.parquet to "
                                           rf"{re.escape(url)}/data/00002-s2.parquet: ConnectionResetError"):
        publish(job, url)
    monkeypatch.undo()
    fs.invalidate_cache()
    assert sorted(fs.ls(f"{name}/runs/a/data")) == [f"{name}/runs/a/data/00000-s0.parquet",
                                                    f"{name}/runs/a/data/00001-s1.parquet"]
    assert not fs.exists(f"{name}/runs/a/manifest.json")
    with pytest.raises(ManifestError, match=rf"{re.escape(url)}: no manifest.json"):
        CuratedDataset(url)
    # The same command again finishes it (no manifest there, so nothing to overwrite).
    res = run_cli("publish", str(job), url, "--no-progress")
    assert "published job job-a: 4 shards" in res.stdout
    assert ids_in(CuratedDataset(url)) == Counter(f"a{i}-{k}" for i in range(4) for k in range(10))


def test_a_shard_that_changed_since_the_job_wrote_it_is_not_published(tmp_path, bucket):
    name, fs = bucket
    job = finished_job(tmp_path / "job", "job-a", {"00000-s0": ["x", "y"], "00001-s1": ["z"]})
    (job / "data" / "00001-s1.parquet").write_bytes(b"PAR1 changed")
    url = f"s3://{name}/runs/changed"
    res = run_cli("publish", str(job), url, "--no-progress", check=False)
    assert res.returncode == 1, res.stderr
    assert re.search(r"error: .*/job/data/00001-s1\.parquet: sha256 \w+… does not match the manifest's \w+… "
                     r"\(changed since the job wrote it\); no manifest was written", res.stderr), res.stderr
    fs.invalidate_cache()
    assert not fs.exists(f"{name}/runs/changed/manifest.json")
    with pytest.raises(ManifestError, match="no manifest.json"):
        CuratedDataset(url)
    # Unfinished jobs, missing buckets and bad options get one line that names what is wrong.
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "job.json").write_text("{}")
    res = run_cli("publish", str(tmp_path / "running"), url, "--no-progress", check=False)
    assert res.returncode == 1 and "running: no manifest.json: only a finished job's output can be published" \
        in res.stderr, res.stderr
    (job / "data" / "00001-s1.parquet").unlink()
    finished_job(job, "job-a", {"00000-s0": ["x", "y"], "00001-s1": ["z"]})
    res = run_cli("publish", str(job), "s3://no-such-bucket-curate/x", "--no-progress", check=False)
    assert res.returncode == 1 and re.search(r"error: cannot upload .*00000-s0\.parquet to "
                                             r"s3://no-such-bucket-curate/x/data/00000-s0\.parquet: "
                                             r"FileNotFoundError", res.stderr), res.stderr
    res = run_cli("publish", str(job), url, "--storage-option", "endpoint_url", check=False)
    assert res.returncode == 2 and "--storage-option takes KEY=VALUE" in res.stderr


def test_an_existing_publication_is_kept_unless_overwrite(tmp_path, bucket):
    name, fs = bucket
    a = finished_job(tmp_path / "a", "job-a", {"00000-s0": ["a0", "a1"], "00001-s1": ["a2"], "00002-s2": ["a3"]})
    b = finished_job(tmp_path / "b", "job-b", {"00000-s0": ["b0"], "00001-t1": ["b1", "b2"]})
    url = f"s3://{name}/runs/pool"
    run_cli("publish", str(a), url, "--no-progress")
    res = run_cli("publish", str(b), url, "--no-progress", check=False)
    assert res.returncode == 1
    assert f"error: {url}/manifest.json exists: {url} already holds a published job (job-a); pass --overwrite " \
           "to replace it" in res.stderr, res.stderr
    assert ids_in(CuratedDataset(url)) == Counter(["a0", "a1", "a2", "a3"])  # untouched
    res = run_cli("publish", str(b), url, "--overwrite", "--no-progress")
    assert "published job job-b: 2 shards" in res.stdout and "replaced job-a, removed 2 of its shards" in res.stdout
    fs.invalidate_cache()
    assert sorted(fs.ls(f"{name}/runs/pool/data")) == [f"{name}/runs/pool/data/00000-s0.parquet",
                                                       f"{name}/runs/pool/data/00001-t1.parquet"]
    assert ids_in(CuratedDataset(url)) == Counter(["b0", "b1", "b2"])


def test_publishing_to_a_folder_writes_the_same_layout(tmp_path):
    from workers.publish import PublishError, publish

    job = finished_job(tmp_path / "job", "job-a", {"00000-s0": ["x", "y"], "00001-s1": ["z"]})
    result = publish(job, str(tmp_path / "mirror" / "a"))
    assert (result.files, result.job_id) == (2, "job-a")
    assert sorted(p.name for p in (tmp_path / "mirror" / "a").rglob("*")) == \
        ["00000-s0.parquet", "00001-s1.parquet", "data", "manifest.json"]  # no temporary left
    assert ids_in(CuratedDataset(tmp_path / "mirror" / "a")) == Counter(["x", "y", "z"])
    with pytest.raises(PublishError, match="the destination is the job folder itself or inside it"):
        publish(job, str(job / "copy"))
