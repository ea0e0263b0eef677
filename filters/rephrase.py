"""``rephrase_v1``: WRAP rephrasing (Maini et al. 2024; methods.md §5).

Each document is split into whole-sentence chunks of at most ``chunk_tokens`` tokens
(counted with the generator's own tokenizer), and chunks are rephrased by an instruct
model in the paper's styles, with its system text and prompts byte for byte
(``filters/wrap_chunks.py``). Every accepted rephrasing becomes a new document with its
own id, ``parent_id`` = the source, and a ``detail`` record: chunk index, style, model,
prompt hash, sampling, token counts, finish reason. A rejected generation (truncated,
looping, echoing the prompt, copying the chunk, far too short; ``filters/wrap_post.py``)
is recorded in lineage with its reason and creates nothing. The source is never lost.

Mixing (``mix``):

* ``real_and_synthetic`` (default): the source stays; ``ratio`` rephrasings per chunk.
* ``synthetic_only``: the source is replaced (``rephrase.replaced``) when every one of
  its chunks has an accepted rephrasing; otherwise it stays, so no text goes missing.
* ``synthetic_for: <reason>`` (with either mix ignored): only documents an earlier stage
  dropped with that reason are rephrased (the Nemotron-CC pattern: rescue low-quality
  text instead of losing it); they stay dropped (``rephrase.rescued``), their rephrasings
  join the corpus, and every other document passes untouched.

Backends: ``llama_cpp`` (in-process, one model per Ray actor; the bundled
SmolLM2-135M-Instruct GGUF by default) and ``openai`` (any OpenAI-compatible server, with
bounded concurrency, retries and backoff). Finished generations are cached in the job's
workspace, keyed by model + messages + sampling, so a rerun never pays twice for a chunk;
``max_total_tokens`` stops the job cleanly once the paid tokens reach it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from filters.base import (
    DROP,
    ID,
    KEEP,
    RESCUED,
    TEXT,
    Fitted,
    ModelParams,
    NewDoc,
    StageParams,
    Transformed,
    TransformStage,
)
from filters.lm.chat import ChatGenerator, Generation
from filters.lm.generation_cache import GenerationCache, generation_key
from filters.lm.models import SMOLLM2, ModelRef, bundled_installed, model_file_list
from filters.lm.token_ledger import TokenLedger
from filters.rephrase_plan import styles_per_chunk
from filters.wrap_chunks import STYLE_PROMPTS, Chunk, pack_chunks, wrap_messages
from filters.wrap_post import check_output

# Tokens of the system text, a style prompt and the chat template around a chunk (SmolLM2:
# 62-82 with the paper's prompts), with room for longer user prompts.
PROMPT_OVERHEAD = 200
REJECT_REASONS = ("rephrase.chunk_too_long",
                  "rephrase.truncated", "rephrase.empty_output", "rephrase.repetition", "rephrase.echoed_prompt",
                  "rephrase.copied_input", "rephrase.too_short")


class RephraseParams(ModelParams):
    execution_fields: ClassVar[frozenset[str]] = ModelParams.execution_fields | {
        "concurrency", "timeout_s", "max_retries", "backoff_s", "max_total_tokens"}

    backend: Literal["llama_cpp", "openai"] = "llama_cpp"
    model: ModelRef | None = Field(None, description="llama_cpp: smollm2-135m (default) or a .gguf path; openai: "
                                   "the server's model id (default: the first of its /v1/models)")
    base_url: str | None = Field(None, description="openai: the server, e.g. http://127.0.0.1:8000/v1 "
                                 "(default: $OPENAI_BASE_URL)")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: the environment variable holding the API key "
                             "(a key is never written into a spec, lineage or job.json)")
    tokenizer: ModelRef | None = Field(None, description="openai: count chunk tokens with this GGUF (or bundled "
                                       "name) instead of the server's tokenize endpoint")
    styles: list[str] = Field(["medium", "qa"], min_length=1, description="styles to rotate over: easy, medium, "
                              "hard, qa, or names from `prompts`")
    prompts: dict[str, str] = Field({}, description="your own styles: name -> prompt (the chunk follows on a new line)")
    chunk_tokens: int = Field(300, ge=16, le=8192, description="max tokens per chunk (whole sentences)")
    mix: Literal["real_and_synthetic", "synthetic_only"] = "real_and_synthetic"
    ratio: float = Field(1.0, gt=0, description="rephrasings per real chunk (at most one per style)")
    synthetic_for: str | None = Field(None, description="rephrase only documents an earlier stage dropped with this "
                                      "reason, e.g. perplexity.too_high")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = 0
    max_new_tokens: int = Field(512, ge=1, description="per generation; a generation cut here is rejected")
    min_length_ratio: float = Field(0.25, ge=0, le=1, description="reject outputs with fewer words than this × "
                                    "the chunk's")
    max_repetition: float = Field(0.5, gt=0, le=1, description="reject outputs whose share of repeated word "
                                  "3-grams exceeds this")
    n_ctx: int = Field(2048, ge=256, description="llama_cpp: context window")
    # Execution only: never change a generation.
    concurrency: int = Field(4, ge=1, le=256, description="openai: requests in flight per actor")
    timeout_s: float = Field(120, gt=0, description="openai: seconds per request")
    max_retries: int = Field(5, ge=0, description="openai: retries on 429/5xx/connection errors")
    backoff_s: float = Field(1.0, ge=0, description="openai: first retry delay (doubles each retry)")
    max_total_tokens: int | None = Field(None, ge=1, description="the job's budget of paid tokens (prompt + "
                                         "completion); the job stops cleanly when it is spent")

    _bundled_installed = field_validator("model", "tokenizer")(bundled_installed)

    @model_validator(mode="after")
    def _check(self) -> RephraseParams:
        clash = set(self.prompts) & set(STYLE_PROMPTS)
        if clash:
            raise ValueError(f"prompts: {sorted(clash)} are built-in styles; give your own style another name")
        unknown = [s for s in self.styles if s not in STYLE_PROMPTS and s not in self.prompts]
        if unknown:
            raise ValueError(f"styles: unknown {unknown}; built in: {', '.join(STYLE_PROMPTS)}; or define them under "
                             "prompts")
        if len(set(self.styles)) != len(self.styles):
            raise ValueError("styles: a style is listed twice")
        if self.ratio > len(self.styles):
            raise ValueError(f"ratio {self.ratio} asks for more rephrasings per chunk than there are styles "
                             f"({len(self.styles)})")
        if self.backend == "llama_cpp" and self.chunk_tokens + self.max_new_tokens + PROMPT_OVERHEAD > self.n_ctx:
            raise ValueError(f"chunk_tokens ({self.chunk_tokens}) + max_new_tokens ({self.max_new_tokens}) + the "
                             f"prompt (~{PROMPT_OVERHEAD}) exceed n_ctx ({self.n_ctx})")
        if self.backend == "llama_cpp" and self.tokenizer is not None:
            raise ValueError("tokenizer is for the openai backend (llama_cpp counts with its own model)")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r}: give an http:// or https:// URL")
        if self.synthetic_for is not None and "." not in self.synthetic_for:
            raise ValueError(f"synthetic_for: {self.synthetic_for!r} is not a reason like perplexity.too_high")
        return self

    def prompt(self, style: str) -> str:
        return self.prompts.get(style) or STYLE_PROMPTS[style]

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "max_tokens": self.max_new_tokens}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_generator(p: RephraseParams, threads: int) -> tuple[ChatGenerator, Any]:
    """(generator, token counter) for the params' backend."""
    if p.backend == "llama_cpp":
        from filters.lm.llama_cpp_chat import LlamaCppChat

        chat = LlamaCppChat(p.model or SMOLLM2, n_ctx=p.n_ctx, n_threads=threads)
        return chat, chat.count_tokens
    from filters.lm.openai_chat import OpenAIChat

    base_url = p.base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        raise ValueError("rephrase_v1: the openai backend needs base_url (or $OPENAI_BASE_URL)")
    client = OpenAIChat(base_url, model=p.model, api_key_env=p.api_key_env, timeout_s=p.timeout_s,
                        max_retries=p.max_retries, backoff_s=p.backoff_s, max_connections=p.concurrency)
    if p.tokenizer is not None:
        from filters.lm.llama_cpp_chat import LlamaCppChat

        return client, LlamaCppChat(p.tokenizer, vocab_only=True).count_tokens
    counter = client.server_tokenizer()
    if counter is None:
        raise ValueError(f"rephrase_v1: {base_url} has no tokenize endpoint (/extras/tokenize or /tokenize) to count "
                         "chunk tokens with; set tokenizer: <GGUF path or bundled name> to count them locally")
    return client, counter


