"""Steering vectors swapped into a running vLLM engine: a worker extension for ``collective_rpc``.

The engine is loaded from a zero-bias folded checkpoint (:func:`skillray.steer.fold_checkpoint`
with no vector: ``mlp_bias: true``, every MLP bias zero), so each decoder block's down projection
owns a bias tensor whose value is added to that block's output at every position: exactly what
a steering vector does. Changing the vector is then a ``copy_`` into those tensors. They keep
their storage, so CUDA graphs captured at start (which hold the tensors' addresses) stay valid,
and nothing is reloaded. This is how RL frameworks sync new weights into a running engine.

    llm = LLM(model=zero_folded, worker_extension_cls="skillray_steering.SteeringExtension")
    llm.collective_rpc("skillray_set_steering", args=(layers, vectors))
    llm.reset_prefix_cache()  # cached prefixes were computed under the old vector

vLLM mixes this class into its worker class, so methods see the worker as ``self``. With tensor
parallelism every rank holds the whole bias (a row-parallel layer adds it on rank 0 only); with
pipeline parallelism each rank sets the blocks it holds.

The same class reloads a checkpoint's weights into the running engine (``skillray_reload_weights``: the
next model of an ablation, same architecture, no new engine); its caches of bias tensors are dropped then.
"""

from __future__ import annotations

import inspect
import os
import re

_DOWN_PROJ = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.down_proj$")


class SteeringExtension:
    def _skillray_biases(self) -> dict:
        """{block index: the down projection's bias tensor} of the blocks this worker holds."""
        biases = getattr(self, "_skillray_bias_cache", None)
        if biases is None:
            biases = {}
            for name, module in self.model_runner.get_model().named_modules():
                m = _DOWN_PROJ.search(name)
                if m and getattr(module, "bias", None) is not None:
                    biases[int(m.group(1))] = module.bias
            if not biases:
                raise RuntimeError(
                    "no MLP down-projection biases in the served model: load a zero-bias folded checkpoint "
                    "(skillray.steer.fold_checkpoint(path, None, out), mlp_bias: true) to swap steering vectors"
                )
            self._skillray_bias_cache = biases
            self._skillray_ptrs = {i: b.data_ptr() for i, b in biases.items()}
        return biases

    def skillray_set_steering(self, layers: list[int], vectors: list[list[float]]) -> dict:
        """Set block ``layers[j]``'s added vector to ``vectors[j]`` and every other block's to zero, in place.

        ``vectors``: nested lists of shape (len(layers), hidden_size); empty lists reset to the unsteered
        model. Returns {"blocks": how many blocks this worker holds, "set": [blocks given a vector here]}.
        """
        import torch

        biases = self._skillray_biases()
        want = dict(zip((int(i) for i in layers), vectors))
        n_layers = self.model_config.hf_config.num_hidden_layers
        bad = [i for i in want if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"steering layer {bad[0]} out of range for a {n_layers}-block model")
        with torch.no_grad():
            for i, b in biases.items():
                if i in want:
                    v = torch.tensor(want[i], dtype=torch.float32)
                    if v.shape != b.shape:
                        raise ValueError(f"steering vector for block {i} has shape {tuple(v.shape)}, "
                                         f"the model's bias {tuple(b.shape)}")  # fmt: skip
                    b.copy_(v.to(device=b.device, dtype=b.dtype))
                else:
                    b.zero_()
        moved = [i for i, b in biases.items() if b.data_ptr() != self._skillray_ptrs[i]]
        if moved:  # captured graphs would read the old storage: fail loudly rather than steer nothing
            raise RuntimeError(f"the bias of block {moved[0]} moved to new storage since the engine started")
        if torch.cuda.is_available() and any(b.is_cuda for b in biases.values()):
            torch.cuda.synchronize()
        return {"blocks": len(biases), "set": sorted(i for i in biases if i in want)}

    def skillray_reload_weights(self, path: str) -> dict:
        """Load the safetensors weights of the checkpoint folder ``path`` into this worker's model, in place.

        vLLM's own ``reload_weights(weights_path=...)`` where it has one (0.12 on): it restores the layers'
        checkpoint-format parameters, loads, re-runs the post-load processing (the CPU backend packs its GEMM
        weights then, so a bare ``load_weights`` would leave the old packed copies in use) and copies the
        results into the original storage (captured CUDA graphs stay valid). Older vLLM: ``load_weights`` over
        the files, which is whole only where no post-load processing packs weights (unquantized, CUDA).
        """
        runner = self.model_runner
        self._skillray_bias_cache = None  # tensors may be new objects after a reload: look them up again
        reload = getattr(runner, "reload_weights", None)
        if reload is not None and "weights_path" in inspect.signature(reload).parameters:
            self.reload_weights(weights_path=str(path))
            return {"via": "reload_weights"}
        import glob

        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("this vLLM has no reload_weights(weights_path=...); reloading a CPU engine's packed "
                               "weights needs vLLM >= 0.12 (or set eval.vllm_reload_weights: false)")
        from safetensors.torch import safe_open

        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"{path}: no .safetensors files to reload")

        def weights():
            for f in files:
                with safe_open(f, "pt", device="cpu") as sf:
                    for k in sf.keys():
                        yield k, sf.get_tensor(k)

        model = runner.get_model()
        want = {n for n, _ in model.named_parameters()}
        loaded = model.load_weights(weights())
        missing = sorted(want - set(loaded or want))
        if missing:
            raise RuntimeError(f"reload from {path}: {len(missing)} parameter(s) not in the checkpoint, e.g. {missing[0]}")
        return {"via": "load_weights"}
