"""llmcourse.metrics against sacrebleu, rouge-score and scikit-learn, on tricky and random inputs."""

from __future__ import annotations

import itertools
import logging
import math
import random
import string

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_score_tokenize
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sklearn import metrics as sk

from llmcourse import metrics
from llmcourse.metrics import BleuScore

TOL = 1e-9
logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # quiet its advice to use effective_order

# --------------------------------------------------------------------------------------------
# Shared inputs
# --------------------------------------------------------------------------------------------

# (hypothesis, references): edge cases of BLEU's counting and of the 13a tokenizer.
TRICKY_PAIRS: list[tuple[str, list[str]]] = [
    ("", ["The cat sat on the mat."]),  # empty hypothesis
    ("The cat sat on the mat.", ["The cat sat on the mat."]),  # identical: 100
    ("Hello", ["Hello"]),  # one word: only unigrams exist
    ("Hello", ["Goodbye"]),  # one word, no match at all
    ("Hello world", ["Hello there world"]),  # unigrams match, bigram does not
    ("the the the the the the the", ["The cat is on the mat.", "There is a cat on the mat."]),  # clipping
    ("cat mat dog sat", ["the cat sat on the mat"]),  # no match above unigrams
    ("the cat sat on a mat", ["the cat sat on the mat", "a cat"]),
    ("It's 3.14, not 3 . 14 -- or is it?", ["It's 3.14 -- not 3.14!"]),
    ("The U.S. economy grew 2.5% in 2019-2020.", ["The U.S. economy grew by 2.5 % in 2019 - 2020 ."]),
    ('He said "well-known" things', ["He said \u201cwell-known\u201d things", 'he said "well known" things']),
    ("a b c d e f g h", ["a b c", "a b c d e f", "a b c d e f g h i j k l"]),  # longer than the closest
    ("a b", ["a b c d", "a b c d e f"]),  # shorter than every reference
    ("a b c d", ["a b c", "a b c d e"]),  # two references equally close: the shorter counts
    ("&quot;x&quot; &amp; y &lt;z&gt; &amp;lt; &amp;quot;", ['"x" & y <z> < &quot;']),  # HTML entities, in order
    ("multi-line-\nbreak<skipped> text-\n", ["multi-linebreak text"]),
    ("1,000,000 people, 2.5 million.", ["1,000,000 people , 2.5 million ."]),
    ("trailing spaces   \t", ["trailing spaces"]),
    ("x", [""]),  # empty reference
    ("a b c d", ["", "a b c d"]),
    ("Mr. Smith's e-mail: j.smith@example.com (p. 3).", ["Mr. Smith's email is j.smith@example.com, page 3."]),
    ("won't can't 'quoted' ''double'' `tick`", ["won't can't quoted double tick"]),
    ("tab\tseparated\u00a0non-breaking space", ["tab separated non-breaking space"]),
    ("[a]{b}|c|~d~ ^e^ _f_ 1/2 x+y=z a;b:c", ["[a] {b} | c | ~d~ ^e^ _f_ 1 / 2 x + y = z"]),
    ("Wait... what?! 3.", ["Wait ... what ?!", "Wait. What? 3"]),
]

# Edge cases of rouge-score's tokenizer and of ROUGE's counting: (hypothesis, reference).
TRICKY_ROUGE: list[tuple[str, str]] = [
    ("", "the cat sat"),
    ("the cat sat", ""),
    ("", ""),
    ("!!! ... ---", "the cat"),  # no token at all
    ("The Cat SAT.", "the cat sat"),  # case
    ("the the the the", "the cat sat on the mat"),  # clipped counts
    ("mat the on sat cat the", "the cat sat on the mat"),  # same words, another order
    ("the cat sat on the mat and then it ran away", "the cat sat on the mat"),  # copy plus more
    ("Résumé naïve café", "resume naive cafe"),  # non-ASCII letters become spaces
    ("\u0130stanbul \u212aelvin", "i stanbul kelvin"),  # lowercasing makes ASCII out of these
    ("It's 3.14 in the U.S. e-mail", "it s 3 14 in the u s e mail"),
    ("CATS Running runs ran generously happiness", "cat run running runs happy generous"),  # stemmer
    ("dies died ies ties tied", "die dy die tie"),  # words of 3 characters are not stemmed
    ("studies studying caresses ponies", "study studi caress poni"),
    ("under_score tab\tnew\nline", "under score tab new line"),
]

