"""c4_lines_v1 on the web pool: lines removed per reason, documents dropped per reason, and
agreement with datatrove's C4QualityFilter (the peer) on the same documents, with both
timed in the same run.

    bash ../shared/peers/setup.sh                 # once: builds /tmp/peers/venv-datatrove
    python bench/bench_c4_lines.py [--data ../shared/data] [--peers /tmp/peers]

Ours runs through the public in-process runner (one process, lineage files included);
datatrove's filter runs in its own venv on the same documents. Two settings: C4's
defaults (sentences counted: ours with NLTK Punkt, datatrove 0.10.1 with spaCy's
sentencizer), and the line rules alone (sentence minimum off), which isolates the
line-level logic from the sentence splitter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.c4_lines import LINE_REASONS, C4LinesV1  # noqa: E402
from workers.local import run_stage  # noqa: E402

PEER = r'''
import json, sys, time
import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline.filters.c4_filters import C4QualityFilter
path, min_sentences, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = pq.read_table(path, columns=["id", "text"]).to_pylist()
f = C4QualityFilter(min_num_sentences=min_sentences)
start = time.perf_counter()
result = {}
for r in t:
    doc = Document(text=r["text"], id=r["id"])
    verdict = f.filter(doc)
    keep = verdict is True or (isinstance(verdict, tuple) and verdict[0])
    result[r["id"]] = {"keep": bool(keep), "text": doc.text if keep else None,
                       "reason": None if keep else (verdict[1] if isinstance(verdict, tuple) else "filtered")}
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "docs": result}, open(out, "w"))
'''


def run_peer(python: Path, shard: Path, min_sentences: int, tmp: Path) -> dict:
    script, out = tmp / "peer.py", tmp / f"peer-{min_sentences}.json"
    script.write_text(PEER)
    proc = subprocess.run([str(python), str(script), str(shard), str(min_sentences), str(out)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"datatrove run failed:\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    args = ap.parse_args()
    pool = args.data / "web" / "combined_web_pool.parquet"
    if not pool.exists():
        raise SystemExit(f"{pool} is absent (see ../shared/data/README.md)")
    table = pq.read_table(pool, columns=["id", "text"])
    table = table.filter([bool(t and t.strip()) for t in table["text"].to_pylist()])  # as input_v1 leaves them
    peer_python = args.peers / "venv-datatrove" / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "pool.parquet"
        pq.write_table(table, shard)
        for label, min_sentences in (("C4 defaults (5 sentences)", 5), ("line rules only (no sentence minimum)", 0)):
            start = time.perf_counter()
            run = run_stage(C4LinesV1({"min_sentences": min_sentences}), table)
            ours_s = time.perf_counter() - start
            rows = run.decisions("c4_lines_v1")
            text = dict(zip(run.output["id"].to_pylist(), run.output["text"].to_pylist(), strict=True))
            print(f"\n## {label}: {len(rows)} documents\n")
            lines = Counter()
            for r in rows:
                for k in ("lines", "kept_lines", *LINE_REASONS):
                    lines[k] += r["scores"].get(k if k in ("lines", "kept_lines") else f"removed_{k}", 0)
            print("| lines | count | share of lines |\n|---|---:|---:|")
            for k in ("lines", "kept_lines", *LINE_REASONS):
                name = k if k in ("lines", "kept_lines") else f"removed: {k}"
                print(f"| {name} | {int(lines[k]):,} | {lines[k] / max(1, lines['lines']):.1%} |")
            reasons = Counter(r["reason"] for r in rows if r["decision"] == "drop")
            edited = sum(r["change"] == "edited" for r in rows)
            print(f"\ndocuments: kept {len(text)} (edited {edited}, unchanged {len(text) - edited}), dropped "
                  + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
            if not peer_python.exists():
                print(f"\n(datatrove comparison skipped: {peer_python} absent; run ../shared/peers/setup.sh)")
                continue
            peer = run_peer(peer_python, shard, min_sentences if min_sentences else -1, Path(tmp))
            docs = peer["docs"]
            ids = [r["doc_id"] for r in rows]
            same_keep = sum((i in text) == docs[i]["keep"] for i in ids)
            both = [i for i in ids if i in text and docs[i]["keep"]]
            same_text = sum(text[i] == docs[i]["text"] for i in both)
            print(f"\nvs datatrove C4QualityFilter: same keep/drop on {same_keep}/{len(ids)} "
                  f"({same_keep / len(ids):.1%}); identical text on {same_text}/{len(both)} kept by both")
            print(f"time: ours {ours_s:.2f} s ({len(ids) / ours_s:,.0f} docs/s, in-process runner with lineage), "
                  f"datatrove {peer['seconds']:.2f} s ({len(ids) / peer['seconds']:,.0f} docs/s, filter loop only)")


if __name__ == "__main__":
    main()
