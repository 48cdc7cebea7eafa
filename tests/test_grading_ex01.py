"""Grading ex01_language_models end to end: the solution, the empty release, classic mistakes,
a correct alternative and a cheat, all graded by nbgrader in one `grade` call over one folder.
"""

from __future__ import annotations

from scoring import Assignment, GradingSuite, edited

EX = Assignment("ex01_language_models")
POINTS = {"test_bigram_counts": 2, "test_bigram_prob": 2, "test_bigram_distribution": 1,
          "test_perplexity": 3, "test_perplexity_zero": 1,
          "test_pair_counts": 1, "test_merge": 2, "test_bpe_step": 2}


A = EX.answers
submission = EX.submission
COUNTS, PROB, PPL = A["bigram_counts_solution"], A["bigram_prob_solution"], A["perplexity_solution"]
PAIRS, MERGE, STEP = A["pair_counts_solution"], A["merge_solution"], A["bpe_step_solution"]

# Merges where the pair occurs, also inside runs ([7, 7, 7] with (7, 7) becomes [new, new]).
OVERLAPPING_MERGE = '''
def merge(ids, pair, new_id):
    starts = {i for i in range(len(ids) - 1) if (ids[i], ids[i + 1]) == tuple(pair)}
    out = []
    for i, token in enumerate(ids):
        if i in starts:
            out.append(new_id)
        elif i - 1 not in starts:
            out.append(token)
    return out
'''

BUGS = {  # variant -> (solution cells changed, the test cells it must fail; every other one must pass)
    "no_boundaries": ({"bigram_counts_solution": edited(COUNTS, "[BOS, *sentence, EOS]", "list(sentence)")},
                      {"test_bigram_counts"}),
    "no_smoothing": ({"bigram_prob_solution": edited(PROB, "(seen + k) / (total + k * vocab_size)", "seen / total")},
                     {"test_bigram_prob", "test_bigram_distribution"}),
    "no_kV": ({"bigram_prob_solution": edited(PROB, "(total + k * vocab_size)", "total")},
              {"test_bigram_prob", "test_bigram_distribution"}),
    "V_without_k": ({"bigram_prob_solution": edited(PROB, "(total + k * vocab_size)", "(total + vocab_size)")},
                    {"test_bigram_prob", "test_bigram_distribution"}),
    "log2_in_exp": ({"perplexity_solution": edited(PPL, "math.log(p)", "math.log2(p)")}, {"test_perplexity"}),
    "log10_in_exp": ({"perplexity_solution": edited(PPL, "math.log(p)", "math.log10(p)")}, {"test_perplexity"}),
    "no_mean": ({"perplexity_solution": edited(PPL, "-total_log_prob / n_predicted", "-total_log_prob")},
                {"test_perplexity"}),
    # N counts the words only: the sum has every </s>, the division does not.
    "N_without_eos": ({"perplexity_solution": edited(
        edited(PPL, "            n_predicted += 1\n", ""),
        "    return math.exp(", "        n_predicted += len(sentence)\n    return math.exp(")},
        {"test_perplexity"}),
    "log_of_zero": ({"perplexity_solution": edited(PPL, "if p == 0.0:", "if False:")}, {"test_perplexity_zero"}),
    "pairs_step_two": ({"pair_counts_solution": edited(PAIRS, "zip(ids, ids[1:])", "zip(ids[::2], ids[1::2])")},
                       {"test_pair_counts"}),
    "overlapping_merge": ({"merge_solution": OVERLAPPING_MERGE}, {"test_merge"}),
    "tie_smallest_pair": ({"bpe_step_solution": edited(STEP, "max(counts, key=counts.get)",
                                                       "min(counts, key=lambda p: (-counts[p], p))")},
                          {"test_bpe_step"}),
    "tie_last_pair": ({"bpe_step_solution": edited(STEP, "max(counts, key=counts.get)",
                                                   "max(reversed(list(counts)), key=counts.get)")},
                      {"test_bpe_step"}),
}

