"""The extraction worker: a callable class that Ray Data runs once per actor.

``ActivationExtractor(...)`` loads the model once; ``extractor(batch)`` maps a batch of
tokenized sequences to pooled, layer-concatenated vectors. It is plain Python, so it can be
tested on a hand-built batch without Ray.
"""

from __future__ import annotations

import numpy as np
import torch

from skillray.extract.pooling import Pooling, pool, pooling_mask
from skillray.models import ResolvedModel, decoder_blocks, load_model, resolve_dtype


class _StopForward(Exception):
    """Raised by the deepest hook: later blocks, the final norm and the LM head are never run."""


def token_budget_batches(lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Split indices into micro-batches whose padded size (rows x longest) fits the budget.

    Sequences are taken longest first so each micro-batch holds similar lengths and pads
    little. A sequence longer than the budget gets a micro-batch of its own.
    """
    order = np.argsort(-lengths, kind="stable")
    batches, cur, cur_max = [], [], 0
    for i in order:
        L = int(lengths[i])
        new_max = max(cur_max, L)
        if cur and new_max * (len(cur) + 1) > token_budget:
            batches.append(np.asarray(cur))
            cur, new_max = [], L
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(np.asarray(cur))
    return batches


class ActivationExtractor:
    """Pooled residual-stream vectors of a causal LM.

    Parameters
    ----------
    model : ResolvedModel
        Where to load the model (see :func:`skillray.models.resolve_model`).
    layers : list of int
        Normalised block indices (see :func:`skillray.models.normalize_layers`).
    pooling : {"mean", "response_mean", "last"}
    skip_prefix : int
        Positions at the start of every sequence left out of the means (see
        :func:`~skillray.extract.pooling.pooling_mask`): the corpus' shared prefix, 1 for
        "all but the first token", 0 for none.
    dtype : str
        "auto", "float32", "bfloat16" or "float16"; pooling always accumulates in float32.
    device : str
        "cpu", "cuda" or "auto" (cuda when available).
    token_budget : int
        Padded tokens per forward micro-batch.
    num_threads : int or None
        torch intra-op threads (Ray sets OMP_NUM_THREADS=1 in workers, so set it here).
    """

    def __init__(
        self,
        model: ResolvedModel,
        layers: list[int],
        pooling: Pooling = "mean",
        skip_prefix: int = 0,
        dtype: str = "auto",
        device: str = "auto",
        token_budget: int = 8192,
        num_threads: int | None = None,
        trust_remote_code: bool = False,
    ):
        if num_threads:
            torch.set_num_threads(int(num_threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._setup(load_model(model, resolve_dtype(dtype, device), device, trust_remote_code), device, layers, pooling, skip_prefix, token_budget)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, layers: list[int], pooling: Pooling = "mean", skip_prefix: int = 0, token_budget: int = 8192
    ) -> "ActivationExtractor":
        """An extractor around an already loaded causal LM (its device and dtype as they are).

        For benchmarks and checks that build a model in code (``benchmarks/gpu_check.py``).
        """
        self = cls.__new__(cls)
        self._setup(model.eval(), str(next(model.parameters()).device), layers, pooling, skip_prefix, token_budget)
        return self

    def _setup(self, model, device: str, layers, pooling, skip_prefix, token_budget) -> None:
        self.device = device
        self.model = model
        self.blocks = decoder_blocks(self.model)
        self.layers = list(layers)
        self.pooling = pooling
        self.skip_prefix = int(skip_prefix)
        self.token_budget = token_budget
        self.hidden_size = int(self.model.config.hidden_size)
        self.pad_id = int(getattr(self.model.config, "pad_token_id", None) or 0)

    @property
    def dim(self) -> int:
        return self.hidden_size * len(self.layers)

    @torch.inference_mode()
    def _forward(self, seqs: list[np.ndarray], starts: np.ndarray) -> torch.Tensor:
        """One padded micro-batch -> (B, n_layers * H) float32."""
        B = len(seqs)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        T = int(lengths.max())
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn = (torch.arange(T)[None, :] < lengths[:, None]).long()
        weights = pooling_mask(lengths, torch.as_tensor(starts, dtype=torch.long), T, self.pooling, self.skip_prefix).to(self.device)
        pooled: dict[int, torch.Tensor] = {}
        last = self.layers[-1]

        def make_hook(i):
            def hook(_module, _inp, out):
                h = out[0] if isinstance(out, tuple) else out  # (B, T, H)
                pooled[i] = pool(h, weights)
                if i == last:
                    raise _StopForward

            return hook

        handles = [self.blocks[i].register_forward_hook(make_hook(i)) for i in self.layers]
        try:
            self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return torch.cat([pooled[i] for i in self.layers], dim=1).cpu()

    def extract(self, seqs: list[np.ndarray], starts: np.ndarray) -> np.ndarray:
        """Pooled vectors (N, n_layers * H) float32 in input order, whatever the lengths."""
        starts = np.asarray(starts)
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        lengths = np.array([len(s) for s in seqs])
        for idx in token_budget_batches(lengths, self.token_budget):
            out[idx] = self._forward([seqs[i] for i in idx], starts[idx]).numpy()
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data batch {id, shard, input_ids, response_start} -> {id, shard, activations}."""
        vecs = self.extract(list(batch["input_ids"]), batch["response_start"])
        return {"id": batch["id"], "shard": batch["shard"], "activations": vecs}
