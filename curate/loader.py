"""Read a curated job's output shards into training: verified against the manifest, split
across ranks and dataloader workers so every row is read exactly once per epoch, shuffled
deterministically by seed and epoch, and resumable mid-epoch. Needs only pyarrow (and
numpy); ``torch_dataset`` wraps it for a PyTorch ``DataLoader``.

    data = CuratedDataset("runs/web-pool-v1")                 # a job's output folder
    for batch in data.iter_batches(batch_size=1024, rank=r, world_size=w, seed=0, epoch=e):
        texts = batch.column("text").to_pylist()

How a row is assigned: the output files are cut into blocks (Parquet row groups), the
blocks are permuted by (seed, epoch), and the permuted row stream is split into
``world_size × num_workers`` contiguous, near-equal slices, one per reader. Inside its
slice a reader shuffles rows through a seeded buffer. The order depends only on the
manifest, the seed and the epoch, so a reader that skips the rows it already yielded
(``state_dict`` / ``load_state_dict``) continues exactly where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from filters.lm.models import file_sha256


class ManifestError(ValueError):
    """A shard that does not match the job's manifest (missing, wrong rows or sha256), or a
    folder that is not a finished job; the message names the shard."""


@dataclass(frozen=True)
class Block:
    file: int  # index into the dataset's files
    group: int  # Parquet row group
    rows: int


class CuratedDataset:
    """The output of one finished job (its folder with ``manifest.json``)."""

    def __init__(self, job_folder: str | Path, *, verify: bool = True) -> None:
        self.root = Path(job_folder)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.exists():
            raise ManifestError(f"{self.root}: no manifest.json (not a finished curate job's output folder)")
        self.manifest = json.loads(manifest_path.read_text())
        self.files = [self.root / f["path"] for f in self.manifest["files"]]
        if verify:
            self.verify()
        self.blocks: list[Block] = []
        for i, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            self.blocks += [Block(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
                            if meta.row_group(g).num_rows]
        self.num_rows = sum(b.rows for b in self.blocks)

    def verify(self) -> None:
        """Every shard exists with the manifest's row count and sha256."""
        for path, facts in zip(self.files, self.manifest["files"], strict=True):
            if not path.exists():
                raise ManifestError(f"{facts['path']}: listed in the manifest but missing from {self.root}")
            digest = file_sha256(path)
            if digest != facts["sha256"]:
                raise ManifestError(f"{facts['path']}: sha256 {digest[:16]}… does not match the manifest's "
                                    f"{facts['sha256'][:16]}… (changed or corrupted since the job wrote it)")
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows != facts["rows"]:
                raise ManifestError(f"{facts['path']}: {rows} rows, the manifest says {facts['rows']}")

    def data_files(self) -> list[str]:
        """The shard paths, for ``datasets.load_dataset("parquet", data_files=...)``."""
        return [str(p) for p in self.files]

    # -- reading ----------------------------------------------------------------------
    def _slice(self, reader: int, readers: int, seed: int, epoch: int, shuffle: bool) -> list[tuple[Block, int, int]]:
        """The (block, start, stop) row ranges of one reader's contiguous share of the
        (permuted) row stream."""
        order = list(range(len(self.blocks)))
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(len(self.blocks)).tolist()
        lo, hi = reader * self.num_rows // readers, (reader + 1) * self.num_rows // readers
        ranges, at = [], 0
        for b in order:
            block = self.blocks[b]
            start, stop = max(lo, at), min(hi, at + block.rows)
            if start < stop:
                ranges.append((block, start - at, stop - at))
            at += block.rows
            if at >= hi:
                break
        return ranges

    def rows_of(self, *, rank: int = 0, world_size: int = 1, worker_id: int = 0, num_workers: int = 1) -> int:
        """How many rows one reader gets per epoch."""
        reader, readers = _reader(rank, world_size, worker_id, num_workers)
        return (reader + 1) * self.num_rows // readers - reader * self.num_rows // readers

    def _stream(self, columns: list[str], reader: int, readers: int, seed: int, epoch: int, shuffle: bool,
                buffer: int) -> Iterator[pa.Table]:
        """The reader's rows in order, as tables: its blocks' slices gathered into buffers of
        at least ``buffer`` rows, each shuffled by the reader's seeded generator."""
        rng = np.random.default_rng([seed, epoch, reader])
        files: dict[int, pq.ParquetFile] = {}
        ranges = self._slice(reader, readers, seed, epoch, shuffle)

        def read(k: int) -> pa.Table:
            block, start, stop = ranges[k]
            if block.file not in files:
                files[block.file] = pq.ParquetFile(self.files[block.file])
            return files[block.file].read_row_group(block.group, columns=columns).slice(start, stop - start)

        pending: list[pa.Table] = []
        buffered = 0
        # The next block is read in the background while this one is consumed (as
        # pyarrow.dataset reads ahead): decompression releases the GIL.
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(read, 0) if ranges else None
            for k in range(len(ranges)):
                assert ahead is not None
                table = ahead.result()
                ahead = pool.submit(read, k + 1) if k + 1 < len(ranges) else None
                pending.append(table)
                buffered += table.num_rows
                if buffered >= buffer or k == len(ranges) - 1:
                    merged = pa.concat_tables(pending)
                    yield merged.take(rng.permutation(merged.num_rows)) if shuffle else merged
                    pending, buffered = [], 0

    def iter_batches(self, batch_size: int = 1024, columns: list[str] | None = None, *, rank: int = 0,
                     world_size: int = 1, worker_id: int = 0, num_workers: int = 1, seed: int = 0,
                     epoch: int = 0, shuffle: bool = True, shuffle_buffer: int = 8192,
                     skip: int = 0) -> Iterator[pa.RecordBatch]:
        """This reader's rows as record batches of ``batch_size`` (the last may be short),
        ``columns`` projected (default ``text``). The first ``skip`` rows of the stream are
        passed over (resuming mid-epoch: see ``LoaderState``)."""
        reader, readers = _reader(rank, world_size, worker_id, num_workers)
        carry: list[pa.Table] = []
        held = 0
        for table in self._stream(columns or ["text"], reader, readers, seed, epoch, shuffle,
                                  shuffle_buffer if shuffle else batch_size):
            if skip:
                dropped = min(skip, table.num_rows)
                table, skip = table.slice(dropped), skip - dropped
            carry.append(table)
            held += table.num_rows
            merged = pa.concat_tables(carry) if len(carry) > 1 else carry[0]
            start = 0
            while held - start >= batch_size:
                yield _one_batch(merged.slice(start, batch_size))
                start += batch_size
            carry, held = [merged.slice(start)], held - start
        if held:
            yield _one_batch(pa.concat_tables(carry))


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """A table slice as one record batch: zero-copy when it lies in one chunk."""
    batches = table.to_batches()
    return batches[0] if len(batches) == 1 else table.combine_chunks().to_batches()[0]


