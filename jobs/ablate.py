"""Ray job: a selection ablation, strategies x budgets x seeds through select -> sft -> eval (`skillray ablate`).

    ray job submit --working-dir . -- python jobs/ablate.py --config configs/nemotron_qwen2.5_3b.yaml

One job runs the whole grid of the config's `ablate` section: every cell's selection, fine-tuning
(a Ray Train run) and evaluation (Ray actors) is a stage with its own manifest, so resubmitting after
a failure redoes only the unfinished cells. Writes `<run>/ablate/<name>/results.{parquet,json,md}`
and a plot; prints the summary as a JSON line.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["ablate"])

if __name__ == "__main__":
    sys.exit(main())
