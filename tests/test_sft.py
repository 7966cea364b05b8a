"""SFT: data preparation (chat template, assistant-only mask, counted cuts), Ray Train + TRL runs on SmolLM2
(loss drops, weights change, a killed worker resumes from its checkpoint), and the saved model in eval/steering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skillray.config import SFTConfig
from skillray.sft.data import SFTDataError, chat_ids_and_mask, read_train_lines, tokenize_lines


@pytest.fixture(scope="module")
def tok(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2.path)


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mask_covers_assistant_turns_only(tok):
    msgs = [{"role": "user", "content": "What is 7+5?"}, {"role": "assistant", "content": "It is 12."},
            {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4"}]  # fmt: skip
    ids, mask = chat_ids_and_mask(msgs, tok)
    assert ids == list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    # both answers and their end-of-turn tokens, nothing of the system/user turns or role headers
    assert trained == "It is 12.<|im_end|>\n4<|im_end|>\n"
    assert "What is" not in trained and "assistant" not in trained


def test_cuts_and_drops_are_counted(tok, tmp_path):
    long_answer = " ".join(["seven"] * 200)
    p = _write_jsonl(tmp_path / "t.jsonl", [_chat("Q1?", "short"), _chat("Q2?", long_answer),
                                            {"messages": [{"role": "user", "content": "no answer"}]},
                                            {"text": "plain text line"}])  # fmt: skip
    lines = read_train_lines(p)
    data = tokenize_lines(lines, tok, max_seq_len=64)
    s = data.stats()
    assert (s["lines"], s["examples_used"], s["examples_truncated"], s["dropped_no_assistant_turn"]) == (4, 3, 1, 1)
    assert s["tokens_cut"] > 100 and max(len(x) for x in data.input_ids) == 64
    assert all(len(a) == len(b) for a, b in zip(data.input_ids, data.assistant_masks))
    # a cut that leaves no assistant token drops the example (counted); nothing left is an error
    prompt = tok.apply_chat_template(lines[1]["messages"][:1], tokenize=True, add_generation_prompt=True)["input_ids"]
    data = tokenize_lines([lines[1], lines[3]], tok, max_seq_len=len(prompt))
    assert (data.stats()["dropped_no_loss_token_after_cut"], data.examples) == (1, 1)
    with pytest.raises(SFTDataError, match=r"no example left to train on"):
        tokenize_lines(lines[:2], tok, max_seq_len=8)


def test_bad_lines_are_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_chat("a", "b")) + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(SFTDataError, match=r"bad.jsonl line 2: messages\[0\]"):
        read_train_lines(p)
    with pytest.raises(SFTDataError, match=r"budget 5 asks for more lines than the file's 1"):
        read_train_lines(_write_jsonl(tmp_path / "one.jsonl", [_chat("a", "b")]), budget=5)


def test_selection_must_exist(tmp_path):
    from skillray.config import ModelConfig
    from skillray.sft import run_sft

    with pytest.raises(ValueError, match=r"sft.selection is not set"):
        run_sft(tmp_path, SFTConfig(), ModelConfig())
    with pytest.raises(FileNotFoundError, match=r"sft.selection='nope': no finished selection"):
        run_sft(tmp_path, SFTConfig(selection="nope"), ModelConfig())
