"""The read side of a persistent MinHash index (``minhash_dedup_v1``'s ``against:``).

An index folder holds the curated survivors of finished jobs, as ``curate index add``
(``workers/dedup_index.py``, the only writer) publishes them::

    INDEX_DIR/CURRENT                 the live version's folder name (``v000003``), replaced atomically
    INDEX_DIR/v000003/index.json      version, parent, params, jobs, parts (file, job, rows, sha256);
                                      exact_params, hash_parts, hash_rows when a job added hashes
    INDEX_DIR/v000003/<part>.parquet  one part per added job (hard links to the parent's parts)
    INDEX_DIR/v000003/hashes-*.parquet  one per added job that ran exact_dedup_v1
    INDEX_DIR/.lock                   flock'd by an adder

A part's columns: ``ord`` (row in the part), ``id``, ``job_id``, ``n_shingles``,
``shingles``, ``signature``, ``band_keys``: the stage's stored scores of the documents the
whole job kept (too-short documents are left out: they never match). A hash part
(``hash_parts`` in index.json, for ``exact_dedup_v1``'s ``against:``): ``text_hash``,
``id``, ``job_id`` of every document the whole job kept, short ones too, hashed under the
index's ``exact_params``. A version folder
is complete once it has its name (it is written as ``.v000003.tmp-*`` and renamed), so a
reader that follows CURRENT never sees a torn version.

Pure (json, pathlib, hashlib): a stage's fit reads it; it opens no Parquet file itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from filters.lm.models import file_sha256

CURRENT = "CURRENT"
INDEX_JSON = "index.json"
# The params of minhash_dedup_v1 that make two jobs' band keys and n-gram sets comparable:
# an index and every job added to it or deduplicated against it agree on all of them.
MATCH_PARAMS = ("ngram", "bands", "rows", "seed", "lowercase", "numbers_to_zero", "strip_punctuation",
                "strip_accents")
# The same for exact_dedup_v1's text hashes (its normalisation switches).
EXACT_MATCH_PARAMS = ("unicode_form", "lowercase", "collapse_whitespace")


class MinHashIndexError(ValueError):
    """An index folder that cannot be used (missing, not an index, params that differ)."""


@dataclass(frozen=True)
class IndexVersion:
    root: Path
    version: str
    info: dict

    @property
    def parts(self) -> list[Path]:
        return [self.root / self.version / p["file"] for p in self.info["parts"]]

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.info["parts"])

    @property
    def hash_parts(self) -> list[Path]:
        return [self.root / self.version / p["file"] for p in self.info.get("hash_parts", [])]

    @property
    def entries(self) -> list[dict]:
        """index.json's record (file, sha256, ...) of every part: MinHash rows and hashes."""
        return [*self.info["parts"], *self.info.get("hash_parts", [])]


def version_name(n: int) -> str:
    return f"v{n:06d}"


def current_version(root: str | Path) -> IndexVersion | None:
    """The live version of an index folder; None for an empty (new) index."""
    root = Path(root)
    pointer = root / CURRENT
    if not pointer.exists():
        if root.exists() and not root.is_dir():
            raise MinHashIndexError(f"{root} is not a MinHash index folder")
        return None
    version = pointer.read_text().strip()
    info_path = root / version / INDEX_JSON
    if not info_path.exists():
        raise MinHashIndexError(f"{root}: CURRENT names {version!r}, which has no {INDEX_JSON}")
    return IndexVersion(root, version, json.loads(info_path.read_text()))


def check_against(root: str | Path, params: dict, stage: str) -> IndexVersion:
    """The live version of the index a stage's ``against:`` names, if it exists and was
    hashed with ``params`` (cheap: a job checks this before it reads any document)."""
    index = current_version(root)
    if index is None:
        raise MinHashIndexError(f"params.against: {root} is not a MinHash index (no CURRENT); publish a finished "
                                "job to it with `curate index add` first")
    if stage == "exact_dedup_v1":
        if not index.info.get("hash_parts"):
            raise MinHashIndexError(f"params.against: {root} ({index.version}) holds no exact-dedup hashes: none of "
                                    "its jobs ran exact_dedup_v1; add one that did with `curate index add`")
        check_params(index.info["exact_params"], params, "params.against", stage, EXACT_MATCH_PARAMS)
    else:
        if not index.info.get("params"):
            raise MinHashIndexError(f"params.against: {root} ({index.version}) holds no MinHash survivors: none of "
                                    "its jobs ran minhash_dedup_v1; add one that did with `curate index add`")
        check_params(index.info["params"], params, "params.against")
    # A job that did not run the stage is in the index without its documents: copies of
    # them would pass unnoticed, so such an index is refused rather than half used.
    key = "hash_rows" if stage == "exact_dedup_v1" else "stage_index"
    lacking = [j["job_id"] for j in index.info["jobs"] if key not in j]
    if lacking:
        raise MinHashIndexError(f"params.against: {root} ({index.version}): job(s) {', '.join(lacking)} of the index "
                                f"have no {stage} part, so copies of their documents would not be found; add them "
                                f"again with `curate index add` if they ran {stage}, or use an index without them")
    return index


def open_against(root: str | Path, artifacts: Path, params: dict, stage: str) -> IndexVersion:
    """``check_against``, then every part re-hashed (``verify_parts``); records what the fit
    was made against in ``artifacts/against.json`` (hashed with the job's artifacts: the
    index moves on)."""
    index = check_against(root, params, stage)
    verify_parts(index, "params.against")
    (artifacts / "against.json").write_text(json.dumps(
        {"index": str(root), "version": index.version, "rows": index.rows,
         "jobs": [j["job_id"] for j in index.info["jobs"]],
         "parts": {x["file"]: x["sha256"] for x in index.entries}}, indent=2, sort_keys=True) + "\n")
    return index


def verify_parts(index: IndexVersion, what: str) -> None:
    """MinHashIndexError naming the first part of ``index`` that is missing or whose bytes
    are not the ones ``curate index add`` recorded (sha256): a job never
    deduplicates against an index changed or damaged behind the adder's back."""
    for part in index.entries:
        path = index.root / index.version / part["file"]
        if not path.is_file():
            raise MinHashIndexError(f"{what}: index part {path} is missing (listed in {index.version}/{INDEX_JSON})")
        if file_sha256(path) != part["sha256"]:
            raise MinHashIndexError(f"{what}: index part {path} does not match the sha256 in {index.version}/"
                                    f"{INDEX_JSON}: it changed after `curate index add`; restore it or rebuild "
                                    "the index")


def check_params(index_params: dict, params: dict, what: str, stage: str = "minhash_dedup_v1",
                 names: tuple[str, ...] = MATCH_PARAMS) -> None:
    """ValueError naming the first param of ``names`` on which ``params`` (a stage's or a
    job's) differ from the index's."""
    for name in names:
        if index_params.get(name) != params.get(name):
            raise MinHashIndexError(
                f"{what}: {stage} param {name!r} is {params.get(name)!r}, the index was built with "
                f"{name}={index_params.get(name)!r}; every job of an index must hash alike ({', '.join(names)})")
