"""Records -> token ids with the model's chat template, and where the response starts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skillray.corpus.records import CorpusError, Record


@dataclass
class Tokenized:
    """Token ids of a corpus, with per-record lengths; sequences are cut to ``max_tokens``.

    ``response_start[i]`` is the index of the first response (last assistant turn) token,
    0 for plain text (the whole text counts as response). ``truncated[i]`` says the
    sequence was cut; ``empty_response[i]`` that no response token survived the cut.
    """

    ids: list[str]
    input_ids: list[np.ndarray]  # each (T_i,) int32
    response_start: np.ndarray  # (N,) int64
    truncated: np.ndarray  # (N,) bool
    full_lengths: np.ndarray  # (N,) int64, before truncation

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)

    @property
    def empty_response(self) -> np.ndarray:
        return self.response_start >= self.lengths


def render(record: Record, tokenizer) -> tuple[str, str]:
    """(prompt, full) strings for a record. prompt is the part before the response.

    Chats go through the tokenizer's chat template; a chat whose last turn is the
    assistant's has that turn as the response. Any other chat has no response and is
    rendered with the generation prompt, as the model sees it when it starts its reply: its
    last token is the last prompt token (``[/INST]`` for Mistral, ``assistant\n`` for ChatML),
    the position the safety stage's ``last`` pooling reads.
    """
    if record.text is not None:
        return "", record.text
    if getattr(tokenizer, "chat_template", None) is None:
        raise CorpusError(
            f"record {record.id!r}: chat records need a tokenizer with a chat template; "
            f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none (use `text` records instead)"
        )
    msgs = [dict(m) for m in record.messages]
    if msgs[-1]["role"] == "assistant":
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    else:
        prompt = full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return prompt, full


def tokenize_records(records: list[Record], tokenizer, max_tokens: int) -> Tokenized:
    """Tokenize every record (batched, fast tokenizer), cutting at ``max_tokens``."""
    prompts, fulls = zip(*(render(r, tokenizer) for r in records)) if records else ((), ())
    # Chat templates already contain the special tokens; plain text gets the tokenizer's own.
    add_special = [r.text is not None for r in records]
    enc_full = _encode(tokenizer, list(fulls), add_special)
    enc_prompt = _encode(tokenizer, list(prompts), add_special)
    input_ids, starts, truncated, full_len = [], [], [], []
    for rec, full, prompt in zip(records, enc_full, enc_prompt):
        if len(full) == 0:
            raise CorpusError(f"record {rec.id!r}: tokenizes to zero tokens")
        if rec.text is not None:
            start = 0
        else:
            # The prompt's tokens are normally a prefix of the full chat's; where a template or
            # merge breaks that, the response starts where the two first differ.
            n = min(len(prompt), len(full))
            eq = np.asarray(prompt[:n]) == np.asarray(full[:n])
            start = n if eq.all() else int(np.argmin(eq))
        full_len.append(len(full))
        truncated.append(len(full) > max_tokens)
        input_ids.append(np.asarray(full[:max_tokens], dtype=np.int32))
        starts.append(start)
    return Tokenized(
        ids=[r.id for r in records],
        input_ids=input_ids,
        response_start=np.asarray(starts, dtype=np.int64),
        truncated=np.asarray(truncated, dtype=bool),
        full_lengths=np.asarray(full_len, dtype=np.int64),
    )


def _encode(tokenizer, texts: list[str], add_special: list[bool]) -> list[list[int]]:
    out: list[list[int] | None] = [None] * len(texts)
    for flag in (True, False):
        idx = [i for i, a in enumerate(add_special) if a == flag]
        if idx:
            enc = tokenizer([texts[i] for i in idx], add_special_tokens=flag)["input_ids"]
            for i, e in zip(idx, enc):
                out[i] = e
    return out  # type: ignore[return-value]


def shared_prefix_length(input_ids: list[np.ndarray]) -> int:
    """Length of the longest token prefix that every sequence shares (a chat template's head).

    A causal model's states at those positions are the same in every record, so a mean that
    includes them carries a constant block weighted by ``prefix / length``: a pure length signal.
    At least one token of the shortest sequence is kept out of the prefix; fewer than two
    sequences share nothing (0).
    """
    if len(input_ids) < 2:
        return 0
    prefix = np.asarray(input_ids[0])
    for seq in input_ids[1:]:
        n = min(len(prefix), len(seq))
        differ = np.flatnonzero(prefix[:n] != np.asarray(seq[:n]))
        prefix = prefix[: differ[0] if len(differ) else n]
        if len(prefix) == 0:
            return 0
    return int(min(len(prefix), min(len(s) for s in input_ids) - 1))