class RephraseV1(TransformStage[RephraseParams]):
    name = "rephrase_v1"
    Params = RephraseParams
    creates_documents = True
    reasons = ("rephrase.replaced", "rephrase.rescued", *REJECT_REASONS)

    def __init__(self, params: StageParams | dict | None = None) -> None:
        super().__init__(params)
        self._generator: ChatGenerator | None = None
        self._count_tokens: Any = None
        self._ledger: TokenLedger | None = None

    @classmethod
    def rescues(cls, params: StageParams) -> str | None:
        assert isinstance(params, RephraseParams)
        return params.synthetic_for

    @classmethod
    def check_in_job(cls, params: StageParams, stages_before: list[str]) -> None:
        assert isinstance(params, RephraseParams)
        if params.synthetic_for is None:
            return
        from filters.registry import get_stage  # the registry imports this module

        classes = [get_stage(s) for s in stages_before]
        emitting = [i for i, c in enumerate(classes) if params.synthetic_for in c.reasons]
        if not emitting:
            raise ValueError(f"synthetic_for: no stage before rephrase_v1 drops with {params.synthetic_for!r} "
                             f"(stages before it: {', '.join(stages_before)})")
        if classes[emitting[-1]].kind != "filter":
            raise ValueError(f"synthetic_for: {stages_before[emitting[-1]]} is a transform; only a filter's drops "
                             "can be rescued")
        between = [c.name for c in classes[emitting[-1] + 1:] if c.kind == "transform"]
        if between:
            raise ValueError(f"synthetic_for: transform {between[0]} runs between {stages_before[emitting[-1]]} and "
                             "rephrase_v1, so the dropped documents are not the version it rephrases")

    def load(self) -> None:
        if self._generator is None:
            self._generator, self._count_tokens = load_generator(self.params, self.params.cpus_per_actor)

    def model_files(self) -> list[str]:
        p = self.params
        files = model_file_list(p.model or SMOLLM2) if p.backend == "llama_cpp" else []
        return files + (model_file_list(p.tokenizer) if p.tokenizer else [])

    # -- the transform ------------------------------------------------------------------
    def transform(self, docs: pa.Table, fitted: Fitted | None) -> Transformed:
        self.load()
        p = self.params
        ids, texts = docs[ID].to_pylist(), docs[TEXT].to_pylist()
        rescued = docs[RESCUED].to_pylist() if RESCUED in docs.column_names else [False] * len(ids)
        todo = [bool(r) if p.synthetic_for else True for r in rescued]
        # Every (document, chunk, style) to generate, in document order.
        jobs: list[tuple[int, int, int, str, Chunk]] = []  # doc, chunk index, chunks, style, chunk
        chunk_counts, chunk_tokens = [0] * len(ids), [0] * len(ids)
        for i, text in enumerate(texts):
            if not todo[i] or not (text or "").strip():
                continue
            chunks = pack_chunks(text, self._count_tokens, p.chunk_tokens)
            chunk_counts[i], chunk_tokens[i] = len(chunks), sum(c.tokens for c in chunks)
            for j, styles in enumerate(styles_per_chunk(ids[i], len(chunks), p.ratio, p.styles)):
                jobs += [(i, j, len(chunks), style, chunks[j]) for style in styles]
        # A single sentence longer than chunk_tokens (a table, a list without full stops) is
        # not sent: it could overflow the model's context, and the paper found long inputs
        # lose information. It is recorded as a rejected attempt.
        sendable = [k for k, job in enumerate(jobs) if not job[4].oversize]
        results, counters = self._generate([(jobs[k][3], jobs[k][4].text) for k in sendable])
        generated: dict[int, Generation] = dict(zip(sendable, results, strict=True))
        created: list[NewDoc] = []
        accepted_chunks: list[set[int]] = [set() for _ in ids]
        rejected, tokens_in, tokens_out = [0] * len(ids), [0] * len(ids), [0] * len(ids)
        for k, (i, j, n_chunks, style, chunk) in enumerate(jobs):
            prompt = p.prompt(style)
            detail: dict[str, Any] = {"source_id": ids[i], "chunk_index": j, "chunks": n_chunks, "style": style,
                                      "backend": p.backend, "prompt_sha256": _sha256(prompt), "sampling": p.sampling(),
                                      "chunk_tokens": chunk.tokens}
            gen = generated.get(k)
            if gen is None:
                created.append(NewDoc(parent=i, variant=f"c{j}.{style}", text="", detail=detail,
                                      scores={"chunk_index": float(j), "chunk_tokens": float(chunk.tokens)},
                                      reason="rephrase.chunk_too_long"))
                rejected[i] += 1
                continue
            verdict = check_output(gen.text, chunk.text, prompt, gen.finish_reason,
                                   min_length_ratio=p.min_length_ratio, max_repetition=p.max_repetition)
            tokens_in[i] += gen.prompt_tokens
            tokens_out[i] += gen.completion_tokens
            detail.update({"model": gen.model_id, "tokens_in": gen.prompt_tokens, "tokens_out": gen.completion_tokens,
                           "finish_reason": gen.finish_reason})
            if verdict.stripped:
                detail["stripped_preamble"] = verdict.stripped
            scores = {"chunk_index": float(j), "tokens_in": float(gen.prompt_tokens),
                      "tokens_out": float(gen.completion_tokens)}
            if verdict.reason is None:
                accepted_chunks[i].add(j)
                counters["synthetic_docs"] += 1
                counters["synthetic_tokens"] += gen.completion_tokens
            else:
                rejected[i] += 1
            created.append(NewDoc(parent=i, variant=f"c{j}.{style}", text=verdict.text or "", scores=scores,
                                  detail=detail, reason=verdict.reason))
        action: list[str] = []
        reason: list[str | None] = []
        for i in range(len(ids)):
            if p.synthetic_for and rescued[i]:
                action.append(DROP)
                reason.append("rephrase.rescued")
                counters["rescued"] += 1
            elif p.mix == "synthetic_only" and chunk_counts[i] and len(accepted_chunks[i]) == chunk_counts[i]:
                action.append(DROP)
                reason.append("rephrase.replaced")
            else:
                action.append(KEEP)
                reason.append(None)
            if todo[i]:
                counters["real_chunks"] += chunk_counts[i]
                counters["real_tokens"] += chunk_tokens[i]
        accepted = Counter(d.parent for d in created if d.reason is None)
        scores = pa.table({
            "chunks": pa.array(chunk_counts, pa.int64()), "chunk_tokens": pa.array(chunk_tokens, pa.int64()),
            "rephrasings": pa.array([accepted[i] for i in range(len(ids))], pa.int64()),
            "rejected": pa.array(rejected, pa.int64()),
            "tokens_in": pa.array(tokens_in, pa.int64()), "tokens_out": pa.array(tokens_out, pa.int64()),
        })
        return Transformed(action=action, text=[None] * len(ids), reason=reason, scores=scores,
                           created=tuple(created), stats={k: float(v) for k, v in counters.items()})

    def _ledger_for(self, folder: Path | None) -> TokenLedger:
        """One ledger per stage object and job (its file is this process's running total)."""
        if self._ledger is None or self._ledger.folder != folder:
            self._ledger = TokenLedger(folder, self.params.max_total_tokens)
        return self._ledger

    def _generate(self, requests: list[tuple[str, str]]) -> tuple[list[Generation], dict[str, float]]:
        """Generations for (style, chunk) requests, in order: from the cache when there,
        otherwise from the backend (``concurrency`` at a time for a server). Equal requests
        are generated once."""
        p, generator = self.params, self._generator
        assert generator is not None
        cache = GenerationCache(self.workspace / "generations") if self.workspace else None
        ledger = self._ledger_for(self.workspace / "ledger" if self.workspace else None)
        retries_before = getattr(generator, "retries", 0)
        counters = dict.fromkeys(("generations", "cache_hits", "tokens_in", "tokens_out", "tokens_out_paid",
                                  "generation_seconds", "synthetic_docs", "synthetic_tokens", "real_chunks",
                                  "real_tokens", "rescued"), 0.0)
        found: dict[str, Generation] = {}
        pending: dict[str, list[dict[str, str]]] = {}  # key -> messages, first come first served
        keys = []
        for style, chunk in requests:
            messages = wrap_messages(p.prompt(style), chunk)
            key = generation_key(generator.model_id, messages, p.sampling())
            keys.append(key)
            if key in found or key in pending:
                continue
            record = cache.get(key) if cache else None
            if record is not None:
                found[key] = Generation(**record["generation"])
            else:
                pending[key] = messages

        def run(key: str, messages: list[dict[str, str]]) -> Generation:
            ledger.check(self.name)
            started = time.perf_counter()
            gen = generator.chat(messages, max_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                                 seed=p.seed)
            if not gen.prompt_tokens:  # a server that reports no usage: count with the tokenizer
                gen = replace(gen, prompt_tokens=sum(self._count_tokens(m["content"]) for m in messages),
                              completion_tokens=self._count_tokens(gen.text) if gen.text else 0)
            if cache:  # cached before it is counted: a kill in between never pays for it twice
                cache.put(key, {"generation": asdict(gen), "seconds": time.perf_counter() - started})
            ledger.add(gen.prompt_tokens + gen.completion_tokens)
            return gen

        started = time.perf_counter()
        workers = p.concurrency if p.backend == "openai" else 1  # one llama.cpp context is not thread-safe
        if workers == 1:
            for key, messages in pending.items():
                found[key] = run(key, messages)
        elif pending:
            pool = ThreadPoolExecutor(max_workers=workers)
            futures = {pool.submit(run, key, messages): key for key, messages in pending.items()}
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # the first failure stops the rest: nothing more is paid for
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            for future, key in futures.items():
                found[key] = future.result()
        if pending:  # wall time of the paid generations (tokens/s per actor)
            counters["generation_seconds"] = time.perf_counter() - started
            counters["tokens_out_paid"] = float(sum(found[k].completion_tokens for k in pending))
        out = [found[k] for k in keys]
        counters["generations"] = float(len(out))
        counters["cache_hits"] = float(len(out) - len(pending))
        counters["tokens_in"] = float(sum(g.prompt_tokens for g in out))
        counters["tokens_out"] = float(sum(g.completion_tokens for g in out))
        counters["retries"] = float(getattr(generator, "retries", 0) - retries_before)
        return out, counters
