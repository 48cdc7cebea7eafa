"""Train a small GPT on several processes with DistributedDataParallel, and check the claim
that makes it correct: the processes together take the step one process would take on the
whole batch.

Run it from this folder with (CPU, gloo backend; NCCL on GPUs)::

    torchrun --standalone --nproc_per_node 2 ddp_train.py results.json

Every process builds the same model from the same seed and reads the same stream of global
batches, but trains on its own slice of each one (``shard``). DDP averages the gradients
across processes during ``backward``, so every process applies the same update. The first
process then repeats the work alone on the whole batches and writes the differences to
``results.json``.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from llmcourse import corpora
from llmcourse.batches import lm_batches, lm_eval_batches
from llmcourse.objectives import clm_loss
from llmcourse.training import TrainConfig, init_distributed, shard, train
from llmcourse.transformer import GPT, GPTConfig

GLOBAL_BATCH, BLOCK = 32, 64


def fresh_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)  # the same initial weights in every process
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layers=2, n_heads=4, d_model=64))


def main(out: str) -> None:
    torch.set_num_threads(1)  # one core per process
    rank, world_size = init_distributed()
    corpus = corpora.char_corpus()
    vocab_size = corpus.tokenizer.vocab_size
    val_batches = lm_eval_batches(corpus.val_ids, GLOBAL_BATCH, BLOCK, n_batches=4)
    config = TrainConfig(max_steps=60, warmup_steps=10, learning_rate=3e-3, eval_every=30, progress=False, device="cpu")

    # 1. One backward pass: each process on its slice, gradients averaged by DDP.
    model = DistributedDataParallel(fresh_model(vocab_size))
    batch = next(lm_batches(corpus.train_ids, GLOBAL_BATCH, BLOCK, seed=0))
    clm_loss(model, shard(batch, rank, world_size)).backward()
    gradients = [p.grad.clone() for p in model.module.parameters()]

    # 2. The training loop of the course, unchanged, on each process's slices of the stream.
    model = DistributedDataParallel(fresh_model(vocab_size))
    stream = (shard(b, rank, world_size) for b in lm_batches(corpus.train_ids, GLOBAL_BATCH, BLOCK, seed=1))
    start = time.perf_counter()
    history = train(model, clm_loss, stream, val_batches, config)
    seconds = time.perf_counter() - start

    if rank == 0:
        # The same work in one process, on whole batches.
        single = fresh_model(vocab_size)
        clm_loss(single, batch).backward()
        gradient_difference = max((a - p.grad).abs().max().item() for a, p in zip(gradients, single.parameters()))
        gradient_scale = max(p.grad.abs().max().item() for p in single.parameters())
        single = fresh_model(vocab_size)
        start = time.perf_counter()
        single_history = train(single, clm_loss, lm_batches(corpus.train_ids, GLOBAL_BATCH, BLOCK, seed=1),
                               val_batches, config)
        single_seconds = time.perf_counter() - start
        weight_difference = max((a - b).abs().max().item() for a, b in zip(model.module.parameters(), single.parameters()))
        weight_change = max((a - b).abs().max().item() for a, b in zip(single.parameters(), fresh_model(vocab_size).parameters()))
        results = {
            "world_size": world_size,
            "backend": dist.get_backend(),
            "max_gradient_difference": gradient_difference,
            "max_gradient": gradient_scale,
            "max_weight_difference_after_training": weight_difference,
            "max_weight_change_during_training": weight_change,
            "val_loss_ddp": history.val_loss,
            "val_loss_single": single_history.val_loss,
            "seconds_ddp": seconds,
            "seconds_single": single_seconds,
        }
        with open(out, "w") as file:
            json.dump(results, file, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results.json")
