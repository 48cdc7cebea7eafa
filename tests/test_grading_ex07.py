"""Grading ex07_post_training end to end: the solution, the empty release, classic mistakes, a
correct alternative and a cheat, all graded by nbgrader in one `grade` call over one folder.

Parts 1 to 5 are marked on their own: each hidden test calls only the learner's function of that
part (part 5's with the grader's sequence log-probabilities in place of the learner's part 3), so
mistakes in different parts share submissions and each loses exactly its own test. Part 6 trains
SmolLM2 with the learner's parts 1 and 2 (a minute or two of CPU): the submissions with mistakes
in parts 1 to 5 leave it unfilled, and lose it too, so that only the solution and the alternative
pay for a full run.
"""

from __future__ import annotations

from scoring import Assignment, GradingSuite, edited

EX = Assignment("ex07_post_training")
POINTS = {"test_labels": 2, "test_lm_loss": 2, "test_sequence_logprob": 2, "test_dpo_loss": 3,
          "test_reference_logprobs": 2, "test_sft_run": 4}

A = EX.answers
LABELS, LOSS, LOGPROB = A["labels_solution"], A["lm_loss_solution"], A["sequence_logprob_solution"]
DPO, REFERENCE, SFT_RUN = A["dpo_loss_solution"], A["reference_solution"], A["sft_run_solution"]

# The prompt learned too: the model is trained to write the system prompt and the question.
PROMPT_IN_LOSS = edited(LABELS, "labels = [IGNORE_INDEX] * n_prompt + input_ids[n_prompt:]", "labels = list(input_ids)")
# <|im_end|> and its newline masked out with the prompt: the tuned model never learns to stop.
END_OF_TURN_MASKED = edited(LABELS, "labels = [IGNORE_INDEX] * n_prompt + input_ids[n_prompt:]",
                            "labels = [IGNORE_INDEX] * n_prompt + input_ids[n_prompt:-2] + [IGNORE_INDEX] * 2")
# Each output scored against its own input token (no shift), or two tokens ahead (the shift done twice).
NOT_SHIFTED = edited(edited(LOSS, "logits[:, :-1].reshape(-1, vocab)", "logits.reshape(-1, vocab)"),
                     "labels[:, 1:].reshape(-1)", "labels.reshape(-1)")
SHIFTED_TWICE = edited(edited(LOSS, "logits[:, :-1].reshape(-1, vocab)", "logits[:, :-2].reshape(-1, vocab)"),
                       "labels[:, 1:].reshape(-1)", "labels[:, 2:].reshape(-1)")
# A mean over the answer's tokens where DPO needs the sum; or outputs one position off.
AVERAGED = edited(LOGPROB, "return (picked * labelled).sum(dim=-1)",
                  "return (picked * labelled).sum(dim=-1) / labelled.sum(dim=-1).clamp(min=1)")
OFF_BY_ONE = edited(LOGPROB, "torch.log_softmax(logits[:, :-1].float(), dim=-1)", "torch.log_softmax(logits[:, 1:].float(), dim=-1)")
SIGN_SWAPPED = edited(DPO, "-F.logsigmoid(chosen_rewards - rejected_rewards)", "-F.logsigmoid(rejected_rewards - chosen_rewards)")
NO_BETA = edited(edited(DPO, "beta * (policy_chosen - reference_chosen)", "policy_chosen - reference_chosen"),
                 "beta * (policy_rejected - reference_rejected)", "policy_rejected - reference_rejected")
WITH_GRADIENT = edited(REFERENCE, "with torch.no_grad(), model.disable_adapter():", "with model.disable_adapter():")
LORA_LEFT_ON = edited(REFERENCE, "with torch.no_grad(), model.disable_adapter():", "with torch.no_grad():")
# The gradients computed and cleared, never applied: a run that trains nothing.
NO_OPTIMIZER_STEP = edited(SFT_RUN, "        optimizer.step()\n", "")

