"""The CLI as a user runs it: real subprocesses, real Ray, real catalog file."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import version

import pyarrow.parquet as pq
import pytest
from conftest import GOOD, WEB_POOL, needs_shared, start_cli, write_shard
from conftest import run_cli as curate

from service.cli import build_parser, main

needs_ray = pytest.mark.usefixtures("ray_cluster")


@needs_ray
def test_demo_runs_end_to_end_and_why_explains_its_examples(tmp_path):
    res = curate("demo", "--out", str(tmp_path / "demo"), "--max-docs", "400", "--no-progress")
    out = res.stdout
    assert re.search(r"demo corpus: \d+ docs", out)
    for stage in ("input_v1", "exact_dedup_v1", "decontam_v1", "minhash_dedup_v1", "c4_lines_v1", "quality_rules_v1",
                  "concept_prune_v1", "perplexity_v1", "preselect_v1"):
        assert re.search(rf"^{stage}\s+\d+\s+\d+\s+\d+", out, re.M), out
    assert "perplexity.bucket_tail=" in out  # the 10% least English-like of what the rules kept
    assert "concept.pruned_prototypical=" in out
    assert re.search(r"^c4_lines_v1 .*c4_lines\.too_few_sentences=\d+.*\(edited \d+\)$", out, re.M), out
    assert "input.null_text=3" in out and "exact_dedup.duplicate=" in out
    assert re.search(r"^decontam_v1 .*decontam\.eval_overlap=\d+", out, re.M), out  # the held-out docstrings
    report = re.search(r"curate contamination (\S+)\)", out)
    assert report and re.search(r"held_out_docs\s+12\s+0\s+\d+", curate("contamination", report[1]).stdout)
    manifest = json.loads((tmp_path / "demo" / "run" / "manifest.json").read_text())
    assert manifest["output"]["rows"] > 0
    examples = re.findall(r"curate why (\S+) '([^']+)'", out)
    assert len(examples) == 2
    (job, dropped), (_, kept) = examples
    why_drop = curate("why", job, dropped).stdout
    assert re.search(r"DROPPED at quality_rules_v1: quality_rules\.\w+", why_drop), why_drop
    assert "[0] input_v1" in why_drop and "word_count=" in why_drop
    why_keep = curate("why", job, kept, "--json").stdout
    answer = json.loads(why_keep)
    assert answer["outcome"] == "kept" and [s["stage"] for s in answer["stages"]] == [
        "input_v1", "exact_dedup_v1", "decontam_v1", "minhash_dedup_v1", "c4_lines_v1", "quality_rules_v1",
        "concept_prune_v1", "perplexity_v1", "preselect_v1"]
    concept = answer["stages"][-3]["scores"]
    assert concept["quota"] >= 1 and 0 <= concept["distance"] <= 2 and "cluster" in concept
    assert answer["stages"][-2]["scores"]["bits_per_byte"] > 0
    assert 0 <= answer["stages"][-1]["scores"]["preselect_score"] <= 1
    jobs = curate("jobs").stdout
    assert job in jobs and "succeeded" in jobs


@needs_ray
def test_run_prints_funnel_and_registers_job(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [GOOD, GOOD, "tiny"], ids=["a", "b", "c"])
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: cli\ninputs: ['{tmp_path}/in/*.parquet']\noutput: {tmp_path}/out\n"
                    "stages:\n  - stage: exact_dedup_v1\n  - stage: quality_rules_v1\n")
    res = curate("run", str(spec), "--no-progress")
    assert re.search(r"job cli-\w+: 1 of 3 docs kept in 1 shards", res.stdout)
    why = curate("why", "cli", "b").stdout
    assert "DROPPED at exact_dedup_v1: exact_dedup.duplicate" in why and "survivor=a" in why
    # Rerunning a finished job is a no-op that reports the same result.
    assert "1 of 3 docs kept" in curate("run", str(spec), "--no-progress").stdout
    # An unknown document: the message on stderr, exit 1; --json still answers on stdout.
    res = curate("why", "cli", "nope", check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert "error: document 'nope' never reached any stage of job cli-" in res.stderr
    res = curate("why", "cli", "nope", "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["outcome"] == "unknown"
    # export-scores resolves the job through the catalog, by name, like `curate why`.
    out = tmp_path / "scores.parquet"
    res = curate("export-scores", "cli", "--stage", "quality_rules_v1", "--out", str(out))
    assert f"wrote 2 rows (8 scores, wide) of 02-quality_rules_v1 to {out}" in res.stdout
    rows = {r["doc_id"]: r for r in pq.read_table(out).to_pylist()}
    assert rows["a"]["score_word_count"] == 72 and rows["c"]["reason"] == "quality_rules.too_few_words"
    res = curate("export-scores", str(tmp_path / "out"), "--stage", "1", "--format", "struct", "--out", str(out))
    assert "wrote 3 rows (1 scores, struct) of 01-exact_dedup_v1" in res.stdout
    assert pq.read_table(out).to_pylist()[1]["scores"] == {"group_size": 2.0}
    res = curate("export-scores", "cli", "--stage", "minhash_dedup_v1", check=False)
    assert res.returncode == 1 and "error: job has no stage 'minhash_dedup_v1'" in res.stderr
    # preview-selection re-decides a stage from its stored scores, by job name, nothing rescored.
    res = curate("preview-selection", "cli", "quality_rules_v1", "--set", "min_words=1")
    assert "02-quality_rules_v1: 2 docs; changed min_words" in res.stdout, res.stdout
    assert re.search(r"before\s+kept\s+1\s+dropped\s+1\s+quality_rules.too_few_words=1", res.stdout)
    # "tiny" now passes the word count and fails the next rule: the reason changes, not the decision.
    assert re.search(r"after\s+kept\s+1\s+dropped\s+1\s+quality_rules.few_stop_words=1", res.stdout)
    assert "newly kept 0, newly dropped 0" in res.stdout
    res = curate("preview-selection", "cli", "quality_rules_v1", "--set", "min_words=many", check=False)
    assert res.returncode == 2 and "error: min_words:" in res.stderr


def test_invalid_spec_exits_2_naming_the_field(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\ninputs: [a.parquet]\noutput: out\nstages:\n"
                    "  - stage: quality_rules_v1\n    params: {min_words: lots}\n")
    res = curate("run", str(spec), check=False)
    assert res.returncode == 2 and res.stdout == ""
    assert "stages.0: params.min_words: Input should be a valid integer" in res.stderr
    res = curate("run", str(tmp_path / "missing.yaml"), check=False)
    assert res.returncode == 2 and "error: cannot read job spec" in res.stderr
    res = curate("run", check=False)  # an argparse usage error
    assert res.returncode == 2 and "usage: curate run" in res.stderr and res.stdout == ""


@needs_ray
def test_a_failed_job_exits_1_like_the_job_entrypoint(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [GOOD], ids=["a"])
    write_shard(tmp_path / "in" / "b.parquet", [GOOD], ids=["a"])  # a duplicate id across shards
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: bad\ninputs: ['{tmp_path}/in/*.parquet']\noutput: {tmp_path}/out\n"
                    "stages:\n  - stage: quality_rules_v1\n")
    res = curate("run", str(spec), "--no-progress", check=False)
    assert res.returncode == 1 and res.stdout == "" and "duplicate" in res.stderr
    assert json.loads((tmp_path / "out" / "error.json").read_text())["code"] == "bad_input"
    entry = subprocess.run([sys.executable, "-m", "workers.job_entrypoint", str(spec), "--no-progress"],
                           capture_output=True, text=True, timeout=600)
    assert entry.returncode == res.returncode == 1
    assert "failed" in curate("jobs").stdout


def test_why_before_any_job_and_for_unknown_job(tmp_path):
    res = curate("why", "no-such-job", "x", check=False)
    assert res.returncode == 1 and "no catalog at" in res.stderr and res.stdout == ""
    from service.catalog import Catalog

    Catalog().close()  # an empty catalog now exists
    res = curate("why", "no-such-job", "x", check=False)
    assert res.returncode == 1 and "no job 'no-such-job' in catalog" in res.stderr and res.stdout == ""
    res = curate("export-scores", "no-such-job", "--stage", "x", check=False)
    assert res.returncode == 1 and "no job 'no-such-job' in catalog" in res.stderr


def test_version():
    res = curate("--version")
    assert res.stdout.strip() == f"curate {version('curate')}"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_and_argument_has_help(capsys):
    commands = list(_commands(build_parser()))
    names = {" ".join(path) for path, _ in commands}
    assert {"run", "ingest", "demo", "why", "schema", "export-scores", "export", "serve", "keys", "keys create", "jobs",
            "catalog rebuild"} <= names
    for path, parser in commands:
        for action in parser._actions:
            assert action.help, f"curate {' '.join(path)}: {action.option_strings or action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                assert all(a.help for a in action._choices_actions), f"curate {' '.join(path)}: a subcommand"
        if not path:
            continue
        assert parser.description, f"curate {' '.join(path)} has no description"
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: curate {' '.join(path)}") and parser.description.split()[0] in out


def test_schema_validates_specs():
    jsonschema = pytest.importorskip("jsonschema")
    from filters.registry import BUILTIN_FIRST_STAGE, STAGES

    schema = json.loads(curate("schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    spec = {"name": "web", "inputs": ["shards/*.parquet"], "output": "runs/web",
            "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1", "params": {"min_words": 50}}],
            "execution": {"num_workers": 2}}
    validator.validate(spec)
    bad = json.loads(json.dumps(spec))
    bad["stages"][1]["params"]["min_wordz"] = 50
    assert not validator.is_valid(bad)
    bad["stages"][1]["params"] = {"min_words": "lots"}
    assert not validator.is_valid(bad)
    offered = {s["properties"]["stage"]["const"] for s in schema["$defs"]["StageSpec"]["oneOf"]}
    assert set(STAGES) - {BUILTIN_FIRST_STAGE} <= offered and BUILTIN_FIRST_STAGE not in offered


def test_ingest_cli_reports_shards(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    res = curate("ingest", str(src), "--out", str(tmp_path / "shards"), "--shard-rows", "2")
    assert "wrote 5 docs in 3 shards" in res.stdout and "ids derived" in res.stdout


@needs_shared(WEB_POOL)
def test_ingest_cli_on_parquet_with_contents_column(tmp_path):
    src = WEB_POOL.parent / "dpk_hap_web50.parquet"
    res = curate("ingest", str(src), "--out", str(tmp_path / "s"), "--text-field", "contents",
                 "--id-field", "doc_id")
    assert "wrote 50 docs in 1 shards" in res.stdout


WORDS = GOOD.lower().replace(",", "").replace(".", "").split()


def _sha256s(folder) -> list[tuple[str, str]]:
    return [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted((folder / "data").glob("*.parquet"))]


@needs_ray
def test_ctrl_c_exits_130_and_the_same_command_resumes(tmp_path):
    rng = random.Random(7)
    for s in range(10):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400))) + "." for _ in range(2500)]
        write_shard(tmp_path / "in" / f"s{s:02d}.parquet", texts, ids=[f"s{s}-{i}" for i in range(len(texts))])

    def spec(name):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({
            "name": name, "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / name),
            "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}], "execution": {"num_workers": 1}}))
        return path

    # the first unit done of the first pass: most of the job (the fit, the second pass, the writes) is still ahead
    out, step = tmp_path / "killed", "01-exact_dedup_v1.score"
    proc = start_cli("run", str(spec("killed")), "--no-progress")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((out / "_done" / step).glob("*.json")):
        time.sleep(0.01)
    assert proc.poll() is None, f"job ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.strip().splitlines()[-1] == (f"interrupted: the job in {out} is resumable: run the same command "
                                               "again"), stderr
    assert not (out / "manifest.json").exists() and not (out / "error.json").exists()
    assert len(list((out / "_done" / "write").glob("*.json"))) < 10, "the interrupt did not land mid-run"
    curate("run", str(spec("killed")), "--no-progress")
    curate("run", str(spec("clean")), "--no-progress")
    assert _sha256s(out) == _sha256s(tmp_path / "clean") and len(_sha256s(out)) == 10
    manifest, clean = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("killed", "clean"))
    assert [f["sha256"] for f in manifest["files"]] == [f["sha256"] for f in clean["files"]]
    assert manifest["funnel"] == clean["funnel"]
