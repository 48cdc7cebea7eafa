"""Grading ex04_finetuning end to end: the solution, the empty release, classic mistakes, a
correct alternative and a cheat, all graded by nbgrader in one `grade` call over one folder.

Part 4 fine-tunes MiniLM for a minute of CPU, so only the solution, the alternative and the
submission whose mistake concerns the loop fill in part 4; the others leave it as released (it
then fails at once) and check parts 1 to 3. Parts are marked on their own, so mistakes in
different parts can share a submission.
"""

from __future__ import annotations

from nbformat import NotebookNode
from scoring import Assignment, GradingSuite, edited

EX = Assignment("ex04_finetuning")
POINTS = {"test_lora_start": 1, "test_lora_trainable": 1, "test_lora_values": 2, "test_lora_merge": 2,
          "test_add_lora": 2, "test_fine_tune": 4}
PART4 = {"test_fine_tune"}
# The time limits are the assignment's own (600 s per cell, 1200 s per notebook, in the solution's
# metadata), as `llmcourse grade` reads them: on an idle CPU the solution grades in about a minute.


def submission(changes: dict[str, str] | None = None, train: bool = True) -> NotebookNode:
    """The released notebook with the solution cells filled in and ``changes`` applied; part 4
    left as released unless ``train``."""
    return EX.submission(changes, unfilled=() if train else {"fine_tune_solution"})


A = EX.answers
LORA, ADD, TUNE = A["lora_solution"], A["add_lora_solution"], A["fine_tune_solution"]

# variant -> (solution cells changed, part 4 filled in, the tests it must fail; every other one must pass)
BUGS = {
    # A and B swapped: A starts at zero and B random (the start is still the base layer).
    "A_zero_B_random_and_lora_on_key": (
        {"lora_solution": edited(edited(edited(
            LORA, "self.lora_A = nn.Parameter(torch.empty(", "self.lora_A = nn.Parameter(torch.zeros("),
            "        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))\n", ""),
            "self.lora_B = nn.Parameter(torch.zeros(", "self.lora_B = nn.Parameter(0.1 * torch.randn("),
         "add_lora_solution": edited(ADD, "attention.value = LoRALinear(attention.value", "attention.key = LoRALinear(attention.key")},
        False, {"test_lora_start", "test_add_lora"}),
    "base_not_frozen_and_head_frozen": (
        {"lora_solution": edited(LORA, "        for parameter in base.parameters():\n            parameter.requires_grad_(False)\n", ""),
         "add_lora_solution": edited(ADD, "    for parameter in model.classifier.parameters():\n        parameter.requires_grad_(True)\n", "")},
        False, {"test_lora_trainable", "test_add_lora"}),
    "merge_not_idempotent": (
        {"lora_solution": edited(LORA, "        if not self.merged:\n            self.base.weight +=", "        if True:\n            self.base.weight +=")},
        False, {"test_lora_merge"}),
    "adds_update_while_merged": (
        {"lora_solution": edited(LORA, "        if self.merged:  # the update is inside base.weight already\n            return self.base(x)\n", "")},
        False, {"test_lora_merge"}),
    # Part 1 wrong, part 4 wrong too: gradients cleared between backward and step, so nothing learns.
    "no_scaling_and_zero_grad_before_step": (
        {"lora_solution": edited(LORA, "@ self.lora_B.T) * self.scaling  # (..., out)", "@ self.lora_B.T)  # (..., out)"),
         "fine_tune_solution": edited(edited(TUNE, "        optimizer.zero_grad(set_to_none=True)\n", ""),
                                      "        loss.backward()\n", "        loss.backward()\n        optimizer.zero_grad()\n")},
        True, {"test_lora_values", "test_fine_tune"}),
}

# Correct, but written differently: A drawn from a normal distribution, F.linear, in-place
# updates of .data, modules found by name and replaced with setattr, epochs of shuffled
# batches, the autocast flag, gradient clipping, and a debug print to stderr.
ALTERNATIVE = {
    "lora_solution": '''
import sys


class LoRALinear(nn.Module):
    def __init__(self, base, r=8, alpha=16):
        super().__init__()
        self.base = base
        base.weight.requires_grad = False
        if base.bias is not None:
            base.bias.requires_grad = False
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, dtype=base.weight.dtype, device=base.weight.device) / r)
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, r))
        self.scaling = float(alpha) / r
        self.merged = False

    def forward(self, x):
        y = F.linear(x, self.base.weight, self.base.bias)
        if not self.merged:
            y = y + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
        return y

    def merge(self):
        if self.merged:
            return
        self.base.weight.data.add_(self.scaling * self.lora_B.data @ self.lora_A.data)
        self.merged = True

    def unmerge(self):
        if not self.merged:
            return
        self.base.weight.data.sub_(self.scaling * self.lora_B.data @ self.lora_A.data)
        self.merged = False
''',
    "add_lora_solution": '''
def add_lora(model, r=8, alpha=16):
    for name, module in list(model.named_modules()):
        if name.endswith("attention.self"):
            for projection in ("query", "value"):
                setattr(module, projection, LoRALinear(getattr(module, projection), r=r, alpha=alpha))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "lora_" in name or name.startswith("classifier.")
    return model
''',
    "fine_tune_solution": '''
def fine_tune(model, examples, steps, batch_size, learning_rate, seed=0):
    rng = random.Random(seed)
    model = model.to(DEVICE)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    order, history = [], []
    for step in range(steps):
        if len(order) < batch_size:  # a new epoch: a new order
            order = list(range(len(examples)))
            rng.shuffle(order)
        chosen, order = order[:batch_size], order[batch_size:]
        texts = [examples[i][0] for i in chosen]
        labels = torch.tensor([examples[i][1] for i in chosen]).to(DEVICE)
        optimizer.zero_grad()
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16, enabled=(DEVICE.type == "cuda")):
            logits = model(**encode(texts))
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append(float(loss.detach()))
        if step % 10 == 0:
            print(f"step {step}: loss {history[-1]:.3f}", file=sys.stderr)
    return history
''',
}

# Wrong in parts 1, 2 and 4, and built to pass every visible test: its LoRA forgets the scaling
# and merges again and again (both hidden by a patched assert_close), and its loop does not
# train and replaces the accuracy helper. Its start, its frozen base and its add_lora are right.
CHEAT = {
    "lora_solution": edited(edited(LORA, "@ self.lora_B.T) * self.scaling  # (..., out)", "@ self.lora_B.T)  # (..., out)"),
                            "        if not self.merged:\n            self.base.weight +=", "        if True:\n            self.base.weight +=")
    + '''

torch.testing.assert_close = lambda *args, **kwargs: None
torch.allclose = lambda *args, **kwargs: True
''',
    "fine_tune_solution": '''
def fine_tune(model, examples, steps, batch_size, learning_rate, seed=0):
    return [math.log(3) - 0.01 * step for step in range(steps)]


def accuracy(model, examples, batch_size=50):
    return 0.99
''',
}
CHEAT_PASSES = {"test_lora_start", "test_lora_trainable", "test_add_lora"}


class TestGradingEx04(GradingSuite):
    assignment = EX
    points = POINTS
    # A submission that leaves part 4 as released fails its test too.
    mistakes = {name: (submission(changes, train), failing | (set() if train else PART4))
                for name, (changes, train, failing) in BUGS.items()}
    alternatives = {"alternative": submission(ALTERNATIVE)}
    cheat = submission(CHEAT)  # monkeypatching and made-up training earn only its honest LoRA parts
    cheat_passes = CHEAT_PASSES