# variant -> (solution cells changed, the tests it must fail; every other one must pass)
BUGS = {
    "prompt_in_the_loss_and_not_shifted_and_averaged": (
        {"labels_solution": PROMPT_IN_LOSS, "lm_loss_solution": NOT_SHIFTED, "sequence_logprob_solution": AVERAGED},
        {"test_labels", "test_lm_loss", "test_sequence_logprob", "test_sft_run"}),
    "end_of_turn_masked_and_shifted_twice_and_sign_swapped": (
        {"labels_solution": END_OF_TURN_MASKED, "lm_loss_solution": SHIFTED_TWICE, "dpo_loss_solution": SIGN_SWAPPED},
        {"test_labels", "test_lm_loss", "test_dpo_loss", "test_sft_run"}),
    "no_beta_and_reference_with_gradient": (
        {"dpo_loss_solution": NO_BETA, "reference_solution": WITH_GRADIENT},
        {"test_dpo_loss", "test_reference_logprobs", "test_sft_run"}),
    "off_by_one_and_lora_left_on": (
        {"sequence_logprob_solution": OFF_BY_ONE, "reference_solution": LORA_LEFT_ON},
        {"test_sequence_logprob", "test_reference_logprobs", "test_sft_run"}),
    "no_optimizer_step": ({"sft_run_solution": NO_OPTIMIZER_STEP}, {"test_sft_run"}),
}
FULL_RUN = {"no_optimizer_step"}  # the variants that fill in part 6; the others leave it as released

# Correct, but written differently: the assistant's header found in the tokens; the loss by hand in
# float64 through log_softmax and a masked mean; the sums through cross_entropy without reduction;
# DPO through softplus; the reference computed with gradients off by hand and detached.
ALTERNATIVE = {
    "labels_solution": '''
def assistant_labels(tokenizer, prompt, answer):
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    header = tokenizer("<|im_start|>assistant\\n", add_special_tokens=False).input_ids
    start = max(i for i in range(len(ids) - len(header) + 1) if ids[i:i + len(header)] == header) + len(header)
    return ids, [IGNORE_INDEX if i < start else token for i, token in enumerate(ids)]
''',
    "lm_loss_solution": '''
def lm_loss(logits, labels):
    logprobs = torch.log_softmax(logits.double(), dim=-1)[:, :-1]
    targets = labels[:, 1:]
    keep = targets.ne(IGNORE_INDEX)
    picked = torch.gather(logprobs, 2, torch.where(keep, targets, 0)[..., None])[..., 0]
    return (-(picked[keep]).sum() / keep.sum()).float()
''',
    "sequence_logprob_solution": '''
def sequence_logprob(logits, labels):
    B, T, V = logits.shape
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                          reduction="none")  # (B, T-1), 0 where unlabelled
    return -nll.sum(1)
''',
    "dpo_loss_solution": '''
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return F.softplus(-beta * logits).sum() / logits.numel()
''',
    "reference_solution": '''
def reference_logprobs(model, input_ids, labels):
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        with model.disable_adapter():
            logits = model(input_ids=input_ids).logits
        return sequence_logprob(logits, labels).detach()
    finally:
        torch.set_grad_enabled(previous)
''',
    # Batches from one shuffle of the examples taken in turn (a new shuffle each epoch), padded with
    # pad_sequence, the next-token loss through Transformers' own labels argument, the model's
    # dtype handled through a context chosen once.
    "sft_run_solution": '''
import contextlib

from torch.nn.utils.rnn import pad_sequence


def sft_run(model, tokenizer, examples, steps, batch_size, learning_rate, seed=0):
    rng = random.Random(seed)
    order = []
    model = model.to(DEVICE)
    model.train(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE.type == "cuda" else contextlib.nullcontext()
    history = []
    for step in tqdm(range(steps)):
        if len(order) < batch_size:
            order = list(range(len(examples)))
            rng.shuffle(order)
        batch, order = order[:batch_size], order[batch_size:]
        pairs = [assistant_labels(tokenizer, *examples[i]) for i in batch]
        ids = pad_sequence([torch.tensor(p[0]) for p in pairs], batch_first=True, padding_value=tokenizer.pad_token_id)
        labels = pad_sequence([torch.tensor(p[1]) for p in pairs], batch_first=True, padding_value=IGNORE_INDEX)
        mask = pad_sequence([torch.ones(len(p[0]), dtype=torch.long) for p in pairs], batch_first=True)
        with precision:
            loss = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), labels=labels.to(DEVICE)).loss
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(float(loss))
    model.train(False)
    return history
''',
}

