"""Ray job: safety data by skill coverage (pool basis, selections, LoRA refusal SFT, attack success curves).

    ray job submit --working-dir . -- python jobs/safety.py --config configs/safety_mistral7b.yaml

Joins the job's cluster (RAY_ADDRESS) or starts a local one. Extraction runs on a Ray Data actor,
every fine-tune on Ray Train (`safety.sft` resources), replies as one Ray task per arm
(`safety.num_gpus` GPUs each); the driver scores (leak detector, refusal detector or the judge at
`safety.base_url`) and writes `<run>/safety/`. Rerunning after a kill reuses finished pieces.
Prints the stage summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="Run config YAML (its `safety` section; defaults when absent).")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY.PATH=VALUE",
                   help="Override one config value, validated like the YAML (repeatable), e.g. --set extract.num_actors=8.")
    p.add_argument("--run-dir", default=None, help="Run directory (overrides run_dir in the config).")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    args = p.parse_args(argv)

    from skillray.config import SafetyConfig, load_config
    from skillray.safety import run_safety

    cfg = load_config(args.config, args.sets)
    manifest = run_safety(args.run_dir or cfg.run_dir, cfg.safety or SafetyConfig(), cfg.model, force=args.force)
    print(json.dumps({"safety": manifest.summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
