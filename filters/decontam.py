"""``decontam_v1``: remove, cut or flag training text that overlaps evaluation sets.

The rule is GPT-3's (Brown et al. 2020, appendix C) as the lm-evaluation-harness "janitor"
implements it: a training document is contaminated when it shares a word n-gram
(``ngram``, 13) with an item of an evaluation set.

* **Words.** Runs of letters and digits (``[^\\W_]+``), each lowercased. Punctuation,
  symbols and ``_`` separate words. The janitor *deletes* punctuation ("don't" → "dont");
  here it separates ("don", "t"), so pre-tokenised eval sets (WikiText's ``don 't``,
  ``1 @,@ 000``) still match web text ("don't", "1,000"). Deliberate deviation.
* **Index** (fit ``index``, once per job): the n-gram hashes of every item of every set
  (64-bit, ``filters/word_ngrams.py``), as a sorted array (``index: exact``) or a Bloom
  filter (``index: bloom``, false-positive rate ``bloom_error_rate``, stated in
  ``index.json``) for eval sets too large to ship to every worker as an array.
* **Match** (per document): every n-gram position of the document is looked up in the
  index; the positions and hashes that hit are stored.
* **Report** (fit ``report``): the eval sets are read once more and every hit is
  attributed to the items holding it. A Bloom false positive belongs to no item and is
  discarded here, so it never costs a document. With ``max_ngram_docs``, an n-gram found
  in more training documents than that is ignored (a common phrase, not a leak). The
  report (``report.json``): per eval set and per item found, the training documents
  holding it and the best share of the item's n-grams found in one document.
* **Decision** (transform), for documents with at least ``min_ngrams`` distinct matched
  n-grams: ``drop`` (``decontam.eval_overlap``); ``flag`` (kept, marked ``contaminated``
  in lineage); or ``cut``, GPT-3's treatment: each matched n-gram is removed with
  ``cut_window`` characters either side, the rest splits into pieces, pieces of at most
  ``min_piece_chars`` characters are discarded, and a document left with more than
  ``max_pieces`` pieces (``decontam.too_many_pieces``) or none
  (``decontam.nothing_left``) is dropped; the kept pieces are joined by a blank line and
  the removed character spans are recorded in lineage. Defaults are OpenAI's (13, 200,
  200, 10). The janitor counts matched n-grams where the paper counts pieces; pieces here.

Items with fewer than ``ngram`` words cannot match and are counted in the report
(``too_short_items``); a set none of whose items can match is an error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from filters import bloom
from filters.base import (
    DROP,
    EDIT,
    ID,
    KEEP,
    ORDER,
    TEXT,
    Fitted,
    Phase,
    ScoreView,
    StageParams,
    Transformed,
    TransformStage,
    scores_view,
)
from filters.contamination import word_runs, word_spans
from filters.eval_sets import EvalSet, read_items
from filters.word_ngrams import ngrams_at

INDEX_FILE, BLOOM_NAME, INDEX_FACTS, REPORT_FILE = "ngrams.npy", "bloom", "index.json", "report.json"
BATCH = 4096


class DecontamParams(StageParams):
    eval_sets: tuple[EvalSet, ...] = Field(min_length=1, description="the evaluation sets to check against")
    ngram: int = Field(13, ge=1, le=64, description="words per n-gram")
    index: Literal["exact", "bloom"] = "exact"
    bloom_error_rate: float = Field(1e-6, gt=0, lt=0.5, description="false-positive rate of the Bloom index")
    max_ngram_docs: int | None = Field(None, ge=1, description="ignore an eval n-gram found in more training "
                                                               "documents than this (a common phrase)")
    action: Literal["drop", "cut", "flag"] = "drop"
    min_ngrams: int = Field(1, ge=1, description="distinct eval n-grams a contaminated document holds")
    cut_window: int = Field(200, ge=0, description="cut: characters removed either side of a matched n-gram")
    min_piece_chars: int = Field(200, ge=0, description="cut: a remaining piece this short or shorter is discarded")
    max_pieces: int = Field(10, ge=1, description="cut: a document left in more pieces is dropped")

    @model_validator(mode="after")
    def _names(self) -> DecontamParams:
        names = [s.name for s in self.eval_sets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"eval_sets: the name {twice[0]!r} is used twice")
        return self


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _item_ngrams(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct n-gram hashes of each text: (hash, text index) pairs, and words per text."""
    h, doc, _, counts = ngrams_at([word_runs(t) for t in texts], n, lower=True)
    pairs = np.unique(np.stack([doc.astype(np.uint64), h]), axis=1)
    return pairs[1], pairs[0].astype(np.int64), counts


