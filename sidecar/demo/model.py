"""A tiny decoder-only transformer that generates token by token with a KV cache.

Byte-level vocabulary (256 tokens), a few million parameters initialised from
a fixed seed: it writes nonsense, but every token costs a real forward pass
over a real KV cache, on the CPU or a CUDA GPU, so latency, streaming and GPU
load behave like a model server's.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

VOCAB = 256
# Sampling is limited to printable ASCII and newline so the output is readable.
_PRINTABLE = torch.tensor([i == 10 or 32 <= i < 127 for i in range(VOCAB)])


@dataclass(frozen=True)
class ModelShape:
    layers: int = 4
    width: int = 256
    heads: int = 4
    context: int = 1024


class _Block(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.heads = shape.heads
        self.norm1 = nn.LayerNorm(shape.width)
        self.qkv = nn.Linear(shape.width, 3 * shape.width)
        self.out = nn.Linear(shape.width, shape.width)
        self.norm2 = nn.LayerNorm(shape.width)
        self.mlp = nn.Sequential(nn.Linear(shape.width, 4 * shape.width), nn.GELU(), nn.Linear(4 * shape.width, shape.width))

    def forward(self, x: torch.Tensor, cache: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        # Causal only within the new tokens; everything cached precedes them.
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and length > 1)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        x = x + self.mlp(self.norm2(x))
        return x, [k, v]


class TinyDecoder(nn.Module):
    def __init__(self, shape: ModelShape = ModelShape(), seed: int = 1234) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.shape = shape
        self.embed = nn.Embedding(VOCAB, shape.width)
        self.position = nn.Embedding(shape.context, shape.width)
        self.blocks = nn.ModuleList(_Block(shape) for _ in range(shape.layers))
        self.norm = nn.LayerNorm(shape.width)
        self.head = nn.Linear(shape.width, VOCAB, bias=False)
        torch.random.set_rng_state(generator_state)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, cache: list[list[torch.Tensor]] | None, offset: int):
        positions = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        new_cache = []
        for index, block in enumerate(self.blocks):
            x, layer_cache = block(x, None if cache is None else cache[index])
            new_cache.append(layer_cache)
        return self.head(self.norm(x[:, -1])), new_cache


def encode(text: str, limit: int) -> list[int]:
    """Byte tokens of `text`, keeping the last `limit` (the end of a prompt matters most)."""
    data = text.encode("utf-8")[-limit:] or b"\n"
    return list(data)


class Generation:
    """One request's decoding state: call `step()` once per token (it runs a forward pass).

    `seed=None` samples from a fresh random seed. Generation ends with finish_reason
    "length" after `max_tokens` tokens, or "stop" when the text reaches one of the
    `stop` sequences; the text `step()` returns never includes a stop sequence.
    """

    def __init__(self, model: TinyDecoder, prompt: list[int], max_tokens: int, temperature: float, seed: int | None, device: torch.device, stop: Sequence[str] = ()) -> None:
        self.model = model
        self.device = device
        self.prompt_tokens = len(prompt)
        self.max_tokens = max(0, min(max_tokens, model.shape.context - len(prompt)))
        self.temperature = temperature
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.stop = tuple(stop)
        self.cache: list[list[torch.Tensor]] | None = None
        self.pending = torch.tensor([prompt], device=device)
        self.position = 0
        self.generated = 0
        self.finish_reason: str | None = None if self.max_tokens else "length"
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # text decoded but not yet returned: it may be the start of a stop sequence

    @torch.inference_mode()
    def step(self) -> str:
        """Run one forward pass and return the text it makes final: the next token's text, or ''
        while the token ends no character or may begin a stop sequence (that text comes with a
        later token, or never when the stop sequence completes)."""
        logits, self.cache = self.model(self.pending, self.cache, self.position)
        self.position += self.pending.shape[1]
        logits = logits[0].float().cpu().masked_fill(~_PRINTABLE, -math.inf)
        if self.temperature <= 0:
            token = int(logits.argmax())
        else:
            probabilities = torch.softmax(logits / self.temperature, dim=-1)
            token = int(torch.multinomial(probabilities, 1, generator=self.generator))
        self.pending = torch.tensor([[token]], device=self.device)
        self.generated += 1
        text = self._held + self._decoder.decode(bytes([token]))
        self._held = ""
        found = [index for index in (text.find(stop) for stop in self.stop) if index >= 0]
        if found:
            self.finish_reason = "stop"
            return text[: min(found)]
        if self.generated >= self.max_tokens:
            self.finish_reason = "length"
            return text
        held = _stop_prefix_length(text, self.stop)
        if held:
            text, self._held = text[:-held], text[-held:]
        return text

    def tokens(self) -> Iterator[str]:
        while self.finish_reason is None:
            yield self.step()

    @property
    def kv_cache_tokens(self) -> int:
        return self.position


def _stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop sequence (0 if none does).

    Holding exactly that much back is enough: a stop sequence that a later token
    completes starts inside it, so it is found in held text plus the new text.
    """
    return max((size for stop in stops for size in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:size])), default=0)
