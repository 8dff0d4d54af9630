"""Text stage: T5 (umt5-xxl encoder) embeddings as the native code builds them (wan_facts.md §4.3).

Shapes: ids/mask [1, 512]; encoder output [1, 512, D]; trimmed to the real length L (incl. EOS) -> [L, D];
the DiT gets it zero-padded back to 512 rows -> [1, 512, D] (cross-attention attends all 512, unmasked).
"""
from __future__ import annotations

import html
import re

import torch

TEXT_LEN = 512


def clean_prompt(text: str) -> str:
    """Native `clean='whitespace'`: ftfy, html.unescape twice, collapse whitespace."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy is a dependency; diffusers skips it the same way
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_prompt(tokenizer, encoder, prompt: str, device, text_len: int = TEXT_LEN) -> torch.Tensor:
    """One prompt -> [L, D] (trimmed to its real token count, as the native T5EncoderModel returns)."""
    enc = tokenizer([clean_prompt(prompt)], padding="max_length", truncation=True, max_length=text_len,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids = enc.input_ids.to(device)          # [1, 512]
    mask = enc.attention_mask.to(device)    # [1, 512]
    out = encoder(input_ids=ids, attention_mask=mask).last_hidden_state   # [1, 512, D]
    seq_len = int(mask.sum())
    return out[0, :seq_len]                 # [L, D]


def pad_embeds(embeds: torch.Tensor, text_len: int = TEXT_LEN) -> torch.Tensor:
    """[L, D] -> [1, text_len, D], zero rows after the real tokens (the native DiT pads the same way)."""
    out = embeds.new_zeros(1, text_len, embeds.shape[-1])
    out[0, : embeds.shape[0]] = embeds
    return out
