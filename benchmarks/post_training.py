"""Post-training SmolLM2: the course's SFT step against TRL + PEFT's, and the held-out gains of SFT and DPO."""

from __future__ import annotations

import tempfile

import torch

from benchmarks.timing import alternate
from llmcourse import corpora, dpo, models, post_training, sft

N_TEST_LINES, N_TEST_PAIRS, BATCH = 200, 64, 8


def sft_step_time_vs_trl(repeats: int) -> dict[str, float]:
    """Seconds of one SFT step (forward, loss, backward, AdamW on the LoRA matrices) over TRL + PEFT's.

    The same 8 word-order conversations (TRL's collated batch, fed to both), LoRA r 8 on the query
    and value projections of both, float32, every thread; the losses are checked equal first.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    hf_logging.set_verbosity_error()
    task = post_training.word_order_task()
    rows = [{"prompt": [{"role": "system", "content": post_training.WORD_ORDER_SYSTEM},
                        *post_training.word_order_messages(e)],
             "completion": [{"role": "assistant", "content": task.classes[e.label]}]} for e in task.train[:BATCH]]
    ours, tokenizer = post_training.smollm2_decoder(progress=False)
    sft.add_lora(ours, sft.LLAMA_ATTENTION, r=8, alpha=16)
    hf_model, _ = models.load_smollm2(progress=False)
    trainer = SFTTrainer(model=hf_model, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         args=SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH,
                                        report_to=[], use_cpu=True, max_length=None),
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=list(sft.LLAMA_ATTENTION)))
    theirs = trainer.model.train()
    ours.train()
    batch = next(iter(trainer.get_train_dataloader()))
    our_batch = {k: batch[k] for k in ("input_ids", "labels", "attention_mask")}
    with torch.no_grad():  # both start as the base model (B = 0): the same loss
        if abs(sft.sft_loss(ours, our_batch).item() - trainer.compute_loss(theirs, dict(batch)).item()) > 1e-4:
            raise RuntimeError("our SFT loss and TRL's differ on the same batch: the timings would not compare")
    our_optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    their_optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-4)

    def our_step() -> None:
        sft.sft_loss(ours, our_batch).backward()
        our_optimizer.step()
        our_optimizer.zero_grad(set_to_none=True)

    def their_step() -> None:
        trainer.compute_loss(theirs, dict(batch)).backward()
        their_optimizer.step()
        their_optimizer.zero_grad(set_to_none=True)

    t_ours, t_theirs = alternate(our_step, their_step, max(1, min(repeats, 8)), warmup=1)
    return {"sft_step_time_vs_trl": t_ours / t_theirs, "sft_step_seconds_ours": t_ours,
            "sft_step_seconds_trl": t_theirs, "sft_step_tokens": float(batch["input_ids"].numel())}


def post_training_gains(repeats: int) -> dict[str, float]:
    """Held-out gains of the cached adapters (trained on this machine's device with its budget, if not cached).

    SFT: word-order accuracy on ``N_TEST_LINES`` lines of held-out plays, tuned minus zero-shot.
    DPO: how often the model gives the real next line the higher log-probability on ``N_TEST_PAIRS``
    held-out pairs, tuned minus reference. ``repeats`` is unused.
    """
    task = post_training.word_order_task()
    test = task.test[:N_TEST_LINES]
    tuned = models.load_course_model("smollm2-sft-word-order", progress=False)
    base, tokenizer = post_training.smollm2_decoder(progress=False)
    before, _ = post_training.word_order_accuracy(base, tokenizer, test, task.classes)
    after, _ = post_training.word_order_accuracy(tuned.model, tokenizer, test, task.classes)
    preference = models.load_course_model("smollm2-dpo-next-line", progress=False)
    split = corpora.held_out_split()
    pairs = post_training.next_line_pairs(split.test, N_TEST_PAIRS, seed=1)
    batches = [dpo.pair_batch(pairs[i:i + 8], tokenizer, tokenizer.pad_token_id, post_training.NEXT_LINE_SYSTEM)
               for i in range(0, N_TEST_PAIRS, 8)]
    held_out = dpo.preference_metrics(preference.model, batches, preference.info["budget"]["beta"])
    return {"sft_heldout_accuracy_gain": after - before, "sft_zero_shot_accuracy": before, "sft_accuracy": after,
            "dpo_heldout_preference_gain": held_out.policy_accuracy - held_out.reference_accuracy,
            "dpo_reward_accuracy": held_out.accuracy, "dpo_kl_per_token": held_out.kl,
            "post_training_on_cuda": float(tuned.info["device"] == "cuda")}
