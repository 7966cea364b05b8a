"""Ray job: serve a run's model behind an OpenAI-compatible API on Ray Serve until the job is stopped
(`skillray serve`).

    ray job submit --working-dir . -- python jobs/serve.py --config configs/demo.yaml --host 0.0.0.0 \
        --api-key-env SKILLRAY_SERVE_KEY

Prints the base URL, the model name and the deployment's scaling as a JSON line, then blocks
(`ray job stop` ends it). A non-loopback --host needs --api-key-env NAME (the variable holding the
key, set in the job's environment).
"""

import sys
from functools import partial

from skillray.cli.common import job

main = partial(job, ["serve"])

if __name__ == "__main__":
    sys.exit(main())
