"""A weighted mixture of curated datasets (domain upsampling): rows drawn from each source in
proportion to its weight, reproducible by seed, split across ranks and workers like one
dataset, and resumable mid-epoch. Proportions hold within one row per reader; a rank whose
DataLoader merges several workers' batches is within one row per worker.

    mix = Mixture({"web": (CuratedDataset("runs/web"), 0.7), "code": (CuratedDataset("runs/code"), 0.3)})
    for batch in mix.iter_batches(1024, rank=r, world_size=w, seed=0, epoch=e): ...

The interleave is deterministic with exact proportions (as Megatron's BlendedDataset):
source ``s`` with weight ``p`` places its k-th row at time ``(k + u) / p``, with a phase
``u`` drawn per (seed, epoch, reader), and the rows are read in time order. So after any
``n`` rows each source has supplied ``p·n`` rows, within one. A source that runs out in
an epoch starts another pass of its own rows in a new seeded order (upsampling). Every
epoch begins a fresh seeded order of every source, so a source that is not used up
contributes a new random subset each epoch (not the rows the last epoch left unread).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from curate.loader import CuratedDataset, batches_of, reader_index, share

WINDOW = 65536  # rows interleaved per step


class Mixture:
    """``sources``: name → (dataset, weight); weights are normalised. ``rows``: rows per
    epoch across all readers (default: the sources' rows added up). ``source_column``
    adds a column naming each row's source, for per-domain losses."""

    def __init__(self, sources: dict[str, tuple[CuratedDataset, float]], *, rows: int | None = None,
                 source_column: str | None = None) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        bad = {name: w for name, (_, w) in sources.items() if not w > 0}
        if bad:
            raise ValueError(f"mixture weights must be positive: {bad}")
        empty = [name for name, (data, _) in sources.items() if data.num_rows == 0]
        if empty:
            raise ValueError(f"mixture sources without rows: {', '.join(empty)}")
        self.names = list(sources)
        self.datasets = [data for data, _ in sources.values()]
        weights = np.array([w for _, w in sources.values()], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.num_rows = rows if rows is not None else sum(d.num_rows for d in self.datasets)
        self.source_column = source_column
        self.text_column = self.datasets[0].text_column

    @classmethod
    def real_and_synthetic(cls, data: CuratedDataset, synthetic_fraction: float, *, rows: int | None = None,
                           source_column: str | None = None) -> Mixture:
        """One job's real rows and the rows a stage created from them (rephrase_v1), mixed so
        that ``synthetic_fraction`` of every epoch is synthetic (the WRAP mixing ratio)."""
        if not 0 < synthetic_fraction < 1:
            raise ValueError(f"synthetic_fraction must lie strictly between 0 and 1, not {synthetic_fraction}")
        return cls({"real": (data.with_synthetic("exclude"), 1 - synthetic_fraction),
                    "synthetic": (data.with_synthetic("only"), synthetic_fraction)},
                   rows=rows if rows is not None else data.num_rows, source_column=source_column)

    def rows_of(self, *, rank: int = 0, world_size: int = 1, worker_id: int = 0, num_workers: int = 1,
                even: bool = False) -> int:
        lo, hi = share(*reader_index(rank, world_size, worker_id, num_workers), self.num_rows, even)
        return hi - lo

    def fingerprint(self) -> str:
        """The sources, their weights and the epoch size (see ``CuratedDataset.fingerprint``)."""
        parts = [f"{n}:{w!r}:{d.fingerprint()}" for n, w, d in zip(self.names, self.weights, self.datasets,
                                                                      strict=True)]
        return hashlib.sha256("|".join([*parts, str(self.num_rows)]).encode()).hexdigest()[:16]

    def choices(self, reader: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
        """The source of each of this reader's rows, a window at a time (endless)."""
        phase = np.random.default_rng([seed, epoch, reader, 0x6D6978]).random(len(self.weights))
        start = 0.0
        while True:
            stop = start + WINDOW
            times, labels = [], []
            for s, (p, u) in enumerate(zip(self.weights, phase, strict=True)):
                k = np.arange(np.ceil(start * p - u), np.ceil(stop * p - u))
                times.append((k + u) / p)
                labels.append(np.full(len(k), s, dtype=np.int32))
            order = np.argsort(np.concatenate(times), kind="stable")
            yield np.concatenate(labels)[order]
            start = stop

    def _source_rows(self, s: int, columns: list[str], reader: int, readers: int, seed: int, epoch: int,
                     shuffle: bool, buffer: int) -> Iterator[pa.Table]:
        """Source ``s``'s rows for this reader: pass after pass, each in its own seeded order."""
        data = self.datasets[s]
        if data.num_rows < readers:
            raise ValueError(f"mixture source {self.names[s]!r} has {data.num_rows} rows, fewer than the "
                             f"{readers} readers (ranks × workers); every reader needs some of each source")
        passes = 0
        while True:
            yield from data.stream(columns, reader, readers, [seed, epoch, passes, s], shuffle, buffer)
            passes += 1

    def iter_batches(self, batch_size: int = 1024, columns: list[str] | None = None, *, rank: int = 0,
                     world_size: int = 1, worker_id: int = 0, num_workers: int = 1, seed: int = 0,
                     epoch: int = 0, shuffle: bool = True, shuffle_buffer: int = 8192,
                     skip: int = 0, even: bool = False) -> Iterator[pa.RecordBatch]:
        """This reader's share of the epoch, as ``CuratedDataset.iter_batches``."""
        reader, readers = reader_index(rank, world_size, worker_id, num_workers)
        total = self.rows_of(rank=rank, world_size=world_size, worker_id=worker_id, num_workers=num_workers,
                             even=even)
        columns = columns or [self.text_column]
        return batches_of(self._tables(columns, reader, readers, seed, epoch, shuffle, shuffle_buffer, total, skip),
                          batch_size)

    def _tables(self, columns: list[str], reader: int, readers: int, seed: int, epoch: int, shuffle: bool,
                buffer: int, total: int, skip: int) -> Iterator[pa.Table]:
        takers = [_Taker(self._source_rows(s, columns, reader, readers, seed, epoch, shuffle, buffer))
                  for s in range(len(self.datasets))]
        done = 0
        for labels in self.choices(reader, seed, epoch):
            labels = labels[: total - done]
            done += len(labels)
            if skip:  # rows already read: pass over each source's share of them
                passed, labels, skip = labels[:skip], labels[skip:], max(0, skip - len(labels))
                for s, n in enumerate(np.bincount(passed, minlength=len(takers))):
                    takers[s].take(int(n))
            if len(labels):
                yield self._interleave(labels, [t.take(int(n)) for t, n in
                                                zip(takers, np.bincount(labels, minlength=len(takers)),
                                                    strict=True)])
            if done >= total:
                return

    def _interleave(self, labels: np.ndarray, parts: list[pa.Table]) -> pa.Table:
        """Rows of ``parts`` (one table per source) in the order ``labels`` names."""
        starts = np.concatenate([[0], np.cumsum([p.num_rows for p in parts])])
        index = np.empty(len(labels), dtype=np.int64)
        for s in range(len(parts)):
            where = np.flatnonzero(labels == s)
            index[where] = starts[s] + np.arange(len(where))
        table = pa.concat_tables(parts, promote_options="permissive").take(index)
        if self.source_column:
            names = pa.DictionaryArray.from_arrays(pa.array(labels, pa.int32()), pa.array(self.names))
            table = table.append_column(self.source_column, names)
        return table


class _Taker:
    """Exactly ``n`` rows at a time from an endless stream of tables."""

    def __init__(self, tables: Iterator[pa.Table]) -> None:
        self.tables = tables
        self.held: pa.Table | None = None

    def take(self, n: int) -> pa.Table:
        if self.held is None:
            self.held = next(self.tables)  # its schema, even for n == 0
        parts, need = [self.held.slice(0, 0)], n
        while need:
            if self.held.num_rows == 0:
                self.held = next(self.tables)
                continue
            part = self.held.slice(0, need)
            self.held = self.held.slice(part.num_rows)
            parts.append(part)
            need -= part.num_rows
        return pa.concat_tables(parts)
