"""Ray job: the whole pipeline of a run config (`skillray run`), on the job's cluster.

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml \
        -- python jobs/pipeline.py --config configs/nemotron_llama3_8b.yaml

Every stage joins the job's cluster (RAY_ADDRESS is set by Ray for the job's driver) and puts
its actors and tasks on it; the run directory must be on storage all nodes share. Submitting
the same job again after a failure or `ray job stop` resumes: finished stages are skipped by
their manifests, unfinished ones continue from their last finished shard/chunk/checkpoint.
Exit status 0 on success, 2 on a configuration or input error (printed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="Run config YAML.")
    p.add_argument("--run-dir", default=None, help="Run directory (overrides run_dir in the config).")
    p.add_argument("--stages", default=None, help="Comma-separated stages instead of the config's `stages`.")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    args = p.parse_args(argv)

    from skillray.cli.main import app

    cli = ["run", args.config]
    if args.run_dir:
        cli += ["--run-dir", args.run_dir]
    if args.stages:
        cli += ["--stages", args.stages]
    if args.force:
        cli.append("--force")
    code = app(cli, standalone_mode=False)  # click returns the exit code of typer.Exit (2 = user error)
    return int(code or 0)

if __name__ == "__main__":
    sys.exit(main())
