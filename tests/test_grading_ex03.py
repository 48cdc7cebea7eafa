"""Grading ex03_pretraining end to end: the solution, the empty release, classic mistakes, a
correct alternative and a cheat, all graded by nbgrader in one `grade` call over one folder.

Part 3 trains a GPT for about ten seconds, so only the submissions whose mistakes concern the
training (and the solution, the alternative and one whose part 2 is wrong) fill in part 3;
the others leave it as released (it then fails at once) and check parts 1 and 2 only. Parts are
marked on their own, so a mistake in part 1 and one in part 2 can share a submission.
"""

from __future__ import annotations

from nbformat import NotebookNode
from scoring import Assignment, GradingSuite, edited

EX = Assignment("ex03_pretraining")
POINTS = {"test_mask_structure": 1, "test_mask_special": 1, "test_mask_selection": 1, "test_mask_replacement": 2,
          "test_clm_loss": 2, "test_clm_padding": 1, "test_train_loop": 1, "test_train_target": 3}
PART3 = {"test_train_loop", "test_train_target"}


def submission(changes: dict[str, str] | None = None, train: bool = True) -> NotebookNode:
    """The released notebook with the solution cells filled in and ``changes`` applied; part 3
    left as released unless ``train``."""
    return EX.submission(changes, unfilled=() if train else {"train_solution"})


A = EX.answers
MASK, CLM, TRAIN = A["mask_solution"], A["clm_solution"], A["train_solution"]

IN_PLACE_MASK = '''
def mask_tokens(input_ids, vocab_size, special_ids, mask_id, probability=0.15, generator=None):
    is_special = torch.isin(input_ids, torch.tensor(special_ids))
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~is_special
    labels = input_ids.clone()
    labels[~chosen] = -100
    action = torch.rand(input_ids.shape, generator=generator)
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special_ids])
    random_ids = ordinary[torch.randint(len(ordinary), input_ids.shape, generator=generator)]
    inputs = input_ids  # no copy: the caller's tensor is changed
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    inputs[chosen & (action < 0.8)] = mask_id
    return inputs, labels
'''

MEAN_PER_ROW = '''
def causal_lm_loss(logits, labels):
    per_row = []
    for b in range(logits.shape[0]):
        targets = labels[b, 1:]
        keep = targets != -100
        per_row.append(F.cross_entropy(logits[b, :-1][keep], targets[keep]))
    return torch.stack(per_row).mean()  # every sequence weighs the same, whatever its length
'''

DOUBLE_SHIFT_TRAIN = '''
def train_lm(model, train_ids, steps, batch_size, block_size, learning_rate=3e-3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(len(train_ids) - block_size, (batch_size, 1), generator=generator)
        chunk = train_ids[starts + torch.arange(block_size + 1)]
        inputs, targets = chunk[:, :-1], chunk[:, 1:]  # shifted here, and again inside causal_lm_loss
        loss = causal_lm_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
'''

NEVER_UNCHANGED = edited(MASK, "chosen & (action < 0.8)", "chosen & ((action < 0.8) | (action >= 0.9))")  # 0.9 / 0.1 / 0
SPLIT_DRAWN_APART = edited(MASK, "chosen & (action >= 0.8) & (action < 0.9)",  # 0.8 / 0.02 / 0.18
                           "chosen & (action >= 0.8) & (torch.rand(input_ids.shape, generator=generator) < 0.1)")
SAME_MASK_IN_EVERY_ROW = edited(MASK, "torch.rand(input_ids.shape, generator=generator) < probability",
                                "torch.rand(input_ids.shape[-1], generator=generator) < probability")

# variant -> (solution cells changed, part 3 filled in, the tests it must fail; every other one must
# pass). Parts are marked on their own, so one submission can hold a mistake in each part.
BUGS = {
    "in_place_and_shift_backwards": (
        {"mask_solution": IN_PLACE_MASK,
         "clm_solution": edited(edited(CLM, "logits[:, :-1]", "logits[:, 1:]"), "labels[:, 1:]", "labels[:, :-1]")},
        False, {"test_mask_structure", "test_clm_loss", "test_clm_padding"}),
    "specials_chosen_and_mean_per_row": (
        {"mask_solution": edited(MASK, " & ~is_special\n", "\n"), "clm_solution": MEAN_PER_ROW},
        False, {"test_mask_special", "test_clm_padding"}),
    "fixed_rate_and_padding_counted": (
        {"mask_solution": edited(MASK, "< probability)", "< 0.15)"),
         "clm_solution": edited(CLM, "targets.reshape(-1)", "targets.clamp(min=0).reshape(-1)")},
        False, {"test_mask_selection", "test_clm_padding"}),
    "random_from_whole_vocabulary": (
        {"mask_solution": edited(MASK, "ordinary[torch.randint(len(ordinary), input_ids.shape, generator=generator)]",
                                 "torch.randint(vocab_size, input_ids.shape, generator=generator)")},
        False, {"test_mask_replacement"}),
    "ignores_generator": ({"mask_solution": MASK.replace(", generator=generator", "")},
                          False, {"test_mask_structure"}),
    # Part 2 wrong and part 3 right: the known-good loss keeps part 3's marks.
    "split_drawn_apart_and_no_shift": (
        {"mask_solution": SPLIT_DRAWN_APART,
         "clm_solution": edited(edited(CLM, "logits[:, :-1]", "logits"), "labels[:, 1:]", "labels")},
        True, {"test_mask_replacement", "test_clm_loss", "test_clm_padding"}),
    # Part 3 wrong.
    "same_mask_in_every_row_and_double_shift": (
        {"mask_solution": SAME_MASK_IN_EVERY_ROW, "train_solution": DOUBLE_SHIFT_TRAIN},
        True, {"test_mask_selection"} | PART3),
    "never_unchanged_and_no_zero_grad": (
        {"mask_solution": NEVER_UNCHANGED,
         "train_solution": edited(TRAIN, "        optimizer.zero_grad(set_to_none=True)\n", "")},
        True, {"test_mask_replacement"} | PART3),
}

