"""skillray: model-native skills of language models, recovered from their activations, on Ray."""

import os

# torch's CPU kernels run on OpenMP threads that spin while they wait at each barrier. When a
# process has fewer free cores than threads (Ray's own processes, the driver, a second actor),
# the spinning threads starve the working ones: on this 2-core machine with one other busy
# process, a 2-thread SmolLM2 generate took 46.9 s spinning vs 18.2 s with passive waiting (and
# 11.4 s on 1 thread). Passive waiting costs nothing measurable when the cores are free. It must be
# set before torch loads OpenMP, and Ray workers inherit it from the driver that starts the
# cluster; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
