"""Documents created by a transform, end to end as a user reaches them: `curate run`,
`curate why` in both directions, outputs and the funnel (kill -9 and resume:
test_kill_resume.py; the REST routes: test_api.py). The stage is the 1→N test stage
registered through CURATE_STAGES (tests/stages/split_stage.py)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
from conftest import GOOD, write_shard
from conftest import run_cli as curate

from workers.lineage import created_id

pytestmark = pytest.mark.usefixtures("ray_cluster")
SPLIT = "split_paragraphs_test_v1"
WORDS = GOOD.lower().replace(",", "").replace(".", "").split()


def write_spec(tmp_path, name, output, stages, **execution):
    spec = {"name": name, "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(output), "stages": stages,
            "execution": execution}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def test_created_documents_through_run_why_outputs_and_funnel(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet",
                [GOOD, f"{GOOD.replace('city', 'village')}\n\n{GOOD.replace('city', 'town')}\n\nToo short.",
                 "KEEP " + GOOD + "\n\n" + GOOD],
                ids=["solo", "multi", "keeper"], source=["web"] * 3)
    stages = [{"stage": SPLIT}, {"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]
    res = curate("run", str(write_spec(tmp_path, "split", tmp_path / "out", stages)), "--no-progress")
    kids = {k: created_id("multi", SPLIT, f"p{k}") for k in range(3)}
    keeper_kids = {k: created_id("keeper", SPLIT, f"p{k}") for k in range(2)}
    # funnel: the split replaces "multi" with 3 paragraphs and adds 2 beside "keeper"
    assert re.search(rf"^{SPLIT}\s+3\s+2\s+1\s+5\s+split.replaced=1$", res.stdout, re.M), res.stdout
    assert "5 docs out of 3 input docs (5 created by transforms)" in res.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    split_row = manifest["funnel"][1]
    assert (split_row["docs_in"], split_row["created"], split_row["docs_out"]) == (3, 5, 7)
    assert manifest["output"]["created"] == 5
    out = pq.read_table(tmp_path / "out" / manifest["files"][0]["path"]).to_pylist()
    # keeper-p1 equals solo (an exact duplicate: dropped); multi-p2 "Too short." fails the rules
    assert [r["id"] for r in out] == ["solo", kids[0], kids[1], "keeper", keeper_kids[0]]
    assert [r["parent_id"] for r in out] == [None, "multi", "multi", None, "keeper"]
    assert {r["source"] for r in out} == {"web"}

    child = curate("why", "split", kids[2]).stdout
    assert f"{kids[2]} in job split-" in child and "DROPPED at quality_rules_v1: quality_rules.too_few_words" in child
    assert f"created by {SPLIT} from multi" in child
    assert "source multi:" in child and "split.replaced" in child  # the source chain, with why it went
    parent = json.loads(curate("why", "split", "multi", "--json").stdout)
    assert parent["outcome"] == "dropped" and parent["reason"] == "split.replaced"
    assert sorted(c["doc_id"] for c in parent["children"]) == sorted(kids.values())
    assert "created from it:" in curate("why", "split", "multi").stdout
    dup = json.loads(curate("why", "split", keeper_kids[1], "--json").stdout)
    assert dup["reason"] == "exact_dedup.duplicate" and dup["sources"][0]["doc_id"] == "keeper"
