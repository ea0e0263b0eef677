"""The ``curate`` command line: ingest, run, plan, demo, why, jobs, schema, export-scores, contamination, index,
export, publish, ablate, ablations, serve, keys, catalog.

Exit status: 0 success; 1 a runtime failure (bad input data, a failed job, a missing or
locked catalog, an unknown job, document, stage or key); 2 a usage error (argparse's, or a
job spec that cannot be read or is invalid: the invocation is wrong, nothing ran); 130
interrupted (Ctrl-C; a job is left resumable). Errors always go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from filters.lm.family import FamilyError
from filters.minhash_index import MinHashIndexError
from filters.text_files import TextFileError
from service.catalog import Catalog, CatalogError, default_path
from workers.ablate import AblationError
from workers.ablate_arms import ArmError
from workers.export_scores import FORMATS, ExportError
from workers.job import JobError, run_job
from workers.job_folder import JobFolder
from workers.shards import InputError
from workers.spec import SpecError, load_spec, local_paths, parse_spec

EXIT_FAILURE = 1  # runtime: bad input data, a failed job, catalog locked or missing, unknown job/doc/stage
EXIT_USAGE = 2  # argparse errors and an unreadable or invalid job spec
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a job ran: carries its output folder for the message."""

    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output


def curate_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("curate")
    except PackageNotFoundError:
        from workers.manifest import code_version

        return code_version()


def _register(output: str, catalog: str | None, error: Exception | None = None) -> None:
    """Record the job in the catalog; a busy catalog is a warning, the job folder has it all."""
    if not JobFolder(output).started():
        return
    try:
        with Catalog(catalog) as c:
            c.register_job(output, state="failed" if error else "succeeded", error=error and str(error),
                           error_code=getattr(error, "code", None))
    except CatalogError as exc:
        print(f"warning: lineage not registered: {exc}", file=sys.stderr)


def format_funnel(manifest: dict) -> str:
    created = any(row["created"] for row in manifest["funnel"])
    width = max(22, *(len(row["stage"]) + 2 for row in manifest["funnel"]))
    lines = [f"{'stage':<{width}}{'in':>9}{'kept':>9}{'dropped':>9}" + (f"{'created':>9}" if created else "")
             + "  top reasons"]
    for row in manifest["funnel"]:
        reasons = ", ".join(f"{r}={n}" for r, n in list(row["reasons"].items())[:3])
        extra = f"{row['created']:>9}" if created else ""
        edited = f" (edited {row['edited']})" if row["edited"] else ""
        lines.append(f"{row['stage']:<{width}}{row['docs_in']:>9}{row['kept']:>9}{row['dropped']:>9}{extra}  "
                     f"{reasons}{edited}".rstrip())
    notes = [note for row in manifest["funnel"] if (note := _stage_note(row))]
    return "\n".join(lines + ([""] + notes if notes else []))


def _stage_note(row: dict) -> str:
    """A line for a stage that made failed attempts or reported counters (e.g. rephrasing:
    generations, cache hits, tokens and tokens/s)."""
    parts = []
    if row.get("created_rejected"):
        reasons = ", ".join(f"{r}={n}" for r, n in row["created_reasons"].items())
        parts.append(f"{row['created_rejected']} attempts rejected ({reasons})")
    stats = row.get("stage_stats") or {}
    if stats.get("rescued"):
        parts.append(f"{stats['rescued']:.0f} rescued from an earlier stage's drops")
    if stats.get("generations"):
        parts.append(f"{stats['generations']:.0f} generations ({stats.get('cache_hits', 0):.0f} from cache), "
                     f"tokens in {stats.get('tokens_in', 0):.0f} / out {stats.get('tokens_out', 0):.0f}")
        if stats.get("generation_seconds"):
            parts.append(f"{stats.get('tokens_out_paid', 0) / stats['generation_seconds']:.1f} tokens/s per actor")
    return f"{row['stage']}: " + "; ".join(parts) if parts else ""


def summary(manifest: dict, data: Path) -> str:
    out, inp = manifest["output"], manifest["input"]
    counts = f"{out['rows']} of {inp['rows']} docs kept" if not out["created"] else \
        f"{out['rows']} docs out of {inp['rows']} input docs ({out['created']} created by transforms)"
    return f"job {manifest['job_id']}: {counts} in {len(manifest['files'])} shards under {data}"


