"""llmcourse.ngram: probabilities against hand computations, normalisation, perplexity."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from llmcourse import data
from llmcourse.ngram import BOS, EOS, UNK, NGramModel, play_sentences

TOY = [["a", "b"], ["a", "a"]]  # padded (n=2): <s> a b </s> and <s> a a </s>
CORPUS = [
    "the cat sat on the mat".split(),
    "the dog sat on the log".split(),
    "a cat saw the dog".split(),
    "the mat saw a cat".split(),
]


def test_vocabulary_has_end_and_unknown_but_not_start() -> None:
    model = NGramModel(2, min_count=2).fit(CORPUS)
    assert model.vocab[:2] == [EOS, UNK] and BOS not in model.vocab
    assert set(model.vocab[2:]) == {"the", "cat", "sat", "on", "mat", "dog", "saw", "a"}  # "log" is seen once
    assert model.known(["log", "cat"]) == [UNK, "cat"]
    assert model.count(["the", UNK]) == 1  # "the log" became "the <unk>" when counting


def test_add_k_matches_hand_computation() -> None:
    # Bigram counts: (<s>,a)=2, (a,b)=1, (a,a)=1, (a,</s>)=1, (b,</s>)=1; V = {</s>, <unk>, a, b} = 4.
    laplace = NGramModel(2, smoothing="add-k", k=1.0).fit(TOY)
    assert laplace.prob("b", ["a"]) == pytest.approx((1 + 1) / (3 + 4))
    assert laplace.prob(UNK, ["a"]) == pytest.approx((0 + 1) / (3 + 4))
    assert laplace.prob("a", []) == pytest.approx((2 + 1) / (2 + 4))  # context <s>
    assert laplace.prob("b", [BOS]) == pytest.approx((0 + 1) / (2 + 4))
    add_half = NGramModel(2, smoothing="add-k", k=0.5).fit(TOY)
    assert add_half.prob("b", ["a"]) == pytest.approx(1.5 / (3 + 0.5 * 4))
    mle = NGramModel(2, smoothing="add-k", k=0.0).fit(TOY)
    assert mle.prob("b", ["a"]) == pytest.approx(1 / 3)
    assert mle.prob("zebra", ["b"]) == 0.0  # "zebra" is <unk>, never seen after b


def test_kneser_ney_matches_hand_computation() -> None:
    d = 0.75
    model = NGramModel(2, smoothing="kneser-ney", discount=d).fit(TOY)
    # Continuation counts: a follows 2 distinct words (<s>, a), b 1 (a), </s> 2 (a, b); 5 in all, 3 types.
    uniform = 1 / 4
    p1 = {"a": (2 - d) / 5, "b": (1 - d) / 5, EOS: (2 - d) / 5, UNK: 0.0}
    p1 = {w: p + d * 3 / 5 * uniform for w, p in p1.items()}
    assert sum(p1.values()) == pytest.approx(1.0)
    assert model.prob("b", ["a"]) == pytest.approx((1 - d) / 3 + d * 3 / 3 * p1["b"])
    assert model.prob(UNK, ["a"]) == pytest.approx(d * 3 / 3 * p1[UNK])
    assert model.prob("b", ["zebra"]) == pytest.approx(p1["b"])  # unseen context <unk>: back off fully


@pytest.mark.parametrize("smoothing", ["add-k", "kneser-ney"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_every_context_sums_to_one(smoothing: str, n: int) -> None:
    model = NGramModel(n, smoothing=smoothing, k=0.1, min_count=1).fit(CORPUS)
    contexts = [list(h) for h in model.counts[n]] + [["never", "seen", "this"], [], ["cat"]]
    for context in contexts:
        probs = [model.prob(w, context) for w in model.vocab]
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
        assert min(probs) > 0.0
        fast = model.distribution(context)
        assert all(fast[w] == pytest.approx(p, rel=1e-12) for w, p in zip(model.vocab, probs))


def test_unseen_bigram_gets_probability_only_with_smoothing() -> None:
    unseen = ["cat", "log"]  # "cat log" never occurs; both words do
    mle = NGramModel(2, smoothing="add-k", k=0.0).fit(CORPUS)
    assert mle.prob(unseen[1], unseen[:1]) == 0.0
    assert mle.logprob(unseen) == -math.inf and mle.perplexity([unseen]) == math.inf
    for model in (NGramModel(2, smoothing="add-k", k=1.0), NGramModel(2, smoothing="kneser-ney")):
        model.fit(CORPUS)
        assert model.prob(unseen[1], unseen[:1]) > 0.0
        assert math.isfinite(model.perplexity([unseen]))


@pytest.mark.parametrize("smoothing", ["add-k", "kneser-ney"])
def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(smoothing: str) -> None:
    # Trained on nothing, both smoothings give every token 1/V in every context.
    model = NGramModel(3, smoothing=smoothing).fit([], vocabulary=["to", "be", "or", "not"])
    assert len(model.vocab) == 6
    assert model.perplexity([["to", "be", "or", "not", "to", "be"], ["question"]]) == pytest.approx(6.0)


@pytest.mark.parametrize("smoothing", ["add-k", "kneser-ney"])
def test_perplexity_is_exp_of_mean_negative_log_likelihood(smoothing: str) -> None:
    model = NGramModel(3, smoothing=smoothing, k=0.5).fit(CORPUS[:3])
    held_out = [CORPUS[3], ["a", "dog", "sat"], ["zebra"]]
    nll, count = 0.0, 0
    for sentence in held_out:
        padded = [BOS, BOS, *sentence, EOS]
        for i in range(2, len(padded)):  # predict every token and the end token
            nll -= math.log(model.prob(padded[i], padded[i - 2 : i]))
            count += 1
    assert count == sum(len(s) + 1 for s in held_out)
    assert model.perplexity(held_out) == pytest.approx(math.exp(nll / count), rel=1e-12)
    assert sum(model.logprob(s) for s in held_out) == pytest.approx(-nll, rel=1e-12)


def test_context_is_cut_and_padded() -> None:
    model = NGramModel(2).fit(CORPUS)
    assert model.prob("cat", ["on", "the", "a"]) == model.prob("cat", ["a"])
    assert model.prob("cat", []) == model.prob("cat", [BOS])
    four = NGramModel(4).fit(CORPUS)
    assert four.prob("sat", ["the", "cat"]) == four.prob("sat", [BOS, "the", "cat"]) != four.prob("sat", ["cat"])
    with pytest.raises(ValueError):
        model.prob(BOS, [])
    with pytest.raises(ValueError):
        NGramModel(0)
    with pytest.raises(ValueError):
        NGramModel(2, smoothing="stupid-backoff")


def test_generation_is_seeded_and_stays_in_the_vocabulary() -> None:
    model = NGramModel(2).fit(CORPUS)
    first, again = model.generate(seed=3), model.generate(seed=3)
    assert first == again
    assert model.generate(seed=random.Random(3)) == first
    samples = [model.generate(seed=s, max_tokens=12) for s in range(20)]
    assert all(len(s) <= 12 and set(s) <= set(model.vocab) - {EOS} for s in samples)
    assert len({tuple(s) for s in samples}) > 1


def test_on_shakespeare_context_helps_and_unigrams_do_not_overfit() -> None:
    train = play_sentences([data.get_play("macbeth"), data.get_play("othello")])
    test = play_sentences([data.get_play("king-lear")])
    assert all(s and all(t == t.lower() for t in s) for s in train[:100])
    unigram = NGramModel(1, min_count=2).fit(train)
    trigram = NGramModel(3, min_count=2).fit(train)
    assert trigram.perplexity(test) < unigram.perplexity(test)
    # A trigram model memorises its training text far more than a unigram model does.
    assert trigram.perplexity(train) < 0.5 * trigram.perplexity(test)
    assert unigram.perplexity(train) > 0.7 * unigram.perplexity(test)


@pytest.mark.parametrize("smoothing", ["add-k", "kneser-ney"])
def test_sampling_follows_the_distribution(smoothing: str) -> None:
    model = NGramModel(3, smoothing=smoothing, k=0.2).fit(CORPUS)
    rng = random.Random(0)
    for context in (["sat", "on"], ["the"], ["zebra", "cat"]):
        draws = 20_000
        seen = Counter(model.sample(context, rng) for _ in range(draws))
        for token, p in model.distribution(context).items():
            # 4.5 standard deviations of a binomial frequency: fails by chance about once in 10^5.
            assert abs(seen[token] / draws - p) <= 4.5 * math.sqrt(p * (1 - p) / draws) + 1e-9, (context, token)
