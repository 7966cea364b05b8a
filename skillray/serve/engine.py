"""Batched chat generation with Hugging Face ``generate``: the model side of `skillray serve`.

:class:`ChatEngine` is a plain class (testable without Ray or HTTP): it renders chats with the
tokenizer's chat template, groups requests that share sampling settings, left-pads each group
into one ``generate`` call and cuts every row at its end-of-sequence token or stop string.

Steering is a hook, not built in: a :class:`SteeringHook` parses a request's ``steering``
field and returns a context manager that is active around each batched ``generate``, given
one parsed spec (or None) per batch row. ``skillray.steer.steer(model, [vec_or_None, ...])``
has exactly that shape.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Literal, Protocol, Sequence, runtime_checkable

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


@runtime_checkable
class SteeringHook(Protocol):
    """How a server learns to steer. Built by ``factory(model, tokenizer, **ServeConfig.steering_hook_args)``."""

    def parse(self, raw: Any) -> Any:
        """Validate a request's ``steering`` value into a spec; raise ValueError naming the bad value (-> HTTP 400)."""

    def apply(self, model: torch.nn.Module, specs: Sequence[Any | None]) -> ContextManager:
        """Context manager active around one ``generate`` call; ``specs[r]`` belongs to batch row r (None = unsteered).

        Rows are in the order of ``generate``'s output: a request with ``n`` choices holds n
        consecutive rows.
        """


def load_steering_hook(path: str, model, tokenizer, **kwargs) -> SteeringHook:
    """Import ``'package.module:factory'`` and call ``factory(model, tokenizer, **kwargs)``."""
    mod_name, _, attr = path.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"serve.steering_hook={path!r}: expected 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"serve.steering_hook={path!r}: cannot import it ({e})") from None
    hook = factory(model, tokenizer, **kwargs)
    if not isinstance(hook, SteeringHook):
        raise ValueError(f"serve.steering_hook={path!r} returned {type(hook).__name__}, which lacks parse()/apply()")
    return hook


