"""Ray job: fine-tune a run's model on a selection with Ray Train + TRL (full or LoRA).

    ray job submit --working-dir . -- python jobs/sft.py --config configs/nemotron_llama3_8b.yaml

The driver tokenizes the selection's train.jsonl (counting cut and dropped examples) and starts a
Ray Train TorchTrainer with `sft.num_workers` workers (`sft.gpus_per_worker` GPUs each) running TRL's
SFTTrainer. Checkpoints go to `sft.storage_path` (shared storage on a multi-node cluster); a failed
worker group restarts from the latest one, and resubmitting the job resumes an unfinished run.
Writes `<run>/sft/<name>/model` (Hugging Face format) and prints the summary as JSON.
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
    p.add_argument("--selection", default=None, help="Overrides sft.selection (a name under <run>/select or a JSONL).")
    p.add_argument("--budget", type=int, default=None, help="Overrides sft.budget.")
    p.add_argument("--force", action="store_true", help="Discard output made by another config and recompute.")
    args = p.parse_args(argv)

    from skillray.config import load_config, with_overrides
    from skillray.sft import run_sft
    from skillray.sft.stage import sft_config_for_run

    cfg = load_config(args.config, args.sets)
    run_dir = args.run_dir or cfg.run_dir
    sft = sft_config_for_run(cfg.model_copy(update={"sft": with_overrides(cfg.sft, selection=args.selection,
                                                                           budget=args.budget)}))  # fmt: skip
    manifest = run_sft(run_dir, sft, cfg.model, force=args.force)
    print(json.dumps(manifest.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
