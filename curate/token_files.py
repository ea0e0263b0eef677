"""Token shards the big trainers read directly, written as a stream of documents.

- ``npy`` (OLMo / nanoGPT style): one flat ``.npy`` of ``uint16`` (vocabularies up to
  65,536) or ``uint32`` tokens, documents back to back, each followed by the end-of-text
  token; ``numpy.load(path, mmap_mode="r")`` maps it. The document boundaries are in a
  sidecar ``<stem>.docs.parquet`` (id, start, tokens), which OLMo keeps as metadata.
- ``megatron``: Megatron-LM's indexed dataset, a ``.bin`` of tokens and its ``.idx``
  (format version 1: header ``MMIDIDX\\x00\\x00``, version, dtype code, sequence and
  document counts, int32 sequence lengths, int64 byte pointers, int64 document indices),
  one sequence per document with the end-of-document token appended, as Megatron's
  ``preprocess_data.py --append-eod`` writes it. Its dtype is ``uint16`` below 65,500
  tokens of vocabulary and ``int32`` above, as Megatron's ``DType.optimal_dtype`` picks.

Writers fill ``<name>.tmp`` files and rename them when closed, so a file with its final
name is complete.
"""

from __future__ import annotations

import os
import struct
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("npy", "megatron")
NPY_HEADER = 128  # bytes reserved for the .npy header, rewritten with the final shape
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
                  np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7,
                  np.dtype(np.uint16): 8}


def token_dtype(fmt: str, vocab_size: int) -> np.dtype:
    if fmt == "megatron":
        return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class TokenShardWriter:
    """Append documents (token id arrays); ``close()`` publishes the files and returns
    their names. ``files()`` lists what a shard consists of."""

    def __init__(self, folder: Path, stem: str, fmt: str, dtype: np.dtype) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown token format {fmt!r}; choose {' or '.join(FORMATS)}")
        self.folder, self.stem, self.fmt, self.dtype = folder, stem, fmt, np.dtype(dtype)
        self.ids: list[str] = []
        self.lengths: list[np.ndarray] = []
        self.tokens = 0
        self.data_path = folder / (f"{stem}.npy" if fmt == "npy" else f"{stem}.bin")
        self._out: BinaryIO = open(self._tmp(self.data_path), "wb")  # noqa: SIM115 (closed by close/abort)
        if fmt == "npy":
            self._out.write(b"\0" * NPY_HEADER)

    @staticmethod
    def _tmp(path: Path) -> Path:
        return path.with_name(path.name + ".tmp")

    def files(self) -> list[Path]:
        if self.fmt == "npy":
            return [self.data_path, self.folder / f"{self.stem}.docs.parquet"]
        return [self.data_path, self.folder / f"{self.stem}.idx"]

    def write(self, ids: list[str], docs: list[list[int]]) -> None:
        """Documents (each already ending with the end-of-text token) and their ids."""
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum()))
        if len(flat) and (flat.max() > np.iinfo(self.dtype).max or flat.min() < 0):
            raise ValueError(f"token id {flat.max()} does not fit {self.dtype}")
        self._out.write(flat.astype(self.dtype).tobytes())
        self.ids += ids
        self.lengths.append(lengths)
        self.tokens += len(flat)

    def close(self) -> list[Path]:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        if self.fmt == "npy":
            self._out.seek(0)
            self._out.write(_npy_header(self.dtype, self.tokens))
        self._out.close()
        side = self.files()[1]
        if self.fmt == "npy":
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
            pq.write_table(pa.table({"id": pa.array(self.ids, pa.string()), "start": pa.array(starts, pa.int64()),
                                     "tokens": pa.array(lengths, pa.int64())}), self._tmp(side))
        else:
            _write_megatron_index(self._tmp(side), self.dtype, lengths)
        for path in (side, self.data_path):  # the data file last: its name says the shard is whole
            os.replace(self._tmp(path), path)
        return self.files()

    def abort(self) -> None:
        self._out.close()
        for path in self.files():
            self._tmp(path).unlink(missing_ok=True)


def _npy_header(dtype: np.dtype, count: int) -> bytes:
    """A version 1.0 ``.npy`` header for a 1-D array, padded to ``NPY_HEADER`` bytes."""
    text = repr({"descr": dtype.str, "fortran_order": False, "shape": (count,)})
    size = NPY_HEADER - 10  # magic (6) + version (2) + header length (2)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size) + (text.ljust(size - 1) + "\n").encode("latin1")


def _write_megatron_index(path: Path, dtype: np.dtype, lengths: np.ndarray) -> None:
    if len(lengths) and lengths.max() > np.iinfo(np.int32).max:
        raise ValueError("a document longer than 2^31 tokens does not fit Megatron's int32 sequence lengths")
    pointers = np.concatenate([[0], np.cumsum(lengths)[:-1]]) * dtype.itemsize if len(lengths) else lengths
    with open(path, "wb") as f:
        f.write(MEGATRON_MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_CODES[dtype]))
        f.write(struct.pack("<Q", len(lengths)))  # sequences
        f.write(struct.pack("<Q", len(lengths) + 1))  # document indices: one sequence per document
        f.write(lengths.astype(np.int32).tobytes())
        f.write(pointers.astype(np.int64).tobytes())
        f.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())


def read_npy_documents(path: str | Path) -> tuple[np.ndarray, pa.Table]:
    """An ``npy`` shard memory-mapped, and its documents (id, start, tokens)."""
    path = Path(path)
    tokens = np.load(path, mmap_mode="r")
    return tokens, pq.read_table(path.with_name(path.stem + ".docs.parquet"))

