"""Incremental near-dedup against a persistent MinHash index (``curate index add|show``,
``minhash_dedup_v1`` ``against:``), on local jobs (``workers.local.run_stages``, no Ray)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import run_cli, start_cli, write_shard

from filters.minhash_index import current_version
from service.cli import _print_stages
from workers.atomic import sha256_file
from workers.dedup_index import add_job, clean, versions
from workers.job import JobError, run_job
from workers.local import run_stages
from workers.spec import parse_spec

_rng = random.Random(21)
VOCAB = ["".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)) for _ in range(5000)]


def _near(text: str, rng: random.Random) -> str:
    """One word replaced: 5 of ~150 5-grams differ, J ≈ 0.94."""
    words = text.split()
    words[rng.randrange(20, len(words) - 20)] = "zz" + "".join(rng.choice("qxj") for _ in range(8))
    return " ".join(words)


def corpus() -> tuple[dict[str, str], dict[str, str]]:
    """The old 90 % (ids a…, all lower than the new ids b…) and the new 10 %. No chains:
    every planted copy is one edit away from its original, originals are random text."""
    rng = random.Random(5)
    old = {f"a{i:03d}": " ".join(rng.choice(VOCAB) for _ in range(150)) for i in range(180)}
    for i in range(10):  # within the old part: a170..a179 copy a000..a009 (job A removes them)
        old[f"a{170 + i:03d}"] = _near(old[f"a{i:03d}"], rng)
    new = {f"b{i:03d}": " ".join(rng.choice(VOCAB) for _ in range(150)) for i in range(20)}
    for i in range(5):  # across the split: b000..b004 copy a020..a024
        new[f"b{i:03d}"] = _near(old[f"a{20 + i:03d}"], rng)
    new["b005"] = old["a170"]  # a copy of a document A removed: its match is A's survivor a000
    new["b007"] = _near(new["b006"], rng)  # within the new part
    new["b008"] = _near(old["a030"], rng)  # new ~ new ~ old: both indexed duplicates
    new["b009"] = _near(new["b008"], rng)
    return old, new


def table(docs: dict[str, str]) -> pa.Table:
    return pa.table({"id": list(docs), "text": list(docs.values())})


def run(docs: dict[str, str], where: Path, job_id: str, **params):
    return run_stages([("minhash_dedup_v1", params)], table(docs), workdir=where, job_id=job_id, unit_rows=64)


def removed(run_) -> dict[str, tuple[str, str]]:
    return {r["doc_id"]: (r["reason"], r["survivor_id"]) for r in run_.decisions("minhash_dedup_v1")
            if r["decision"] == "drop"}


def test_dedup_against_an_index_removes_what_one_job_over_everything_removes(tmp_path):
    old, new = corpus()
    a = run(old, tmp_path / "A", "jobA")
    assert removed(a) == {f"a{170 + i:03d}": ("minhash.duplicate", f"a{i:03d}") for i in range(10)}
    out = run_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / "A" / "job")).stdout
    assert "added 170 documents of job jobA" in out and "v000001" in out
    index = current_version(tmp_path / "idx")
    assert index is not None and index.rows == 170 and [j["job_id"] for j in index.info["jobs"]] == ["jobA"]

    b = run(new, tmp_path / "B", "jobB", against=str(tmp_path / "idx"))
    expected = {f"b{i:03d}": ("minhash.indexed_duplicate", f"a{20 + i:03d}") for i in range(5)}
    expected |= {"b005": ("minhash.indexed_duplicate", "a000"),  # only A's survivors are in the index
                 "b007": ("minhash.duplicate", "b006"),
                 "b008": ("minhash.indexed_duplicate", "a030"), "b009": ("minhash.indexed_duplicate", "a030")}
    assert removed(b) == expected
    rows = b.by_id("minhash_dedup_v1")
    assert rows["b000"]["cluster_id"] == "jobA:a020" and rows["b000"]["scores"]["survivor_jaccard"] >= 0.8
    assert b.funnel[-1]["reasons"] == {"minhash.indexed_duplicate": 8, "minhash.duplicate": 1}
    against = json.loads((tmp_path / "B" / "job" / "stages" / "01-minhash_dedup_v1" / "artifacts" /
                          "against.json").read_text())
    assert against["version"] == "v000001" and against["jobs"] == ["jobA"]

    # The exact property: with survivor=min_id and the old part holding the lower ids, and no
    # chain through a document (every copy is within the threshold of its original), the new
    # job removes exactly the new documents one job over 100 % removes, and the two outputs
    # together are that job's output. (Survivors may differ: b009's is a030 in both.)
    full = run({**old, **new}, tmp_path / "full", "full")
    assert {k: v for k, v in removed(full).items() if k.startswith("b")} == {
        k: ("minhash.duplicate", s) for k, (_, s) in expected.items()}
    assert set(a.output["id"].to_pylist()) | set(b.output["id"].to_pylist()) == set(full.output["id"].to_pylist())


def test_a_bucketed_fit_against_an_index_removes_the_same(tmp_path):
    old, new = corpus()
    run(old, tmp_path / "A", "jobA")
    run_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / "A" / "job"))
    single = run(new, tmp_path / "B1", "jobB", against=str(tmp_path / "idx"))
    bucketed = run_stages([("minhash_dedup_v1", {"against": str(tmp_path / "idx")})], table(new),
                          workdir=tmp_path / "B3", job_id="jobB", unit_rows=64, fit_buckets=3)
    assert len(removed(single)) == 9 and removed(bucketed) == removed(single)
    assert bucketed.fits["minhash_dedup_v1"].equals(single.fits["minhash_dedup_v1"])


def exact_removed(run_) -> dict[str, tuple[str, str, str]]:
    return {r["doc_id"]: (r["reason"], r["survivor_id"], r["cluster_id"]) for r in run_.decisions("exact_dedup_v1")
            if r["decision"] == "drop"}


def test_exact_dedup_against_the_index_removes_copies_of_curated_documents(tmp_path):
    old, new = corpus()
    old["a900"] = "Thanks!"  # too short for MinHash: only the exact hashes know it
    new |= {"b100": "thanks!  ", "b101": old["a050"], "b102": old["a050"].upper()}
    stages = [("exact_dedup_v1", {}), ("minhash_dedup_v1", {})]
    a = run_stages(stages, table(old), workdir=tmp_path / "A", job_id="jobA", unit_rows=64)
    run_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / "A" / "job"))
    index = current_version(tmp_path / "idx")
    assert index is not None and index.info["hash_rows"] == a.output.num_rows == 171 and index.rows == 170
    assert index.info["exact_params"] == {"unicode_form": "NFC", "lowercase": True, "collapse_whitespace": True}
    shown = run_cli("index", "show", str(tmp_path / "idx")).stdout
    assert "exact-dedup hashes: 171 documents, params: unicode_form=NFC" in shown

    against = [("exact_dedup_v1", {"against": str(tmp_path / "idx")}),
               ("minhash_dedup_v1", {"against": str(tmp_path / "idx")})]
    b = run_stages(against, table(new), workdir=tmp_path / "B", job_id="jobB", unit_rows=8)
    expected = {"b100": ("exact_dedup.indexed_duplicate", "a900", "jobA:a900"),
                "b101": ("exact_dedup.indexed_duplicate", "a050", "jobA:a050"),
                "b102": ("exact_dedup.indexed_duplicate", "a050", "jobA:a050")}
    assert exact_removed(b) == expected  # b101 and b102 are a group: its first goes too
    # b005 copies a170, which job A removed (not curated, so not in the index): MinHash
    # finds it near a000, A's survivor.
    assert b.by_id("minhash_dedup_v1")["b005"]["reason"] == "minhash.indexed_duplicate"
    fit = b.fits["exact_dedup_v1"]
    assert sorted(zip(fit["indexed"].to_pylist(), fit["group_size"].to_pylist(), strict=True)) == [
        ("jobA:a050", 2), ("jobA:a900", 1)]
    bucketed = run_stages(against, table(new), workdir=tmp_path / "B3", job_id="jobB", unit_rows=8, fit_buckets=3)
    assert bucketed.fits["exact_dedup_v1"].equals(fit) and exact_removed(bucketed) == expected
    assert bucketed.output.equals(b.output)

    with pytest.raises(ValueError, match="params.against: exact_dedup_v1 param 'lowercase' is False, the index was "
                                         "built with lowercase=True"):
        run_stages([("exact_dedup_v1", {"against": str(tmp_path / "idx"), "lowercase": False})], table(new),
                   workdir=tmp_path / "C")
    different = run_stages([("exact_dedup_v1", {"unicode_form": "NFKC"}), ("minhash_dedup_v1", {})], table(new),
                           workdir=tmp_path / "D", job_id="jobD")
    refused = run_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / "D" / "job"), check=False)
    assert refused.returncode == 1 and "exact_dedup_v1 param 'unicode_form' is 'NFKC'" in refused.stderr
    assert different.funnel[-1]["docs_out"] > 0
    # An index of exact-dedup hashes only: a job that ran exact_dedup_v1 alone keeps a170, so
    # b005 (its copy) is an indexed duplicate here; MinHash has nothing to compare against.
    run_stages([("exact_dedup_v1", {})], table(old), workdir=tmp_path / "X", job_id="jobX")
    added = run_cli("index", "add", str(tmp_path / "idx-x"), str(tmp_path / "X" / "job")).stdout
    assert "added job jobX" in added and "(181 exact-dedup text hashes)" in added
    x = run_stages([("exact_dedup_v1", {"against": str(tmp_path / "idx-x")})], table(new), workdir=tmp_path / "X2")
    assert exact_removed(x) == {k: (r, s, c.replace("jobA", "jobX")) for k, (r, s, c) in expected.items()} | {
        "b005": ("exact_dedup.indexed_duplicate", "a170", "jobX:a170")}
    with pytest.raises(ValueError, match="holds no MinHash survivors: none of its jobs ran minhash_dedup_v1"):
        run(new, tmp_path / "X3", "jobX3", against=str(tmp_path / "idx-x"))
    shown = run_cli("index", "show", str(tmp_path / "idx-x")).stdout
    assert "params: none (no job of it ran minhash_dedup_v1)" in shown and "181 hashes" in shown
    run(old, tmp_path / "M", "jobM")  # MinHash only: an index without hashes
    run_cli("index", "add", str(tmp_path / "idx-mh"), str(tmp_path / "M" / "job"))
    with pytest.raises(ValueError, match="holds no exact-dedup hashes"):
        run_stages([("exact_dedup_v1", {"against": str(tmp_path / "idx-mh")})], table(new), workdir=tmp_path / "E")


def test_a_changed_or_missing_index_part_is_refused_by_the_job(tmp_path):
    old, new = corpus()
    run(old, tmp_path / "A", "jobA")
    run_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / "A" / "job"))
    part = current_version(tmp_path / "idx").parts[0]
    original = part.read_bytes()
    part.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped
    with pytest.raises(ValueError, match=rf"params.against: index part {re.escape(str(part))} does not match the "
                                         r"sha256 in v000001/index.json"):
        run(new, tmp_path / "B", "jobB", against=str(tmp_path / "idx"))
    part.unlink()
    with pytest.raises(ValueError, match=rf"index part {re.escape(str(part))} is missing"):
        run(new, tmp_path / "C", "jobC", against=str(tmp_path / "idx"))


def test_curate_why_line_for_an_indexed_duplicate(capsys):
    row = {"stage_index": 1, "stage": "minhash_dedup_v1", "decision": "drop", "reason": "minhash.indexed_duplicate",
           "change": None, "cluster_id": "jobA:docs:12", "survivor_id": "docs:12", "scores": {"survivor_jaccard": 0.9}}
    _print_stages([row], indent="  ")
    assert "duplicate of docs:12 in job jobA" in capsys.readouterr().out
    _print_stages([row | {"stage": "exact_dedup_v1", "reason": "exact_dedup.indexed_duplicate"}], indent="  ")
    assert "duplicate of docs:12 in job jobA" in capsys.readouterr().out


def test_adding_a_job_twice_and_show(tmp_path):
    old, _ = corpus()
    run(old, tmp_path / "A", "jobA")
    first = add_job(tmp_path / "idx", tmp_path / "A" / "job")
    again = run_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / "A" / "job")).stdout
    assert first.added and "already in" in again and "nothing added" in again
    assert [v["version"] for v in versions(tmp_path / "idx")] == ["v000001"]
    shown = run_cli("index", "show", str(tmp_path / "idx")).stdout
    assert "current v000001, 1 jobs, 170 documents" in shown and "jobA" in shown and "bands=20" in shown
    missing = run_cli("index", "show", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 1 and "not a MinHash index" in missing.stderr


def test_params_that_differ_from_the_index_are_named(tmp_path):
    old, new = corpus()
    run(old, tmp_path / "A", "jobA")
    add_job(tmp_path / "idx", tmp_path / "A" / "job")
    run(new, tmp_path / "C", "jobC", bands=10, rows=12)
    refused = run_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / "C" / "job"), check=False)
    assert refused.returncode == 1 and "param 'bands' is 10" in refused.stderr and "bands=20" in refused.stderr
    with pytest.raises(ValueError, match="params.against: minhash_dedup_v1 param 'ngram' is 4"):
        run(new, tmp_path / "D", "jobD", ngram=4, against=str(tmp_path / "idx"))
    with pytest.raises(ValueError, match="not a MinHash index"):
        run(new, tmp_path / "E", "jobE", against=str(tmp_path))
    # a threshold or survivor rule is no hashing param: deduplicating with another one is fine
    assert removed(run(new, tmp_path / "F", "jobF", threshold=0.9, against=str(tmp_path / "idx")))


def test_an_index_with_jobs_missing_a_part_is_refused_and_old_jobs_get_their_hashes(tmp_path):
    old, new = corpus()
    both = [("exact_dedup_v1", {}), ("minhash_dedup_v1", {})]
    run(old, tmp_path / "A", "jobA")  # MinHash only
    run_stages(both, table(new), workdir=tmp_path / "B", job_id="jobB")
    for job in ("A", "B"):
        add_job(tmp_path / "idx", tmp_path / job / "job")
    shown = run_cli("index", "show", str(tmp_path / "idx")).stdout
    assert re.search(r"jobA +170 rows +no hashes", shown) and re.search(r"jobB +\d+ rows +\d+ hashes", shown)
    with pytest.raises(ValueError, match=r"job\(s\) jobA of the index have no exact_dedup_v1 part"):
        run_stages([("exact_dedup_v1", {"against": str(tmp_path / "idx")})], table(new), workdir=tmp_path / "C")

    # An index written before indexes held hashes: its job gets them by a second add.
    add_job(tmp_path / "old-idx", tmp_path / "B" / "job")
    info_path = tmp_path / "old-idx" / "v000001" / "index.json"
    info = json.loads(info_path.read_text())
    for key in ("exact_params", "hash_parts", "hash_rows"):
        info.pop(key)
    info["jobs"][0].pop("hash_rows")
    info_path.write_text(json.dumps(info))
    again = add_job(tmp_path / "old-idx", tmp_path / "B" / "job")
    live = current_version(tmp_path / "old-idx")
    assert again.added and again.version == "v000002" and live is not None
    assert [j["job_id"] for j in live.info["jobs"]] == ["jobB"] and live.info["jobs"][0]["hash_rows"] > 0
    assert len(live.info["parts"]) == 1 and len(live.info["hash_parts"]) == 1
    assert not add_job(tmp_path / "old-idx", tmp_path / "B" / "job").added


@pytest.mark.usefixtures("ray_cluster")
def test_a_job_refuses_an_index_that_does_not_match_before_it_reads_a_document(tmp_path):
    old, new = corpus()
    run(old, tmp_path / "A", "jobA")
    add_job(tmp_path / "idx", tmp_path / "A" / "job")
    write_shard(tmp_path / "in" / "s0.parquet", list(new.values()), ids=list(new))
    spec = parse_spec({"name": "b", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
                       "stages": [{"stage": "exact_dedup_v1"},
                                  {"stage": "minhash_dedup_v1", "params": {"against": str(tmp_path / "idx"),
                                                                           "ngram": 4}}]})
    with pytest.raises(JobError, match=r"minhash_dedup_v1: params.against: minhash_dedup_v1 param 'ngram' is 4") \
            as err:
        run_job(spec, progress=False)
    assert err.value.code == "invalid_spec" and err.value.where == {"stage": "minhash_dedup_v1"}
    assert not list((tmp_path / "out").rglob("*.parquet"))  # nothing scored: the error came first
    assert json.loads((tmp_path / "out" / "error.json").read_text())["code"] == "invalid_spec"


def test_concurrent_adds_keep_both_jobs(tmp_path):
    old, new = corpus()
    run(old, tmp_path / "A", "jobA")
    run(new, tmp_path / "B", "jobB")
    procs = [start_cli("index", "add", str(tmp_path / "idx"), str(tmp_path / x / "job")) for x in ("A", "B")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    live = versions(tmp_path / "idx")
    assert [v["version"] for v in live] == ["v000002", "v000001"]
    assert sorted(j["job_id"] for j in live[0]["jobs"]) == ["jobA", "jobB"] and live[0]["rows"] == 170 + 18
    for part in live[0]["parts"]:  # hard links of the parent's part are byte-identical
        assert sha256_file(tmp_path / "idx" / "v000002" / part["file"]) == part["sha256"]
    assert not [p for p in (tmp_path / "idx").iterdir() if ".tmp-" in p.name]


def test_a_torn_version_is_ignored_and_cleaned(tmp_path):
    old, new = corpus()
    run(old, tmp_path / "A", "jobA")
    add_job(tmp_path / "idx", tmp_path / "A" / "job")
    idx = tmp_path / "idx"
    (idx / ".v000002.tmp-999-deadbeef").mkdir()  # an add killed while writing
    (idx / ".v000002.tmp-999-deadbeef" / "part-000002.parquet").write_bytes(b"torn")
    (idx / "v000002").mkdir()  # an add killed after its rename, before CURRENT moved
    (idx / "v000002" / "index.json").write_text("{")
    (idx / ".CURRENT.tmp-999-deadbeef").write_text("v000002\n")
    assert current_version(idx).version == "v000001"  # type: ignore[union-attr]
    b = run(new, tmp_path / "B", "jobB", against=str(idx))  # readers follow CURRENT only
    assert len(removed(b)) == 9
    result = add_job(idx, tmp_path / "B" / "job")  # the next add cleans up under the lock
    assert result.added and result.version == "v000002"
    assert sorted(p.name for p in idx.iterdir()) == [".lock", "CURRENT", "v000001", "v000002"]
    assert clean(idx) == [] and current_version(idx).rows == 170 + 11  # type: ignore[union-attr]
