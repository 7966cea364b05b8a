"""Ray job entrypoint for the corpus + extract stages.

    ray job submit --working-dir . -- python jobs/extract.py --config configs/demo.yaml

Builds the corpus if it is not there yet (skipped when finished), then extracts; finished
shards of an interrupted run are kept. Prints the stage summaries as JSON.
"""

from __future__ import annotations

import argparse
import json

from skillray.config import load_config
from skillray.corpus import run_corpus
from skillray.extract import run_extract
from skillray.raytools import ensure_ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY.PATH=VALUE",
                   help="Override one config value, validated like the YAML (repeatable), e.g. --set extract.num_actors=8.")
    p.add_argument("--run-dir", help="override run_dir of the config")
    p.add_argument("--force", action="store_true", help="discard output made by another config")
    args = p.parse_args()
    cfg = load_config(args.config, args.sets)
    run_dir = args.run_dir or cfg.run_dir
    ensure_ray()
    corpus = run_corpus(run_dir, cfg.corpus, force=args.force)
    print(json.dumps({"corpus": corpus.summary}))
    m = run_extract(run_dir, cfg.model, cfg.extract, force=args.force, progress=lambda d, t: print(f"extract {d}/{t}", flush=True))
    print(json.dumps({"extract": m.summary}))


if __name__ == "__main__":
    main()
