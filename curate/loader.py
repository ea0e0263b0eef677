"""Read a curated job's output shards into training: verified against the manifest, split
across ranks and dataloader workers so every row is read exactly once per epoch, shuffled
deterministically by seed and epoch, and resumable mid-epoch. Needs only pyarrow (and
numpy); ``curate.torch_data`` wraps it for a PyTorch ``DataLoader``.

    data = CuratedDataset("runs/web-pool-v1")                 # a job's output folder
    data = CuratedDataset("s3://bucket/runs/web-pool-v1")     # any fsspec URL
    data = CuratedDataset("http://curate:8000/jobs/<job id>") # a running service (cached)
    for batch in data.iter_batches(batch_size=1024, rank=r, world_size=w, seed=0, epoch=e):
        texts = batch.column("text").to_pylist()

How a row is assigned: the output files are cut into blocks (Parquet row groups), the
blocks are permuted by (seed, epoch), and the permuted row stream is split into
``world_size × num_workers`` contiguous, near-equal slices, one per reader. Inside its
slice a reader shuffles rows through a seeded buffer. The order depends only on the
manifest, the seed and the epoch, so a reader that skips the rows it already yielded
(``LoaderState``) continues exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from filters.lm.models import file_sha256, stream_sha256

Synthetic = Literal["include", "exclude", "only"]
T = TypeVar("T")
READERS = 2  # row groups read at once per reader
OPEN_FILES = 8  # shards each reading thread keeps open
# The column a job adds to its outputs when a stage (rephrase_v1) created documents: the id
# of the document each was made from, null for real rows. (workers.lineage.PARENT_ID)
PARENT_ID = "parent_id"
SERVICE_JOB = re.compile(r"^(https?://.+?)/jobs/([^/]+)/?$")


class ManifestError(ValueError):
    """A shard that does not match the job's manifest (missing, wrong rows or sha256), or a
    folder that is not a finished job; the message names the shard."""


@dataclass(frozen=True)
class Block:
    file: int  # index into the dataset's files
    group: int  # Parquet row group
    rows: int  # rows this dataset reads from the group
    pick: np.ndarray | None = None  # their positions in the group when not all (a synthetic filter)


class CuratedDataset:
    """The output of one finished job: a folder with ``manifest.json`` (a local path or an
    fsspec URL), or ``http(s)://host:port/jobs/<id>`` on a running service, downloaded once
    into a local cache (``curate.remote.fetch_job``: ``cache_dir``, ``api_key``).

    ``synthetic`` chooses rows by lineage: ``include`` everything (default), ``exclude`` the
    documents a stage created (rephrasings: ``parent_id`` set), or ``only`` those."""

    def __init__(self, source: str | Path, *, verify: bool = True, synthetic: Synthetic = "include",
                 cache_dir: str | Path | None = None, api_key: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.source = str(source)
        self.fs: Any = None  # an fsspec filesystem, or None for local files
        service = SERVICE_JOB.match(self.source)
        if service:
            from curate.remote import fetch_job

            fetched = fetch_job(service.group(1), service.group(2), cache_dir=cache_dir, api_key=api_key)
            root = str(fetched.folder)
            verify = verify and fetched.offline  # otherwise fetch_job has just checked every shard's sha256
        elif "://" in self.source and not self.source.startswith("file://"):
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(self.source, **(storage_options or {}))
            # fsspec shares one instance per URL and options: a listing it cached earlier in this
            # process (s3fs, gcsfs) may predate the publication being read now.
            self.fs.invalidate_cache()
        else:
            root = self.source.removeprefix("file://")
        self.root = root.rstrip("/")
        try:
            self.manifest = json.loads(self._read_bytes("manifest.json"))
        except FileNotFoundError:
            raise ManifestError(f"{self.source}: no manifest.json (not a finished curate job's output "
                                "folder)") from None
        self.files = [f"{self.root}/{f['path']}" for f in self.manifest["files"]]
        columns = self.manifest.get("columns") or {}
        self.text_column, self.id_column = columns.get("text", "text"), columns.get("id", "id")
        if verify:
            self.verify()
        self._groups = [(i, g, meta.row_group(g).num_rows) for i in range(len(self.files))
                        for meta in [self._parquet(i).metadata] for g in range(meta.num_row_groups)]
        self.synthetic: Synthetic = "include"
        self.blocks = [Block(i, g, n) for i, g, n in self._groups if n]
        self.num_rows = sum(b.rows for b in self.blocks)
        if synthetic != "include":
            self._select(synthetic)

    # -- files ------------------------------------------------------------------------
    def _read_bytes(self, name: str) -> bytes:
        if self.fs is not None:
            return self.fs.cat_file(f"{self.root}/{name}")
        return Path(self.root, name).read_bytes()

    def _parquet(self, i: int) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open(self.files[i], "rb") if self.fs is not None else self.files[i])

    def _exists(self, path: str) -> bool:
        return self.fs.exists(path) if self.fs is not None else Path(path).exists()

    def verify(self) -> None:
        """Every shard exists with the manifest's row count and sha256."""
        for i, (path, facts) in enumerate(zip(self.files, self.manifest["files"], strict=True)):
            if not self._exists(path):
                raise ManifestError(f"{facts['path']}: listed in the manifest but missing from {self.source}")
            if self.fs is not None:
                with self.fs.open(path, "rb") as f:
                    digest = stream_sha256(f)
            else:
                digest = file_sha256(Path(path))
            if digest != facts["sha256"]:
                raise ManifestError(f"{facts['path']}: sha256 {digest[:16]}… does not match the manifest's "
                                    f"{facts['sha256'][:16]}… (changed or corrupted since the job wrote it)")
            rows = self._parquet(i).metadata.num_rows
            if rows != facts["rows"]:
                raise ManifestError(f"{facts['path']}: {rows} rows, the manifest says {facts['rows']}")

    def data_files(self) -> list[str]:
        """The shard paths (URLs for fsspec), for ``datasets.load_dataset("parquet", data_files=...)``.
        Shards without rows are left out: datasets fails on a Parquet file with no rows
        ("BatchSize must be greater than 0"), and a job whose filters dropped a whole shard
        writes one."""
        files = [p for p, facts in zip(self.files, self.manifest["files"], strict=True) if facts["rows"]]
        if self.fs is None:
            return files
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return [f"{protocol}://{p}" for p in files]

    # -- which rows -------------------------------------------------------------------
    def with_synthetic(self, synthetic: Synthetic) -> CuratedDataset:
        """The same verified files with another ``synthetic`` choice (nothing is re-hashed)."""
        view = object.__new__(CuratedDataset)
        view.__dict__.update(self.__dict__)
        view.blocks = [Block(i, g, n) for i, g, n in self._groups if n]
        view.num_rows, view.synthetic = sum(b.rows for b in view.blocks), "include"
        if synthetic != "include":
            view._select(synthetic)
        return view

    def _select(self, synthetic: Synthetic) -> None:
        """Keep the blocks' real or created rows, by the ``parent_id`` lineage column."""
        if synthetic not in ("exclude", "only"):
            raise ValueError(f"synthetic={synthetic!r}: choose include, exclude or only")
        blocks = []
        for block in self.blocks:
            pf = self._parquet(block.file)
            if PARENT_ID not in pf.schema_arrow.names:
                raise ManifestError(f"{self.source}: synthetic={synthetic!r} needs the {PARENT_ID!r} column, which "
                                    "a job writes only when a stage creates documents (rephrase_v1); this job "
                                    "created none")
            created = pc.is_valid(pf.read_row_group(block.group, columns=[PARENT_ID]).column(PARENT_ID))
            keep = np.flatnonzero(created.to_numpy(zero_copy_only=False) == (synthetic == "only"))
            if len(keep):
                blocks.append(replace(block, rows=len(keep), pick=None if len(keep) == block.rows else keep))
        self.blocks, self.num_rows, self.synthetic = blocks, sum(b.rows for b in blocks), synthetic

    # -- reading ----------------------------------------------------------------------
    def _slice(self, reader: int, readers: int, key: list[int], shuffle: bool,
               even: bool = False) -> list[tuple[Block, int, int]]:
        """The (block, start, stop) row ranges of one reader's contiguous share of the
        (permuted) row stream."""
        order = list(range(len(self.blocks)))
        if shuffle:
            order = np.random.default_rng(key).permutation(len(self.blocks)).tolist()
        lo, hi = share(reader, readers, self.num_rows, even)
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

    def read_block(self, block: Block, columns: list[str], start: int = 0, stop: int | None = None,
                   parquet: pq.ParquetFile | None = None) -> pa.Table:
        """Rows ``start:stop`` of what this dataset reads from ``block``."""
        try:
            table = (parquet or self._parquet(block.file)).read_row_group(block.group, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"{self.manifest['files'][block.file]['path']}: cannot read row group "
                                f"{block.group}: {exc}") from exc
        stop = block.rows if stop is None else stop
        return table.slice(start, stop - start) if block.pick is None else table.take(block.pick[start:stop])

    def rows_of(self, *, rank: int = 0, world_size: int = 1, worker_id: int = 0, num_workers: int = 1,
                even: bool = False) -> int:
        """How many rows one reader gets per epoch."""
        lo, hi = share(*reader_index(rank, world_size, worker_id, num_workers), self.num_rows, even)
        return hi - lo

    def fingerprint(self) -> str:
        """What decides the row streams: the shards' sha256 and the synthetic choice (a
        saved loader state is only valid for the same fingerprint)."""
        digest = hashlib.sha256(self.synthetic.encode())
        for facts in self.manifest["files"]:
            digest.update(facts["sha256"].encode())
        return digest.hexdigest()[:16]

    def stream(self, columns: list[str], reader: int, readers: int, key: list[int], shuffle: bool = True,
               buffer: int = 8192, even: bool = False) -> Iterator[pa.Table]:
        """One reader's rows for the order ``key`` ([seed, epoch]), as tables: its blocks'
        slices gathered into buffers of at least ``buffer`` rows (whole row groups, so at
        least one), each shuffled by the reader's seeded generator."""
        # Parquet decoding and ``take`` release the GIL: blocks are read by a small thread
        # pool and buffers gathered and shuffled in another thread, while the caller consumes.
        blocks = self._blocks(columns, reader, readers, key, shuffle, even)
        return read_ahead(self._buffers(blocks, np.random.default_rng([*key, reader]), shuffle, buffer))

    def _blocks(self, columns: list[str], reader: int, readers: int, key: list[int],
                shuffle: bool, even: bool) -> Iterator[pa.Table]:
        """The slice's blocks in order, ``READERS`` read at once (as pyarrow.dataset reads
        several row groups at once), each thread with a few files of its own open."""
        local = threading.local()

        def read(item: tuple[Block, int, int]) -> pa.Table:
            block, start, stop = item
            files: OrderedDict[int, pq.ParquetFile] = local.__dict__.setdefault("files", OrderedDict())
            if block.file not in files:
                files[block.file] = self._parquet(block.file)
                if len(files) > OPEN_FILES:  # a shuffled epoch visits every shard: keep few open
                    files.popitem(last=False)[1].close(force=True)
            files.move_to_end(block.file)
            return self.read_block(block, columns, start, stop, files[block.file])

        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            for item in self._slice(reader, readers, key, shuffle, even):
                pending.append(pool.submit(read, item))
                if len(pending) > READERS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    @staticmethod
    def _buffers(blocks: Iterator[pa.Table], rng: np.random.Generator, shuffle: bool,
                 buffer: int) -> Iterator[pa.Table]:
        def flush(pending: list[pa.Table]) -> pa.Table:
            merged = pa.concat_tables(pending)
            return merged.take(rng.permutation(merged.num_rows)) if shuffle else merged

        pending: list[pa.Table] = []
        buffered = 0
        for table in blocks:
            pending.append(table)
            buffered += table.num_rows
            if buffered >= buffer:
                yield flush(pending)
                pending, buffered = [], 0
        if pending:
            yield flush(pending)

    def iter_batches(self, batch_size: int = 1024, columns: list[str] | None = None, *, rank: int = 0,
                     world_size: int = 1, worker_id: int = 0, num_workers: int = 1, seed: int = 0,
                     epoch: int = 0, shuffle: bool = True, shuffle_buffer: int = 8192,
                     skip: int = 0, even: bool = False) -> Iterator[pa.RecordBatch]:
        """This reader's rows as record batches of ``batch_size`` (the last may be short),
        ``columns`` projected (default: the text column). The first ``skip`` rows of the
        stream are passed over (resuming mid-epoch: see ``LoaderState``).

        Readers get equal shares ±1 row, so every row is read once. ``even=True`` gives
        every reader exactly ``num_rows // readers`` rows, so that all ranks run the same
        number of steps (DDP waits for every rank): the last ``num_rows % readers`` rows of
        the epoch's permuted order are not read, different ones each epoch."""
        reader, readers = reader_index(rank, world_size, worker_id, num_workers)
        tables = self.stream(columns or [self.text_column], reader, readers, [seed, epoch], shuffle,
                             shuffle_buffer if shuffle else batch_size, even)
        return batches_of(skip_rows(tables, skip), batch_size)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items`` produced in a background thread, up to ``depth`` ahead of the consumer (as
    pyarrow.dataset reads ahead): Parquet decoding and the shuffle's ``take`` release the
    GIL, so reading overlaps the training loop's own work. An error in the producer is
    raised here; a consumer that stops early stops the producer."""
    channel: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                channel.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))

    threading.Thread(target=produce, daemon=True, name="curate-read-ahead").start()
    try:
        while True:
            item = channel.get()
            if item is end:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


def skip_rows(tables: Iterable[pa.Table], skip: int) -> Iterator[pa.Table]:
    """``tables`` without their first ``skip`` rows."""
    for table in tables:
        if skip:
            dropped = min(skip, table.num_rows)
            table, skip = table.slice(dropped), skip - dropped
        if table.num_rows:
            yield table


def batches_of(tables: Iterable[pa.Table], batch_size: int) -> Iterator[pa.RecordBatch]:
    """A stream of tables re-cut into record batches of ``batch_size`` rows (the last may be
    short). Whole batches inside a table are zero-copy slices; only a batch that spans two
    tables is copied."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    carry: pa.Table | None = None  # fewer than batch_size rows
    for table in tables:
        if carry is not None:
            head = pa.concat_tables([carry, table.slice(0, batch_size - carry.num_rows)])
            table = table.slice(batch_size - carry.num_rows)
            if head.num_rows < batch_size:
                carry = head
                continue
            yield head.combine_chunks().to_batches()[0]
            carry = None
        if table.num_columns and table.column(0).num_chunks > 1:
            table = table.combine_chunks()  # so to_batches cuts at batch_size only
        whole = table.num_rows // batch_size * batch_size
        if whole:
            yield from table.slice(0, whole).to_batches(max_chunksize=batch_size)
        if table.num_rows > whole:
            carry = table.slice(whole)
    if carry is not None and carry.num_rows:
        yield carry.combine_chunks().to_batches()[0]


def share(reader: int, readers: int, rows: int, even: bool = False) -> tuple[int, int]:
    """Rows [lo, hi) of the epoch's stream that ``reader`` reads: near-equal contiguous
    shares, or exactly ``rows // readers`` each when ``even``."""
    if even:
        return reader * (rows // readers), (reader + 1) * (rows // readers)
    return reader * rows // readers, (reader + 1) * rows // readers


def reader_index(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    """(this reader, all readers): ``num_workers`` 0 (a DataLoader without worker processes)
    reads as one worker."""
    workers = max(num_workers, 1)
    if not (0 <= rank < world_size and 0 <= worker_id < workers):
        raise ValueError(f"rank {rank} of {world_size}, worker {worker_id} of {num_workers}: out of range")
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
