"""Ray job: rank a run's skill directions (and signs) by proxy interventions, without an SFT run.

    ray job submit --working-dir . -- python jobs/probe.py --config configs/demo.yaml \
        --probes likelihood accuracy

Reads <run>/corpus and <run>/basis; runs the probes of `probe.probes` (likelihood: change in the
log-likelihood of corpus solutions; accuracy: change in Pass@k on a procedural dev set, prompts
and scoring as in the `eval` section) in this process on the model of `model`; writes
<run>/probe/ (ranked tables, costs, rank agreement). A killed accuracy probe resumes arm by arm.
Prints the stage summary as JSON.
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
    p.add_argument("--probes", nargs="+", default=None, help="Overrides probe.probes (likelihood, accuracy).")
    p.add_argument("--directions", type=int, nargs="+", default=None, help="Overrides probe.directions.")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    args = p.parse_args(argv)

    from skillray.config import load_config, with_overrides
    from skillray.probe import run_probe

    cfg = load_config(args.config, args.sets)
    run_dir = args.run_dir or cfg.run_dir
    pc = with_overrides(cfg.probe, probes=args.probes, directions=args.directions)
    manifest = run_probe(run_dir, pc, cfg.model, force=args.force, eval_cfg=cfg.eval)
    print(json.dumps(manifest.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