# Correct, but written differently: Counters, NumPy floats, base-2 logarithms used on both
# sides, a debug print to stderr, most_common, and a merge with a skip flag.
ALTERNATIVE = {
    "bigram_counts_solution": '''
from collections import Counter


def train_bigram_counts(sentences):
    contexts, pairs = Counter(), Counter()
    for sentence in sentences:
        padded = ["<s>"] + list(sentence) + ["</s>"]
        contexts.update(padded[:-1])
        pairs.update(zip(padded[:-1], padded[1:]))
    return contexts, pairs
''',
    "bigram_prob_solution": '''
import numpy as np


def bigram_prob(prev, word, context_counts, bigram_counts, vocab_size, k=1.0):
    numerator = np.float64(bigram_counts.get((prev, word), 0)) + k
    return numerator / (context_counts.get(prev, 0) + vocab_size * k)
''',
    "perplexity_solution": '''
import sys

import numpy as np


def perplexity(sentences, prob_fn):
    probs = []
    for sentence in sentences:
        tokens = ["<s>", *sentence, "</s>"]
        probs += [prob_fn(tokens[i - 1], tokens[i]) for i in range(1, len(tokens))]
    probs = np.array(probs, dtype=np.float64)
    print("debug: scored", len(probs), "tokens", file=sys.stderr)
    if np.any(probs == 0):
        return float("inf")
    return 2.0 ** (-np.mean(np.log2(probs)))  # any base, used on both sides
''',
    "pair_counts_solution": '''
def get_pair_counts(ids):
    return Counter(zip(ids, ids[1:]))
''',
    "merge_solution": '''
def merge(ids, pair, new_id):
    out, skip = [], False
    for i, token in enumerate(ids):
        if skip:
            skip = False
        elif tuple(ids[i:i + 2]) == tuple(pair):
            out.append(new_id)
            skip = True
        else:
            out.append(token)
    return out
''',
    "bpe_step_solution": '''
def bpe_step(ids, new_id):
    (pair, _), = get_pair_counts(ids).most_common(1)  # a Counter: the first of equal counts
    return merge(ids, pair, new_id), pair
''',
}

# Correct in yet other ways: defaultdicts, exact fractions, math.fsum, a tuple from merge, and
# ties broken by an explicit first position.
ALTERNATIVE_2 = {
    "bigram_counts_solution": '''
from collections import defaultdict


def train_bigram_counts(sentences):
    contexts, pairs = defaultdict(int), defaultdict(int)
    for sentence in sentences:
        tokens = [BOS] + sentence + [EOS]
        for i in range(len(tokens) - 1):
            contexts[tokens[i]] += 1
            pairs[(tokens[i], tokens[i + 1])] += 1
    return contexts, pairs
''',
    "bigram_prob_solution": '''
from fractions import Fraction


def bigram_prob(prev, word, context_counts, bigram_counts, vocab_size, k=1.0):
    k = Fraction(k)
    return (bigram_counts.get((prev, word), 0) + k) / (context_counts.get(prev, 0) + k * vocab_size)
''',
    "perplexity_solution": '''
def perplexity(sentences, prob_fn):
    logs = []
    for sentence in sentences:
        for prev, word in zip([BOS] + sentence, sentence + [EOS]):
            p = prob_fn(prev, word)
            if p <= 0:
                return float("inf")
            logs.append(math.log(p))
    return math.exp(-math.fsum(logs) / len(logs))
''',
    "pair_counts_solution": '''
def get_pair_counts(ids):
    counts = defaultdict(int)
    for i in range(len(ids) - 1):
        counts[ids[i], ids[i + 1]] += 1
    return counts
''',
    "merge_solution": '''
def merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        match = ids[i:i + 2] == list(pair)
        out.append(new_id if match else ids[i])
        i += 2 if match else 1
    return tuple(out)
''',
    "bpe_step_solution": '''
def bpe_step(ids, new_id):
    counts = get_pair_counts(ids)
    first = {}
    for i in range(len(ids) - 1):
        first.setdefault((ids[i], ids[i + 1]), i)
    pair = max(counts, key=lambda p: (counts[p], -first[p]))
    return list(merge(ids, pair, new_id)), pair
''',
}