# A small vocabulary, so that random sentences share n-grams up to order 4, with the
# punctuation, numbers and word forms that the tokenizers and the stemmer treat specially.
VOCAB = [
    "the", "The", "cat", "cats", "sat", "on", "mat", "a", "dog", "runs", "running", "ran",
    ",", ".", "3.14", "U.S.", "it's", "--", '"', "well-known", "1-2", "(", ")", "&amp;", "Happiness",
]  # fmt: skip


def random_words(rng: random.Random, max_len: int = 12) -> list[str]:
    return rng.choices(VOCAB, k=rng.randint(0, max_len))


def edit(rng: random.Random, words: list[str]) -> list[str]:
    """A copy of ``words`` with a few random deletions, substitutions and insertions."""
    result = list(words)
    for _ in range(rng.randint(0, 4)):
        i, action = rng.randint(0, len(result)), rng.choice("dsi")
        if action == "i" or i == len(result):
            result.insert(i, rng.choice(VOCAB))
        elif action == "d":
            del result[i]
        else:
            result[i] = rng.choice(VOCAB)
    return result


def join(rng: random.Random, words: list[str]) -> str:
    # Now and then no space, as in "cat." or "3.14U.S.", to give the tokenizers more to do.
    return "".join(word + ("" if rng.random() < 0.15 else " ") for word in words).strip()


