from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sidecar.demo.model import Generation, TinyDecoder, encode  # noqa: E402


def test_a_few_million_parameters_from_a_fixed_seed():
    first, second = TinyDecoder(), TinyDecoder()
    assert 1_000_000 < first.parameter_count < 10_000_000
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))


@torch.inference_mode()
def test_kv_cache_gives_the_same_logits_as_a_full_forward_pass():
    model = TinyDecoder().eval()
    tokens = torch.tensor([encode("The quick brown fox", 100)])
    full, _ = model(tokens, None, 0)
    prefix, cache = model(tokens[:, :-3], None, 0)
    for index in range(tokens.shape[1] - 3, tokens.shape[1]):
        logits, cache = model(tokens[:, index : index + 1], cache, index)
    assert torch.allclose(logits, full, atol=1e-4)


def test_generation_is_deterministic_per_seed_and_stops_at_max_tokens():
    model = TinyDecoder().eval()
    run = lambda seed: "".join(Generation(model, encode("hi", 100), 16, 0.8, seed, torch.device("cpu")).tokens())  # noqa: E731
    assert run(1) == run(1) and run(1) != run(2)
    generation = Generation(model, encode("hi", 100), 16, 0.0, 0, torch.device("cpu"))
    text = "".join(generation.tokens())
    assert (generation.generated, generation.finish_reason, len(text)) == (16, "length", 16)
    assert text.isprintable() or "\n" in text
