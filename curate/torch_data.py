"""PyTorch adapters over a ``CuratedDataset`` or a ``Mixture`` (needs torch).

- ``torch_dataset``: an ``IterableDataset`` of row dicts for your own ``DataLoader``; each
  dataloader worker reads its own slice of this rank's rows.
- ``CuratedLoader``: a ``DataLoader`` that also saves and restores its place mid-epoch
  (``state_dict`` / ``load_state_dict``), so a run restarted from a checkpoint reads exactly
  the rows it had not reached.

Why the loader can resume exactly: each batch comes back tagged with the worker that read
it, and the loader counts the rows it has handed to the training loop per worker. A
worker's rows are a deterministic stream (seed, epoch, rank, worker), so on resume each
worker skips the rows counted for it, whatever order the workers' batches arrived in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import torch.utils.data as tud

from curate.loader import CuratedDataset
from curate.mixture import Mixture

Source = CuratedDataset | Mixture


def rows_as_dict(batch: pa.RecordBatch) -> dict[str, list]:
    """The default collate: column name → list of values."""
    return batch.to_pydict()


def _as_is(item: Any) -> Any:
    return item


class _RowDataset(tud.IterableDataset):
    def __init__(self, data: Source, columns: list[str] | None, rank: int, world_size: int, seed: int,
                 shuffle: bool, shuffle_buffer: int) -> None:
        self.data, self.columns, self.rank, self.world_size = data, columns, rank, world_size
        self.seed, self.shuffle, self.shuffle_buffer, self.epoch = seed, shuffle, shuffle_buffer, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        info = tud.get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for batch in self.data.iter_batches(1024, self.columns, rank=self.rank, world_size=self.world_size,
                                            worker_id=worker_id, num_workers=num_workers, seed=self.seed,
                                            epoch=self.epoch, shuffle=self.shuffle,
                                            shuffle_buffer=self.shuffle_buffer):
            yield from batch.to_pylist()


def torch_dataset(data: Source, *, columns: list[str] | None = None, rank: int = 0, world_size: int = 1,
                  seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 8192) -> _RowDataset:
    """An ``IterableDataset`` of row dicts over ``data``; call ``set_epoch(e)`` before each
    epoch for a new order. For a loader that resumes mid-epoch use ``CuratedLoader``."""
    return _RowDataset(data, columns, rank, world_size, seed, shuffle, shuffle_buffer)


class _TaggedBatches(tud.IterableDataset):
    """Each worker's batches, collated in the worker, tagged (worker id, rows)."""

    def __init__(self, loader: CuratedLoader, epoch: int, skips: list[int]) -> None:
        self.loader, self.epoch, self.skips = loader, epoch, skips

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        info = tud.get_worker_info()
        worker = info.id if info is not None else 0
        lo = self.loader
        for batch in lo.data.iter_batches(lo.batch_size, lo.columns, rank=lo.rank, world_size=lo.world_size,
                                          worker_id=worker, num_workers=lo.num_workers, seed=lo.seed,
                                          epoch=self.epoch, shuffle=lo.shuffle, shuffle_buffer=lo.shuffle_buffer,
                                          skip=self.skips[worker], even=lo.even):
            yield worker, batch.num_rows, lo.collate_fn(batch)


class CuratedLoader:
    """Batches of this rank's rows through a ``torch.utils.data.DataLoader`` with
    ``num_workers`` worker processes (0: read in this process). ``collate_fn`` turns a
    ``pyarrow.RecordBatch`` into what the training step takes and runs in the workers
    (tokenize there); the default gives a dict of lists.

    ``state_dict()`` after any batch, saved with the checkpoint, and ``load_state_dict()``
    on a fresh loader with the same settings continue the epoch exactly. An epoch read to
    the end moves the loader to the next; ``set_epoch(e)`` starts epoch ``e`` from its
    beginning (unless the loader is already in ``e``, as after a resume).

    With DDP pass ``even=True``: every rank then runs the same number of steps (see
    ``CuratedDataset.iter_batches``); without it ranks may differ by a batch per worker."""

    def __init__(self, data: Source, *, batch_size: int, columns: list[str] | None = None, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 8192, even: bool = False,
                 collate_fn: Callable[[pa.RecordBatch], Any] = rows_as_dict, **dataloader_args: Any) -> None:
        if dataloader_args.get("persistent_workers"):
            raise ValueError("persistent_workers would keep each worker's first position; CuratedLoader starts "
                             "workers per epoch so a restored state reaches them")
        self.data, self.batch_size, self.columns, self.rank, self.world_size = data, batch_size, columns, rank, \
            world_size
        self.num_workers, self.seed, self.shuffle, self.shuffle_buffer = num_workers, seed, shuffle, shuffle_buffer
        self.even, self.collate_fn, self.dataloader_args = even, collate_fn, dataloader_args
        self.epoch = 0
        self.rows = [0] * max(num_workers, 1)  # rows handed out this epoch, per worker

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.rows = epoch, [0] * len(self.rows)

    def __len__(self) -> int:
        """Batches per epoch for this rank (each worker's last batch may be short)."""
        return sum(-(-self.data.rows_of(rank=self.rank, world_size=self.world_size, worker_id=w,
                                        num_workers=self.num_workers, even=self.even) // self.batch_size)
                   for w in range(len(self.rows)))

    def __iter__(self) -> Iterator[Any]:
        dataset = _TaggedBatches(self, self.epoch, list(self.rows))
        loader = tud.DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                                **self.dataloader_args)
        for worker, rows, batch in loader:
            self.rows[worker] += rows
            yield batch
        self.epoch, self.rows = self.epoch + 1, [0] * len(self.rows)

    # Everything that decides the row streams: a state is valid only for the same values
    # (batch_size is not among them: positions are counted in rows).
    STREAM = ("data", "seed", "rank", "world_size", "num_workers", "shuffle", "shuffle_buffer", "even")

    def _stream_settings(self) -> dict[str, Any]:
        return {**{key: getattr(self, key) for key in self.STREAM[1:]}, "data": self.data.fingerprint()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "rows": list(self.rows), **self._stream_settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._stream_settings()
        for key in self.STREAM:
            if state.get(key) != mine[key]:
                what = "the data (its shards, synthetic choice or mixture)" if key == "data" else key
                raise ValueError(f"the saved loader state differs in {what}: {key}={state.get(key)!r}, this loader "
                                 f"{key}={mine[key]!r}; a resume reads the same rows only with the same "
                                 f"{', '.join(self.STREAM)}")
        self.epoch, self.rows = int(state["epoch"]), [int(r) for r in state["rows"]]
