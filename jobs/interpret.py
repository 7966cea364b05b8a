"""Ray job: skill profiles, contrastive labels, label fidelity and the report of a run (`skillray interpret`).

    ray job submit --working-dir . -- python jobs/interpret.py --config configs/demo.yaml \
        [--base-url http://HOST:8000/v1 --model NAME]

Labeller and judge: the OpenAI-compatible endpoint given by --base-url or interpret.base_url
(the API key from the environment variable in interpret.api_key_env, e.g. set through the
job's runtime_env), else the offline stand-ins. Prints the stage summary as a JSON line.
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["interpret"])

if __name__ == "__main__":
    sys.exit(main())
