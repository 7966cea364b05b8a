"""Ray job: the whole pipeline of a run config (`skillray run`), on the job's cluster.

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml \
        -- python jobs/pipeline.py --config configs/nemotron_llama3_8b.yaml

With an `ablate:` section in the config, the ablation grid runs after the pipeline (``--no-ablate``
to skip it). Every stage joins the job's cluster (RAY_ADDRESS is set by Ray for the job's driver) and puts
its actors and tasks on it; the run directory must be on storage all nodes share. Submitting
the same job again after a failure or `ray job stop` resumes: finished stages are skipped by
their manifests, unfinished ones continue from their last finished shard/chunk/checkpoint.
Exit status 0 on success, 2 on a configuration or input error (printed), 1 otherwise.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["run"])

if __name__ == "__main__":
    sys.exit(main())