class _Index:
    def __init__(self, folder: Path) -> None:
        facts = json.loads((folder / INDEX_FACTS).read_text())
        self.kind = facts["index"]
        if self.kind == "exact":
            self.keys = np.load(folder / INDEX_FILE)
            # A table of which top-``bits`` prefixes occur (~1/16 full): most n-grams of a
            # clean document miss it, and only the rest pay for a binary search.
            self.bits = int(np.clip(np.ceil(np.log2(max(len(self.keys), 1) * 16)), 16, 26))
            self.prefixes = np.zeros(1 << self.bits, bool)
            self.prefixes[self.keys >> np.uint64(64 - self.bits)] = True
        else:
            self.words, self.shape = bloom.load(folder, BLOOM_NAME)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        if self.kind == "bloom":
            return bloom.contains(self.words, self.shape, hashes)
        found = np.zeros(len(hashes), bool)
        if len(self.keys) == 0 or len(hashes) == 0:
            return found
        maybe = np.flatnonzero(self.prefixes[hashes >> np.uint64(64 - self.bits)])
        at = np.minimum(np.searchsorted(self.keys, hashes[maybe]), len(self.keys) - 1)
        found[maybe] = self.keys[at] == hashes[maybe]
        return found


def _list_column(values: np.ndarray, groups: np.ndarray, n: int, kind: pa.DataType) -> pa.Array:
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(groups, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, kind))


