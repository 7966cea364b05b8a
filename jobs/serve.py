"""Ray job: serve a run's model behind an OpenAI-compatible API on Ray Serve until the job is stopped.

    ray job submit --working-dir . -- python jobs/serve.py --config configs/demo.yaml --host 0.0.0.0 \
        --api-key-env SKILLRAY_SERVE_KEY

Prints the base URL and the model name as JSON, then blocks (`ray job stop` ends it).
A non-loopback --host needs --api-key-env NAME (the variable holding the key, set in the job's environment).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="Run config YAML (its `model` and `serve` sections).")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY.PATH=VALUE",
                   help="Override one config value, validated like the YAML (repeatable), e.g. --set extract.num_actors=8.")
    p.add_argument("--host", default=None, help="Bind address (overrides serve.host).")
    p.add_argument("--port", type=int, default=None, help="HTTP port (overrides serve.port).")
    p.add_argument("--num-replicas", type=int, default=None, help="Replicas (overrides serve.num_replicas).")
    p.add_argument("--max-replicas", type=int, default=None, help="Autoscale up to this many (overrides serve.max_replicas).")
    p.add_argument("--num-gpus-per-replica", type=float, default=None, help="GPUs per replica (overrides serve.num_gpus_per_replica).")
    p.add_argument("--api-key-env", default=None, help="Environment variable holding the API key (overrides serve.api_key_env).")
    args = p.parse_args(argv)

    from skillray.config import load_config, with_overrides
    from skillray.serve import deployment_details, start_server, stop_server

    cfg = load_config(args.config, args.sets)
    serve_cfg = with_overrides(cfg.serve, host=args.host, port=args.port, num_replicas=args.num_replicas,
                               max_replicas=args.max_replicas, num_gpus_per_replica=args.num_gpus_per_replica,
                               api_key_env=args.api_key_env)
    info = start_server(cfg.model, serve_cfg)
    dc = deployment_details(info.app_name)["deployment_config"]
    print(json.dumps({"base_url": info.base_url, "model": info.model, "num_replicas": dc.get("num_replicas"),
                      "autoscaling_config": dc.get("autoscaling_config"),
                      "ray_actor_options": dc.get("ray_actor_options")}, default=str), flush=True)

    def _raise(*_):  # `ray job stop` sends SIGTERM: shut Serve down as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
