"""Grading ex07_post_training end to end: the solution, the empty release, classic mistakes, a
correct alternative and a cheat, all graded by nbgrader in one `grade` call over one folder.

Each part is marked on its own: its hidden test calls only the learner's function of that part
(part 5's with the grader's sequence log-probabilities in place of the learner's part 3), so
mistakes in different parts share submissions and each loses exactly its own test.
"""

from __future__ import annotations

from scoring import Assignment, GradingSuite, edited

EX = Assignment("ex07_post_training")
POINTS = {"test_labels": 2, "test_lm_loss": 2, "test_sequence_logprob": 2, "test_dpo_loss": 3,
          "test_reference_logprobs": 2}

A = EX.answers
LABELS, LOSS, LOGPROB = A["labels_solution"], A["lm_loss_solution"], A["sequence_logprob_solution"]
DPO, REFERENCE = A["dpo_loss_solution"], A["reference_solution"]

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

# variant -> (solution cells changed, the tests it must fail; every other one must pass)
BUGS = {
    "prompt_in_the_loss_and_not_shifted_and_averaged": (
        {"labels_solution": PROMPT_IN_LOSS, "lm_loss_solution": NOT_SHIFTED, "sequence_logprob_solution": AVERAGED},
        {"test_labels", "test_lm_loss", "test_sequence_logprob"}),
    "end_of_turn_masked_and_shifted_twice_and_sign_swapped": (
        {"labels_solution": END_OF_TURN_MASKED, "lm_loss_solution": SHIFTED_TWICE, "dpo_loss_solution": SIGN_SWAPPED},
        {"test_labels", "test_lm_loss", "test_dpo_loss"}),
    "no_beta_and_reference_with_gradient": (
        {"dpo_loss_solution": NO_BETA, "reference_solution": WITH_GRADIENT},
        {"test_dpo_loss", "test_reference_logprobs"}),
    "off_by_one_and_lora_left_on": (
        {"sequence_logprob_solution": OFF_BY_ONE, "reference_solution": LORA_LEFT_ON},
        {"test_sequence_logprob", "test_reference_logprobs"}),
}

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
}


class TestGradingEx07(GradingSuite):
    assignment = EX
    points = POINTS
    mistakes = {name: (EX.submission(changes), failing) for name, (changes, failing) in BUGS.items()}
    alternatives = {"alternative": EX.submission(ALTERNATIVE)}
    cheat = EX.submission(CHEAT)
    seconds_limit = 120
