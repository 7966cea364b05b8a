"""Ray job: safety data by skill coverage: pool basis, selections, LoRA refusal SFT, attack success curves
(`skillray safety run`).

    ray job submit --working-dir . -- python jobs/safety.py --config configs/safety_mistral7b.yaml

Joins the job's cluster (RAY_ADDRESS) or starts a local one. Extraction runs on a Ray Data actor,
every fine-tune on Ray Train (`safety.sft` resources), replies as one Ray task per arm
(`safety.num_gpus` GPUs each); the driver scores (leak detector, refusal detector or the judge at
`safety.base_url`) and writes `<run>/safety/`. Rerunning after a kill reuses finished pieces.
Prints the stage summary as a JSON line.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["safety", "run"])

if __name__ == "__main__":
    sys.exit(main())