def random_pairs(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """``n`` (hypothesis, 1 to 3 references): half the hypotheses are edits of the first reference."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        first = random_words(rng)
        references = [first] + [edit(rng, first) for _ in range(rng.randint(0, 2))]
        hypothesis = edit(rng, first) if rng.random() < 0.5 else random_words(rng)
        pairs.append((join(rng, hypothesis), [join(rng, words) for words in references]))
    return pairs


RANDOM_PAIRS = random_pairs(300)


# --------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------


def test_perplexity_is_exp_of_mean_nll() -> None:
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(math.log(7.0)) == pytest.approx(7.0, rel=1e-15)


def test_uniform_logits_give_the_vocabulary_size() -> None:
    logits = torch.zeros(2, 5, 11)  # (B, T, V)
    targets = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    assert metrics.perplexity_from_logits(logits, targets) == pytest.approx(11.0, rel=1e-12)


@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_perplexity_from_logits_matches_cross_entropy(ignore_index: int) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 7, 13, generator=generator)  # (B, T, V)
    targets = torch.randint(0, 13, (2, 7), generator=generator)  # (B, T)
    targets[0, :3] = ignore_index
    nll = F.cross_entropy(logits.double().view(-1, 13), targets.view(-1), ignore_index=ignore_index)
    assert metrics.perplexity_from_logits(logits, targets, ignore_index) == pytest.approx(nll.exp().item(), rel=1e-12)
    targets = targets.clamp(min=0)  # nothing left to ignore
    nll = F.cross_entropy(logits.double().view(-1, 13), targets.view(-1))
    assert metrics.perplexity_from_logits(logits, targets) == pytest.approx(nll.exp().item(), rel=1e-12)


def test_perplexity_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        metrics.perplexity_from_logits(torch.zeros(4, 5), torch.full((4,), -100))


# --------------------------------------------------------------------------------------------
# Bits per character, and scoring a long text in windows
# --------------------------------------------------------------------------------------------


class LastTokens(torch.nn.Module):
    """A causal toy LM whose logits at position t depend on tokens t - k + 1 .. t only, wherever t is."""

    def __init__(self, vocab_size: int, k: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.k = k
        self.embedding = torch.nn.Embedding(vocab_size, 8)
        self.conv = torch.nn.Conv1d(8, vocab_size, kernel_size=k)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        x = self.embedding(ids).transpose(1, 2)  # (B, 8, T)
        return self.conv(F.pad(x, (self.k - 1, 0))).transpose(1, 2)  # left padding: causal


def tiny_gpt(vocab_size: int = 23, block_size: int = 32) -> torch.nn.Module:
    from llmcourse.transformer import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layers=2, n_heads=2, d_model=16)).eval()


def test_uniform_model_scores_log2_of_its_alphabet() -> None:
    ids = torch.randint(0, 27, (300,), generator=torch.Generator().manual_seed(0)).tolist()

    def uniform(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, 27)  # (1, T, 27): every character has probability 1/27

    score = metrics.causal_lm_nll(uniform, ids, context=[0], window=64)
    assert score.n_tokens == 300
    assert metrics.bits_per_character(score.nll, len(ids)) == pytest.approx(math.log2(27), rel=1e-6)
    assert metrics.bits_per_character(300 * math.log(27), 300) == pytest.approx(math.log2(27), rel=1e-15)


def test_character_model_bits_per_character_is_its_loss_over_ln2() -> None:
    gpt = tiny_gpt()
    ids = torch.randint(0, 23, (1, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = F.cross_entropy(gpt(ids)[0, :-1].double(), ids[0, 1:]).item()  # mean over 20 predicted characters
    score = metrics.causal_lm_nll(gpt, ids[0, 1:].tolist(), context=ids[0, :1].tolist(), window=32)
    assert score.n_tokens == 20 and score.mean_nll == pytest.approx(loss, rel=1e-5)
    assert metrics.bits_per_character(score.nll, 20) == pytest.approx(loss / math.log(2), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 7, 31])
def test_windows_equal_one_pass_when_the_text_fits(stride: int) -> None:
    gpt = tiny_gpt()
    ids = torch.randint(0, 23, (32,), generator=torch.Generator().manual_seed(2)).tolist()
    one_pass = metrics.causal_lm_nll(gpt, ids[1:], context=ids[:1], window=32, stride=stride)
    with torch.no_grad():
        reference = F.cross_entropy(gpt(torch.tensor([ids]))[0, :-1], torch.tensor(ids[1:]), reduction="sum").item()
    assert one_pass.n_tokens == 31 and one_pass.nll == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(("window", "stride", "n_context"), [(8, 5, 1), (8, 4, 1), (8, 1, 0), (16, 13, 1), (8, 5, 20)])
def test_windows_give_every_token_its_context(window: int, stride: int, n_context: int) -> None:
    # A model that looks k = 3 tokens back gives the same predictions in windows as in one pass,
    # as long as every window leaves window - stride >= k tokens of context to the first token it scores.
    model = LastTokens(vocab_size=11, k=3)
    tokens = torch.randint(0, 11, (70,), generator=torch.Generator().manual_seed(3)).tolist()
    context, ids = tokens[:n_context], tokens[n_context:]
    with torch.no_grad():
        logits = model(torch.tensor([tokens]))[0, :-1]  # row t predicts token t + 1
    first = max(n_context, 1)
    reference = F.cross_entropy(logits[first - 1 :], torch.tensor(tokens[first:]), reduction="sum").item()
    score = metrics.causal_lm_nll(model, ids, context=context, window=window, stride=stride)
    assert score.n_tokens == len(tokens) - first == len(ids) - (n_context == 0)
    assert score.nll == pytest.approx(reference, rel=1e-5)
    # One token too few of context after each window's start: the predictions change.
    short = metrics.causal_lm_nll(model, ids, context=context, window=window, stride=window - 2)
    assert short.n_tokens == score.n_tokens and short.nll != pytest.approx(reference, rel=1e-5)


def test_windowed_scoring_of_a_hugging_face_causal_lm_matches_its_loss() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()  # the model shifts the labels itself: 39 predictions
        labels = ids.clone()
        labels[0, :5] = -100  # the first five tokens as context, not scored
        loss_after_context = model(ids, labels=labels).loss.item()  # 35 predictions
    score = metrics.causal_lm_nll(model, ids[0].tolist(), window=64)  # no context: the first token is not scored
    assert score.n_tokens == 39 and score.nll == pytest.approx(loss * 39, rel=1e-5)
    score = metrics.causal_lm_nll(model, ids[0, 5:].tolist(), context=ids[0, :5].tolist(), window=64, stride=9)
    assert score.n_tokens == 35 and score.nll == pytest.approx(loss_after_context * 35, rel=1e-5)


def test_bits_per_character_argument_errors() -> None:
    with pytest.raises(ValueError, match="characters"):
        metrics.bits_per_character(1.0, 0)
    model = LastTokens(vocab_size=5, k=2)
    with pytest.raises(ValueError, match="stride"):
        metrics.causal_lm_nll(model, [1, 2, 3], window=4, stride=4)
    with pytest.raises(ValueError, match="no token"):
        metrics.causal_lm_nll(model, [1], window=4)
    with pytest.raises(ValueError, match="no token"):
        metrics.causal_lm_nll(model, [], context=[1], window=4)


def test_distinct_n_by_hand() -> None:
    words = ["the cat sat on the mat".split(), "the cat ran".split()]
    # unigrams: the cat sat on the mat the cat ran -> 9, of which the, cat, sat, on, mat, ran differ: 6
    assert metrics.distinct_n(words, 1) == 6 / 9
    # bigrams: (the cat) (cat sat) (sat on) (on the) (the mat) (the cat) (cat ran) -> 7, 6 different
    assert metrics.distinct_n(words, 2) == 6 / 7
    assert metrics.distinct_n(["abab"], 2) == 2 / 3  # strings give character n-grams: ab ba ab
    assert metrics.distinct_n(["abc", "abc"], 1) == 0.5  # repeating a text halves it
    with pytest.raises(ValueError, match="undefined"):
        metrics.distinct_n(["ab"], 3)
    with pytest.raises(ValueError, match="n must"):
        metrics.distinct_n(["ab"], 0)


# --------------------------------------------------------------------------------------------
# BLEU against sacrebleu
# --------------------------------------------------------------------------------------------


def test_13a_tokenizer_matches_sacrebleu() -> None:
    reference = Tokenizer13a()
    lines = [hyp for hyp, _ in TRICKY_PAIRS] + [ref for _, refs in TRICKY_PAIRS for ref in refs]
    # Every printable ASCII character at the start, in the middle and at the end, next to
    # letters and digits.
    for c in string.printable:
        lines += [f"{before}{c}{after}" for before, after in itertools.product(["", "a", "1", c], ["", "b", "2"])]
    rng = random.Random(1)
    alphabet = list("ab1 .,-'\"&;<>/\n\t") + ["&amp;", "&quot;", "&lt;", "<skipped>", "-\n", "3.14", "U.S."]
    lines += ["".join(rng.choices(alphabet, k=rng.randint(0, 20))) for _ in range(300)]
    for line in lines:
        assert " ".join(metrics.tokenize_13a(line)) == reference(line), repr(line)


def assert_same_bleu(ours: BleuScore, theirs: sacrebleu.BLEUScore, smooth: str) -> None:
    assert abs(ours.score - theirs.score) <= TOL
    assert ours.precisions == pytest.approx(theirs.precisions, abs=TOL, rel=0)
    assert abs(ours.bp - theirs.bp) <= TOL
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    if smooth != "add-k":  # sacrebleu reports its counts and totals after adding k
        assert (ours.counts, ours.totals) == (theirs.counts, theirs.totals)


def as_streams(references: list[list[str]]) -> list[list[str | None]]:
    """Per-hypothesis references -> sacrebleu's reference streams, None where a hypothesis has fewer."""
    return [list(stream) for stream in itertools.zip_longest(*references, fillvalue=None)]


SETTINGS = list(itertools.product(metrics.SMOOTHING_METHODS, [True, False]))


@pytest.mark.parametrize(("smooth", "effective_order"), SETTINGS)
def test_sentence_bleu_matches_sacrebleu(smooth: str, effective_order: bool) -> None:
    reference = BLEU(smooth_method=smooth, effective_order=effective_order)
    for hypothesis, references in TRICKY_PAIRS + RANDOM_PAIRS:
        ours = metrics.sentence_bleu(hypothesis, references, smooth, effective_order)
        assert_same_bleu(ours, reference.sentence_score(hypothesis, references), smooth)


def test_sentence_bleu_defaults_match_sacrebleu_sentence_bleu() -> None:
    for hypothesis, references in TRICKY_PAIRS + RANDOM_PAIRS[:100]:
        ours = metrics.sentence_bleu(hypothesis, references)
        assert_same_bleu(ours, sacrebleu.sentence_bleu(hypothesis, references), "exp")


@pytest.mark.parametrize(("smooth", "effective_order"), SETTINGS)
def test_corpus_bleu_matches_sacrebleu(smooth: str, effective_order: bool) -> None:
    reference = BLEU(smooth_method=smooth, effective_order=effective_order)
    corpora = [TRICKY_PAIRS, RANDOM_PAIRS, RANDOM_PAIRS[:7], TRICKY_PAIRS[:1], TRICKY_PAIRS[2:3]]
    for corpus in corpora:
        hypotheses, references = [hyp for hyp, _ in corpus], [refs for _, refs in corpus]
        ours = metrics.corpus_bleu(hypotheses, references, smooth, effective_order)
        assert_same_bleu(ours, reference.corpus_score(hypotheses, as_streams(references)), smooth)


def test_corpus_bleu_defaults_match_sacrebleu_corpus_bleu() -> None:
    # Three references for every hypothesis, so that plain zip(*...) gives the streams.
    corpus = [(hyp, refs) for hyp, refs in RANDOM_PAIRS if len(refs) == 3]
    hypotheses, references = [hyp for hyp, _ in corpus], [refs for _, refs in corpus]
    theirs = sacrebleu.corpus_bleu(hypotheses, [list(stream) for stream in zip(*references)])
    assert_same_bleu(metrics.corpus_bleu(hypotheses, references), theirs, "exp")


def test_bleu_by_hand() -> None:
    # Hypothesis 6 tokens, reference 7. Matches: 4 of 6 unigrams ("a", "rug" miss), 3 of 5
    # bigrams, 2 of 4 trigrams, 1 of 3 four-grams ("the cat sat on").
    score = metrics.sentence_bleu("the cat sat on a rug", ["the cat sat on the mat today"])
    precisions = [100 * 4 / 6, 100 * 3 / 5, 100 * 2 / 4, 100 * 1 / 3]
    assert score.counts == [4, 3, 2, 1] and score.totals == [6, 5, 4, 3]
    assert score.precisions == pytest.approx(precisions, rel=1e-12)
    assert score.bp == pytest.approx(math.exp(1 - 7 / 6), rel=1e-12)
    assert score.score == pytest.approx(math.exp(1 - 7 / 6) * math.prod(precisions) ** (1 / 4), rel=1e-12)


def test_bleu_smoothing_by_hand() -> None:
    # 5 of 6 unigrams and 2 of 5 bigrams match, no trigram (of 4) nor four-gram (of 3).
    hypothesis, references = "the cat sat on my rug", ["the cat was sat on the rug"]
    exp = metrics.sentence_bleu(hypothesis, references, smooth="exp")  # 1/2, then 1/4 of a match
    assert exp.precisions == pytest.approx([100 * 5 / 6, 100 * 2 / 5, 100 * 1 / 8, 100 * 1 / 12], rel=1e-12)
    floor = metrics.sentence_bleu(hypothesis, references, smooth="floor")  # 0.1 of a match
    assert floor.precisions == pytest.approx([100 * 5 / 6, 100 * 2 / 5, 10 / 4, 10 / 3], rel=1e-12)
    add_k = metrics.sentence_bleu(hypothesis, references, smooth="add-k")  # +1 above unigrams
    assert add_k.precisions == pytest.approx([100 * 5 / 6, 100 * 3 / 6, 100 * 1 / 5, 100 * 1 / 4], rel=1e-12)
    assert metrics.sentence_bleu(hypothesis, references, smooth="none").score == 0.0
    # Without effective order a one-word hypothesis has no bigrams, hence BLEU 0; with it, 100.
    assert metrics.sentence_bleu("Hello", ["Hello"], effective_order=False).score == 0.0
    assert metrics.sentence_bleu("Hello", ["Hello"]).score == pytest.approx(100.0)


def test_brevity_penalty_punishes_only_short_hypotheses() -> None:
    assert metrics.brevity_penalty(10, 10) == metrics.brevity_penalty(20, 10) == 1.0
    assert metrics.brevity_penalty(5, 10) == pytest.approx(math.exp(-1), rel=1e-15)
    assert metrics.brevity_penalty(0, 10) == 0.0
    # A hypothesis that is a correct prefix of the reference has perfect precisions.
    short = metrics.sentence_bleu("the cat sat on", ["the cat sat on the mat today"])
    assert short.precisions == [100.0] * 4 and short.score == pytest.approx(100 * math.exp(1 - 7 / 4))


def test_bleu_argument_errors() -> None:
    with pytest.raises(TypeError, match="not one string"):
        metrics.sentence_bleu("a b", "a b")
    with pytest.raises(ValueError, match="reference"):
        metrics.sentence_bleu("a b", [])
    with pytest.raises(ValueError, match="smoothing"):
        metrics.sentence_bleu("a b", ["a b"], smooth="laplace")
    with pytest.raises(ValueError, match="hypotheses"):
        metrics.corpus_bleu(["a", "b"], [["a"]])


# --------------------------------------------------------------------------------------------
# ROUGE against rouge-score
# --------------------------------------------------------------------------------------------


def rouge_texts() -> list[str]:
    texts = [text for pair in TRICKY_ROUGE for text in pair]
    return texts + [hyp for hyp, _ in RANDOM_PAIRS] + [ref for _, refs in RANDOM_PAIRS for ref in refs]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_tokenizer_matches_rouge_score(use_stemmer: bool) -> None:
    stemmer = PorterStemmer() if use_stemmer else None  # the stemmer rouge-score uses
    for text in rouge_texts():
        expected = rouge_score_tokenize.tokenize(text, stemmer)
        assert metrics.rouge_tokenize(text, use_stemmer) == expected, repr(text)


def assert_same_rouge(ours: metrics.RougeScore, theirs: rouge_scorer.scoring.Score) -> None:
    assert tuple(ours) == pytest.approx(tuple(theirs), abs=TOL, rel=0)


def rouge_single_pairs() -> list[tuple[str, str]]:
    return TRICKY_ROUGE + [(hyp, refs[0]) for hyp, refs in RANDOM_PAIRS]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score(use_stemmer: bool) -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rouge3", "rougeL"], use_stemmer=use_stemmer)
    for hypothesis, reference in rouge_single_pairs():
        theirs = scorer.score(reference, hypothesis)  # rouge-score takes the reference first
        for n in (1, 2, 3):
            assert_same_rouge(metrics.rouge_n(hypothesis, reference, n, use_stemmer), theirs[f"rouge{n}"])
        assert_same_rouge(metrics.rouge_l(hypothesis, reference, use_stemmer), theirs["rougeL"])


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_with_several_references_matches_score_multi(use_stemmer: bool) -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    # Two references with the same F-measure but swapped precision and recall: the first wins.
    tie = ("a b c d", ["a x", "a b y z w v u t"])
    cases = [tie, (tie[0], tie[1][::-1])] + [(h, [r for _, r in TRICKY_ROUGE[:6]]) for h, _ in TRICKY_ROUGE]
    for hypothesis, references in cases + RANDOM_PAIRS:
        theirs = scorer.score_multi(references, hypothesis)
        assert_same_rouge(metrics.rouge_n(hypothesis, references, 1, use_stemmer), theirs["rouge1"])
        assert_same_rouge(metrics.rouge_n(hypothesis, references, 2, use_stemmer), theirs["rouge2"])
        assert_same_rouge(metrics.rouge_l(hypothesis, references, use_stemmer), theirs["rougeL"])
    assert metrics.rouge_n(*tie, 1) == (0.25, 0.5, pytest.approx(1 / 3))


def test_rouge_rewards_copying_with_recall() -> None:
    reference = "the cat sat on the mat"
    copied = reference + " and many other words that were in the source text"
    assert metrics.rouge_n(copied, reference, 1).recall == 1.0
    assert metrics.rouge_l(copied, reference).recall == 1.0
    assert metrics.rouge_n(copied, reference, 1).precision < 0.5


def test_lcs_length() -> None:
    assert metrics.lcs_length("abcbdab", "bdcaba") == 4  # the textbook example (CLRS)
    assert metrics.lcs_length([], ["a"]) == metrics.lcs_length(["a"], []) == 0
    assert metrics.lcs_length("abc", "abc") == 3


def test_rouge_argument_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        metrics.rouge_n("a", "a", 0)
    with pytest.raises(ValueError, match="reference"):
        metrics.rouge_l("a", [])


# --------------------------------------------------------------------------------------------
# Classification against scikit-learn
# --------------------------------------------------------------------------------------------


def random_labels(seed: int) -> tuple[list[int], list[int]]:
    """Multi-class labels where some classes never occur in y_pred, or never in y_true."""
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    true_classes = rng.sample(range(7), rng.randint(1, 5))
    pred_classes = rng.sample(range(7), rng.randint(1, 5))
    y_true = [rng.choice(true_classes) for _ in range(n)]
    # Predictions are often right, so that every count is exercised.
    y_pred = [t if rng.random() < 0.4 else rng.choice(pred_classes) for t in y_true]
    return y_true, y_pred


def assert_same(ours: float, theirs: float) -> None:
    assert (math.isnan(ours) and math.isnan(theirs)) or abs(ours - theirs) <= TOL, (ours, theirs)


ZERO_DIVISIONS = [0.0, 1.0, math.nan]


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_multiclass_scores_match_sklearn(average: str) -> None:
    for seed in range(12):
        y_true, y_pred = random_labels(seed)
        assert_same(metrics.accuracy(y_true, y_pred), sk.accuracy_score(y_true, y_pred))
        f1 = metrics.precision_recall_f1(y_true, y_pred, average)[2]
        assert_same(f1, sk.f1_score(y_true, y_pred, average=average))
        # labels: a subset in another order, with a class (9) that never occurs
        for zero_division, labels in itertools.product(ZERO_DIVISIONS, [None, [2, 0, 9]]):
            options = dict(average=average, labels=labels, zero_division=zero_division)
            ours = metrics.precision_recall_f1(y_true, y_pred, **options)
            theirs = sk.precision_recall_fscore_support(y_true, y_pred, **options)
            for a, b in zip(ours, theirs[:3]):
                assert_same(a, b)


def test_binary_scores_match_sklearn() -> None:
    rng = random.Random(2)
    cases = [([0, 0, 0, 0], [0, 0, 0, 0]), ([1, 0, 1, 0], [0, 0, 0, 0]), ([0, 0, 0, 0], [1, 0, 1, 0])]
    for _ in range(10):
        y_true = [rng.randint(0, 1) for _ in range(rng.randint(1, 30))]
        cases.append((y_true, [t if rng.random() < 0.6 else 1 - t for t in y_true]))
    for (y_true, y_pred), pos_label, zero_division in itertools.product(cases, [1, 0], ZERO_DIVISIONS):
        ours = metrics.precision_recall_f1(y_true, y_pred, "binary", pos_label, zero_division=zero_division)
        theirs = sk.precision_recall_fscore_support(
            y_true, y_pred, average="binary", pos_label=pos_label, zero_division=zero_division
        )
        for a, b in zip(ours, theirs[:3]):
            assert_same(a, b)
    spam = (["spam", "ham", "spam", "ham", "ham"], ["spam", "spam", "ham", "ham", "ham"])
    theirs = sk.precision_recall_fscore_support(*spam, average="binary", pos_label="spam")
    assert metrics.precision_recall_f1(*spam, pos_label="spam") == pytest.approx(theirs[:3], abs=TOL)


def test_binary_average_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="binary"):
        sk.precision_recall_fscore_support([0, 1, 2], [0, 1, 1], average="binary")
    with pytest.raises(ValueError, match="binary"):
        metrics.precision_recall_f1([0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="pos_label"):
        metrics.precision_recall_f1(["a", "b"], ["a", "a"])


def test_confusion_matrix_matches_sklearn() -> None:
    for seed in range(12):
        y_true, y_pred = random_labels(seed)
        assert metrics.confusion_matrix(y_true, y_pred) == sk.confusion_matrix(y_true, y_pred).tolist()
        if 2 in y_true:  # scikit-learn wants one of the labels in y_true
            theirs = sk.confusion_matrix(y_true, y_pred, labels=[2, 0, 9])
            assert metrics.confusion_matrix(y_true, y_pred, [2, 0, 9]) == theirs.tolist()


def test_accuracy_hides_a_useless_classifier_on_unbalanced_classes() -> None:
    y_true = [0] * 95 + [1] * 5
    always_majority = [0] * 100
    assert metrics.accuracy(y_true, always_majority) == 0.95
    assert metrics.precision_recall_f1(y_true, always_majority, "macro")[2] < 0.5
    assert metrics.confusion_matrix(y_true, always_majority) == [[95, 0], [5, 0]]


def test_classification_argument_errors() -> None:
    with pytest.raises(ValueError, match="y_pred has"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="average"):
        metrics.precision_recall_f1([0, 1], [0, 1], average="samples")


@pytest.mark.parametrize("successes, n", [(0, 10), (3, 10), (168, 200), (200, 200), (1, 1)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_wilson_interval_matches_scipy(successes: int, n: int, confidence: float) -> None:
    from scipy.stats import binomtest

    expected = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    low, high = metrics.wilson_interval(successes, n, confidence)
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)
    assert 0 <= low <= successes / n <= high <= 1


def test_wilson_interval_rejects_impossible_counts() -> None:
    for successes, n in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(ValueError, match="successes"):
            metrics.wilson_interval(successes, n)
