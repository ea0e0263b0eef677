"""``curate ablate``: train the same small LM on exactly N tokens of each arm (the job's
curated selection, random selections of its input pool, each stage alone) and compare
held-out bits per byte on a target set, over several seeds.

Each (arm, seed) run is a Ray task (``cpus_per_run`` CPUs, one GPU with ``device:
cuda``), so a cluster trains arms in parallel; a finished run is stored at once under
``ablations/<id>/runs/`` and a rerun of the same ablation skips it. The result
(``result.json``, ``plot.png``) lives in the job folder next to the job's lineage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters.contamination import NGRAM, EvalNgrams
from filters.text_files import TextFileError, read_texts
from workers import atomic
from workers.ablate_arms import Arm, ArmError, build_arms
from workers.job_folder import JobFolder

log = logging.getLogger("curate")
EXECUTION_FIELDS = frozenset({"device", "cpus_per_run", "use_ray"})


class AblationError(ValueError):
    """An ablation that cannot run as asked (arms too small, unreadable eval set, ...)."""


class AblationParams(BaseModel):
    """What an ablation trains and measures. All but the execution fields (device,
    cpus_per_run) name the ablation: the same params on the same job resume one ablation."""

    model_config = ConfigDict(extra="forbid")

    eval: str = Field(description="target set: JSONL(.gz) with a text field, Parquet with a text column, or .txt")
    eval_text_field: str = "text"
    tokens: Annotated[int, Field(ge=2)] | Literal["max"] = Field(
        "max", description="training tokens per arm; max: the smallest arm's")
    seeds: int = Field(3, ge=1, le=32)
    model: Literal["transformer", "ngram"] = Field("transformer", description="ngram: the fast Kneser-Ney tier")
    arms: list[str] | None = Field(None, description="arm names to train (default all): curated, random, "
                                   "only:<NN>-<stage>")
    decontaminate: bool = Field(True, description=f"drop training documents sharing a {NGRAM}-gram with the eval "
                                "set (counted either way)")
    tokenizer: str | None = Field(None, description="tokenizers JSON file (default: the bundled ablation BPE)")
    n_layer: int = Field(2, ge=1, le=48)
    d_model: int = Field(128, ge=16, le=4096)
    n_head: int = Field(4, ge=1, le=64)
    context: int = Field(256, ge=8, le=8192)
    batch_size: int = Field(4, ge=1, le=4096)
    lr: float = Field(3e-3, gt=0, le=1)
    ngram_order: int = Field(4, ge=1, le=8)
    # execution only
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    cpus_per_run: int = Field(2, ge=1, le=256, description="CPUs (torch threads) per training run")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AblationParams:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        return self

    def identity(self) -> dict[str, Any]:
        """What names the ablation: every field but the execution ones and the file paths
        (the files count by content: see ``ablation_id``)."""
        return self.model_dump(exclude=set(EXECUTION_FIELDS) | {"eval", "tokenizer"})


def ablation_id(spec_hash: str, params: AblationParams, eval_sha: str) -> str:
    """The job's spec, the eval set's and tokenizer's contents and every parameter but the
    execution ones: the same ablation from the CLI or REST, from any working directory."""
    tokenizer_sha = atomic.sha256_file(Path(params.tokenizer)) if params.tokenizer else "bundled"
    key = json.dumps({"job": spec_hash, "params": params.identity(), "eval_sha256": eval_sha,
                      "tokenizer_sha256": tokenizer_sha}, sort_keys=True)
    return "abl-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def load_eval_texts(path: str | Path, field: str = "text") -> list[str]:
    """Documents of the target set (JSONL, Parquet, or one .txt/.md document); a bad record
    names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"eval set {path} does not exist")
    if path.name.endswith((".txt", ".md")):
        texts = [path.read_text(encoding="utf-8")]
        if not texts[0].strip():
            raise AblationError(f"eval set {path} holds no text")
        return texts
    try:
        return read_texts(path, field)
    except TextFileError as exc:
        raise AblationError(f"eval set {exc}") from None