def cmd_run(args: argparse.Namespace) -> int:
    spec = local_paths(load_spec(args.spec))
    try:
        manifest = run_job(spec, overwrite=args.overwrite, progress=not args.no_progress)
    except KeyboardInterrupt:  # not recorded in error.json: the completion markers make it resumable
        raise Interrupted(spec.output) from None
    except (InputError, JobError) as exc:
        if getattr(exc, "code", None) != "output_conflict":  # a conflict: the folder is another job's
            _register(spec.output, args.catalog, error=exc)
        raise
    _register(spec.output, args.catalog)
    print(format_funnel(manifest))
    print("\n" + summary(manifest, Path(spec.output, "data")))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from workers.cost_plan import PlanError, format_plan, plan

    spec = local_paths(load_spec(args.spec))
    cpus = args.cpus
    if cpus is None and os.environ.get("RAY_ADDRESS"):  # a cluster: plan for its CPUs
        from workers.passes import cluster_cpus, connect_ray

        connect_ray()
        cpus = cluster_cpus()
    try:
        result = plan(spec, sample=args.sample, cpus=cpus)
    except PlanError as exc:
        raise JobError(str(exc), "stage_failed") from None
    text = json.dumps(result, indent=1) if args.json else format_plan(result)
    if args.out:
        from workers import atomic

        atomic.write_text(text + "\n", Path(args.out))
    else:
        print(text)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from workers.ingest import ingest

    result = ingest(args.inputs, args.out, text_field=args.text_field, id_field=args.id_field,
                    shard_rows=args.shard_rows, shard_mb=args.shard_mb, overwrite=args.overwrite)
    note = " (ids derived from file name and record number)" if result.derived_ids else ""
    print(f"wrote {result.rows} docs in {len(result.files)} shards to {args.out}{note}")
    if result.skipped:
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(result.skipped.items()))
        print(f"skipped WARC records without text: {kinds}")
    return 0


