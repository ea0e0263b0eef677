"""``python -m workers.run SPEC``: the job driver entrypoint (what a Ray job runs)."""

from __future__ import annotations

import argparse
import base64
import json
import sys

from workers.driver import JobError, run_job
from workers.shards import InputError
from workers.spec import SpecError, load_spec, parse_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.run")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("spec", nargs="?", help="job spec file (YAML or JSON)")
    source.add_argument("--spec-b64", help="the job spec as URL-safe base64 JSON (how the service submits)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.spec_b64:
            data = json.loads(base64.urlsafe_b64decode(args.spec_b64))
            spec = parse_spec(data, "from --spec-b64")
        else:
            spec = load_spec(args.spec)
        manifest = run_job(spec, overwrite=args.overwrite, progress=not args.no_progress)
    except (SpecError, InputError, JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"job {manifest['job_id']} complete: {manifest['output']['rows']} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
