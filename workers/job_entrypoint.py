"""``python -m workers.job_entrypoint SPEC``: the job driver entrypoint (what a Ray job runs).

Exit status 1 on failure; the failure itself is in the job folder's ``error.json``
(code, message, stage, shard, row), which is what the service reads, not this output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workers.job import JobError, run_job
from workers.shards import InputError
from workers.spec import SpecError, load_spec, local_paths, parse_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.job_entrypoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("spec", nargs="?", help="job spec file (YAML or JSON); relative paths are relative to the "
                        "working directory")
    source.add_argument("--spec-file", help="the job spec as a JSON file, paths already resolved (how the "
                        "service submits: a command line is capped at 128 KiB, a spec may be larger)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.spec_file:
            spec = parse_spec(json.loads(Path(args.spec_file).read_text()), args.spec_file)
        else:
            spec = local_paths(load_spec(args.spec))
        manifest = run_job(spec, overwrite=args.overwrite, progress=not args.no_progress)
    except (SpecError, InputError, JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"job {manifest['job_id']} complete: {manifest['output']['rows']} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
