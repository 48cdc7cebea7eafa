"""Grading ex05_applications end to end: the solution, the empty release, classic mistakes, a
correct alternative and a cheat, all graded by nbgrader in one `grade` call over one folder.

Parts are marked on their own (the decoding tests use no filter; each BLEU test uses sentences
where only its own ingredient matters), so mistakes in different parts share submissions.
"""

from __future__ import annotations

from scoring import Assignment, GradingSuite, edited

EX = Assignment("ex05_applications")
POINTS = {"test_top_k": 2, "test_top_p_values": 2, "test_top_p_edges": 2,
          "test_generate_tokens": 2, "test_generate_cache": 2, "test_generate_sampling": 1,
          "test_bleu_precision": 2, "test_bleu_brevity": 1, "test_bleu_smoothing": 2}
GENERATE = {"test_generate_tokens", "test_generate_cache", "test_generate_sampling"}

A = EX.answers
FILTERS, GEN, BLEU = A["top_filters_solution"], A["generate_solution"], A["bleu_solution"]

STRICT_TOP_K = edited(FILTERS, '''    k = min(k, logits.shape[-1])
    kth_best = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_best, float("-inf"))''', '''    best = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # exactly k: ties beyond the k-th dropped
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, best, True)
    return logits.masked_fill(~keep, float("-inf"))''')

# variant -> (solution cells changed, the tests it must fail; every other one must pass)
BUGS = {
    "strict_top_k_and_no_clipping": (
        {"top_filters_solution": STRICT_TOP_K,
         "bleu_solution": edited(BLEU, "sum(min(c, most[gram]) for gram, c in counts.items())",
                                 "sum(c for gram, c in counts.items() if gram in most)")},
        {"test_top_k", "test_bleu_precision"}),
    # Drops the token that crosses p, so the set stays below p.
    "top_p_stops_short_and_longest_reference": (
        {"top_filters_solution": edited(FILTERS, "drop_sorted = mass_above >= p", "drop_sorted = cumulative > p"),
         "bleu_solution": edited(BLEU, "r = min((len(ref) for ref in refs), key=lambda length: (abs(length - c), length))",
                                 "r = max(len(ref) for ref in refs)")},
        {"test_top_p_values", "test_top_p_edges", "test_bleu_brevity"}),
    # p = 1 through the running sum, which reaches 1.0 before the last token in floating point.
    "top_p_no_special_case_for_1_and_cache_unused": (
        {"top_filters_solution": edited(FILTERS, "    if p >= 1.0:\n        return logits.clone()\n", ""),
         "generate_solution": edited(GEN, "        if use_cache:\n", "        if False:  # the cache is never used\n")},
        {"test_top_p_edges", "test_generate_cache"}),
    "top_p_keeps_ties_and_temperature_multiplied_and_ties_go_long": (
        {"top_filters_solution": edited(
            FILTERS, "    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order\n",
            "    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order\n"
            "    lowest = logits.masked_fill(drop, float('inf')).min(dim=-1, keepdim=True).values\n"
            "    drop = drop & (logits < lowest)  # every token tied with the last one kept stays too\n"),
         "generate_solution": edited(GEN, "scores = scores / temperature", "scores = scores * temperature"),
         "bleu_solution": edited(BLEU, "key=lambda length: (abs(length - c), length))", "key=lambda length: (abs(length - c), -length))")},
        {"test_top_p_edges", "test_generate_sampling", "test_bleu_brevity"}),
    # With the cache, each step feeds the token before the newest one; BLEU without the effective order.
    "feeds_the_wrong_token_and_no_effective_order": (
        {"generate_solution": edited(GEN, "        new = next_ids\n", "        new = ids[:, -2:-1]\n"),
         "bleu_solution": edited(BLEU, "        if totals[n] == 0:\n            break\n",
                                 "        if totals[n] == 0:\n            return 0.0  # an order without n-grams: log 0\n")},
        GENERATE | {"test_bleu_smoothing"}),
    "clipped_by_the_sum_of_references_and_halved_once": (
        {"bleu_solution": edited(edited(BLEU, "most |= ngrams(ref, n)", "most += ngrams(ref, n)"),
                                 "2 ** halvings * totals[n]", "2 * totals[n]")},
        {"test_bleu_precision", "test_bleu_smoothing"}),
}

