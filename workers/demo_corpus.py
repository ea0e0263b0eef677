"""The demo corpus: real text every Python install carries, plus planted faults.

* Prose: the docstrings of the standard library's modules, classes and functions
  (read with ``ast``, nothing is imported).
* Boilerplate with natural near-duplicates: LICENSE/COPYING files and the long
  descriptions in ``METADATA`` of every installed ``*.dist-info`` (repeated MIT, BSD
  and Apache texts).
* Planted, from a fixed seed: exact copies differing only in case/whitespace, null and
  blank texts, and junk that each Gopher rule should catch (few words, hash spam,
  bullet lists, ellipsis lines, symbol soup).

Docstrings and licences are hard-wrapped at ~72 columns; their prose paragraphs are
unwrapped to one line each, as extracted web text stores them, so line-level rules
(C4's) see paragraphs rather than wrapped fragments. Indented blocks, list items and
doctest lines keep their line breaks.
"""

from __future__ import annotations

import ast
import json
import random
import re
import site
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_LICENSE_NAMES = ("LICENSE", "LICENCE", "COPYING", "NOTICE")
# Lines that are not wrapped prose: list items, numbered items, doctest prompts.
_NOT_PROSE = re.compile(r"^\s*([-*•+]\s|\d+[.)]\s|>>>|\.\.\.)")


def unwrap(text: str) -> str:
    """Join the lines of each prose paragraph (blank-line separated) with spaces; leave a
    paragraph alone if any of its lines is indented or a list/doctest line."""
    paragraphs = re.split(r"\n[ \t]*\n", text)
    out = []
    for p in paragraphs:
        lines = p.split("\n")
        prose = len(lines) > 1 and not any(line.startswith((" ", "\t")) or _NOT_PROSE.match(line) for line in lines)
        out.append(" ".join(line.strip() for line in lines) if prose else p)
    return "\n\n".join(out)


def _stdlib_docstrings() -> Iterator[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        nodes = [(module, tree)] + [
            (f"{module}.{n.name}", n) for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        for name, node in nodes:
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 200:
                yield {"id": f"stdlib:{name}:{getattr(node, 'lineno', 0)}", "source": "stdlib-docstring",
                       "text": f"{name}\n\n{unwrap(doc)}"}


def _dist_info_texts() -> Iterator[dict]:
    roots = {Path(p) for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()}
    for root in sorted(roots):
        for dist in sorted(root.glob("*.dist-info")):
            for f in sorted(p for p in dist.rglob("*") if p.is_file()):
                is_license = f.name.upper().startswith(_LICENSE_NAMES)
                if not (is_license or f.name == "METADATA"):
                    continue
                try:
                    text = f.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                if f.name == "METADATA":  # keep the long description, not the header fields
                    text = text.partition("\n\n")[2]
                if len(text.strip()) >= 40:
                    yield {"id": f"dist:{dist.name}/{f.relative_to(dist)}",
                           "source": "license" if is_license else "package-readme", "text": unwrap(text)}


def _planted(rng: random.Random, real: list[dict]) -> list[dict]:
    planted = []
    for i, doc in enumerate(rng.sample(real, min(40, len(real)))):
        variant = doc["text"].upper() if i % 2 else "  " + doc["text"].replace(" ", "  \n ", 3) + "\n"
        planted.append({"id": f"planted:copy-{i}", "source": "planted-exact-copy", "text": variant})
    words = ["data", "model", "train", "token", "corpus", "shard", "filter", "score", "rule"]
    junk = {
        "null": None,
        "blank": "   \n\t ",
        "few-words": "Click here to subscribe.",
        "hash-spam": " ".join(f"#{w} #tag #{w}2 and the best of {w}" for w in words * 3),
        "bullets": "\n".join(f"- {w} of the {w} with the {w}" for w in words * 6),
        "ellipsis-lines": "\n".join(f"The {w} and the story of {w} continues with more..." for w in words * 6),
        "symbol-soup": " ".join("|| %% @@ == ++ 123 456 the of" for _ in range(40)),
    }
    for name, text in junk.items():
        for k in range(3):
            planted.append({"id": f"planted:junk-{name}-{k}", "source": "planted-junk", "text": text})
    return planted


def build_demo_corpus(out: Path, *, max_docs: int = 3000, seed: int = 0) -> tuple[Path, int]:
    """Write the demo corpus as JSONL (``curate ingest`` turns it into shards)."""
    rng = random.Random(seed)
    stdlib = list(_stdlib_docstrings())
    dist = list(_dist_info_texts())
    n_dist = min(len(dist), max_docs // 3)
    real = rng.sample(dist, n_dist) + rng.sample(stdlib, min(len(stdlib), max_docs - n_dist))
    real.sort(key=lambda d: d["id"])
    # Ids must be unique: a dist-info name can appear in two site dirs.
    unique = list({d["id"]: d for d in real}.values())
    docs = unique + _planted(rng, unique)
    rng.shuffle(docs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return out, len(docs)


def build_demo_eval_set(corpus: Path, out: Path, *, items: int = 12, seed: int = 0) -> Path:
    """A small "benchmark" for the demo's decontamination stage: the opening 40 words of a
    few stdlib docstrings that are in the corpus, as if a held-out eval set had leaked into
    the training data (JSONL ``{id, question}``)."""
    rng = random.Random(seed)
    with open(corpus, encoding="utf-8") as f:
        docs = [d for d in map(json.loads, f) if d.get("source") == "stdlib-docstring"]
    long_enough = [d for d in docs if len(d["text"].split()) >= 60]
    chosen = rng.sample(long_enough, min(items, len(long_enough)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for k, d in enumerate(chosen):
            passage = " ".join(d["text"].split("\n\n", 1)[-1].split()[:40])
            f.write(json.dumps({"id": f"held-out-{k}", "question": passage}) + "\n")
    return out

