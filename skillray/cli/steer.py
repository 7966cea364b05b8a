"""`skillray steer`: export a skill direction as a steering vector, a folded checkpoint or a GGUF control vector,
or look at what it does to generation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import SetOpt, console, fail, load_run_config

steer_app = typer.Typer(help="Steer generation along a skill direction of the run's basis.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config YAML (default: configs/demo.yaml).")
RunDirOpt = typer.Option(None, "--run-dir", "-o", help="Run directory holding basis/ (overrides run_dir).")
DirectionOpt = typer.Option(..., "--direction", "-d", help="Index of the basis direction (0 = most variance).")
SignOpt = typer.Option(1, "--sign", help="+1 towards the positive pole, -1 towards the negative one.")
AlphaOpt = typer.Option(1.0, "--alpha", help="Push in units of the direction's projection spread over the corpus.")
ModeOpt = typer.Option(
    "residual",
    "--mode",
    help="residual: the residual after each block carries that block's slice (adds differences of consecutive "
    "slices); per_layer: add each slice at its own block, as the seed system does (slices accumulate).",
)
LayersOpt = typer.Option(None, "--layers", help="Comma-separated subset of the basis' blocks to steer (default: all).")


def _vector(config, run_dir, sets, direction, sign, alpha, mode, layers):
    from skillray.basis import SkillBasis
    from skillray.steer import SteeringSpec, SteeringVector

    cfg = load_run_config(config, run_dir, sets)
    basis = SkillBasis.load(Path(cfg.run_dir) / "basis")
    chosen = [int(x) for x in layers.split(",") if x.strip()] if layers else None
    return cfg, SteeringVector.from_spec(basis, SteeringSpec(direction, sign, alpha, mode, chosen))


def register(app) -> None:
    app.add_typer(steer_app, name="steer")


@steer_app.command("export")
def export(
    config: Optional[Path] = ConfigOpt,
    run_dir: Optional[Path] = RunDirOpt,
    sets: Optional[list[str]] = SetOpt,
    direction: int = DirectionOpt,
    sign: int = SignOpt,
    alpha: float = AlphaOpt,
    mode: str = ModeOpt,
    layers: Optional[str] = LayersOpt,
    format: str = typer.Option(
        "vector",
        "--format",
        help="vector: safetensors + JSON (hooks, serve); folded: a checkpoint with the vector as MLP down-projection "
        "bias, served by stock vLLM at full speed; gguf: a llama.cpp control vector (llama-server -m MODEL.gguf "
        "--control-vector-scaled FILE.gguf:1; checked by make test-llamacpp).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Output path (default: <run>/steer/<name>)."),
) -> None:
    """Write a steering vector for one direction, in the chosen format."""
    from skillray.models import resolve_model
    from skillray.steer import SteeringError, fold_checkpoint

    try:
        cfg, vec = _vector(config, run_dir, sets, direction, sign, alpha, mode, layers)
        name = f"d{direction}{'+' if sign > 0 else '-'}{alpha:g}-{mode}"
        out = out or Path(cfg.run_dir) / "steer" / name
        if format == "vector":
            path = vec.save(out)
        elif format == "gguf":
            path = vec.to_gguf(out)  # <out>.gguf
        elif format == "folded":
            path = fold_checkpoint(resolve_model(cfg.model).path, vec, out)
        else:
            raise ValueError(f"--format {format!r}: expected vector, folded or gguf")
        console.print(f"wrote {format} for direction {direction} (sign {sign:+d}, alpha {alpha:g}, {mode}, blocks "
                      f"{vec.layers[0]}..{vec.layers[-1]}): [bold]{path}[/]")  # fmt: skip
    except (SteeringError, FileNotFoundError, ValueError) as e:
        fail(str(e))


@steer_app.command("generate")
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="User prompt (repeat for several)."),
    config: Optional[Path] = ConfigOpt,
    run_dir: Optional[Path] = RunDirOpt,
    sets: Optional[list[str]] = SetOpt,
    direction: int = DirectionOpt,
    sign: int = SignOpt,
    alpha: float = AlphaOpt,
    mode: str = ModeOpt,
    layers: Optional[str] = LayersOpt,
    max_tokens: int = typer.Option(64, "--max-tokens", help="New tokens per answer (greedy)."),
) -> None:
    """Greedy answers with and without steering, side by side (HF hooks)."""
    import torch
    from rich.table import Table

    from skillray.models import choose_dtype, load_model, load_tokenizer, resolve_model
    from skillray.steer import SteeringError, steer

    try:
        cfg, vec = _vector(config, run_dir, sets, direction, sign, alpha, mode, layers)
        resolved = resolve_model(cfg.model)
        tok = load_tokenizer(resolved)
        dtype = choose_dtype(cfg.model.dtype, "cpu")
        model = load_model(resolved, dtype.torch_dtype)
        chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompt]
        enc = tok(chats, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

        def run():
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            return tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

        plain = run()
        with steer(model, vec):
            steered = run()
        title = f"direction {direction}, sign {sign:+d}, alpha {alpha:g} ({mode}); dtype {dtype}"
        t = Table(title=title, show_lines=True)
        for col in ("prompt", "plain", "steered"):
            t.add_column(col)
        for row in zip(prompt, plain, steered):
            t.add_row(*row)
        console.print(t)
    except (SteeringError, FileNotFoundError, ValueError) as e:
        fail(str(e))
