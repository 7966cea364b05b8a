"""Run extraction on a fake 2-node Ray cluster (ray.cluster_utils.Cluster); used by test_cluster.py.

Separate process so that the test session's own Ray cluster stays up.
usage: python tests/multinode_extract.py RUN_DIR MODEL_PATH
"""

import json
import sys

import ray
from ray.cluster_utils import Cluster

from skillray.config import ExtractConfig, ModelConfig
from skillray.extract import run_extract

run_dir, model_path = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
try:
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    cfg = ExtractConfig(layers=[0, 1, 2], shard_size=4, token_budget=256, num_actors=2, num_cpus_per_actor=1)
    m = run_extract(run_dir, ModelConfig(name_or_path=model_path, dtype="float32"), cfg)  # as test_cluster.py's
    # Which nodes ran extraction actors: both must have, or the test proves nothing.
    from ray.util.state import list_actors

    actors = list_actors(limit=1000, raise_on_missing_output=False)
    nodes = {a.node_id for a in actors if "ShardWriter" in (a.class_name or "")}
    print(sorted({a.class_name for a in actors}), file=sys.stderr)
    print(json.dumps({"summary": m.summary, "actor_nodes": len(nodes)}))
finally:
    ray.shutdown()
    cluster.shutdown()
