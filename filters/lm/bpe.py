"""The ablation tokenizer: one fixed byte-level BPE, so every arm of an ablation (and every
small LM a stage trains) is tokenised the same way and any UTF-8 text encodes without an
unknown token.

The bundled vocabulary (``data/ablation-bpe-4k.json``, 4,096 entries) was trained once on
a declared neutral corpus: the reStructuredText sources of the Python 3.11 documentation
as Debian packages them (python3.11-doc 3.11.2-6+deb12u9; 497 files, 11 MB of edited
English prose). It is neither web crawl nor Wikipedia, so it favours none of the arms
an ablation compares nor its usual target set. Rebuild it with

    python -m filters.lm.bpe ../shared/data/debian/python3.11-doc_rst_sources.jsonl.gz \
        --out filters/lm/data/ablation-bpe-4k.json

Losses are reported in bits per UTF-8 byte, so results do not depend on this choice.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

BUNDLED = Path(__file__).parent / "data" / "ablation-bpe-4k.json"
END_OF_TEXT = "<|endoftext|>"  # id 0: separates (and begins) documents in a token stream


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE with ``END_OF_TEXT`` as id 0, trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None) -> Any:
    """A ``tokenizers.Tokenizer`` from a JSON file; the bundled ablation BPE by default. Its
    ``END_OF_TEXT`` token must exist (it separates documents)."""
    from tokenizers import Tokenizer

    file = Path(path) if path else BUNDLED
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for a missing or malformed file
        raise ValueError(f"cannot load tokenizer {file}: {exc}") from exc
    if tok.token_to_id(END_OF_TEXT) is None:
        raise ValueError(f"tokenizer {file} has no {END_OF_TEXT} token to separate documents")
    return tok


def end_of_text_id(tok: Any) -> int:
    return int(tok.token_to_id(END_OF_TEXT))


def _jsonl_texts(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["text"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the ablation BPE on a JSONL(.gz) corpus with a text field.")
    p.add_argument("corpus", type=Path)
    p.add_argument("--out", type=Path, default=BUNDLED)
    p.add_argument("--vocab-size", type=int, default=4096)
    args = p.parse_args(argv)
    tok = train_bpe(_jsonl_texts(args.corpus), args.vocab_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(args.out)
    print(f"wrote {args.out}: {tok.get_vocab_size()} tokens")


if __name__ == "__main__":
    main()
