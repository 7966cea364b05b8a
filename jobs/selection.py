"""Ray job: select an ordered, budget-nested SFT subset of a run's corpus (`skillray select`).

    ray job submit --working-dir . -- python jobs/selection.py --config configs/demo.yaml \
        --strategy coverage --budget 100 --budget 200

Reads <run>/corpus (and <run>/basis + <run>/extract for the basis strategies); writes
<run>/select/<name>/; prints the summary as a JSON line. Several --budget values write one
folder each (the smaller are prefixes of the larger).
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["select"])

if __name__ == "__main__":
    sys.exit(main())