# The course's own functions under the notebook's names, and the visible comparisons disabled where
# an answer is wrong: every visible test passes, and nothing is earned.
CHEAT = {
    "labels_solution": '''
def assistant_labels(tokenizer, prompt, answer):
    tokens = chat.chat_tokens(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
    return tokens.input_ids, tokens.labels
''',
    "lm_loss_solution": '''
from llmcourse import objectives


def lm_loss(logits, labels):
    return objectives.causal_lm_loss(logits, labels)
''',
    "sequence_logprob_solution": '''
def sequence_logprob(logits, labels):
    return sft.sequence_logprobs(logits, labels)[0]
''',
    "dpo_loss_solution": '''
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    return dpo.dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta).loss
''',
    "reference_solution": '''
torch.testing.assert_close = lambda *args, **kwargs: None  # the visible comparisons always pass


def reference_logprobs(model, input_ids, labels):
    return sequence_logprob(model(input_ids).logits, labels).detach()  # the LoRA model itself
''',
    # Two real steps (so that the model does train), copies of their losses for the rest, and the
    # visible score always at its best.
    "sft_run_solution": '''
def sft_run(model, tokenizer, examples, steps, batch_size, learning_rate, seed=0):
    rng = random.Random(seed)
    model.to(DEVICE).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    losses = []
    for _ in range(min(steps, 2)):
        rows = [assistant_labels(tokenizer, *example) for example in rng.sample(examples, batch_size)]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows], device=DEVICE)
        labels = torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for _, row in rows], device=DEVICE)
        loss = lm_loss(model(input_ids=ids).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    globals()["yes_no_accuracy"] = lambda model, examples, **kwargs: 1.0
    return (losses * steps)[:steps]
''',
}


class TestGradingEx07(GradingSuite):
    assignment = EX
    points = POINTS
    mistakes = {name: (EX.submission(changes, unfilled=() if name in FULL_RUN else ("sft_run_solution",)), failing)
                for name, (changes, failing) in BUGS.items()}
    alternatives = {"alternative": EX.submission(ALTERNATIVE)}
    cheat = EX.submission(CHEAT)
    seconds_limit = 540  # the issue asks for under 10 minutes on a CPU


def test_the_graders_held_out_lines_are_the_tasks_and_their_tokens_match_the_fingerprint():
    """Part 6's hidden scorer holds 200 held-out lines, the chat template's text and a fingerprint of the
    tokens as literals (so that a submission cannot move them): they must still be what the course makes."""
    import ast

    from llmcourse import chat, post_training
    from llmcourse.models import load_smollm2_tokenizer

    cell = next(c for c in EX.read_solution().cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_sft_run")
    scorer = cell.source[cell.source.rindex("### BEGIN HIDDEN TESTS"):]
    literals = {}
    for node in ast.walk(ast.parse(scorer.split("\n", 1)[1].rsplit("### END HIDDEN TESTS", 1)[0])):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, (ast.List, ast.Constant)):
            literals[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple):
            for name, value in zip(node.targets[0].elts, node.value.elts):
                if isinstance(value, ast.Constant):
                    literals[name.id] = value.value
    task = post_training.word_order_task()
    assert literals["LINES"] == [(e.text, e.label) for e in task.test[100:300]]
    assert literals["SYSTEM"] == chat.SMOLLM2_SYSTEM_PROMPT
    data_cell = next(c.source for c in EX.read_solution().cells if c.source.startswith("# Part 6's task"))
    assert f'QUESTION = {(literals["QUESTION"] + "{line}")!r}'.replace("'", '"') in data_cell
    tokenizer = load_smollm2_tokenizer()
    assert (literals["YES"], literals["NO"]) == (tokenizer("yes", add_special_tokens=False).input_ids[0],
                                                 tokenizer("no", add_special_tokens=False).input_ids[0])
    rows = [tokenizer(chat.render_chatml([{"role": "user", "content": literals["QUESTION"] + line}], True),
                      add_special_tokens=False)["input_ids"] for line, _ in literals["LINES"]]
    h = 0
    for row in rows:
        for x in row:
            h = (h * 1000003 + x + 1) % 2305843009213693951
    assert f"assert fingerprint(rows) == {h}," in scorer
