"""Which chunk is rephrased in which style (``rephrase_v1``), decided per document so the
answer does not depend on how documents were split into work units.

``ratio`` is rephrasings per real chunk (WRAP mixes real and synthetic 1:1: each chunk is
seen once as it is and once rephrased). Chunk ``j`` of a document gets
``floor((j+1)·r + φ) − floor(j·r + φ)`` rephrasings, with ``φ`` a fraction hashed from the
document id: an integer ratio is exact for every document, a fractional one exact to one
chunk per document. Styles rotate over a document's rephrasings from an offset hashed
from its id, so with ``styles: [medium, qa]`` half the corpus's chunks go to each style
(the paper's robust "Medium + QA + real" mix).
"""

from __future__ import annotations

import math

import xxhash


def _fraction(doc_id: str, salt: str) -> float:
    return xxhash.xxh64_intdigest(f"{salt}\0{doc_id}".encode()) / 2 ** 64


def styles_per_chunk(doc_id: str, chunks: int, ratio: float, styles: list[str]) -> list[list[str]]:
    """For each of a document's chunks, the styles it is rephrased in (possibly none)."""
    phase = _fraction(doc_id, "ratio")
    offset = int(_fraction(doc_id, "style") * len(styles))
    out, used = [], 0
    for j in range(chunks):
        count = math.floor((j + 1) * ratio + phase) - math.floor(j * ratio + phase)
        out.append([styles[(offset + used + k) % len(styles)] for k in range(count)])
        used += count
    return out