def draw(arm: Arm, seed: int, n_tokens: int, end_of_text: int) -> tuple[np.ndarray, int]:
    """The arm's training stream for ``seed``: its documents in a seeded random order, each
    after an end-of-text token, cut at exactly ``n_tokens``; and how many documents it used."""
    from filters.lm.small_lm import token_stream

    order = np.random.default_rng(seed).permutation(len(arm.tokens))
    used, total = 0, 0
    for k in order:
        if total >= n_tokens:
            break
        total += len(arm.tokens[k]) + 1
        used += 1
    return token_stream((arm.tokens[k] for k in order), n_tokens, end_of_text), used


def _train_and_eval(stream: np.ndarray, eval_docs: list, eval_bytes: int, params: dict, seed: int,
                    end_of_text: int, vocab_size: int) -> dict:
    """One run: train on ``stream``, score the eval docs. Runs in a Ray task or in-process."""
    p = AblationParams(**params)
    started = time.perf_counter()
    if p.model == "ngram":
        from filters.lm.kneser_ney import KneserNeyLM

        docs = np.split(stream, np.flatnonzero(stream == end_of_text))
        lm = KneserNeyLM(p.ngram_order, vocab_size).fit(d[1:] if len(d) and d[0] == end_of_text else d
                                                         for d in docs)
        fit_s = time.perf_counter() - started
        bits = lm.bits(eval_docs)
        final_loss = None
    else:
        import torch

        from filters.lm.small_lm import SmallLMConfig, eval_bits, train_small_lm

        torch.set_num_threads(p.cpus_per_run)
        config = SmallLMConfig(vocab_size=vocab_size, n_layer=p.n_layer, n_head=p.n_head, d_model=p.d_model,
                               context=p.context, batch_size=p.batch_size, lr=p.lr)
        trained = train_small_lm(stream, config, seed, p.device)
        fit_s = trained.seconds
        bits = eval_bits(trained, eval_docs, end_of_text)
        final_loss = float(np.mean(trained.losses[-10:]))
    total_s = time.perf_counter() - started
    return {"seed": seed, "bits_per_byte": bits / eval_bytes, "train_seconds": round(fit_s, 3),
            "eval_seconds": round(total_s - fit_s, 3), "tokens_per_second": round(len(stream) / fit_s, 1),
            "final_train_loss": final_loss}


def summarise(values: list[float]) -> dict[str, Any]:
    """Mean and a 95% t-interval over seeds (no interval from one seed)."""
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "sd": None, "ci95": None, "n": n}
    sd = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "n": n}


def _tokenize(arms: list[Arm], tokenizer: Any) -> None:
    cache: dict[str, np.ndarray] = {}
    for arm in arms:
        todo = list({t for t in arm.texts if t not in cache})
        for text, enc in zip(todo, tokenizer.encode_batch(todo), strict=True):
            cache[text] = np.asarray(enc.ids, dtype=np.int32)
        arm.tokens = [cache[t] for t in arm.texts]


def _decontaminate(arms: list[Arm], eval_texts: list[str], drop: bool) -> dict[str, dict]:
    ngrams = EvalNgrams(eval_texts)
    shared_by_text: dict[str, set[int]] = {}  # arms share most texts: hash each one once
    report = {}
    for arm in arms:
        todo = list({t for t in arm.texts if t not in shared_by_text})
        shared_by_text.update(zip(todo, ngrams.shared_all(todo), strict=True))
        shared = [shared_by_text[t] for t in arm.texts]
        overlap = ngrams.overlap(shared)
        report[arm.name] = {"documents": overlap.documents, "contaminated": overlap.contaminated,
                            "shared_ngrams": overlap.shared_ngrams, "eval_docs_hit": overlap.eval_docs_hit,
                            "removed": overlap.contaminated if drop else 0,
                            "flagged": overlap.contaminated > 0 and not drop}
        if drop and overlap.contaminated:
            keep = [k for k, hit in enumerate(shared) if not hit]
            arm.ids, arm.texts = [arm.ids[k] for k in keep], [arm.texts[k] for k in keep]
    return report


