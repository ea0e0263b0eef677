"""``curate export``: a finished job's output as token shards for training (``curate.token_files``).

One token shard per output shard, documents in the output's order, each followed by the
end-of-text token. ``tokens.json`` is written last: the tokenizer (name, sha256, vocabulary,
end-of-text), the dtype, and per shard its files with sha256, documents and tokens. Row
groups are read ahead, and parts are encoded (on all cores) while the previous is written.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curate.loader import CuratedDataset, read_ahead
from curate.token_files import TokenShardWriter, token_dtype
from filters.lm.token_encoder import Encoder
from workers import atomic

MANIFEST = "tokens.json"
ENCODE_ROWS = 2048  # documents per encode_batch call
EXPORT_FILES = (MANIFEST, ".npy", ".docs.parquet", ".bin", ".idx", ".tmp")


class ExportError(ValueError):
    pass


def export_tokens(data: CuratedDataset, out: Path, encoder: Encoder, fmt: str, *, overwrite: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write ``data``'s rows as ``fmt`` token shards into the folder ``out``; returns the
    token manifest. ``progress(rows_done, rows_total)`` is called after each batch."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        foreign = [p.name for p in out.iterdir() if not p.is_file() or not p.name.endswith(EXPORT_FILES)]
        if foreign:  # --overwrite replaces an export, never a folder that holds anything else
            raise ExportError(f"{out} holds files an export does not write ({', '.join(sorted(foreign)[:3])}); "
                              "--overwrite only replaces an earlier export")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(fmt, encoder.vocab_size)
    columns = [data.id_column, data.text_column]
    started, done = time.perf_counter(), 0
    shards = []
    for i, facts in enumerate(data.manifest["files"]):
        blocks = [b for b in data.blocks if b.file == i]
        if not blocks:
            continue
        writer = TokenShardWriter(out, Path(facts["path"]).stem, fmt, dtype)
        try:
            # Blocks are read in one thread and parts encoded in another (tokenizers releases
            # the GIL and uses every core) while this thread writes the previous part.
            tables = read_ahead(data.read_block(block, columns) for block in blocks)
            parts = (t.slice(at, ENCODE_ROWS) for t in tables for at in range(0, t.num_rows, ENCODE_ROWS))
            for part, docs in read_ahead((p, encoder.encode_documents(p.column(data.text_column).to_pylist()))
                                         for p in parts):
                writer.write(part.column(data.id_column).to_pylist(), docs)
                done += part.num_rows
                if progress:
                    progress(done, data.num_rows)
            files = writer.close()
        except BaseException:
            writer.abort()
            raise
        shards.append({"source": facts["path"], "documents": len(writer.ids), "tokens": writer.tokens,
                       "files": {p.name: {"bytes": p.stat().st_size, "sha256": atomic.sha256_file(p)}
                                 for p in files}})
    seconds = time.perf_counter() - started
    tokens = sum(s["tokens"] for s in shards)
    manifest = {"format": fmt, "dtype": dtype.name, "tokenizer": encoder.describe(),
                "source": {"job_id": data.manifest.get("job_id"), "name": data.manifest.get("name"),
                           "spec_hash": data.manifest.get("spec_hash"), "synthetic": data.synthetic},
                "documents": sum(s["documents"] for s in shards), "tokens": tokens, "shards": shards,
                "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds) if seconds else None}
    atomic.write_json(manifest, out / MANIFEST)
    return manifest

