"""``python -m workers.ablate_entrypoint``: the driver of an ablation submitted as a Ray job.

Exit status 1 on failure, with ``ablations/<id>/error.json`` (code, message) in the job
folder: that file, not this output, is what the service reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from workers import atomic
from workers.ablate import AblationError, AblationParams, run_ablation
from workers.ablate_arms import ArmError
from workers.job_folder import JobFolder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.ablate_entrypoint")
    parser.add_argument("--job-dir", required=True, help="the finished job's output folder")
    parser.add_argument("--params-file", required=True, help="AblationParams as JSON, paths already confined")
    parser.add_argument("--ablation-id", required=True, help="the id the service computed (where errors go)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    error_file = JobFolder(args.job_dir).ablation_dir(args.ablation_id) / "error.json"
    error_file.unlink(missing_ok=True)
    try:
        params = AblationParams(**json.loads(Path(args.params_file).read_text()))
        run_ablation(args.job_dir, params, say=print, expected_id=args.ablation_id)
    except (AblationError, ArmError, ValueError) as exc:
        error_file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json({"code": "bad_input", "message": str(exc)}, error_file)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        error_file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json({"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}, error_file)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
