"""Ray job: fit the skill basis of a run's activation store (`skillray basis`).

    ray job submit --working-dir . -- python jobs/basis.py --config configs/demo.yaml

Joins the job's cluster (RAY_ADDRESS) or starts a local one; prints the stage summary as a JSON line.
The store must be on a filesystem every node sees (workers read shards by path).
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["basis"])

if __name__ == "__main__":
    sys.exit(main())
