"""Eval prompts: the problem (plus an instruction) as a chat, rendered with the tokenizer's chat template."""

from __future__ import annotations


def build_messages(question: str, system_prompt: str | None = None, instruction: str | None = None) -> list[dict]:
    """``[{system}?, {user: question + blank line + instruction}]``; the only eval prompt template."""
    content = question.rstrip()
    if instruction:
        content = f"{content}\n\n{instruction}"
    msgs = [{"role": "user", "content": content}]
    if system_prompt:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids: chat template with the generation prompt, no extra special tokens.

    The same ids as :meth:`skillray.serve.engine.ChatEngine.encode` (tested), computed on the
    driver so every backend (HF, vLLM) is given identical tokens.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the model's tokenizer has no chat template; eval prompts are chats (use an instruct model)")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
