"""Ray job: fine-tune a run's model on a selection with Ray Train + TRL, full or LoRA (`skillray sft`).

    ray job submit --working-dir . -- python jobs/sft.py --config configs/nemotron_llama3_8b.yaml

The driver tokenizes the selection's train.jsonl (counting cut and dropped examples) and starts a
Ray Train TorchTrainer with `sft.num_workers` workers (`sft.gpus_per_worker` GPUs each) running TRL"s
SFTTrainer. Checkpoints go to `sft.storage_path` (shared storage on a multi-node cluster); a failed
worker group restarts from the latest one, and resubmitting the job resumes an unfinished run.
Writes `<run>/sft/<name>/model` (Hugging Face format) and prints the summary as a JSON line.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["sft"])

if __name__ == "__main__":
    sys.exit(main())
