"""Ray job: select an ordered, budget-nested SFT subset of a run's corpus.

    ray job submit --working-dir . -- python jobs/selection.py --config configs/demo.yaml \
        --strategy coverage --budget 200

Reads <run>/corpus (and <run>/basis + <run>/extract for direction, directions, coverage);
writes <run>/select/<name>/; prints the summary as JSON. Several --budget values write one
folder each (the smaller are prefixes of the larger).
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
    p.add_argument("--strategy", default=None, help="Overrides select.strategy.")
    p.add_argument("--budget", type=int, nargs="*", default=None, help="One or more budgets (overrides select.budget).")
    p.add_argument("--seed", type=int, default=None, help="Overrides select.seed.")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    args = p.parse_args(argv)

    from skillray.config import load_config, with_overrides
    from skillray.select import run_select

    cfg = load_config(args.config, args.sets)
    run_dir = args.run_dir or cfg.run_dir
    sel = with_overrides(cfg.select, strategy=args.strategy, seed=args.seed)
    out = []
    for b in args.budget or [sel.budget]:
        one = sel.model_copy(update={"budget": b}) if b is not None else sel
        one = type(sel).model_validate(one.model_dump())
        if len(args.budget or []) > 1 and one.name:
            one = one.model_copy(update={"name": f"{one.name}-n{b}"})
        out.append(run_select(run_dir, one, force=args.force, benchmarks=cfg.eval.benchmarks).summary)
    print(json.dumps(out if len(out) > 1 else out[0], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
