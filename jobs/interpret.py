"""Ray job: skill profiles, contrastive labels, label fidelity and the report of a run.

    ray job submit --working-dir . -- python jobs/interpret.py --config configs/demo.yaml \
        [--base-url http://HOST:8000/v1 --model NAME]

Labeller and judge: the OpenAI-compatible endpoint given by --base-url or interpret.base_url
(the API key from the environment variable in interpret.api_key_env, e.g. set through the
job's runtime_env), else the offline stand-ins. Prints the stage summary as JSON.
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
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (overrides interpret.base_url).")
    p.add_argument("--model", default=None, help="Model name at the endpoint (overrides interpret.model).")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    args = p.parse_args(argv)

    from skillray.config import load_config, with_overrides
    from skillray.interpret import run_interpret

    cfg = load_config(args.config, args.sets)
    icfg = with_overrides(cfg.interpret, base_url=args.base_url, model=args.model)
    manifest = run_interpret(args.run_dir or cfg.run_dir, icfg, cfg.model, force=args.force)
    print(json.dumps(manifest.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
