"""Ray job: Pass@k evaluation of a run's model, and the steering sweep when configured (`skillray eval`).

    ray job submit --working-dir . -- python jobs/eval.py --config configs/demo.yaml [--serve | --base-url URL]

Joins the job's cluster (RAY_ADDRESS) or starts a local one; generation runs on
`eval.num_actors` actors (one model each, `eval.num_gpus_per_actor` GPUs), the driver scores
and writes `<run>/eval/`. Rerunning after a kill generates only the missing chunks. Prints the
stage summary (and the sweep's) as JSON lines.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["eval"])

if __name__ == "__main__":
    sys.exit(main())