def max_token_chars(tokenizer) -> int:
    """The longest token as text: a prompt of more characters than max_prompt_tokens times this cannot fit,
    so it is refused without tokenizing it."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max((len(t) for t in vocab if t), default=1)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings. temperature 0 = greedy (then n copies of one answer)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def group_key(self) -> tuple:
        """Requests with equal keys share one ``generate`` call. A seeded sampled request gets its own
        group, so its draws depend only on the seed, not on its batch neighbours."""
        if self.greedy:
            return ("greedy", self.max_tokens, self.n, self.stop)
        return ("sample", self.max_tokens, self.n, self.stop, self.temperature, self.top_p, self.seed)


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    steering: Any = None  # a spec parsed by the steering hook, or None
    # Set (from any thread) when nobody waits for the answer any more: client gone or time limit passed. The
    # engine then stops generating this request's rows at the next token; its batch-mates go on.
    cancelled: bool = False
    # Streaming: called from the generating thread after every decoding step with this request's new token id
    # per generated row (one row when greedy, else n).
    on_tokens: Callable[[list[int]], None] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


class ChatEngine:
    """One model + tokenizer; ``generate`` takes a batch of requests, returns their choices.

    Parameters
    ----------
    model : a Hugging Face causal LM (eval mode)
    tokenizer : its tokenizer, with a chat template for :meth:`encode`
    steering_hook : SteeringHook or None
    """

    def __init__(self, model, tokenizer, steering_hook: SteeringHook | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.steering_hook = steering_hook
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self.rows_cancelled = 0  # generated rows cut short because their request was cancelled
        self.max_token_chars = max_token_chars(tokenizer)

    def prompt_cannot_fit(self, messages: list[dict], max_tokens: int) -> int | None:
        """The messages' character count if it proves the prompt has more than ``max_tokens`` tokens, else None."""
        n_chars = sum(len(m["content"]) for m in messages)
        return n_chars if n_chars > max_tokens * self.max_token_chars else None

    @classmethod
    def load(cls, resolved, dtype: str = "auto", device: str = "cpu", num_threads: int | None = None,
             trust_remote_code: bool = False, steering_hook: str | None = None,
             steering_hook_args: dict | None = None) -> "ChatEngine":
        """Load a resolved model (:func:`skillray.models.resolve_model`) for generation.

        ``steering_hook``: ``'module:factory'``, called as ``factory(model, tokenizer, **steering_hook_args)``.
        """
        from skillray.models import load_model, load_tokenizer, resolve_dtype

        if num_threads:
            torch.set_num_threads(int(num_threads))  # Ray sets OMP_NUM_THREADS=1 in workers
        tok = load_tokenizer(resolved, trust_remote_code)
        model = load_model(resolved, resolve_dtype(dtype, device), device, trust_remote_code)
        hook = load_steering_hook(steering_hook, model, tok, **(steering_hook_args or {})) if steering_hook else None
        return cls(model, tok, hook)

    def encode(self, messages: list[dict]) -> list[int]:
        """Chat messages ``[{role, content}]`` -> prompt token ids (chat template + generation prompt)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError("the served tokenizer has no chat template, so chat messages cannot be rendered")
        msgs = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        # The rendered template already holds the special tokens.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion] | Exception]:
        """Generate every request's ``n`` choices; returns one list of Completions per request, in order.

        A request whose generation fails gets its exception in its place instead, and only it: a group that
        fails is generated again one request at a time, so a bad request never fails its batch-mates.
        Cancelled requests (``cancelled`` set before their turn) get an empty list.
        """
        out: list[list[Completion] | Exception | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.cancelled:
                out[i] = []
            else:
                groups.setdefault(r.params.group_key(), []).append(i)
        for idx in groups.values():
            try:
                results = self._generate_group([requests[i] for i in idx])
            except Exception as e:  # noqa: BLE001 - isolate the failing request below
                if len(idx) == 1:
                    results = [e]
                else:
                    results = []
                    for i in idx:
                        try:
                            results.append(self._generate_group([requests[i]])[0])
                        except Exception as e1:  # noqa: BLE001 - this request's own failure
                            results.append(e1)
            for i, choices in zip(idx, results):
                out[i] = choices
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_group(self, reqs: list[GenerationRequest]) -> list[list[Completion]]:
        from transformers import GenerationConfig, StoppingCriteriaList

        p = reqs[0].params
        rows = 1 if p.greedy else p.n  # greedy: one answer, copied n times
        enc = self.tokenizer.pad({"input_ids": [r.prompt_ids for r in reqs]}, padding_side="left", return_tensors="pt")
        device = next(self.model.parameters()).device
        input_ids = enc["input_ids"].to(device)  # (B, T) left-padded
        attention_mask = enc["attention_mask"].to(device)  # (B, T)
        kw: dict[str, Any] = dict(
            max_new_tokens=p.max_tokens,
            do_sample=not p.greedy,
            num_return_sequences=rows,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
        )
        if not p.greedy:
            kw.update(temperature=p.temperature, top_p=p.top_p, top_k=0)
        if p.stop:
            kw["stop_strings"] = list(p.stop)
        gen_cfg = GenerationConfig(**kw)
        if not p.greedy and p.seed is not None:
            torch.manual_seed(p.seed)
        specs = [r.steering for r in reqs for _ in range(rows)]  # one per output row
        if any(s is not None for s in specs):
            if self.steering_hook is None:  # the server checks this per request; kept as an invariant
                raise RuntimeError("a steering spec reached an engine without a steering hook")
            ctx = self.steering_hook.apply(self.model, specs)
        else:
            ctx = contextlib.nullcontext()
        cancel = _CancelledRows(reqs, rows, self.eos_ids | {self.pad_id})
        with ctx:
            seqs = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=gen_cfg,
                tokenizer=self.tokenizer if p.stop else None,
                stopping_criteria=StoppingCriteriaList([cancel]),
                streamer=_RowStreamer(reqs, rows) if any(r.on_tokens for r in reqs) else None,
            )  # (B * rows, T + new)
        self.rows_cancelled += cancel.rows_cut
        new = seqs[:, input_ids.shape[1]:].tolist()
        results = []
        for b in range(len(reqs)):
            choices = [self._finish(new[b * rows + j], p) for j in range(rows)]
            results.append(choices * p.n if p.greedy else choices)
        return results

    def stream_text(self, ids: list[int], stop: tuple[str, ...]) -> str:
        """The part of a row still being generated (``ids`` so far) that is safe to send: decoded up to its end
        token, cut at a stop string, less what a stop string or a multi-byte character may still claim."""
        end = next((j for j, t in enumerate(ids) if t in self.eos_ids or t == self.pad_id), len(ids))
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        cuts = [k for k in (text.find(s) for s in stop) if k >= 0]
        if cuts:
            return text[: min(cuts)]
        hold = max((len(s) - 1 for s in stop), default=0)
        text = text[: len(text) - hold] if hold else text
        return text.rstrip("\ufffd")  # an incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives

    def _finish(self, ids: list[int], p: SamplingParams) -> Completion:
        """Cut one generated row at its end: EOS (counted), padding after a stop string, or max_tokens."""
        stop_at = next((j for j, t in enumerate(ids) if t in self.eos_ids or t == self.pad_id), None)
        if stop_at is None:
            # Shorter than max_tokens with no EOS: generate stopped on a stop string (one may span
            # the prompt's last tokens and the first generated one).
            body, n_tokens = ids, len(ids)
            reason = "length" if len(ids) >= p.max_tokens else "stop"
        else:
            body, reason = ids[:stop_at], "stop"
            n_tokens = stop_at + 1 if ids[stop_at] in self.eos_ids else stop_at
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        if p.stop:
            cuts = [k for k in (text.find(s) for s in p.stop) if k >= 0]
            if cuts:  # OpenAI semantics: the stop sequence itself is not returned
                text, reason = text[: min(cuts)], "stop"
        return Completion(text=text, finish_reason=reason, completion_tokens=n_tokens)


class _CancelledRows(StoppingCriteria):
    """A stopping criterion (``__call__(input_ids, scores) -> bool per row``): the rows of cancelled requests.

    Checked after every generated token, so a cancelled request stops within one decoding step while the
    other rows of its batch go on. ``rows_cut`` counts rows stopped while they were still generating.
    """

    def __init__(self, reqs: list[GenerationRequest], rows: int, end_ids: set[int]):
        super().__init__()
        self.reqs, self.rows, self.end_ids = reqs, rows, end_ids
        self.rows_cut = 0
        self._seen: set[int] = set()

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B * rows,)
        for b, r in enumerate(self.reqs):
            if r.cancelled:
                done[b * self.rows : (b + 1) * self.rows] = True
                if b not in self._seen:
                    self._seen.add(b)
                    last = input_ids[b * self.rows : (b + 1) * self.rows, -1].tolist()
                    self.rows_cut += sum(t not in self.end_ids for t in last)
        return done


class _RowStreamer(BaseStreamer):
    """Hands each decoding step's new tokens (``put``: the prompt first, then shape (B * rows,)) to the requests'
    ``on_tokens`` callbacks, each its own rows."""

    def __init__(self, reqs: list[GenerationRequest], rows: int):
        self.reqs, self.rows = reqs, rows
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate passes the prompt ids first
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        for b, r in enumerate(self.reqs):
            if r.on_tokens is not None and not r.cancelled:
                r.on_tokens(ids[b * self.rows : (b + 1) * self.rows])

    def end(self) -> None:
        pass
