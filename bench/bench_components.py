"""Connected components of minhash_dedup_v1's verified edges: the former pure-Python
union-find (copied below as the baseline) against ``filters.minhash_fit._components``
(scipy.sparse.csgraph.connected_components over ords mapped to dense indices).

Random edges ``a < b`` between document ords drawn from a corpus of ``10 × edges``
ords (sparse, as duplicates are in a corpus), plus a denser graph (ords from
``edges`` values: one giant component). Checks that both give the same partition and
the same group and member order, then prints a markdown table (best of ``--repeat``).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_components.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.minhash_fit import _components as scipy_components  # noqa: E402


# --- baseline: the union-find filters/minhash_fit.py used before scipy -----------------
def _find(parent: dict[int, int], x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


def union_find_components(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    parent: dict[int, int] = {}
    for u, v in zip(a.tolist(), b.tolist(), strict=True):
        parent.setdefault(u, u)
        parent.setdefault(v, v)
        ru, rv = _find(parent, u), _find(parent, v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    groups: dict[int, list[int]] = defaultdict(list)
    for x in parent:
        groups[_find(parent, x)].append(x)
    return list(groups.values())
# ----------------------------------------------------------------------------------------


def random_edges(n_edges: int, n_ords: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_ords, size=2 * n_edges)
    v = rng.integers(0, n_ords, size=2 * n_edges)
    a, b = np.minimum(u, v), np.maximum(u, v)
    keep = a != b
    return a[keep][:n_edges].astype(np.int64), b[keep][:n_edges].astype(np.int64)


def best_of(fn, a, b, repeat: int) -> tuple[float, list[list[int]]]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(a, b)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="edge counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for n_edges in map(int, args.sizes.split(",")):
        for label, n_ords in (("10 × edges (sparse)", 10 * n_edges), ("= edges (giant component)", n_edges)):
            a, b = random_edges(n_edges, n_ords, seed=n_edges + n_ords)
            t_uf, g_uf = best_of(union_find_components, a, b, args.repeat)
            t_sp, g_sp = best_of(scipy_components, a, b, args.repeat)
            same_partition = {frozenset(g) for g in g_uf} == {frozenset(g) for g in g_sp}
            same_order = g_uf == g_sp
            if not (same_partition and same_order):
                raise SystemExit(f"MISMATCH at {n_edges} edges / {n_ords} ords: partition {same_partition}, "
                                 f"order {same_order}")
            rows.append((n_edges, label, len(g_sp), max(map(len, g_sp)), t_uf, t_sp))
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {__import__('scipy').__version__}; "
          f"best of {args.repeat}; same partition and order: yes\n")
    print("| edges | ords drawn from | components | largest | union-find (s) | scipy (s) | speed-up |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n_edges, label, comps, largest, t_uf, t_sp in rows:
        print(f"| {n_edges:,} | {label} | {comps:,} | {largest:,} | {t_uf:.3f} | {t_sp:.3f} | {t_uf / t_sp:.1f}× |")


if __name__ == "__main__":
    main()
