"""Training data for SFT: JSONL lines -> token ids with the chat template and an assistant-token mask.

The driver does this once, before any worker starts, so every count (lines read, examples cut,
examples dropped) is known and reported, and workers only read a Parquet file.

The mask is computed from the chat template itself, for any template: the tokens of assistant
turn ``i`` are those the full render of ``messages[: i + 1]`` adds to the render of
``messages[: i]`` with the generation prompt (so the role header is context, the content and
the end-of-turn token are trained). Templates that rewrite earlier turns when a later one is
added break that prefix property; such a chat is an error naming the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from skillray.artifacts import verify_artifact
from skillray.corpus.records import ROLES


class SFTDataError(ValueError):
    """A bad training line; the message names the file, the line and the field."""


@dataclass
class SFTData:
    """Tokenized training examples and what happened to every line.

    ``input_ids[i]`` and ``assistant_masks[i]`` are lists of equal length (<= max_seq_len);
    ``assistant_masks[i][t] == 1`` where token t is in the loss.
    """

    input_ids: list[list[int]] = field(default_factory=list)
    assistant_masks: list[list[int]] = field(default_factory=list)
    lines: int = 0  # lines read (after the budget)
    chats: int = 0  # {"messages": ...} lines
    texts: int = 0  # {"text": ...} lines (loss on every token)
    truncated: int = 0  # examples cut at max_seq_len (kept)
    dropped_no_assistant: int = 0  # chats without an assistant turn
    dropped_after_cut: int = 0  # no loss token left after the cut
    tokens: int = 0  # tokens kept
    loss_tokens: int = 0  # tokens in the loss
    tokens_cut: int = 0  # tokens removed by the cut

    @property
    def examples(self) -> int:
        return len(self.input_ids)

    @property
    def dropped(self) -> int:
        return self.dropped_no_assistant + self.dropped_after_cut

    def stats(self) -> dict:
        return {"lines": self.lines, "examples_used": self.examples, "chats": self.chats, "texts": self.texts,
                "examples_truncated": self.truncated, "tokens_cut": self.tokens_cut,
                "examples_dropped": self.dropped, "dropped_no_assistant_turn": self.dropped_no_assistant,
                "dropped_no_loss_token_after_cut": self.dropped_after_cut, "tokens": self.tokens,
                "loss_tokens": self.loss_tokens}  # fmt: skip


def read_train_lines(path: str | Path, budget: int | None = None) -> list[dict]:
    """The first ``budget`` lines (all when None) of a training JSONL, each checked.

    Every line is ``{"messages": [{role, content}, ...]}`` or ``{"text": "..."}``; errors name the
    file, the line number and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training file not found: {path}")
    verify_artifact(path)  # a selection's train.jsonl: its size, and its checksum on first use
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if budget is not None and len(out) >= budget:
                break
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SFTDataError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or ("messages" in row) == ("text" in row):
                raise SFTDataError(f"{where}: expected an object with exactly one of `messages` or `text`")
            if "text" in row:
                if not isinstance(row["text"], str) or not row["text"].strip():
                    raise SFTDataError(f"{where}: field `text` is empty or not a string")
                out.append({"text": row["text"]})
                continue
            msgs = row["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise SFTDataError(f"{where}: field `messages` must be a non-empty list")
            clean = []
            for j, m in enumerate(msgs):
                if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                    raise SFTDataError(f"{where}: messages[{j}] must be {{role: one of {ROLES}, content: string}}, "
                                       f"got {m!r:.80}")  # fmt: skip
                clean.append({"role": m["role"], "content": m["content"]})
            out.append({"messages": clean})
    if budget is not None and len(out) < budget:
        raise SFTDataError(f"{path}: budget {budget} asks for more lines than the file's {len(out)}; "
                           f"use a budget of at most {len(out)}")  # fmt: skip
    if not out:
        raise SFTDataError(f"{path}: no training lines")
    return out


def _ids(x) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    if hasattr(x, "keys") and "input_ids" in x:
        x = x["input_ids"]
    return list(x)


def chat_ids_and_mask(messages: list[dict], tokenizer, where: str = "chat") -> tuple[list[int], list[int]]:
    """Token ids of a chat (full chat template render) and its assistant mask, both of shape (T,)."""
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    mask = [0] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _ids(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True)) if i else []
        upto = _ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True))
        if full[: len(before)] != before or full[: len(upto)] != upto:
            raise SFTDataError(f"{where}: the chat template renders messages[:{i + 1}] differently from the start "
                               "of the whole chat, so assistant tokens cannot be located; use single-turn chats "
                               "or a prefix-preserving template")  # fmt: skip
        for t in range(len(before), len(upto)):
            mask[t] = 1
    return full, mask


def tokenize_lines(lines: list[dict], tokenizer, max_seq_len: int, source: str = "train") -> SFTData:
    """Chat-template every line, cut at ``max_seq_len`` tokens (counted), drop lines without loss tokens (counted).

    Chats are trained on assistant tokens only; plain ``text`` lines on every token (with the
    tokenizer's own special tokens and an EOS at the end).
    """
    if any("messages" in x for x in lines) and getattr(tokenizer, "chat_template", None) is None:
        raise SFTDataError(f"{source}: chat lines need a tokenizer with a chat template; "
                           f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none")  # fmt: skip
    data = SFTData(lines=len(lines))
    for n, row in enumerate(lines, 1):
        if "text" in row:
            data.texts += 1
            ids = _ids(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
            if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
                ids.append(tokenizer.eos_token_id)
            mask = [1] * len(ids)
        else:
            data.chats += 1
            if not any(m["role"] == "assistant" for m in row["messages"]):
                data.dropped_no_assistant += 1
                continue
            ids, mask = chat_ids_and_mask(row["messages"], tokenizer, f"{source} line {n}")
        if len(ids) > max_seq_len:
            data.truncated += 1
            data.tokens_cut += len(ids) - max_seq_len
            ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        if not any(mask[1:]):  # the first token is never a label (nothing predicts it)
            data.dropped_after_cut += 1
            continue
        data.input_ids.append([int(t) for t in ids])
        data.assistant_masks.append([int(b) for b in mask])
        data.tokens += len(ids)
        data.loss_tokens += sum(mask[1:])
    if not data.input_ids:
        raise SFTDataError(f"{source}: no example left to train on ({data.stats()}); raise max_seq_len or check "
                           "that the chats end with an assistant turn")  # fmt: skip
    return data


def write_parquet(data: SFTData, path: str | Path) -> None:
    """``input_ids`` and ``assistant_masks`` columns (list<int32>, list<int8>), written atomically."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from skillray.artifacts import atomic_write_bytes

    table = pa.table({"input_ids": pa.array(data.input_ids, pa.list_(pa.int32())),
                      "assistant_masks": pa.array(data.assistant_masks, pa.list_(pa.int8()))})  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())
