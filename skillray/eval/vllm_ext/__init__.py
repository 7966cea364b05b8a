"""Code that runs inside vLLM's worker processes (imported there by module name, not through skillray).

vLLM lives in a venv of its own that cannot import skillray (other transformers / numpy pins), so
:mod:`skillray.eval.vllm_worker` puts this folder on the engine's ``PYTHONPATH`` and names the
extension ``skillray_steering.SteeringExtension``. The modules here import only torch.
"""