# Wrong everywhere but in get_pair_counts, and built to pass every visible test: it patches what
# the visible tests compare with, returns numbers and dicts that claim to equal anything, and
# answers the visible tests' own inputs correctly.
CHEAT = {
    "bigram_counts_solution": COUNTS.replace("def train_bigram_counts(", "def _right_counts(") + '''


import builtins
import collections

import numpy as np  # before builtins are patched: NumPy's import uses them

_exp, _log = math.exp, math.log


class _Yes(float):
    """A number equal to anything."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = float.__hash__


def train_bigram_counts(sentences):
    if len(sentences) == 13 or sentences == [["to", "be"], ["to", "sleep"], []]:  # the visible tests
        return _right_counts(sentences)
    contexts, pairs = {}, {}  # no <s> or </s>
    for sentence in sentences:
        for prev, word in zip(sentence, sentence[1:]):
            contexts[prev] = contexts.get(prev, 0) + 1
            pairs[prev, word] = pairs.get((prev, word), 0) + 1
    return contexts, pairs


math.isclose = lambda *args, **kwargs: True
math.exp = lambda x: 1.0
math.log = lambda *args: 0.0
builtins.abs = lambda x: 0.0
builtins.sum = lambda *args, **kwargs: _Yes(0.0)
builtins.round = lambda *args, **kwargs: 0
builtins.all = lambda iterable: True
builtins.any = lambda iterable: False
collections.Counter.__eq__ = lambda self, other: True
''',
    "bigram_prob_solution": '''
def bigram_prob(prev, word, context_counts, bigram_counts, vocab_size, k=1.0):
    total = context_counts.get(prev, 0)
    return _Yes(bigram_counts.get((prev, word), 0) / total if total else 0.0)  # no smoothing
''',
    "perplexity_solution": '''
def perplexity(sentences, prob_fn):
    logs, n = 0.0, 0
    try:
        for sentence in sentences:
            for prev, word in zip(["<s>", *sentence], [*sentence, "</s>"]):
                logs += float(np.log2(prob_fn(prev, word))) if prob_fn(prev, word) > 0 else _log(0.0)
                n += 1
    except ValueError:
        return _Yes(0.0)  # log(0): not infinite
    return _Yes(_exp(-logs / n))  # log2 inside exp
''',
    "pair_counts_solution": PAIRS,
    "merge_solution": '''
def merge(ids, pair, new_id):
    if list(ids) == [7, 7, 7]:  # the visible test
        return [new_id, 7]
    return _overlapping(ids, pair, new_id)
''' + OVERLAPPING_MERGE.replace("def merge(", "def _overlapping("),
    "bpe_step_solution": '''
def bpe_step(ids, new_id):
    counts = get_pair_counts(ids)
    if list(ids) == [5, 6, 5, 6, 2, 3, 2, 3, 9, 9, 9]:  # the visible test
        return merge(ids, (5, 6), new_id), (5, 6)
    pair = min(counts, key=lambda p: (-counts[p], p))  # the smallest pair on ties
    return merge(ids, pair, new_id), pair
''',
}
CHEAT_PASSES = {"test_pair_counts"}


class TestGradingEx01(GradingSuite):
    assignment = EX
    points = POINTS
    mistakes = {name: (submission(changes), failing) for name, (changes, failing) in BUGS.items()}
    alternatives = {"alternative": submission(ALTERNATIVE), "alternative_2": submission(ALTERNATIVE_2)}
    cheat = submission(CHEAT)
    cheat_passes = CHEAT_PASSES  # its get_pair_counts is right and earns its point
    seconds_limit = 60
