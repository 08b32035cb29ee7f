"""Chat formatting of training and benchmark prompts."""

from __future__ import annotations

from transformers import AutoTokenizer

from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.training.data import chat_prompt_ids


def test_plain_transcript_without_a_chat_template() -> None:
    """A base model (Gemma 3 270M ships none) gets its chats as a plain User/Assistant transcript."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    tokenizer.chat_template = None
    messages = [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Again."},
    ]
    text = tokenizer.decode(chat_prompt_ids(tokenizer, messages))
    assert text == f"{tokenizer.bos_token}User: Say hi.\n\nAssistant: Hi!\n\nUser: Again.\n\nAssistant:"


def test_a_chat_template_renders_as_the_model_defines_it() -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    messages = [{"role": "user", "content": "Say hi."}]
    want = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert chat_prompt_ids(tokenizer, messages) == want
