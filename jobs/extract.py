"""Ray job: the corpus and extract stages (`skillray run --stages corpus,extract --no-ablate`).

    ray job submit --working-dir . -- python jobs/extract.py --config configs/demo.yaml

Builds the corpus if it is not there yet (skipped when finished), then extracts; finished
shards of an interrupted run are kept. Prints the stage summaries as JSON lines.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["run", "--stages", "corpus,extract", "--no-ablate"])

if __name__ == "__main__":
    sys.exit(main())
