"""Ray job: rank a run's skill directions (and signs) by proxy interventions, without an SFT run (`skillray probe`).

    ray job submit --working-dir . -- python jobs/probe.py --config configs/demo.yaml \
        --probes likelihood,accuracy

Reads <run>/corpus and <run>/basis; runs the probes of `probe.probes` (likelihood: change in the
log-likelihood of corpus solutions; accuracy: change in Pass@k on a procedural dev set, prompts
and scoring as in the `eval` section) on the model of `model` (in this process, or as one Ray task
holding `probe.num_gpus` GPUs); writes <run>/probe/ (ranked tables, costs, rank agreement). A killed
accuracy probe resumes arm by arm. Prints the stage summary as a JSON line.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["probe"])

if __name__ == "__main__":
    sys.exit(main())
