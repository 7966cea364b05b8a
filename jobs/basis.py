"""Ray job: fit the skill basis of a run's activation store.

    ray job submit --working-dir . -- python jobs/basis.py --config configs/demo.yaml

Joins the job's cluster (RAY_ADDRESS) or starts a local one; prints the stage summary as JSON.
The store must be on a filesystem every node sees (workers read shards by path).
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
    args = p.parse_args(argv)

    from skillray.basis import run_basis
    from skillray.config import load_config

    cfg = load_config(args.config, args.sets)
    run_dir = args.run_dir or cfg.run_dir
    manifest = run_basis(run_dir, cfg.basis, force=args.force)
    print(json.dumps(manifest.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
