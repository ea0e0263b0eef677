"""``python -m workers.run SPEC``: the job driver entrypoint (what a Ray job runs)."""

from __future__ import annotations

import argparse
import sys

from workers.driver import JobError, run_job
from workers.shards import InputError
from workers.spec import SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.run")
    parser.add_argument("spec", help="job spec (YAML or JSON)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = run_job(load_spec(args.spec), overwrite=args.overwrite, progress=not args.no_progress)
    except (SpecError, InputError, JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"job {manifest['job_id']} complete: {manifest['output']['rows']} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
