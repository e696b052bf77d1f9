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


def test_no_seed_samples_from_a_fresh_one():
    model = TinyDecoder().eval()
    run = lambda: "".join(Generation(model, encode("hi", 100), 16, 1.0, None, torch.device("cpu")).tokens())  # noqa: E731
    assert run() != run()  # 16 bytes drawn from about 95 each: equal by chance practically never


@pytest.mark.parametrize(("start", "size"), [(0, 1), (6, 3), (10, 5)])
def test_stop_ends_the_text_before_the_stop_sequence_and_no_piece_holds_any_of_it(start, size):
    model = TinyDecoder().eval()
    full = "".join(Generation(model, encode("hi", 100), 24, 0.0, 0, torch.device("cpu")).tokens())
    stop = full[start : start + size]
    expected = full[: full.index(stop)]
    generation = Generation(model, encode("hi", 100), 24, 0.0, 0, torch.device("cpu"), stop=["\u2603", stop])
    pieces = list(generation.tokens())
    assert ("".join(pieces), generation.finish_reason) == (expected, "stop")
    # One piece per generated token, the stop sequence's own tokens included.
    assert len(pieces) == generation.generated == len(expected) + len(stop)


def test_text_held_back_for_a_stop_sequence_that_never_completes_is_released():
    model = TinyDecoder().eval()
    full = "".join(Generation(model, encode("hi", 100), 24, 0.0, 0, torch.device("cpu")).tokens())
    # Each stop sequence begins with text the model writes, and goes on as it never does.
    stops = [full[4:6] + "\u2603", full[-2:] + "\u2603", full[:1] + "\u2603\u2603"]
    generation = Generation(model, encode("hi", 100), 24, 0.0, 0, torch.device("cpu"), stop=stops)
    pieces = list(generation.tokens())
    assert ("".join(pieces), generation.finish_reason, len(pieces)) == (full, "length", 24)
    assert "" in pieces[4:7] and pieces[-1].endswith(full[-2:])  # held while they might begin a stop sequence