def _check_installed(model: str) -> None:
    import importlib.util

    needed = ["tokenizers", "matplotlib"] + (["torch"] if model == "transformer" else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise AblationError(f"curate ablate needs {', '.join(missing)}: pip install 'curate[ablate]'")


def budget(arms: list[Arm], available: dict[str, int], contamination: dict[str, dict],
           tokens: int | Literal["max"]) -> int:
    """Training tokens per arm: as asked, or the smallest arm's size; an arm without text
    or too small for the budget is an error that names it."""
    empty = sorted(a.name for a in arms if not any(len(t) for t in a.tokens))
    if empty:
        removed = {k: contamination[k]["removed"] for k in empty}
        raise AblationError(f"arm {', '.join(empty)} holds no text to train on" + (
            f" (documents removed as contaminated by the eval set: {removed})" if any(removed.values()) else ""))
    n_tokens = min(available.values()) if tokens == "max" else tokens
    short = {k: v for k, v in available.items() if v < n_tokens}
    if short:
        raise AblationError(f"{n_tokens} tokens per arm asked, but " + ", ".join(
            f"{k} holds {v}" for k, v in sorted(short.items())) + f" (the largest budget every arm allows: "
            f"{min(available.values())}; tokens: max picks it)")
    return n_tokens


def run_ablation(output: str | Path, params: AblationParams, *, use_ray: bool = True,
                 say: Callable[[str], None] = lambda s: log.info(s), expected_id: str | None = None) -> dict:
    from filters.lm.bpe import end_of_text_id, load_tokenizer

    _check_installed(params.model)
    folder = JobFolder(output)
    started = time.perf_counter()
    eval_texts = load_eval_texts(params.eval, params.eval_text_field)
    eval_sha = atomic.sha256_file(Path(params.eval))
    job = folder.job() if folder.started() else {}
    aid = ablation_id(job.get("spec_hash", ""), params, eval_sha)
    if expected_id and aid != expected_id:  # e.g. the eval file changed between submission and start
        raise AblationError(f"this ablation is {aid}, not the {expected_id} submitted: its eval set or tokenizer "
                            "changed since; submit it again")
    arms = build_arms(output)
    if params.arms:
        unknown = sorted(set(params.arms) - {a.name for a in arms})
        if unknown:
            raise AblationError(f"no arm {', '.join(unknown)}; this job's arms: {', '.join(a.name for a in arms)}")
        arms = [a for a in arms if a.name in params.arms]
    contamination = _decontaminate(arms, eval_texts, params.decontaminate)
    try:
        tokenizer = load_tokenizer(params.tokenizer)
    except ValueError as exc:
        raise AblationError(str(exc)) from None
    eot, vocab = end_of_text_id(tokenizer), tokenizer.get_vocab_size()
    _tokenize(arms, tokenizer)
    available = {a.name: int(sum(len(t) + 1 for t in a.tokens)) for a in arms}
    n_tokens = budget(arms, available, contamination, params.tokens)
    eval_docs = [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(eval_texts)]
    eval_bytes = sum(len(t.encode("utf-8")) for t in eval_texts)
    where = folder.ablation_dir(aid)
    runs_dir = where / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    say(f"ablation {aid}: {len(arms)} arms × {params.seeds} seeds at {n_tokens} tokens each, {params.model} model")
    jobs = []
    for arm in arms:
        for seed in range(params.seeds):
            stream, used = draw(arm, seed, n_tokens, eot)
            assert len(stream) == n_tokens  # the contract every arm is compared under
            jobs.append((arm.name, seed, stream, used))
    results = _execute(jobs, runs_dir, eval_docs, eval_bytes, params, eot, vocab, use_ray, say)
    result = {
        "ablation_id": aid, "job_id": job.get("job_id"), "job_name": job.get("name"),
        "spec_hash": job.get("spec_hash"), "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params.model_dump(), "tokens": n_tokens,
        "eval": {"path": str(Path(params.eval).resolve()), "sha256": eval_sha, "docs": len(eval_texts),
                 "bytes": eval_bytes, "tokens": int(sum(len(d) for d in eval_docs))},
        "tokenizer": {"path": str(Path(params.tokenizer).resolve()) if params.tokenizer else "bundled",
                      "vocab_size": vocab},
        "arms": [], "wall_seconds": None,
    }
    random_mean = None
    for arm in arms:
        runs = sorted(results[arm.name], key=lambda r: r["seed"])
        bpb = summarise([r["bits_per_byte"] for r in runs])
        if arm.kind == "random":
            random_mean = bpb["mean"]
        result["arms"].append({"name": arm.name, "kind": arm.kind, "stage": arm.stage, "note": arm.note,
                               "docs": len(arm.texts), "available_tokens": available[arm.name],
                               "contamination": contamination[arm.name], "bits_per_byte": bpb, "runs": runs})
    random_runs = {r["seed"]: r["bits_per_byte"] for a in result["arms"] if a["kind"] == "random" for r in a["runs"]}
    for a in result["arms"]:
        a["delta_vs_random"] = None if random_mean is None else a["bits_per_byte"]["mean"] - random_mean
        # paired by seed (the same seed: the same initialisation and row order)
        diffs = [r["bits_per_byte"] - random_runs[r["seed"]] for r in a["runs"] if r["seed"] in random_runs]
        a["delta_vs_random_paired"] = summarise(diffs) if diffs and a["kind"] != "random" else None
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    from workers.ablate_report import write_plot

    write_plot(result, where / "plot.png")
    atomic.write_json(result, where / "result.json")
    return result


def _run_file(runs_dir: Path, arm: str, seed: int) -> Path:
    return runs_dir / f"{arm.replace(':', '_')}.{seed}.json"


def _execute(jobs: list, runs_dir: Path, eval_docs: list, eval_bytes: int, params: AblationParams, eot: int,
             vocab: int, use_ray: bool, say: Callable[[str], None]) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    todo = []
    device = "cuda" if params.device.startswith("cuda") else "cpu"
    for arm, seed, stream, used in jobs:
        path = _run_file(runs_dir, arm, seed)
        stored = atomic.read_json(path) if path.exists() else None
        same = stored and (stored.get("stream_sha256"), stored.get("device")) == (_sha(stream), device)
        if same:  # finished by an earlier, interrupted run of this ablation, on the same tokens and device
            results.setdefault(arm, []).append(stored)
        else:
            todo.append((arm, seed, stream, used))
    p = params.model_dump()
    streams = {(arm, seed): _sha(stream) for arm, seed, stream, _ in todo}

    def done(arm: str, seed: int, used: int, run: dict) -> None:
        run = {**run, "docs_used": used, "stream_sha256": streams[(arm, seed)], "device": device}
        atomic.write_json(run, _run_file(runs_dir, arm, seed))
        results.setdefault(arm, []).append(run)
        say(f"  {arm:<34} seed {seed}: {run['bits_per_byte']:.4f} bits/byte ({run['tokens_per_second']:.0f} tok/s)")

    if not use_ray:
        for arm, seed, stream, used in todo:
            done(arm, seed, used, _train_and_eval(stream, eval_docs, eval_bytes, p, seed, eot, vocab))
        return results
    import ray

    from workers.passes import connect_ray

    connect_ray()
    gpus = 1 if params.device.startswith("cuda") else 0
    cluster = ray.cluster_resources()
    if gpus and cluster.get("GPU", 0) < 1:
        raise AblationError(f"device {params.device} asked, but the Ray cluster has no GPU")
    if params.cpus_per_run > cluster.get("CPU", 0):
        raise AblationError(f"cpus_per_run {params.cpus_per_run} exceeds the Ray cluster's {cluster.get('CPU', 0):g} "
                            "CPUs: no run could ever start")
    if gpus:
        p["device"] = "cuda"  # Ray gives each task its own GPU, which the task sees as cuda:0
    remote = ray.remote(num_cpus=params.cpus_per_run, num_gpus=gpus, max_retries=1)(_train_and_eval)
    eval_ref = ray.put(eval_docs)
    pending = {remote.remote(stream, eval_ref, eval_bytes, p, seed, eot, vocab): (arm, seed, used)
               for arm, seed, stream, used in todo}
    failures = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        arm, seed, used = pending.pop(ready[0])
        try:
            done(arm, seed, used, ray.get(ready[0]))
        except ray.exceptions.RayTaskError as exc:  # store every other run first: a rerun resumes
            failures.append(f"{arm} seed {seed}: {exc.cause!r}")
    if failures:
        raise AblationError(f"{len(failures)} of {len(todo)} runs failed (the others are stored; rerun to resume): "
                            + "; ".join(failures[:3]))
    return results


def _sha(stream: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(stream, dtype=np.int64).tobytes()).hexdigest()


__all__ = ["AblationError", "AblationParams", "ArmError", "load_eval_texts", "run_ablation"]