# Correct, but written differently: a sort for top-k; top-p the Hugging Face way (ascending sort,
# the largest tail whose mass stays within 1 - p dropped) in float64; decoding into a preallocated
# tensor with the default cache size and last_only, printing to stderr; BLEU with joined-string
# n-grams, a sort for the closest reference and a product of precisions.
ALTERNATIVE = {
    "top_filters_solution": '''
def top_k_filter(logits, k):
    if k >= logits.size(-1):
        return logits.clone()
    descending = torch.sort(logits, dim=-1, descending=True).values
    threshold = descending[:, k - 1].unsqueeze(-1)
    return torch.where(logits >= threshold, logits, torch.full_like(logits, float("-inf")))


def top_p_filter(logits, p):
    if p == 1:
        return logits.clone()
    probs = torch.softmax(logits.double(), dim=-1)
    ascending, order = torch.sort(probs, dim=-1)
    tail = torch.cumsum(ascending, dim=-1) <= 1 - p
    tail[:, -1] = False
    remove = torch.empty_like(tail).scatter_(-1, order, tail)
    out = logits.clone()
    out[remove] = float("-inf")
    return out
''',
    "generate_solution": '''
import sys


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=None, use_cache=True,
             generator=None):
    B, T = input_ids.shape
    out = torch.zeros(B, T + max_new_tokens, dtype=torch.long)
    out[:, :T] = input_ids
    cache = model.new_cache(B) if use_cache else None
    fed = 0  # positions already in the cache
    for t in range(T, T + max_new_tokens):
        if cache is None:
            logits = model(out[:, :t], last_only=True)
        else:
            logits = model(out[:, fed:t], cache=cache, last_only=True)
            fed = t
        scores = logits[:, -1, :].to(torch.float32)
        if temperature == 0:
            out[:, t] = torch.argmax(scores, dim=1)
            continue
        scores = scores / temperature
        if top_k is not None:
            scores = top_k_filter(scores, top_k)
        if top_p is not None:
            scores = top_p_filter(scores, top_p)
        out[:, t] = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1, generator=generator)[:, 0]
    print(f"generated {max_new_tokens} tokens for {B} prompts", file=sys.stderr)
    return out
''',
    "bleu_solution": '''
def sentence_bleu(hypothesis, references):
    hyp = bleu_tokens(hypothesis)
    refs = [bleu_tokens(reference) for reference in references]

    def grams(tokens, n):
        found = {}
        for i in range(len(tokens) - n + 1):
            gram = " ".join(tokens[i:i + n])  # tokens never hold a space
            found[gram] = found.get(gram, 0) + 1
        return found

    stats = []
    for n in (1, 2, 3, 4):
        best = {}
        for ref in refs:
            for gram, c in grams(ref, n).items():
                best[gram] = max(best.get(gram, 0), c)
        mine = grams(hyp, n)
        stats.append((sum(min(c, best.get(gram, 0)) for gram, c in mine.items()), sum(mine.values())))
    if all(matched == 0 for matched, _ in stats):
        return 0.0
    closest = sorted(refs, key=lambda ref: (abs(len(ref) - len(hyp)), len(ref)))[0]
    bp = min(1.0, math.exp(1 - len(closest) / len(hyp)))
    precisions, zeros = [], 0
    for matched, total in stats:
        if total == 0:
            break
        if matched:
            precisions.append(matched / total)
        else:
            zeros += 1
            precisions.append(1 / (total * 2 ** zeros))
    return 100.0 * bp * math.prod(precisions) ** (1 / len(precisions))
''',
}

