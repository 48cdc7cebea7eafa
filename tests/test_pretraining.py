"""Pre-training (llmcourse.objectives, batches, training): objectives against Hugging Face and by-hand references, masking statistics,
NSP pairs, the schedule, the training loop (overfitting, checkpoints) and DistributedDataParallel."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from llmcourse import data
from llmcourse.batches import (
    SpecialTokens,
    add_special_tokens,
    encode_pair,
    lm_batches,
    lm_eval_batches,
    nsp_pairs,
    pair_batches,
)
from llmcourse.objectives import (
    IGNORE_INDEX,
    bert_loss,
    causal_lm_loss,
    clm_loss,
    mask_tokens,
    masked_lm_loss,
    mlm_loss,
    nsp_loss,
    reverse_sequences,
    reversed_lm_loss,
)
from llmcourse.training import TrainConfig, configure_optimizer, learning_rate_at, shard, train
from llmcourse.tokenization import WordTokenizer
from llmcourse.transformer import EncoderConfig, GPT, GPTConfig, MLMEncoder


def hf_and_ours():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_positions=20, n_embd=24, n_layer=2, n_head=3, bos_token_id=0,
                        eos_token_id=0, attn_implementation="eager")
    hf = GPT2LMHeadModel(config).double().eval()
    return hf, GPT.from_hf_gpt2(hf).eval()


def test_clm_loss_equals_hugging_face_gpt2_loss_with_padding() -> None:
    hf, ours = hf_and_ours()
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 40, (3, 20), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 14:] = 0  # right padding
    attention_mask[2, 9:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)  # same shape as the inputs: HF shifts them
    with torch.no_grad():
        theirs = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        ours_loss = clm_loss(ours, {"input_ids": input_ids, "labels": labels})
        # by hand: -mean log p(x_{t+1} | x_0..x_t) over the real next tokens
        log_probs = ours(input_ids).log_softmax(-1)
        terms = [-log_probs[b, t, input_ids[b, t + 1]] for b in range(3) for t in range(19) if attention_mask[b, t + 1]]
    assert len(terms) == 19 + 13 + 8
    assert abs(ours_loss.item() - theirs.item()) < 1e-6  # Transformers computes its loss in float32
    assert theirs.dtype == torch.float32 and ours_loss.dtype == torch.float64
    assert abs(ours_loss.item() - torch.stack(terms).mean().item()) < 1e-12


def test_clm_loss_rejects_pre_shifted_labels() -> None:
    _, ours = hf_and_ours()
    input_ids = torch.randint(0, 40, (2, 10))
    with pytest.raises(ValueError, match="labels=input_ids"):
        clm_loss(ours, {"input_ids": input_ids, "labels": input_ids[:, 1:]})
    # shifting twice (labels already moved left, padded to length) trains on the token after next
    double = torch.cat([input_ids[:, 1:], torch.full((2, 1), IGNORE_INDEX)], 1)
    with torch.no_grad():
        logits = ours(input_ids)
    twice = causal_lm_loss(logits, double)
    expected = F.cross_entropy(logits[:, :-2].reshape(-1, 40), input_ids[:, 2:].reshape(-1))
    assert abs(twice.item() - expected.item()) < 1e-12


def test_reversed_lm_is_clm_on_the_flipped_sequence() -> None:
    _, ours = hf_and_ours()
    input_ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reversed_loss = reversed_lm_loss(ours, {"input_ids": input_ids})
        assert abs(reversed_loss.item() - clm_loss(ours, {"input_ids": input_ids.flip(1)}).item()) < 1e-12
        assert abs(reversed_loss.item() - clm_loss(ours, {"input_ids": input_ids}).item()) > 1e-4


def test_reverse_sequences_keeps_right_padding_in_place() -> None:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0]])
    mask = (ids != 0).long()
    assert reverse_sequences(ids, mask).tolist() == [[4, 3, 2, 1], [6, 5, 0, 0], [7, 0, 0, 0]]
    assert reverse_sequences(ids).tolist() == ids.flip(1).tolist()
    _, ours = hf_and_ours()
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        got = reversed_lm_loss(ours, {"input_ids": ids, "labels": labels, "attention_mask": mask})
        expected = clm_loss(ours, {"input_ids": reverse_sequences(ids, mask),
                                   "labels": reverse_sequences(ids, mask).masked_fill(mask == 0, IGNORE_INDEX)})
    assert abs(got.item() - expected.item()) < 1e-12


def within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """Is count a plausible Binomial(n, p) draw? (about 1 false alarm in 150,000)"""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_mask_tokens_follows_bert_80_10_10() -> None:
    vocab_size, special = 50, SpecialTokens(pad=0, cls=1, sep=2, mask=3, unk=4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (500, 400), generator=generator)
    ids[:, 0], ids[:, 200], ids[:, -1] = special.cls, special.sep, special.sep
    ids[::3, -50:] = special.pad
    ids[::7, 100:110] = special.unk
    inputs, labels = mask_tokens(ids, special.mask, vocab_size, special, generator=torch.Generator().manual_seed(1))
    is_special = ids < 5
    selected = labels != IGNORE_INDEX
    n_ordinary, n_selected = int((~is_special).sum()), int(selected.sum())
    assert within(n_selected, n_ordinary, 0.15)
    assert not (selected & is_special).any() and torch.equal(inputs[is_special], ids[is_special])
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(inputs[~selected], ids[~selected])
    masked = int((inputs[selected] == special.mask).sum())
    unchanged = int((inputs[selected] == ids[selected]).sum())
    replaced = n_selected - masked - unchanged
    n_ordinary_ids = vocab_size - 5  # a random replacement can draw the original token: 1 in 45
    assert within(masked, n_selected, 0.8)
    assert within(replaced, n_selected, 0.1 * (1 - 1 / n_ordinary_ids))
    assert within(unchanged, n_selected, 0.1 + 0.1 / n_ordinary_ids)
    random_tokens = inputs[selected & (inputs != special.mask) & (inputs != ids)]
    assert random_tokens.min() >= 5  # never a special token
    counts = torch.bincount(random_tokens - 5, minlength=n_ordinary_ids)
    assert all(within(int(c), len(random_tokens), 1 / n_ordinary_ids) for c in counts)  # uniform
    again = mask_tokens(ids, special.mask, vocab_size, special, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_masked_lm_loss_is_mean_negative_log_likelihood_of_masked_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 30, generator=generator, dtype=torch.float64)
    original = torch.randint(4, 30, (4, 9), generator=generator)
    _, labels = mask_tokens(original, 3, 30, (0, 1, 2, 3, 4), mask_prob=0.3, generator=generator)
    log_probs = logits.log_softmax(-1)
    positions = (labels != IGNORE_INDEX).nonzero().tolist()
    assert len(positions) > 3
    by_hand = -sum(log_probs[b, t, labels[b, t]] for b, t in positions) / len(positions)
    loss = masked_lm_loss(logits, labels)
    assert abs(loss.item() - by_hand.item()) < 1e-12
    assert abs(loss.item() - F.cross_entropy(logits.reshape(-1, 30), labels.reshape(-1), ignore_index=-100).item()) < 1e-12


@pytest.fixture(scope="module")
def three_plays() -> list[data.Play]:
    return [data.get_play(name) for name in ("macbeth", "the-tempest", "twelfth-night")]


def test_nsp_pairs_are_balanced_consecutive_and_split_by_play(three_plays) -> None:
    pairs = nsp_pairs(three_plays, n_pairs=3000, seed=0)
    lines = {p.slug: [line for s in data.speeches(p) for line in s.lines] for p in three_plays}
    positives = [p for p in pairs if p.is_next]
    assert len(pairs) == 3000 and within(len(positives), 3000, 0.5)
    for pair in positives:
        assert pair.second_play == pair.play
        play_lines = lines[pair.play]
        assert any(play_lines[i] == pair.first and play_lines[i + 1] == pair.second for i in range(len(play_lines) - 1))
    for pair in pairs:
        assert pair.play in lines and pair.second_play in lines
        if not pair.is_next:
            assert pair.second_play != pair.play and pair.second in lines[pair.second_play]
    assert nsp_pairs(three_plays, 50, seed=0) == pairs[:50]
    assert nsp_pairs(three_plays, 50, seed=1) != pairs[:50]
    with pytest.raises(ValueError):
        nsp_pairs(three_plays[:1])


def test_encode_pair_and_pair_batches() -> None:
    special = SpecialTokens(pad=0, cls=1, sep=2, mask=3, unk=4)
    ids, segments = encode_pair([10, 11, 12, 13, 14, 15], [20, 21], special, max_length=8)
    assert ids == [1, 10, 11, 12, 2, 20, 21, 2] and segments == [0, 0, 0, 0, 0, 1, 1, 1]
    examples = [encode_pair([10 + i] * (i + 1), [20] * 3, special, 16) + (i % 2,) for i in range(10)]
    batches = list(pair_batches(examples, 4, special, 30, endless=False))
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    first = batches[0]
    assert first["next_sentence_label"].tolist() == [0, 1, 0, 1]
    assert first["attention_mask"].tolist()[0] == [1] * 7 + [0] * 3  # [CLS] a [SEP] b b b [SEP], padded to 10
    real = first["attention_mask"].bool()
    assert (first["labels"][~real] == IGNORE_INDEX).all()
    stream = pair_batches(examples, 4, special, 30, seed=0)
    assert next(stream)["input_ids"].shape[0] == 4


def test_add_special_tokens_is_idempotent() -> None:
    tokenizer = WordTokenizer("to be or not to be")
    special = add_special_tokens(tokenizer)
    assert add_special_tokens(tokenizer) == special and tokenizer.itos[special.mask] == "[MASK]"
    assert special.unk == 0 and tokenizer.itos[0] == "<unk>"
    assert tokenizer.vocab_size == 5 + 4


def test_learning_rate_schedule_at_known_steps() -> None:
    config = TrainConfig(max_steps=1100, warmup_steps=100, learning_rate=1e-3, min_learning_rate=1e-4)
    assert learning_rate_at(0, config) == pytest.approx(1e-5)
    assert learning_rate_at(49, config) == pytest.approx(5e-4)
    assert learning_rate_at(99, config) == pytest.approx(1e-3)
    assert learning_rate_at(100, config) == pytest.approx(1e-3)
    assert learning_rate_at(600, config) == pytest.approx(5.5e-4)  # half-way down the cosine
    assert learning_rate_at(350, config) == pytest.approx(1e-4 + 0.45e-3 * (1 + math.cos(math.pi / 4)))
    assert learning_rate_at(1100, config) == pytest.approx(1e-4) == learning_rate_at(5000, config)
    assert learning_rate_at(1100, TrainConfig(max_steps=1100, learning_rate=2e-3)) == pytest.approx(2e-4)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layers=2, n_heads=2, d_model=32))


def test_weight_decay_only_on_matrices() -> None:
    model = tiny_gpt()
    decay, no_decay = configure_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.dim() == 2}
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_train_overfits_a_tiny_batch() -> None:
    model = tiny_gpt()
    batch = {"input_ids": torch.randint(0, 20, (4, 16), generator=torch.Generator().manual_seed(0))}
    config = TrainConfig(max_steps=150, warmup_steps=10, learning_rate=3e-3, eval_every=50, progress=False, device="cpu")
    history = train(model, clm_loss, [batch], [batch], config)
    assert history.val_step == [0, 50, 100, 150] and len(history.train_loss) == 150
    assert history.val_loss[0] > 2.9  # about ln(20) = 3.0 at the start
    assert history.val_loss[-1] < 0.1  # memorised
    assert history.learning_rate[9] == pytest.approx(3e-3)


def test_checkpoint_and_resume(tmp_path) -> None:
    batch = {"input_ids": torch.randint(0, 20, (4, 16), generator=torch.Generator().manual_seed(0))}
    settings = dict(max_steps=12, warmup_steps=2, eval_every=6, progress=False, device="cpu")
    straight = tiny_gpt()
    train(straight, clm_loss, [batch], [batch], TrainConfig(**settings))
    first = tiny_gpt()
    interrupted = (batch for _ in range(6))  # the data runs out during step 7, after the checkpoint of step 6
    with pytest.raises(ValueError, match="ran out"):
        train(first, clm_loss, interrupted, [batch], TrainConfig(**settings, checkpoint_dir=tmp_path))
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "config.json").is_file()
    resumed = tiny_gpt(seed=1)  # different weights: the checkpoint must replace them
    history = train(resumed, clm_loss, [batch], [batch], TrainConfig(**settings, checkpoint_dir=tmp_path, resume=True))
    assert history.val_step == [0, 6, 12] and len(history.train_loss) == 12
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b)
    assert isinstance(GPT.from_pretrained(tmp_path), GPT)


def test_gradient_accumulation_takes_the_steps_of_one_big_batch() -> None:
    big = {"input_ids": torch.randint(0, 20, (8, 16), generator=torch.Generator().manual_seed(0))}
    halves = [{"input_ids": half} for half in big["input_ids"].split(4)]
    settings = dict(max_steps=5, warmup_steps=2, progress=False, device="cpu")
    one_batch, accumulated = tiny_gpt().double(), tiny_gpt().double()
    plain = train(one_batch, clm_loss, [big], None, TrainConfig(**settings))
    split = train(accumulated, clm_loss, halves, None, TrainConfig(**settings, accumulation_steps=2))
    assert split.train_loss == pytest.approx(plain.train_loss, rel=1e-10)
    for a, b in zip(accumulated.parameters(), one_batch.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="accumulation_steps"):
        TrainConfig(accumulation_steps=0)


def test_early_stopping_watches_a_metric_and_restores_the_best_weights() -> None:
    batch = {"input_ids": torch.randint(0, 20, (4, 16), generator=torch.Generator().manual_seed(0))}
    scripted = iter([0.2, 0.5, 0.7, 0.6, 0.65, 0.9, 0.95])  # best after step 4; two worse evaluations follow
    snapshots = []

    def metrics_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return {"accuracy": next(scripted)}

    model = tiny_gpt()
    config = TrainConfig(max_steps=20, warmup_steps=2, eval_every=2, progress=False, device="cpu",
                         monitor="accuracy", maximize=True, patience=2, restore_best=True)
    history = train(model, clm_loss, [batch], [batch], config, metrics_fn=metrics_fn)
    assert history.val_step == [0, 2, 4, 6, 8] and history.stopped_early and history.best_step == 4
    assert history.monitored("accuracy") == [0.2, 0.5, 0.7, 0.6, 0.65] and len(history.train_loss) == 8
    assert len(history.eval_seconds) == 5 and 0 < history.training_seconds() < history.seconds[-1]
    for restored, kept in zip(model.parameters(), snapshots[2]):
        torch.testing.assert_close(restored, kept, rtol=0, atol=0)
    assert not torch.equal(snapshots[-1][0], snapshots[2][0])  # training did move the weights after step 4
    # the mean training loss of each interval between evaluations
    assert history.interval_train_loss[1] == pytest.approx(sum(history.train_loss[:2]) / 2)
    assert history.interval_train_loss[4] == pytest.approx(sum(history.train_loss[6:8]) / 2)
    with pytest.raises(KeyError, match="no metric"):
        history.monitored("f1")


def test_early_stopping_on_validation_loss_needs_validation_batches() -> None:
    batch = {"input_ids": torch.randint(0, 20, (4, 16), generator=torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match="val_batches"):
        train(tiny_gpt(), clm_loss, [batch], None, TrainConfig(max_steps=2, patience=1, progress=False, device="cpu"))
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)


def test_lm_batches_are_windows_of_the_stream() -> None:
    ids = torch.arange(1000)
    batch = next(lm_batches(ids, 8, 32, seed=0))["input_ids"]
    assert batch.shape == (8, 32) and (batch.diff(dim=1) == 1).all()
    evaluation = lm_eval_batches(ids, 4, 32, 3)
    starts = torch.cat([b["input_ids"][:, 0] for b in evaluation])
    assert len(evaluation) == 3 and starts[0] == 0 and starts[-1] == 1000 - 32


def test_mlm_and_nsp_losses_run_on_an_encoder() -> None:
    torch.manual_seed(0)
    model = MLMEncoder(EncoderConfig(vocab_size=30, block_size=16, n_layers=1, n_heads=2, d_model=16))
    special = SpecialTokens(pad=0, cls=1, sep=2, mask=3, unk=4)
    examples = [encode_pair([5 + i, 6, 7], [8, 9 + i], special, 16) + (i % 2,) for i in range(8)]
    batch = next(pair_batches(examples, 8, special, 30, mask_prob=0.5))
    for loss_fn in (mlm_loss, nsp_loss, bert_loss):
        loss = loss_fn(model, batch)
        assert loss.ndim == 0 and loss.item() > 0
    assert abs(nsp_loss(model, batch).item() - math.log(2)) < 0.2  # untrained: about a coin flip
    # Scoring only the selected positions gives the loss of scoring all of them.
    with torch.no_grad():
        mlm_logits, nsp_logits = model(batch["input_ids"], batch["attention_mask"], batch["segment_ids"])
        full = masked_lm_loss(mlm_logits, batch["labels"])
        assert abs(mlm_loss(model, batch).item() - full.item()) < 1e-6
        both = full + F.cross_entropy(nsp_logits, batch["next_sentence_label"])
        assert abs(bert_loss(model, batch).item() - both.item()) < 1e-6


# ---------------------------------------------------------------------------------------------
# DistributedDataParallel: two processes on half batches = one process on the whole batch


def _ddp_worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        model = torch.nn.parallel.DistributedDataParallel(tiny_gpt().double())
        batch = {"input_ids": torch.randint(0, 20, (8, 16), generator=torch.Generator().manual_seed(0))}
        clm_loss(model, shard(batch, rank, world_size)).backward()
        gradients = [p.grad.clone() for p in model.module.parameters()]
        model.zero_grad()
        stream = (shard(b, rank, world_size) for b in lm_batches(torch.arange(200) % 20, 8, 16, seed=1))
        train(model, clm_loss, stream, None, TrainConfig(max_steps=5, warmup_steps=2, progress=False, device="cpu"))
        if rank == 0:
            torch.save({"gradients": gradients, "weights": [p.detach() for p in model.module.parameters()]}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_gives_the_same_gradients_and_weights_as_one_process(tmp_path) -> None:
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    single = tiny_gpt().double()
    batch = {"input_ids": torch.randint(0, 20, (8, 16), generator=torch.Generator().manual_seed(0))}
    clm_loss(single, batch).backward()
    for got, p in zip(result["gradients"], single.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-10, atol=1e-12)
    single.zero_grad()
    train(single, clm_loss, lm_batches(torch.arange(200) % 20, 8, 16, seed=1), None,
          TrainConfig(max_steps=5, warmup_steps=2, progress=False, device="cpu"))
    for got, p in zip(result["weights"], single.parameters()):
        torch.testing.assert_close(got, p.detach(), rtol=1e-9, atol=1e-10)
    assert "RANK" not in os.environ
