"""GPU check: the extractor against a bare forward, model FLOP utilisation, and the basis products.

    python benchmarks/gpu_check.py                        # a lent GPU: random Llama-3-8B-shaped model, bf16
    python benchmarks/gpu_check.py --tiny --device cpu    # a tiny model on CPU (what the test runs)
    python benchmarks/gpu_check.py --out results.json     # also write the numbers as JSON

Needs only torch, transformers and numpy (no Ray, no vLLM, no model files): the model is a
random-init ``LlamaForCausalLM`` built from a Llama-3-8B-shaped config in code (speed does not
depend on the weights), and the check runs skillray's ``ActivationExtractor`` directly (copy the
repository, or just ``skillray/__init__.py``, ``skillray/models.py`` and ``skillray/extract/``).

Printed:
* the device, its bf16 dense peak (a table of common GPUs) and a measured bf16 GEMM rate;
* tok/s of the extractor (hooks, pooling, early stop at the deepest layer) and of a bare
  forward (the decoder stack, no hooks, no LM head) over the same micro-batches (the stage's
  ``token_budget_batches``), their ratio, and each one's model FLOP utilisation (MFU: useful
  FLOPs over the peak; attention counted causal, padding not counted);
* the basis products ``Y = X Q`` and ``Y^T X`` of one pass on a (rows, D) activation matrix in
  memory on the device, float32 and bfloat16: seconds, TFLOP/s and GB/s (they are bandwidth-bound).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets. Matched by
# substring of torch.cuda.get_device_name(), most specific first.
BF16_PEAK_TFLOPS = [
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("MI300X", 1307.0),
]


def llama3_8b_config(tiny: bool):
    """A Llama-3-8B-shaped config (random init is enough for speed); ``tiny``: a few-MB one."""
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            hidden_size=64, intermediate_size=224, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1024, max_position_embeddings=2048, pad_token_id=0,
        )
    return LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, pad_token_id=0,
    )


def build_model(cfg, device: str, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in bf16 on the device: no float32 copy of 8B weights
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_tflops(device: str) -> tuple[str, float | None]:
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name()
    for key, tf in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return name, tf
    return name, None


def gemm_tflops(device: str, n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def forward_flops(cfg, lengths: np.ndarray, n_layers_run: int) -> float:
    """Useful forward FLOPs of ``n_layers_run`` decoder blocks over sequences of ``lengths`` (no LM head)."""
    h, L = cfg.hidden_size, n_layers_run
    kv = cfg.hidden_size // cfg.num_attention_heads * cfg.num_key_value_heads
    per_block = h * h * 2 + h * kv * 2 + 3 * h * cfg.intermediate_size  # q, o; k, v; gate, up, down
    n = lengths.astype(np.float64)
    # 2 FLOPs per weight per token; attention scores and values, causal: 2 * n^2 * h per block
    return float(L * (2 * per_block * n.sum() + 2 * h * (n**2).sum()))


def make_sequences(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, int(L)).astype(np.int64) for L in rng.integers(lo, hi + 1, n)]


def time_extractor(extractor, seqs, starts, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    out = extractor.extract(seqs, starts)
    sync(device)
    assert np.isfinite(out).all(), "the extractor returned non-finite vectors"
    return time.perf_counter() - t


@torch.inference_mode()
def time_bare(model, seqs, batches, pad_id: int, device: str) -> float:
    """The decoder stack alone (model.model: no hooks, no LM head) over the same padded micro-batches."""
    sync(device)
    t = time.perf_counter()
    for idx in batches:
        lens = torch.tensor([len(seqs[i]) for i in idx])
        T = int(lens.max())
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = torch.from_numpy(seqs[i])
        attn = (torch.arange(T)[None, :] < lens[:, None]).long()
        model.model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
    sync(device)
    return time.perf_counter() - t


def basis_products(device: str, rows: int, dim: int, b: int, repeats: int = 3) -> dict:
    """One basis pass's two thin products on a (rows, dim) matrix on the device, float32 and bf16."""
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x = torch.randn(rows, dim, device=device, dtype=dtype)
        q = torch.linalg.qr(torch.randn(dim, b, device=device))[0].to(dtype)
        y = x @ q
        (y.T @ x)
        sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            y = x @ q
            z = y.T @ x
        sync(device)
        s = (time.perf_counter() - t) / repeats
        del x, y, z
        gb = 2 * rows * dim * (4 if dtype == torch.float32 else 2) / 1e9  # X read twice
        out[name] = {"seconds_per_pass": float(f"{s:.4g}"), "tflops": float(f"{4 * rows * dim * b / s / 1e12:.4g}"), "gb_per_s": float(f"{gb / s:.4g}")}
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama (seconds on a CPU; for the test)")
    p.add_argument("--records", type=int, default=None, help="sequences (default 512; 48 with --tiny)")
    p.add_argument("--min-len", type=int, default=None, help="shortest sequence (default 128; 16 with --tiny)")
    p.add_argument("--max-len", type=int, default=None, help="longest sequence (default 768; 96 with --tiny)")
    p.add_argument("--token-budget", type=int, default=None, help="padded tokens per micro-batch (default the stage's 8192; 1024 with --tiny)")
    p.add_argument("--layers", default="spread", help="'spread' (every 4th block and the last, so the extractor runs the whole stack) or comma-separated block indices")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    p.add_argument("--basis-rows", type=int, default=None, help="rows of the basis matrix (default 50000; 2000 with --tiny)")
    p.add_argument("--basis-block", type=int, default=20, help="basis block width k+p")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    from skillray.extract.extractor import ActivationExtractor, token_budget_batches

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tiny = args.tiny
    records = args.records or (48 if tiny else 512)
    lo, hi = args.min_len or (16 if tiny else 128), args.max_len or (96 if tiny else 768)
    budget = args.token_budget or (1024 if tiny else 8192)
    cfg = llama3_8b_config(tiny)
    n_blocks = cfg.num_hidden_layers
    if args.layers == "spread":
        layers = sorted(set(list(range(0, n_blocks, 4)) + [n_blocks - 1]))
    else:
        layers = [int(v) for v in args.layers.split(",")]
    name, peak = peak_tflops(device)
    print(f"device: {device} ({name}); torch {torch.__version__}", flush=True)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 numbers are float32
    t0 = time.perf_counter()
    model = build_model(cfg, device, torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: random Llama, {n_blocks} blocks, hidden {cfg.hidden_size}, {n_params / 1e9:.2f} B parameters, bf16, "
          f"built in {time.perf_counter() - t0:.1f}s", flush=True)
    measured = gemm_tflops(device, 256 if tiny else 8192, torch.bfloat16)
    results: dict = {"device": device, "device_name": name, "bf16_peak_tflops": peak, "bf16_gemm_tflops": float(f"{measured:.4g}")}  # 4 digits: emulated bf16 on a CPU is ~1e-3
    print(f"bf16 peak (table): {peak if peak else 'unknown'} TFLOP/s; measured bf16 GEMM: {measured:.3g} TFLOP/s", flush=True)
    ref_peak = peak or measured

    seqs = make_sequences(records, lo, hi, cfg.vocab_size)
    starts = np.array([len(s) // 2 for s in seqs])
    lengths = np.array([len(s) for s in seqs])
    batches = token_budget_batches(lengths, budget)
    padded = sum(len(idx) * int(lengths[idx].max()) for idx in batches)
    tokens = int(lengths.sum())
    extractor = ActivationExtractor.from_model(model, layers, pooling="mean", token_budget=budget)
    print(f"batches: {records} sequences, {tokens} tokens ({lo}-{hi} each), {len(batches)} micro-batches of <= {budget} "
          f"padded tokens ({tokens / padded:.0%} real); layers {layers}", flush=True)
    time_extractor(extractor, seqs[: max(1, len(batches[0]))], starts[: max(1, len(batches[0]))], device)  # warm up
    time_bare(model, seqs, batches[:1], extractor.pad_id, device)
    ext, bare = [], []
    for _ in range(args.repeats):  # alternate so drift hits both alike
        ext.append(time_extractor(extractor, seqs, starts, device))
        bare.append(time_bare(model, seqs, batches, extractor.pad_id, device))
    te, tb = float(np.median(ext)), float(np.median(bare))
    flops_ext = forward_flops(cfg, lengths, max(layers) + 1)  # the extractor stops after the deepest hooked block
    flops_bare = forward_flops(cfg, lengths, n_blocks)
    results.update(
        tokens=tokens,
        micro_batches=len(batches),
        extractor_tok_s=round(tokens / te, 1),
        bare_forward_tok_s=round(tokens / tb, 1),
        extractor_over_bare=round(tb / te, 3),
        extractor_mfu=round(flops_ext / te / 1e12 / ref_peak, 4),
        bare_forward_mfu=round(flops_bare / tb / 1e12 / ref_peak, 4),
        mfu_against="table peak" if peak else "measured GEMM",
    )
    print(f"extractor: {tokens / te:,.0f} tok/s, MFU {results['extractor_mfu']:.1%}; bare forward: {tokens / tb:,.0f} tok/s, "
          f"MFU {results['bare_forward_mfu']:.1%} (against the {results['mfu_against']}); extractor / bare = {tb / te:.3f}", flush=True)
    del extractor, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    rows = args.basis_rows or (2000 if tiny else 50000)
    dim = cfg.hidden_size * len(layers)
    prods = basis_products(device, rows, dim, args.basis_block)
    results["basis_products"] = {"rows": rows, "dim": dim, "block": args.basis_block, **prods}
    for dt, r in prods.items():
        print(f"basis pass ({rows} x {dim}, block {args.basis_block}, {dt}): {r['seconds_per_pass'] * 1e3:.1f} ms, "
              f"{r['tflops']} TFLOP/s, {r['gb_per_s']} GB/s", flush=True)
    print(json.dumps(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