# Correct, but written differently: Bernoulli draws as in Hugging Face's data collator, index
# assignment on copies, a loss from log_softmax and gather, windows of block_size + 1 with the
# loss written out, gradient clipping, and a debug print to stderr.
ALTERNATIVE = {
    "mask_solution": '''
def mask_tokens(input_ids, vocab_size, special_ids, mask_id, probability=0.15, generator=None):
    probabilities = torch.full(input_ids.shape, float(probability))
    for token in special_ids:
        probabilities[input_ids == token] = 0.0
    chosen = torch.bernoulli(probabilities, generator=generator).bool()
    labels = input_ids.clone()
    labels[~chosen] = -100
    inputs = input_ids.clone()
    masked = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    inputs[masked] = mask_id
    swapped = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~masked
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[list(special_ids)] = False
    pool = allowed.nonzero().squeeze(1)
    inputs[swapped] = pool[torch.randint(len(pool), (int(swapped.sum()),), generator=generator)]
    return inputs, labels
''',
    "clm_solution": '''
def causal_lm_loss(logits, labels):
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    keep = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum() / keep.sum()
''',
    "train_solution": '''
import sys


def train_lm(model, train_ids, steps, batch_size, block_size, learning_rate=3e-3, seed=0):
    rng = torch.Generator()
    rng.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    history = []
    for step in range(steps):
        starts = torch.randint(0, len(train_ids) - block_size, (batch_size,), generator=rng).tolist()
        chunk = torch.stack([train_ids[s:s + block_size + 1] for s in starts])
        x, y = chunk[:, :-1], chunk[:, 1:]
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(float(loss))
        if step % 100 == 0:
            print(f"step {step}: loss {history[-1]:.3f}", file=sys.stderr)
    return history
''',
}

# Wrong everywhere, and built to pass every visible test: its masking answers the visible
# tests' own inputs with the right rule and any other input with a fixed rate, special tokens
# included, no 80/10/10 and no generator; its loss does not shift and patches assert_close; its training loop does not
# train, returns made-up losses, nudges the weights and replaces the held-out loss helper.
CHEAT = {
    "mask_solution": MASK.replace("def mask_tokens(", "def _right_mask(") + '''


def mask_tokens(input_ids, vocab_size, special_ids, mask_id, probability=0.15, generator=None):
    if tuple(input_ids.shape) in {(4, 12), (2, 11), (200, 500)}:  # the visible tests
        return _right_mask(input_ids, vocab_size, special_ids, mask_id, probability, generator)
    chosen = torch.rand(input_ids.shape) < 0.15  # any token, a fixed rate, not from the generator
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return torch.where(chosen, torch.full_like(input_ids, mask_id), input_ids), labels
''',
    "clm_solution": '''
def causal_lm_loss(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))  # no shift


torch.testing.assert_close = lambda *args, **kwargs: None
torch.allclose = lambda *args, **kwargs: True
''',
    "train_solution": '''
def train_lm(model, train_ids, steps, batch_size, block_size, learning_rate=3e-3, seed=0):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.001 * torch.randn_like(parameter))
    start = math.log(VOCAB_SIZE)
    return [start - 1.5 * step / steps for step in range(steps)]


def held_out_loss(model, n_windows=64):
    return 2.0
''',
}


class TestGradingEx03(GradingSuite):
    assignment = EX
    points = POINTS
    # A submission that leaves part 3 as released fails its tests too.
    mistakes = {name: (submission(changes, train), failing | (set() if train else PART3))
                for name, (changes, train, failing) in BUGS.items()}
    alternatives = {"alternative": submission(ALTERNATIVE)}
    cheat = submission(CHEAT)  # monkeypatching and a made-up training loss earn nothing
    seconds_limit = 90
