"""Ray job: the whole pipeline of a run config (`skillray run`), on the job's cluster.

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml \
        -- python jobs/pipeline.py --config configs/nemotron_llama3_8b.yaml

With an `ablate:` section in the config, the ablation grid runs after the pipeline (``--no-ablate``
to skip it). Every stage joins the job's cluster (RAY_ADDRESS is set by Ray for the job's driver) and puts
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
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY.PATH=VALUE",
                   help="Override one config value, validated like the YAML (repeatable), e.g. --set extract.num_actors=8.")
    p.add_argument("--run-dir", default=None, help="Run directory (overrides run_dir in the config).")
    p.add_argument("--stages", default=None, help="Comma-separated stages instead of the config's `stages`.")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    p.add_argument("--ablate", action=argparse.BooleanOptionalAction, default=None,
                   help="After the pipeline, run the config's `ablate:` grid (default: when the config has one).")
    args = p.parse_args(argv)

    from skillray.cli.main import app

    sets = [a for s in args.sets for a in ("--set", s)]
    cli = ["run", args.config, *sets]
    if args.run_dir:
        cli += ["--run-dir", args.run_dir]
    if args.stages:
        cli += ["--stages", args.stages]
    if args.force:
        cli.append("--force")
    code = int(app(cli, standalone_mode=False) or 0)  # click returns the exit code of typer.Exit (2 = user error)
    if code or args.ablate is False:
        return code
    from skillray.config import load_config

    if args.ablate or load_config(args.config, args.sets).ablate is not None:
        ab = ["ablate", "--config", args.config, *sets] + (["--run-dir", args.run_dir] if args.run_dir else [])
        code = int(app(ab + (["--force"] if args.force else []), standalone_mode=False) or 0)
    return code

if __name__ == "__main__":
    sys.exit(main())