def _reader(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    if not (0 <= rank < world_size and 0 <= worker_id < max(num_workers, 1)):
        raise ValueError(f"rank {rank} of {world_size}, worker {worker_id} of {num_workers}: out of range")
    workers = max(num_workers, 1)
    return rank * workers + worker_id, world_size * workers


@dataclass
class LoaderState:
    """Where a reader is in an epoch: save ``state_dict()`` with the checkpoint, and pass
    ``skip=state.rows`` (same seed and epoch) to continue without repeating or skipping."""

    epoch: int = 0
    rows: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.rows = int(state["epoch"]), int(state["rows"])


def torch_dataset(data: CuratedDataset, *, columns: list[str] | None = None, rank: int = 0, world_size: int = 1,
                  seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 8192):
    """A PyTorch ``IterableDataset`` of row dicts over ``data``: each ``DataLoader`` worker
    reads its own slice of this rank's rows (``torch.utils.data.get_worker_info``); call
    ``set_epoch(e)`` before each epoch for a new order. Needs torch."""
    import torch.utils.data as tud

    class CuratedIterable(tud.IterableDataset):
        def __init__(self) -> None:
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            info = tud.get_worker_info()
            worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
            for batch in data.iter_batches(1024, columns, rank=rank, world_size=world_size, worker_id=worker_id,
                                           num_workers=num_workers, seed=seed, epoch=self.epoch, shuffle=shuffle,
                                           shuffle_buffer=shuffle_buffer):
                yield from batch.to_pylist()

    return CuratedIterable()
