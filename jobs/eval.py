"""Ray job: Pass@k evaluation of a run's model (and the steering sweep when configured).

    ray job submit --working-dir . -- python jobs/eval.py --config configs/demo.yaml

Joins the job's cluster (RAY_ADDRESS) or starts a local one; generation runs on
`eval.num_actors` actors (one model each, `eval.num_gpus_per_actor` GPUs), the driver scores
and writes `<run>/eval/`. Rerunning after a kill generates only the missing chunks. Prints the
stage summary (and the sweep's) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="Run config YAML.")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY.PATH=VALUE",
                   help="Override one config value, validated like the YAML (repeatable), e.g. --set extract.num_actors=8.")
    p.add_argument("--run-dir", default=None, help="Run directory (overrides run_dir in the config).")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    p.add_argument("--serve", action="store_true", help="Evaluate through `skillray serve` started for the model "
                   "(eval.serve: true; the sweep reuses the server).")
    p.add_argument("--base-url", default=None, help="Evaluate through this OpenAI-compatible endpoint (eval.base_url).")
    args = p.parse_args(argv)

    from pathlib import Path

    from skillray.artifacts import read_manifest
    from skillray.config import load_config, with_overrides
    from skillray.eval import run_eval

    cfg = load_config(args.config, args.sets)
    run_dir = args.run_dir or cfg.run_dir
    ev = cfg.eval
    if args.serve or args.base_url:
        ev = with_overrides(ev, backend="openai", serve=args.serve or None, base_url=args.base_url)
    manifest = run_eval(run_dir, ev, cfg.model, force=args.force)
    out = {"eval": manifest.summary}
    if ev.sweep is not None:
        out["sweep"] = read_manifest(Path(run_dir) / "eval" / "sweep").summary
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
