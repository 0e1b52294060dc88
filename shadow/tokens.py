"""Token counts known before a call: an upper bound (for the budget) and an estimate (for tpm).

No tokenizer is loaded. The bound relies on a property of byte-level BPE tokenizers (GPT,
Llama 3, SmolLM2, ...) and SentencePiece with byte fallback: every token covers at least one
byte of text. The JSON body of the request holds every byte of every message plus at least ~25
bytes of syntax per message, more than the few template tokens a chat format adds, so its size
bounds the prompt's tokens. Images are the exception: a short URL can cost hundreds of tokens,
so each image part adds `IMAGE_TOKENS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IMAGE_TOKENS = 2000  # above what one image costs at OpenAI (<= 1105 at high detail) or Anthropic (~1600)
CHARS_PER_TOKEN = 4  # the usual estimate for English text


def image_parts(messages: Sequence[dict[str, Any]]) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for p in content if isinstance(p, dict) and p.get("type") in (
                "image_url", "image", "input_image"))
    return n


def prompt_token_bound(body: bytes, messages: Sequence[dict[str, Any]]) -> int:
    """At least as many tokens as the prompt of `body` (the serialized request) can have."""
    return len(body) + IMAGE_TOKENS * image_parts(messages)


def prompt_token_estimate(body: bytes) -> int:
    """A typical count, for rate limits: about four bytes a token."""
    return len(body) // CHARS_PER_TOKEN + 1
