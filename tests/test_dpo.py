"""Direct preference optimisation (``llmcourse.dpo``): the loss by hand, against TRL, and what training does."""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse import dpo, models, sft, training
from llmcourse.adapters import LoRALinear, lora_disabled
from llmcourse.llama import LlamaDecoder
from tests.test_sft import peft_lora_into, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    dpo.PreferencePair([{"role": "user", "content": "What follows 'To be, or not to be'?"}],
                       "That is the question.", "My kingdom for a horse!"),
    dpo.PreferencePair([{"role": "user", "content": "Continue: 'Now is the winter'"}],
                       "of our discontent", "Friends, Romans, countrymen, lend me your ears"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_smollm2_tokenizer()


def test_dpo_loss_is_the_formula() -> None:
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-5.0, -9.0], [-7.0, -4.0], [-6.0, -8.0], [-6.0, -5.0]))
    out = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = 0.5 * ((pc - rc) - (pr - rr))  # [1.5, -1.0]
    expected = torch.tensor([math.log1p(math.exp(-m)) for m in margins.tolist()]).mean()  # -log sigmoid(m)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.chosen_rewards, 0.5 * (pc - rc))
    torch.testing.assert_close(out.rejected_rewards, 0.5 * (pr - rr))
    # Policy equal to the reference: every reward is 0 and the loss is log 2, whatever beta.
    same = dpo.dpo_loss(rc, rr, rc, rr, beta=3.0)
    assert same.loss.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="beta"):
        dpo.dpo_loss(pc, pr, rc, rr, beta=0.0)


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected() -> None:
    policy_chosen = torch.tensor([-5.0], requires_grad=True)
    policy_rejected = torch.tensor([-5.0], requires_grad=True)
    dpo.dpo_loss(policy_chosen, policy_rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1).loss.backward()
    assert policy_chosen.grad.item() < 0 < policy_rejected.grad.item()  # descent raises chosen, lowers rejected
    assert policy_chosen.grad.item() == pytest.approx(-0.05)  # beta * sigmoid(0) = 0.1 / 2


def test_pair_batch_puts_the_chosen_rows_first_and_labels_the_answers(tokenizer) -> None:
    batch = dpo.pair_batch(PAIRS, tokenizer, pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    learned = [tokenizer.decode([t for t, label in zip(row, labels) if label != -100])
               for row, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    assert learned == [f"{a}<|im_end|>\n" for a in (PAIRS[0].chosen, PAIRS[1].chosen, PAIRS[0].rejected,
                                                    PAIRS[1].rejected)]


def test_dpo_loss_matches_trl_dpo_trainer(tokenizer, tmp_path) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    hf = tiny_llama(len(tokenizer), seed=4)
    ours = LlamaDecoder.from_transformers(hf)
    rows = [{"prompt": list(p.messages), "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in PAIRS]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True, beta=0.3,
                     max_length=None)
    trainer = DPOTrainer(model=hf, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=list(sft.LLAMA_ATTENTION)))
    peft_model = trainer.model.eval()
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    sft.add_lora(ours, sft.LLAMA_ATTENTION, r=4, alpha=8)
    peft_lora_into(ours, peft_model)
    trl_batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        theirs = trainer.compute_loss(peft_model, dict(trl_batch))
        # The same rows as TRL's batch: its completion mask is our labels.
        labels = trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100)
        mine = dpo.dpo_objective(beta=0.3)(ours.eval(), {"input_ids": trl_batch["input_ids"], "labels": labels})
        ours_batch = dpo.pair_batch(PAIRS, tokenizer, pad_id=tokenizer.pad_token_id)
        from_our_batch = dpo.dpo_objective(beta=0.3)(ours, ours_batch)
    assert mine.item() != pytest.approx(math.log(2))  # the LoRA update makes policy and reference differ
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_our_batch, theirs, atol=1e-5, rtol=1e-5)


def test_dpo_training_separates_the_pairs_and_moves_away_from_the_reference(tokenizer) -> None:
    model = sft.add_lora(LlamaDecoder.from_transformers(tiny_llama(len(tokenizer), seed=2)), r=4)
    batch = dpo.pair_batch(PAIRS, tokenizer, pad_id=tokenizer.pad_token_id)
    before = dpo.preference_metrics(model, [batch], beta=0.1)
    assert before.accuracy == 0.0 and before.margin == 0.0 and before.kl == pytest.approx(0.0, abs=1e-6)
    assert before.loss == pytest.approx(math.log(2)) and before.policy_accuracy == before.reference_accuracy
    reference_logits = model(batch["input_ids"]).detach()
    config = training.TrainConfig(max_steps=25, learning_rate=1e-2, warmup_steps=0, weight_decay=0.0,
                                  progress=False, device="cpu")
    history = training.train(model, dpo.dpo_objective(beta=0.1), [batch], config=config)
    after = dpo.preference_metrics(model, [batch], beta=0.1)
    assert history.train_loss[-1] < history.train_loss[0]
    assert after.accuracy == 1.0 and after.margin > 0 and after.kl > 0 and after.loss < math.log(2)
    assert after.reference_accuracy == before.reference_accuracy  # the reference did not move
    # The reference is the frozen base: switching LoRA off still gives the logits from before training.
    with torch.no_grad(), lora_disabled(model):
        torch.testing.assert_close(model(batch["input_ids"]), reference_logits)
    assert any(isinstance(m, LoRALinear) for m in model.modules())