class DecontamV1(TransformStage[DecontamParams]):
    name = "decontam_v1"
    Params = DecontamParams
    phases = (Phase.fit("index"), Phase.score("match"), Phase.fit("report"))
    reasons = ("decontam.eval_overlap", "decontam.too_many_pieces", "decontam.nothing_left")
    score_params = frozenset({"eval_sets", "ngram", "index", "bloom_error_rate"})

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self._index: tuple[Path, int, _Index] | None = None
        self._verdicts: tuple[int, dict[str, dict]] | None = None

    def model_files(self) -> list[str]:
        return [s.path for s in self.params.eval_sets]

    # -- 1: the index of the eval sets ----------------------------------------------------------
    def index(self, view: ScoreView | None, artifacts: Path) -> None:
        p = self.params
        per_set, every = [], []
        for s in p.eval_sets:
            items = too_short = 0
            hashes = []
            for batch in _batches(read_items(s), BATCH):
                h, _, counts = _item_ngrams([text for _, text in batch], p.ngram)
                items += len(batch)
                too_short += int((counts < p.ngram).sum())
                hashes.append(np.unique(h))
            distinct = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)
            if not len(distinct):
                raise ValueError(f"{self.name}: eval set {s.name!r} ({s.path}) has no item of {p.ngram} words or "
                                 f"more ({items} items): nothing could match; lower ngram or check fields")
            per_set.append({"name": s.name, "path": s.path, "items": items, "too_short_items": too_short,
                            "ngrams": len(distinct)})
            every.append(distinct)
        keys = np.unique(np.concatenate(every))
        facts: dict = {"ngram": p.ngram, "index": p.index, "ngrams": len(keys), "eval_sets": per_set}
        if p.index == "exact":
            np.save(artifacts / INDEX_FILE, keys)
        else:
            shape = bloom.BloomShape.for_items(len(keys), p.bloom_error_rate)
            bloom.save(artifacts, BLOOM_NAME, bloom.build(keys, shape), shape)
            facts["bloom"] = {"bits": shape.bits, "probes": shape.probes,
                              "expected_error_rate": shape.expected_error_rate()}
        (artifacts / INDEX_FACTS).write_text(json.dumps(facts, indent=1) + "\n")

    def _loaded_index(self, fitted: Fitted | None) -> _Index:
        if fitted is None or fitted.artifacts is None or not (fitted.artifacts / INDEX_FACTS).exists():
            raise ValueError(f"{self.name}.match needs the index fit's files")
        stamp = (fitted.artifacts / INDEX_FACTS).stat().st_mtime_ns
        if self._index is None or self._index[:2] != (fitted.artifacts, stamp):
            self._index = (fitted.artifacts, stamp, _Index(fitted.artifacts))
        return self._index[2]

    # -- 2: per document ---------------------------------------------------------------------
    def match(self, docs: pa.Table, fitted: Fitted | None = None) -> pa.Table:
        n_docs, n = docs.num_rows, self.params.ngram
        h, doc, start, counts = ngrams_at([word_runs(t or "") for t in docs[TEXT].to_pylist()], n, lower=True)
        hit = self._loaded_index(fitted).contains(h)
        return pa.table({
            "ngrams": pa.array(np.maximum(counts - n + 1, 0), pa.int64()),
            "candidates": pa.array(np.bincount(doc[hit], minlength=n_docs), pa.int64()),
            "hit_hashes": _list_column(h[hit], doc[hit], n_docs, pa.uint64()),
            "hit_starts": _list_column(start[hit], doc[hit], n_docs, pa.int32()),
        })

    # -- 3: attribution and the report ----------------------------------------------------------
    def report(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        p = self.params
        view = scores_view(view, self.name)
        found = view.sql('SELECT id, "order", ngrams, hit_hashes, hit_starts FROM scores WHERE candidates > 0 '
                         'ORDER BY "order"').to_pylist()
        hashes = [np.array(r["hit_hashes"], np.uint64) for r in found]
        wanted = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)
        owner_hash, owner_item, items = self._attribute(wanted)
        confirmed = np.unique(owner_hash)
        per_doc = [np.unique(h[np.isin(h, confirmed)]) for h in hashes]
        frequent = np.empty(0, np.uint64)
        if p.max_ngram_docs is not None and per_doc:
            values, docs_with = np.unique(np.concatenate(per_doc), return_counts=True)
            frequent = values[docs_with > p.max_ngram_docs]
        order = np.argsort(owner_hash, kind="stable")
        owner_hash, owner_item = owner_hash[order], owner_item[order]
        rows: list[dict] = []
        item_docs: Counter[int] = Counter()
        item_best: dict[int, float] = {}
        for r, h, distinct in zip(found, hashes, per_doc, strict=True):
            distinct = distinct[~np.isin(distinct, frequent)]
            if not len(distinct):
                continue
            lo, hi = np.searchsorted(owner_hash, distinct, "left"), np.searchsorted(owner_hash, distinct, "right")
            hit_items = Counter(owner_item[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])]
                                .tolist())
            share = {k: c / items[k]["ngrams"] for k, c in hit_items.items()}
            best = min(share, key=lambda k: (-share[k], k))
            for k, s in share.items():
                item_docs[k] += 1
                item_best[k] = max(item_best.get(k, 0.0), s)
            starts = np.unique(np.array(r["hit_starts"], np.int64)[np.isin(h, distinct)])
            rows.append({ID: r[ID], ORDER: r[ORDER], "matched_ngrams": len(distinct),
                         "doc_overlap": len(starts) / r["ngrams"], "item_overlap": share[best],
                         "eval_set": items[best]["eval_set"], "eval_item": items[best]["item"],
                         "eval_items": len(share), "starts": starts.tolist()})
        self._write_report(artifacts, view.num_rows, rows, items, item_docs, item_best,
                           bloom_false=len(wanted) - len(confirmed), frequent=len(frequent))
        schema = pa.schema([(ID, pa.string()), (ORDER, pa.int64()), ("matched_ngrams", pa.int64()),
                            ("doc_overlap", pa.float64()), ("item_overlap", pa.float64()), ("eval_set", pa.string()),
                            ("eval_item", pa.string()), ("eval_items", pa.int64()), ("starts", pa.list_(pa.int32()))])
        return pa.Table.from_pylist(rows, schema=schema)

    def _attribute(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Reads the eval sets again: which items hold each wanted n-gram. Returns (n-gram,
        item number) pairs and, per item number, its set, id and distinct n-grams."""
        owner_hash, owner_item = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
        items: list[dict] = []
        if not len(wanted):
            return owner_hash[0], owner_item[0], items
        for s in self.params.eval_sets:
            for batch in _batches(read_items(s), BATCH):
                h, doc, _ = _item_ngrams([text for _, text in batch], self.params.ngram)
                sizes = np.bincount(doc, minlength=len(batch))
                keep = np.isin(h, wanted)
                local = {int(d): len(items) + j for j, d in enumerate(np.unique(doc[keep]))}
                for d in local:
                    items.append({"eval_set": s.name, "item": batch[d][0], "ngrams": int(sizes[d])})
                owner_hash.append(h[keep])
                owner_item.append(np.array([local[int(d)] for d in doc[keep]], np.int64))
        return np.concatenate(owner_hash), np.concatenate(owner_item), items

    def _write_report(self, artifacts: Path, checked: int, rows: list[dict], items: list[dict], item_docs: Counter,
                      item_best: dict, bloom_false: int, frequent: int) -> None:
        facts = json.loads((artifacts / INDEX_FACTS).read_text())
        found = sorted(item_docs, key=lambda k: (-item_docs[k], k))
        for s in facts["eval_sets"]:
            s["items_found"] = sum(items[k]["eval_set"] == s["name"] for k in found)
            s["documents"] = sum(r["eval_set"] == s["name"] for r in rows)
        report = {
            "ngram": facts["ngram"], "index": facts["index"], "documents_checked": checked,
            "documents_matched": len(rows), "bloom_false_positive_ngrams": bloom_false,
            "ignored_frequent_ngrams": frequent, "eval_sets": facts["eval_sets"],
            "items": [{**items[k], "documents": item_docs[k], "best_overlap": round(item_best[k], 6)} for k in found],
        }
        tmp = artifacts / f".{REPORT_FILE}.tmp"
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(artifacts / REPORT_FILE)

    # -- 4: the decision ---------------------------------------------------------------------------
    def _verdict_table(self, fitted: Fitted | None) -> dict[str, dict]:
        if fitted is None or fitted.table is None:
            raise ValueError(f"{self.name}.transform needs the result of the report fit")
        if self._verdicts is None or self._verdicts[0] != id(fitted.table):
            self._verdicts = (id(fitted.table), {r[ID]: r for r in fitted.table.to_pylist()})
        return self._verdicts[1]

    def transform(self, docs: pa.Table, fitted: Fitted | None) -> Transformed:
        p = self.params
        verdicts = self._verdict_table(fitted)
        action: list[str] = []
        text: list[str | None] = []
        reason: list[str | None] = []
        detail: list[dict | None] = []
        scores: dict[str, list] = {k: [] for k in ("contaminated", "matched_ngrams", "doc_overlap", "item_overlap",
                                                   "eval_items", "removed_chars", "pieces")}
        for doc_id, original in zip(docs[ID].to_pylist(), docs[TEXT].to_pylist(), strict=True):
            v = verdicts.get(doc_id)
            hit = v is not None and v["matched_ngrams"] >= p.min_ngrams
            for k in ("matched_ngrams", "doc_overlap", "item_overlap", "eval_items"):
                scores[k].append(v[k] if v is not None else (0 if k == "matched_ngrams" else None))
            scores["contaminated"].append(int(hit))
            new, why, removed, pieces = None, None, None, None
            if hit and p.action == "drop":
                why = "decontam.eval_overlap"
            elif hit and p.action == "cut" and v is not None:
                new, why, removed, pieces = self.cut(original or "", v["starts"])
            scores["removed_chars"].append(sum(e - s for s, e in removed) if removed else None)
            scores["pieces"].append(pieces)
            action.append(DROP if why else EDIT if new is not None else KEEP)
            text.append(new if why is None else None)
            reason.append(why)
            detail.append({"eval_set": v["eval_set"], "eval_item": v["eval_item"],
                           **({"removed_spans": removed} if removed else {})} if v is not None else None)
        table = pa.table({k: pa.array(vals, pa.float64() if k.endswith("overlap") else pa.int64())
                          for k, vals in scores.items()})
        return Transformed(action=action, text=text, reason=reason, scores=table, detail=detail)

    def cut(self, text: str, starts: list[int]) -> tuple[str | None, str | None, list[list[int]], int]:
        """GPT-3's span removal: (new text or None, drop reason or None, removed spans, pieces)."""
        p, spans = self.params, word_spans(text)
        merged: list[list[int]] = []
        for j in sorted(starts):
            s = max(0, spans[j][0] - p.cut_window)
            e = min(len(text), spans[j + p.ngram - 1][1] + p.cut_window)
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        bounds = [0, *(x for span in merged for x in span), len(text)]
        pieces = [text[a:b].strip() for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
        pieces = [piece for piece in pieces if len(piece) > p.min_piece_chars]
        if len(pieces) > p.max_pieces:
            return None, "decontam.too_many_pieces", merged, len(pieces)
        if not pieces:
            return None, "decontam.nothing_left", merged, 0
        return "\n\n".join(pieces), None, merged, len(pieces)
