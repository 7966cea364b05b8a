"""Ray job: a selection ablation, strategies x budgets x seeds through select -> sft -> eval.

    ray job submit --working-dir . -- python jobs/ablate.py --config configs/nemotron_qwen2.5_3b.yaml

One job runs the whole grid of the config's `ablate` section: every cell's selection, fine-tuning
(a Ray Train run) and evaluation (Ray actors) is a stage with its own manifest, so resubmitting after
a failure redoes only the unfinished cells. Writes `<run>/ablate/<name>/results.{parquet,json,md}`
and a plot; prints the summary as JSON.
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

    from skillray.config import AblateConfig, load_config
    from skillray.sft.ablate import run_ablate

    cfg = load_config(args.config, args.sets)
    run_dir = args.run_dir or cfg.run_dir
    manifest = run_ablate(run_dir, cfg.ablate or AblateConfig(), cfg.model, sft=cfg.sft, eval_cfg=cfg.eval,
                          force=args.force)  # fmt: skip
    print(json.dumps(manifest.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