def cmd_preselect_family(args: argparse.Namespace) -> int:
    from filters.lm.family import read_family

    if args.action == "build":
        from workers.preselect_family import Recipe, build_family

        try:
            text = Path(args.recipe).read_text()
            recipe = Recipe.model_validate(yaml.safe_load(text))
        except (OSError, yaml.YAMLError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise SpecError(f"{args.recipe}: {exc}") from None
        family = build_family(recipe, Path(args.out), text)
        print(f"family {family['name']} version {family['version']}: {len(family['models'])} models in {args.out}")
        ref = args.out
    else:
        ref = args.family
    members, meta = read_family(ref)
    print(f"{meta.get('name', ref)} (version {meta.get('version', '?')}): benchmark = {meta.get('benchmark', '?')}")
    for m, entry in zip(members, meta["models"], strict=True):
        tokens = (entry.get("training") or {}).get("tokens")
        print(f"  {m.name:<16} {m.backend:<12} score {m.benchmark_score:>10.4f}"
              + (f"  trained on {tokens:,} tokens" if tokens else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo_corpus import build_demo_corpus, build_demo_eval_set
    from workers.ingest import ingest

    root = Path(args.out).resolve()
    raw, n = build_demo_corpus(root / "raw" / "demo.jsonl", max_docs=args.max_docs)
    eval_set = build_demo_eval_set(raw, root / "evals" / "held_out.jsonl")
    shards = ingest([str(raw)], root / "shards", shard_rows=args.shard_rows, overwrite=True)
    print(f"demo corpus: {n} docs (stdlib docstrings, installed package licences/readmes, planted faults) "
          f"→ {len(shards.files)} shards in {root / 'shards'}")
    spec_data = {
        "name": "demo", "inputs": [str(root / "shards" / "*.parquet")], "output": str(root / "run"),
        "stages": [
            {"stage": "exact_dedup_v1"},
            # A held-out "benchmark" made of a few docstrings' openings: the documents that
            # hold one are dropped (`curate contamination` prints which items were found).
            {"stage": "decontam_v1", "params": {"eval_sets": [
                {"name": "held_out_docs", "path": str(eval_set), "fields": ["question"], "id_field": "id"}]}},
            {"stage": "minhash_dedup_v1"},
            # C4's line cleaning; 3 sentences (TFDS's minimum, not datatrove's 5): docstrings are short.
            {"stage": "c4_lines_v1", "params": {"min_sentences": 3}},
            {"stage": "quality_rules_v1"},
            # DBP with the bundled MiniLM: semantic duplicates of the licence texts go, then each
            # concept cluster keeps its quota of 80% (its least prototypical docstrings first).
            {"stage": "concept_prune_v1", "params": {"keep_ratio": 0.8}},
            # Last, so the model scores only what the cheap stages kept. A 64-token window keeps
            # the demo to a few minutes on 2 cores; bits per byte, because docstrings full of
            # code split into many short tokens. The top 10% (the least English-like) drop.
            {"stage": "perplexity_v1", "params": {
                "window": args.ppl_window, "score": "bits_per_byte",
                "select": {"mode": "buckets", "percentiles": [50, 90], "keep": ["head", "middle"]}}},
            # PreSelect with the bundled family: a 200-document calibration sample (the first
            # 400 characters of each) keeps it to seconds; the classifier then scores every
            # survivor and half of their characters are kept, the best first.
            {"stage": "preselect_v1", "params": {
                "sample": 200, "max_chars": 400, "min_per_class": 3,
                "select": {"mode": "budget", "fraction": 0.5}}},
        ],
    }
    spec_path = root / "demo.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data, sort_keys=False))
    spec = parse_spec(spec_data, str(spec_path))
    try:
        manifest = run_job(spec, overwrite=True, progress=not args.no_progress)
    except KeyboardInterrupt:
        raise Interrupted(spec.output) from None
    _register(spec.output, args.catalog)
    print(format_funnel(manifest))
    print(f"\noutputs:  {root / 'run' / 'data'} ({manifest['output']['rows']} docs, manifest.json beside it)")
    print(f"lineage:  {root / 'run' / 'stages'} (decision Parquet per stage) and the catalog "
          f"{args.catalog or default_path()}")
    print(f"spec:     {spec_path} (rerun with: curate run {spec_path})")
    print(f"eval set: {eval_set} (what the job held of it: curate contamination {manifest['job_id']})")
    _print_examples(manifest["job_id"], args.catalog)
    return 0


def _print_examples(job_id: str, catalog: str | None) -> None:
    with Catalog(catalog, read_only=True) as c:
        dropped = c.examples(job_id, "quality_rules_v1")["drop"]
        kept = c.examples(job_id, "preselect_v1")["keep"]  # the last stage: kept there is kept in the output
    print("ask why:")
    for doc_id in (dropped, kept):
        if doc_id:
            print(f"  curate why {job_id} '{doc_id}'")


def cmd_why(args: argparse.Namespace) -> int:
    with Catalog(args.catalog, read_only=True) as c:
        answer = c.why(args.job, args.doc_id)
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
        return 0 if answer["outcome"] != "unknown" else EXIT_FAILURE
    if answer["outcome"] == "unknown":
        print(f"error: document {args.doc_id!r} never reached any stage of job {answer['job_id']} (unknown id?)",
              file=sys.stderr)
        return EXIT_FAILURE
    head = {"kept": "KEPT: passed every stage",
            "dropped": f"DROPPED at {answer['dropped_at']}: {answer['reason']}",
            "pending": "still in progress (job not finished)"}[answer["outcome"]]
    print(f"{answer['doc_id']} in job {answer['job_id']}: {head}")
    if answer["created_by"]:
        print(f"  created by {answer['created_by']} from {answer['parent_id']}")
    _print_stages(answer["stages"], indent="  ")
    for source in answer["sources"]:
        print(f"  source {source['doc_id']}:")
        _print_stages(source["stages"], indent="    ")
    if answer["children"]:
        kids = ", ".join(f"{c['doc_id']} ({c['stage']})" for c in answer["children"][:10])
        more = f" and {len(answer['children']) - 10} more" if len(answer["children"]) > 10 else ""
        print(f"  created from it: {kids}{more}")
    return 0


def _print_stages(stages: list[dict], indent: str) -> None:
    for s in stages:
        extra = ""
        if s["cluster_id"]:
            cid = s["cluster_id"]
            extra = f"  cluster={cid if len(cid) <= 16 else cid[:12]}"  # a hash is shortened, a name is not
        if (s["reason"] or "").endswith(".indexed_duplicate") and s["survivor_id"]:  # cluster "<job_id>:<doc id>"
            extra = f"  duplicate of {s['survivor_id']} in job {(s['cluster_id'] or '?').split(':', 1)[0]}"
        elif s["survivor_id"]:  # a duplicate names the document it duplicates, a partial copy its container
            label = "contained_in" if s["reason"] == "minhash.contained" else "survivor"
            extra += f" {label}={s['survivor_id']}"
        scores = dict(s["scores"] or {})
        if s["change"] == "edited":
            extra += f"  edited: {scores.get('chars_before', 0):.0f} -> {scores.get('chars_after', 0):.0f} chars"
        elif s["change"] == "created":
            extra += f"  created ({scores.get('chars_after', 0):.0f} chars)"
        text = ", ".join(f"{k}={v:.4g}" for k, v in scores.items())
        print(f"{indent}[{s['stage_index']}] {s['stage']:<18} {s['decision']:<5} {s['reason'] or '':<34}{extra}"
              .rstrip())
        if text:
            print(f"{indent}    {text}")
        if s.get("detail"):
            print(f"{indent}    detail: {json.dumps(s['detail'], sort_keys=True)}")


def cmd_jobs(args: argparse.Namespace) -> int:
    with Catalog(args.catalog, read_only=True) as c:
        for j in c.jobs():
            print(f"{j['job_id']:<32} {j['state']:<11} {j['input_rows'] or 0:>8} → {j['output_rows'] or 0:<8} "
                  f"{j['output']}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from workers.spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
    return 0


def _job_folder(ref: str, catalog: str | None) -> Path:
    """JOB as `curate why` takes it (job id, name or output folder, from the catalog); a job
    folder that was never registered is read directly."""
    if JobFolder(ref).started():
        return Path(ref).resolve()
    with Catalog(catalog, read_only=True) as c:
        return Path(c.resolve_job(ref)["output"])


def cmd_export_scores(args: argparse.Namespace) -> int:
    from workers.export_scores import export_scores, resolve_stage

    folder = JobFolder(_job_folder(args.job, args.catalog))
    if not folder.started():
        raise ExportError(f"{folder.root} is not a curate job folder (no job.json); was it moved or deleted?")
    stage = resolve_stage(folder, args.stage)
    out = args.out or f"{folder.job()['job_id']}.{stage['index']:02d}-{stage['name']}.scores.parquet"
    result = export_scores(folder.root, str(stage["index"]), out, args.format)
    if result.missing_units:
        print(f"warning: {result.missing_units} of {result.units} work units have not finished stage "
              f"{result.stage} (job not finished); exported the rest", file=sys.stderr)
    print(f"wrote {result.rows} rows ({len(result.score_names)} scores, {args.format}) of "
          f"{result.stage_index:02d}-{result.stage} to {result.path}")
    return 0


def cmd_contamination(args: argparse.Namespace) -> int:
    from workers.contamination_report import NoDecontamination, contamination_reports, format_reports

    folder = JobFolder(_job_folder(args.job, args.catalog))
    if not folder.started():
        raise ExportError(f"{folder.root} is not a curate job folder (no job.json); was it moved or deleted?")
    try:
        reports = contamination_reports(folder)
    except NoDecontamination as exc:
        raise ExportError(f"{exc}: add one to the spec to check training text against eval sets") from None
    print(json.dumps(reports, indent=1) if args.json else format_reports(reports, args.limit))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from workers.dedup_index import add_job, format_index

    if args.action == "add":
        result = add_job(args.index, _job_folder(args.job, args.catalog))
        print(result.message)
    else:
        print(format_index(args.index))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from curate.loader import CuratedDataset, ManifestError
    from curate.remote import FetchError
    from filters.lm.base import MissingDependency
    from filters.lm.token_encoder import load_encoder
    from workers.export_tokens import ExportError as TokenExportError
    from workers.export_tokens import export_tokens

    try:
        encoder = load_encoder(args.tokenizer, args.eos_token)
        if args.server:
            data = CuratedDataset(f"{args.server.rstrip('/')}/jobs/{args.job}", synthetic=args.synthetic)
        else:
            # A folder with a manifest (a finished job's, or a copy of one) is read directly.
            folder = Path(args.job) if (Path(args.job) / "manifest.json").exists() else \
                _job_folder(args.job, args.catalog)
            data = CuratedDataset(folder, synthetic=args.synthetic)
        name = Path(args.tokenizer).stem if args.tokenizer.endswith((".json", ".gguf")) else Path(args.tokenizer).name
        job = data.manifest.get("job_id") or Path(data.root).name
        out = Path(args.out or f"{job}.{name}.{args.format}")
        bar = _progress_bar(data.num_rows, "documents") if args.progress else None
        manifest = export_tokens(data, out, encoder, args.format, overwrite=args.overwrite,
                                 progress=bar.update_to if bar else None)
    except (ManifestError, FetchError, TokenExportError, MissingDependency, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if bar:
        bar.close()
    print(f"wrote {manifest['tokens']:,} tokens of {manifest['documents']:,} documents ({args.format}, "
          f"{manifest['dtype']}, {len(manifest['shards'])} shards) to {out} in {manifest['seconds']:.1f} s: "
          f"{manifest['tokens_per_second']:,} tokens/s; end of text {encoder.eos_token!r} = {encoder.eos_id}")
    return 0


def _key_values(items: list[str], option: str) -> dict | None:
    """``KEY=VALUE`` arguments, each value read as YAML; None once a malformed one is reported."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: {option} takes KEY=VALUE (a YAML value), got {item!r}", file=sys.stderr)
            return None
        values[key] = yaml.safe_load(value)
    return values


def cmd_publish(args: argparse.Namespace) -> int:
    from workers.publish import PublishError, publish

    options = _key_values(args.storage_option, "--storage-option")
    if options is None:
        return EXIT_USAGE
    # A folder with a manifest (a finished job's, or a copy of one) is read directly.
    folder = Path(args.job) if (Path(args.job) / "manifest.json").exists() else _job_folder(args.job, args.catalog)
    manifest = folder / "manifest.json"
    bar = _progress_bar(len(json.loads(manifest.read_text())["files"]), "shards") \
        if args.progress and manifest.exists() else None
    try:
        result = publish(folder, args.url, overwrite=args.overwrite, storage_options=options,
                         progress=(lambda _shard, done, total: bar.update_to(done, total)) if bar else None)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if bar:
            bar.close()
    replaced = f"; replaced {result.replaced}" if result.replaced else ""
    removed = f", removed {len(result.removed)} of its shards" if result.removed else ""
    print(f"published job {result.job_id}: {result.files} shards, {result.bytes:,} bytes, then manifest.json, to "
          f"{result.url}{replaced}{removed}")
    for item in result.not_removed:
        print(f"warning: an old shard was not removed: {item}", file=sys.stderr)
    return 0


def _progress_bar(total: int, unit: str):
    from tqdm import tqdm

    class Bar(tqdm):
        def update_to(self, done: int, _total: int) -> None:
            self.update(done - self.n)

    return Bar(total=total, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)


def cmd_catalog_rebuild(args: argparse.Namespace) -> int:
    from service.catalog import folders, open_or_rebuild, rebuild
    from service.settings import Settings

    path = Path(args.catalog) if args.catalog else default_path()
    roots = [Path(r) for r in args.roots] or [Settings().outputs]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise CatalogError(f"no such folder: {', '.join(missing)}")
    catalog, message = open_or_rebuild(path, roots)
    with catalog:
        if message is None:
            jobs = rebuild(catalog, roots)
            message = f"registered {folders(len(jobs))} the catalog {path} did not know, under " + \
                ", ".join(map(str, roots))
    print(message)
    return 0


def cmd_preview_selection(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from workers.reselect import ReselectError, preview_selection

    params = _key_values(args.set, "--set")
    if params is None:
        return EXIT_USAGE
    folder = _job_folder(args.job, args.catalog)
    started = time.perf_counter()
    try:
        result = preview_selection(folder, args.stage, params)
    except ReselectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: {errors}", file=sys.stderr)
        return EXIT_USAGE
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({**result, "seconds": round(seconds, 3)}, indent=2))
        return 0
    print(f"{result['stage_index']:02d}-{result['stage']}: {result['docs_in']} docs; changed "
          f"{', '.join(result['changed_params']) or 'nothing'} ({seconds:.2f} s, nothing rescored)")
    for when in ("before", "after"):
        r = result[when]
        reasons = ", ".join(f"{k}={v}" for k, v in r["reasons"].items())
        print(f"  {when:<7} kept {r['kept']:>7}  dropped {r['dropped']:>7}  {reasons}")
    print(f"  newly kept {result['newly_kept']}, newly dropped {result['newly_dropped']}; {result['note']}")
    return 0


ABLATE_MODEL_FLAGS = ("n_layer", "d_model", "n_head", "context", "batch_size", "lr", "ngram_order")


def cmd_ablate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from workers.ablate import AblationParams, run_ablation
    from workers.ablate_report import format_table

    folder = _job_folder(args.job, args.catalog)
    fields = {"eval": args.eval, "eval_text_field": args.eval_field, "tokens": args.tokens, "seeds": args.seeds,
              "model": args.model, "arms": args.arms.split(",") if args.arms else None,
              "decontaminate": not args.keep_contaminated, "tokenizer": args.tokenizer, "device": args.device,
              "cpus_per_run": args.cpus_per_run}
    fields.update({k: getattr(args, k) for k in ABLATE_MODEL_FLAGS if getattr(args, k) is not None})
    try:
        params = AblationParams(**fields)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: {errors}", file=sys.stderr)
        return EXIT_USAGE
    result = run_ablation(folder, params, use_ray=not args.in_process, say=print)
    _register(str(folder), args.catalog)
    print()
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    where = JobFolder(folder).ablation_dir(result["ablation_id"])
    print(f"\nresult: {where / 'result.json'}\nplot:   {where / 'plot.png'}", file=sys.stderr)
    return 0


def cmd_ablations(args: argparse.Namespace) -> int:
    with Catalog(args.catalog, read_only=True) as c:
        rows = c.ablation_arms(args.job)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'job':<24} {'ablation':<17} {'model':<11} {'tokens':>9} {'arm':<32} {'bits/byte':>9} {'vs random':>9}")
    for r in rows:
        delta = "" if r["delta_vs_random"] is None else f"{r['delta_vs_random']:+.4f}"
        print(f"{(r['job_name'] or r['job_id'])[:24]:<24} {r['ablation_id']:<17} {r['model']:<11} {r['tokens']:>9} "
              f"{r['arm'][:32]:<32} {r['bits_per_byte']:>9.4f} {delta:>9}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import socket

    from service.ray_head import LOOPBACK_ENV

    os.environ.update(LOOPBACK_ENV)  # before Ray is imported anywhere
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("access_log", args.access_log))
                 if v is not None}
    settings = Settings(**overrides)
    try:  # before a Ray head is started for nothing
        with socket.create_server((settings.host, settings.port)):
            pass
    except OSError as exc:
        print(f"curate serve: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILURE
    # httptools parses HTTP in C (1.5x the requests of h11). The asyncio loop, not uvloop:
    # at 500 connections uvloop starves some of them (p99 5.6 s against 0.08 s here).
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                            access_log=settings.access_log, loop="asyncio", http="httptools")
    logging.getLogger("uvicorn.error").addFilter(_StartupFailure())
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn's exit 3 when the app did not start: ours is 1 (said above)
        if exc.code == uvicorn.config.STARTUP_FAILURE:
            return EXIT_FAILURE
        raise
    return 0 if server.started else EXIT_FAILURE


class _StartupFailure(logging.Filter):
    """``curate serve`` that cannot start says why in one line, not uvicorn's traceback of
    the lifespan (the ``StartupFailed`` raised by ``service.app``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "service.app.StartupFailed: " in message:
            print(f"curate serve: cannot start: {message.rsplit('service.app.StartupFailed: ', 1)[1].strip()}",
                  file=sys.stderr, flush=True)
            return False
        return True


def cmd_keys(args: argparse.Namespace) -> int:
    from service.auth import KeyStore
    from service.settings import Settings

    store = KeyStore(Settings().keys_path)
    if args.action == "create":
        key, entry = store.create(args.role, note=args.note or "")
        print(key)
        print(f"(key id {entry['id']}, role {entry['role']}; shown once, only its hash is stored)", file=sys.stderr)
    elif args.action == "list":
        for k in store.list():
            print(f"{k['id']}  {k['role']:<5}  {k['created_at']}  {k['note']}")
    elif not store.revoke(args.key_id):
        print(f"error: no key with id {args.key_id}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="curate", description="Curate pretraining data with per-document lineage.",
        epilog="exit status: 0 ok, 1 runtime failure (bad input, failed job, catalog missing or locked, unknown "
               "job/document), 2 usage error (bad arguments, unreadable or invalid job spec), 130 interrupted "
               "(the job is resumable: run the same command again)")
    p.add_argument("--version", action="version", version=f"curate {curate_version()}",
                   help="print the version and exit")
    p.add_argument("--catalog", help="DuckDB catalog file (default: $CURATE_HOME/catalog.duckdb, ~/.curate)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                         help="`curate COMMAND --help` shows its arguments")

    run = sub.add_parser("run", help="run (or resume) a curation job from a YAML/JSON spec",
                         description="Run a job, or resume it from its completion markers (after a crash or "
                                     "Ctrl-C, run the same command again). Prints the funnel per stage.")
    run.add_argument("spec", help="job spec file (YAML, or JSON by .json suffix); `curate schema` prints its schema")
    run.add_argument("--overwrite", action="store_true", help="replace an output folder that holds another job")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    pln = sub.add_parser("plan", help="estimate a job's time, disk and memory before launching it",
                         description="Runs the job's stages on two small samples of its input in this process "
                                     "(nothing is written to the output folder), fits each step's cost to the "
                                     "documents it sees, and extrapolates to the whole input: per stage documents, "
                                     "tokens, CPU and wall time for the cluster's CPUs, fit memory and disk.")
    pln.add_argument("spec", help="job spec file (YAML, or JSON by .json suffix)")
    pln.add_argument("--sample", type=int, default=400, help="documents to measure on (default: 400)")
    pln.add_argument("--cpus", type=int, help="CPUs of the cluster it would run on (default: this machine's)")
    pln.add_argument("--json", action="store_true", help="print the plan as JSON")
    pln.add_argument("--out", help="write the plan to this file instead of printing it")
    pln.set_defaults(func=cmd_plan)

    ing = sub.add_parser("ingest", help="JSONL(.gz) / Parquet / WARC / WET / text files → Parquet shards",
                         description="Read documents and write part-NNNNN.parquet shards with id, text and every "
                                     "other field.")
    ing.add_argument("inputs", nargs="+", help="files, folders or globs")
    ing.add_argument("--out", required=True, help="folder to write the shards to")
    ing.add_argument("--text-field", default="text", help="field (JSON) or column (Parquet) with the text "
                     "(default: text)")
    ing.add_argument("--id-field", default="id", help="field or column with the document id; when absent, ids are "
                     "<file stem>:<record number> (default: id)")
    ing.add_argument("--shard-rows", type=int, default=10_000, help="max docs per shard (default: 10000)")
    ing.add_argument("--shard-mb", type=float, help="max text megabytes per shard")
    ing.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    ing.set_defaults(func=cmd_ingest)

    demo = sub.add_parser("demo", help="build a corpus from this Python install and curate it end to end",
                          description="Build a corpus from the standard library's docstrings and installed "
                                      "package licences, ingest it and run every stage on it.")
    demo.add_argument("--out", default="curate-demo", help="folder for the corpus, shards, spec and job "
                      "(default: curate-demo)")
    demo.add_argument("--max-docs", type=int, default=3000, help="documents in the corpus (default: 3000)")
    demo.add_argument("--shard-rows", type=int, default=500, help="max docs per shard (default: 500)")
    demo.add_argument("--ppl-window", type=int, default=64,
                      help="tokens the perplexity stage scores per document (default: 64)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    why = sub.add_parser("why", help="explain what happened to one document in a job",
                         description="Every stage a document reached: scores, decision and reason. Exits 1 for "
                                     "a document the job never saw.")
    why.add_argument("job", help="job id, job name (latest run) or output folder")
    why.add_argument("doc_id", help="document id")
    why.add_argument("--json", action="store_true", help="print the answer as JSON (also for an unknown document)")
    why.set_defaults(func=cmd_why)

    schema = sub.add_parser("schema", help="print the JSON Schema of a job spec",
                            description="The JSON Schema (draft 2020-12) of a job spec, every stage's params "
                                        "included, for editors and validators.")
    schema.set_defaults(func=cmd_schema)

    export = sub.add_parser("export-scores", help="write one stage's lineage and scores as a flat Parquet file",
                            description="Lineage stores scores as a map, which Hugging Face datasets cannot "
                                        "load; this writes one Parquet file with doc_id, parent_id, decision, "
                                        "reason, change, cluster_id, survivor_id and the scores as plain columns.")
    export.add_argument("job", help="job id, job name (latest run) or output folder")
    export.add_argument("--stage", required=True, help="stage name (quality_rules_v1), index (2) or NN-name")
    export.add_argument("--out", help="Parquet file to write (default: <job id>.<NN>-<stage>.scores.parquet here)")
    export.add_argument("--format", choices=FORMATS, default="wide",
                        help="wide: a float64 column score_<name> per score (default); struct: one scores column")
    export.set_defaults(func=cmd_export_scores)

    con = sub.add_parser("contamination", help="which eval items a job's training data held (decontam_v1)",
                         description="The report of each decontam_v1 stage of a job: per eval set its items, "
                                     "those found in training documents, and per item found the documents that "
                                     "hold it and the best share of its n-grams in one document.")
    con.add_argument("job", help="job id, job name (latest run) or output folder")
    con.add_argument("--json", action="store_true", help="print the reports as JSON, every item")
    con.add_argument("--limit", type=int, default=50, help="items to list per stage (default: 50)")
    con.set_defaults(func=cmd_contamination)

    idx = sub.add_parser("index", help="publish finished jobs' survivors to a dedup index (`against:`)",
                         description="add: publish the documents a finished job kept, with its minhash_dedup_v1 "
                                     "scores and its exact_dedup_v1 text hashes (whichever it ran), as a new version "
                                     "of INDEX_DIR (refused when its params differ; a job already in it is not added "
                                     "twice). show: versions, jobs and rows. A later job removes its "
                                     "near-duplicates of them with minhash_dedup_v1 `against: INDEX_DIR` (reason "
                                     "minhash.indexed_duplicate), its exact copies with exact_dedup_v1 `against: "
                                     "INDEX_DIR` (reason exact_dedup.indexed_duplicate).")
    idx_sub = idx.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                                 help="`curate index ACTION --help` shows its arguments")
    idx_add = idx_sub.add_parser("add", help="add a finished job's survivors as a new version",
                                 description="Add a finished job's survivors as a new index version.")
    idx_add.add_argument("index", metavar="INDEX_DIR", help="the index folder (created if absent)")
    idx_add.add_argument("job", metavar="JOB", help="job id, job name (latest run) or output folder")
    idx_show = idx_sub.add_parser("show", help="print versions, jobs and rows",
                                  description="Print an index's versions, jobs and rows.")
    idx_show.add_argument("index", metavar="INDEX_DIR", help="the index folder")
    idx.set_defaults(func=cmd_index)

    cat = sub.add_parser("catalog", help="maintain the DuckDB catalog",
                         description="Maintain the DuckDB lineage catalog.")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True, metavar="ACTION", help="what to do")
    reb = cat_sub.add_parser("rebuild", help="register the job folders under ROOTs the catalog lacks",
                             description="Register every job folder under the ROOTs that the catalog does not "
                                         "know. A damaged catalog file is moved aside first. The job folders hold "
                                         "everything the catalog records. The service must be stopped, because "
                                         "the catalog has one writer.")
    reb.add_argument("roots", nargs="*", metavar="ROOT",
                     help="folders holding job folders (default: $CURATE_OUTPUT_ROOT or $CURATE_HOME/runs)")
    reb.set_defaults(func=cmd_catalog_rebuild)

    tok = sub.add_parser("export", help="tokenize a job's output into token shards for training (npy, megatron)",
                         description="Write a finished job's output documents as token shards: flat uint16/uint32 "
                                     ".npy with a documents sidecar (OLMo / nanoGPT), or Megatron-LM .bin/.idx; "
                                     "each document ends with the end-of-text token; tokens.json lists shards, "
                                     "documents, tokens and sha256.")
    tok.add_argument("job", help="job id, job name (latest run) or output folder; with --server, a job id there")
    tok.add_argument("--tokenizer", required=True,
                     help="a bundled model (smollm2-135m, gemma3-270m: its tokenizer), a .gguf, a tokenizer.json, "
                          "a Hugging Face tokenizer folder, or ablation-bpe")
    tok.add_argument("--format", choices=("npy", "megatron"), default="npy", help="default npy")
    tok.add_argument("--out", help="folder to write (default: <job id>.<tokenizer>.<format> here)")
    tok.add_argument("--eos-token", help="the end-of-text token (default: <|endoftext|>, </s>, <eos>... if in the "
                                         "vocabulary, else the tokenizer's own)")
    tok.add_argument("--synthetic", choices=("include", "exclude", "only"), default="include",
                     help="rows a stage created (rephrase_v1): include (default), exclude, or only those")
    tok.add_argument("--server", help="a running service's URL: download the job's output first (cached, "
                                      "verified; API key from $CURATE_API_KEY)")
    tok.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    tok.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    tok.set_defaults(func=cmd_export)

    pub = sub.add_parser("publish", help="copy a finished job's output to object storage (s3://, gs://, ...)",
                         description="Upload a finished job's output shards, each checked against the manifest "
                                     "(sha256 before, size after), then manifest.json last, so a reader never "
                                     "sees an unfinished publication as complete. Read it back with "
                                     "CuratedDataset(URL). Credentials and endpoint: the storage's own "
                                     "configuration (for s3://: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                     "AWS_PROFILE, AWS_ENDPOINT_URL) or --storage-option.")
    pub.add_argument("job", help="job id, job name (latest run) or output folder of a finished job")
    pub.add_argument("url", help="destination prefix: any fsspec URL (s3://bucket/prefix needs s3fs) or a folder")
    pub.add_argument("--overwrite", action="store_true",
                     help="replace a publication already at URL (its manifest is removed first)")
    pub.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                     help="an fsspec storage option, the value in YAML (e.g. endpoint_url=http://minio:9000, "
                          "profile=prod); repeat for several")
    pub.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    pub.set_defaults(func=cmd_publish)

    pre = sub.add_parser(
        "preview-selection", help="re-decide one stage from its stored scores with other select params",
        description="What a stage would keep with other selection parameters (thresholds, budgets, quotas), "
                    "computed from the stored scores and fits: nothing is rescored, re-embedded or re-clustered, "
                    "and the job's outputs are left as they are. Params that change scoring are refused.")
    pre.add_argument("job", help="job id, job name (latest run) or output folder")
    pre.add_argument("stage", help="stage name (concept_prune_v1), index (2) or NN-name")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a stage param, the value in YAML (e.g. keep_ratio=0.5, "
                          "'select={mode: budget, fraction: 0.2}'); repeat for several")
    pre.add_argument("--json", action="store_true", help="print the result as JSON")
    pre.set_defaults(func=cmd_preview_selection)

    abl = sub.add_parser(
        "ablate", help="train small LMs on the curated selection vs random vs each stage; compare held-out loss",
        description="Train the same small causal LM on exactly N tokens of each arm (the job's curated selection, "
                    "random selections of its input pool, the pool filtered by each stage alone) with several "
                    "seeds, and report held-out bits per byte on a target set with 95%% intervals. Writes "
                    "ablations/<id>/result.json and plot.png in the job folder and records them in the catalog; "
                    "rerunning the same command resumes.")
    abl.add_argument("job", help="job id, job name (latest run) or output folder of a finished job")
    abl.add_argument("--eval", required=True, help="target set: JSONL(.gz) with a text field, Parquet, or .txt; "
                     "never trained on")
    abl.add_argument("--eval-field", default="text", help="text field or column of the eval set (default: text)")
    abl.add_argument("--tokens", type=lambda v: v if v == "max" else int(v), default="max",
                     help="training tokens per arm, or max: the smallest arm's size (default: max)")
    abl.add_argument("--seeds", type=int, default=3, help="seeds per arm (default: 3)")
    abl.add_argument("--model", choices=["transformer", "ngram"], default="transformer",
                     help="transformer: a small causal LM in torch; ngram: Kneser-Ney, seconds not minutes")
    abl.add_argument("--arms", help="comma-separated arm names to train (default: all)")
    abl.add_argument("--keep-contaminated", action="store_true", help="train on documents that share a 13-gram "
                     "with the eval set (reported and flagged) instead of removing them")
    abl.add_argument("--tokenizer", help="tokenizers JSON file (default: the bundled ablation BPE)")
    abl.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    abl.add_argument("--cpus-per-run", type=int, default=2, help="CPUs (torch threads) per run (default: 2)")
    for flag in ABLATE_MODEL_FLAGS:
        abl.add_argument(f"--{flag.replace('_', '-')}", type=float if flag == "lr" else int,
                         help="model hyper-parameter (default: see `curate ablate` in the README)")
    abl.add_argument("--in-process", action="store_true", help="train in this process instead of Ray tasks")
    abl.add_argument("--json", action="store_true", help="print the result as JSON")
    abl.set_defaults(func=cmd_ablate)

    abls = sub.add_parser("ablations", help="list recorded ablation results (all jobs, or one)",
                          description="Bits per byte per arm of every ablation in the catalog, to compare jobs.")
    abls.add_argument("job", nargs="?", help="job id, name or output folder (default: every job)")
    abls.add_argument("--json", action="store_true", help="print the rows as JSON")
    abls.set_defaults(func=cmd_ablations)

    fam = sub.add_parser(
        "preselect-family", help="build or show a PreSelect model family (preselect_v1's `family:`)",
        description="build: train the small LMs a recipe (YAML) names on its corpora, measure each on the "
                    "recipe's target set, and write a hashed family folder a job names in `family:`. "
                    "show: print a family's models, benchmark scores and version.")
    fam_sub = fam.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                             help="`curate preselect-family ACTION --help` shows its arguments")
    fam_build = fam_sub.add_parser("build", help="train a family from a recipe", description="Train a family "
                                   "from a recipe (see bench/preselect_family_v1.yaml); the folder is written "
                                   "whole or not at all.")
    fam_build.add_argument("recipe", help="recipe YAML")
    fam_build.add_argument("--out", required=True, help="the family folder to write")
    fam_show = fam_sub.add_parser("show", help="print a family", description="Print a family's models.")
    fam_show.add_argument("family", nargs="?", default="preselect-family-v1",
                          help="a family folder, or the bundled family's name (default)")
    fam.set_defaults(func=cmd_preselect_family)

    serve = sub.add_parser("serve", help="start the REST API (and a local Ray head unless RAY_ADDRESS is set)",
                           description="Start the REST API; settings from CURATE_* variables or .env.")
    serve.add_argument("--host", help="default $CURATE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default $CURATE_PORT or 8000")
    serve.add_argument("--access-log", action="store_true", default=None,
                       help="log every request (default $CURATE_ACCESS_LOG or off)")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage API keys", description="Create, list and revoke REST API keys.")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                                   help="`curate keys ACTION --help` shows its arguments")
    create = keys_sub.add_parser("create", help="create a key and print it once",
                                 description="Create a key and print it once; only its hash is stored.")
    create.add_argument("--role", choices=["admin", "read"], default="read",
                        help="read: query jobs; admin: also submit, cancel and retry (default: read)")
    create.add_argument("--note", help="free text stored with the key")
    keys_sub.add_parser("list", help="list key ids and roles", description="List key ids, roles and notes.")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id", description="Revoke a key by id.")
    revoke.add_argument("key_id", help="key id, as `curate keys list` shows it")
    keys.set_defaults(func=cmd_keys)

    jobs = sub.add_parser("jobs", help="list jobs in the catalog",
                          description="List the jobs in the catalog: id, state, docs in and out, output folder.")
    jobs.set_defaults(func=cmd_jobs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse prints to stderr and exits 2
    try:
        return args.func(args)
    except SpecError as exc:  # the invocation names a spec that cannot be read or is invalid: nothing ran
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InputError, JobError, CatalogError, ExportError, AblationError, ArmError, FamilyError,
            TextFileError, MinHashIndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            print(f"interrupted: the job in {exc.output} is resumable: run the same command again", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `curate why ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