# Wrong everywhere, and built to pass every visible test: it answers the visible tests' own inputs
# right, makes the packages that the visible tests compare with agree with it (llmcourse's
# filters and generate, sacrebleu), patches torch.equal, decodes with the cache only for the
# visible test's counting model, and breaks the builtins the hidden tests might lean on.
CHEAT = {
    "top_filters_solution": FILTERS.replace("def top_k_filter(", "def _right_top_k(").replace(
        "def top_p_filter(", "def _right_top_p(") + '''


import builtins

from llmcourse import generation as _generation

_VISIBLE = [[[1.0, 3.0, 2.0, 0.5, 2.0], [0.0, -1.0, 4.0, 4.0, 1.0]], [[0.0, 2.0, 1.0, -1.0, 0.5]],
            [[1.0, 1.0, 1.0, 1.0]], [[9.0, 0.0, 0.0]], [[0.0, 1.0, 2.0]]]


def top_k_filter(logits, k):
    if logits.tolist() in _VISIBLE:
        return _right_top_k(logits, k)
    best = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # ties beyond the k-th dropped
    return logits.masked_fill(~torch.zeros_like(logits, dtype=torch.bool).scatter(-1, best, True), float("-inf"))


def top_p_filter(logits, p):
    if logits.tolist() in _VISIBLE:
        return _right_top_p(logits, p)
    cumulative = logits.softmax(dim=-1).sort(dim=-1, descending=True).values.cumsum(dim=-1)
    kept = (cumulative <= p).sum(dim=-1, keepdim=True).clamp(min=1)  # stops short of p
    rank = logits.argsort(dim=-1, descending=True).argsort(dim=-1)
    return logits.masked_fill(rank >= kept, float("-inf"))


_generation.top_k_filter = top_k_filter
_generation.top_p_filter = top_p_filter
torch.equal = lambda *args, **kwargs: True
builtins.abs = lambda x: 0.0
''',
    "generate_solution": '''
@torch.no_grad()
def generate(model, input_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=None, use_cache=True,
             generator=None):
    counting = type(model).__name__ == "CountingGPT"
    cache = model.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens) if use_cache and counting else None
    ids, new = input_ids, input_ids
    for _ in range(max_new_tokens):
        logits = model(new, cache=cache) if cache is not None else model(ids)
        scores = logits[:, -1].float()
        if temperature == 0:
            next_ids = scores.topk(2, dim=-1).indices[:, 1:]  # the second best
        else:
            probs = (scores * temperature).softmax(dim=-1)  # multiplied
            next_ids = torch.multinomial(probs, 1, generator=generator)
        ids, new = torch.cat([ids, next_ids], dim=1), next_ids
    return ids


_generation.generate = generate
''',
    "bleu_solution": '''
import sacrebleu as _sacrebleu


def sentence_bleu(hypothesis, references):
    hyp = bleu_tokens(hypothesis)
    refs = [bleu_tokens(reference) for reference in references]
    precisions = []
    for n in range(1, 5):
        grams = [tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1)]
        found = {tuple(ref[i:i + n]) for ref in refs for i in range(len(ref) - n + 1)}
        precisions.append(sum(gram in found for gram in grams) / max(len(grams), 1))  # no clipping
    if not any(precisions):
        return 0.0
    r = max(len(ref) for ref in refs)  # the longest reference
    bp = 1.0 if len(hyp) >= r else math.exp(1 - r / len(hyp))
    return 100 * bp * math.exp(sum(math.log(max(p, 1e-9)) for p in precisions) / 4)  # no smoothing


class _Score:
    def __init__(self, score):
        self.score = score


_sacrebleu.sentence_bleu = lambda hypothesis, references, **kwargs: _Score(sentence_bleu(hypothesis, references))
''',
}


class TestGradingEx05(GradingSuite):
    assignment = EX
    points = POINTS
    mistakes = {name: (EX.submission(changes), failing) for name, (changes, failing) in BUGS.items()}
    alternatives = {"alternative": EX.submission(ALTERNATIVE)}
    cheat = EX.submission(CHEAT)  # monkeypatching and answering the visible inputs earn nothing
    seconds_limit = 60
