"""Fine-tuning (llmcourse.tasks, classifier, freezing, adapters, profiling, strategies): tasks split
by play, the head against Transformers' classifier, each strategy's trainable weights, prompt tuning /
prefix tuning / LoRA against PEFT, memory accounting, and training."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as sk
from sklearn.utils.class_weight import compute_class_weight
from transformers import BertConfig, BertForSequenceClassification

from llmcourse import adapters, classifier, data, freezing, plots, profiling, strategies, tasks
from llmcourse.adapters import LoRALinear, PrefixSelfAttention, PromptTuning, apply_lora, apply_prefix_tuning
from llmcourse.classifier import EncoderClassifier
from llmcourse.freezing import count_parameters, ffn_only, head_only
from llmcourse.tasks import Example
from llmcourse.training import TrainConfig, train



pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_bert(seed: int = 0, attn: str = "sdpa", num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=48,
                        max_position_embeddings=64, num_labels=num_labels, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation=attn)
    return BertForSequenceClassification(config).eval()


def minilm_shaped(num_labels: int = 3) -> BertForSequenceClassification:
    """MiniLM's architecture with random weights: enough to count parameters, fast to build."""
    from llmcourse.models import minilm_path

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig.from_pretrained(minilm_path(), num_labels=num_labels))


def inputs(batch: int = 3, length: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 60, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # right padding in two rows
    attention_mask[2, 3:] = 0
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask}


def peft_model(model, config):
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config).eval()


# ---------------------------------------------------------------------------------------------
# Tasks


def test_genre_task_is_split_by_play_without_speaker_names() -> None:
    task = tasks.genre_task(words=64, seed=0)
    assert task.classes == ("comedy", "history", "tragedy")
    plays = [{e.play for e in part} for part in (task.train, task.validation, task.test)]
    assert not (plays[0] & plays[1] or plays[0] & plays[2] or plays[1] & plays[2])
    for part in (task.train, task.validation, task.test):
        assert {e.label for e in part} == {0, 1, 2}  # every class in every split
    every_play = set().union(*plays)
    assert len(every_play) == 8 + 11 + 6 + 4  # comedies, histories, tragedies, Roman plays
    assert not every_play & {p.slug for p in data.plays(("problems", "romances"))}
    expected = {"comedies": 0, "histories": 1, "tragedies": 2, "roman": 2}  # a Roman play is a tragedy
    for example in task.train + task.validation + task.test:
        assert example.label == expected[data.get_play(example.play).genre]
    speakers = {s.speaker for s in data.speeches("hamlet")}
    hamlet = " ".join(e.text for part in (task.train, task.validation, task.test) for e in part if e.play == "hamlet")
    assert hamlet and not any(f"{name}:" in hamlet for name in speakers)
    assert all(32 <= len(e.text.split()) <= 64 for e in task.train)
    assert tasks.genre_task(words=64, seed=0).test == task.test  # deterministic


def test_genre_classes_and_a_split_stratified_by_them() -> None:
    assert data.genre_class("julius-caesar") == "tragedy" and data.genre_class("henry-v") == "history"
    assert data.genre_class("the-tempest") is None and data.genre_class("measure-for-measure") is None
    chosen = [p for p in data.plays() if data.genre_class(p)]
    split = data.split_by_play(chosen, test_fraction=0.2, seed=0, stratify=data.genre_class)
    test_classes = [data.genre_class(p) for p in split.test]
    # 20% of each class, rounded: 8 comedies, 11 histories, 10 tragedies (with the Roman plays) give 2 each
    assert sorted(test_classes) == ["comedy", "comedy", "history", "history", "tragedy", "tragedy"]
    assert len(split.train) == len(chosen) - 6
    assert data.split_by_play(chosen, test_fraction=0.2, seed=0) != split  # by folder, Roman plays are a group


def test_word_order_task_shuffles_half_the_lines() -> None:
    task = tasks.word_order_task(n_train=400, n_validation=50, n_test=100, seed=0)
    assert task.classes == ("original", "shuffled") and (len(task.train), len(task.validation), len(task.test)) == (400, 50, 100)
    assert 0.4 < sum(e.label for e in task.train) / 400 < 0.6
    plays = [{e.play for e in part} for part in (task.train, task.validation, task.test)]
    assert not (plays[0] & plays[1] or plays[0] & plays[2] or plays[1] & plays[2])
    for example in task.test:
        lines = {line for speech in data.speeches(example.play) for line in speech.lines}
        assert len(example.text.split()) >= 8
        assert (example.text in lines) == (example.label == 0)  # a shuffled line is never a real one
        if example.label == 1:
            assert any(sorted(line.split()) == sorted(example.text.split()) for line in lines)  # same words
    assert tasks.word_order_task(n_train=400, n_validation=50, n_test=100, seed=0) == task
    # the classes have the same bag of words: a unigram TF-IDF model is at chance
    big = tasks.word_order_task(n_train=3000, n_test=1000, seed=0)
    predictions = tasks.tfidf_baseline(big.train, big.test, ngram_range=(1, 1))
    accuracy = sum(p == e.label for p, e in zip(predictions, big.test)) / len(big.test)
    assert 0.44 < accuracy < 0.56


def test_class_weights_equal_scikit_learns_balanced_weights() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 5
    ours = tasks.class_weights(labels, 3)
    theirs = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=np.array(labels))
    torch.testing.assert_close(ours, torch.tensor(theirs, dtype=ours.dtype))
    with pytest.raises(ValueError, match=r"classes \[3\]"):
        tasks.class_weights(labels, 4)


def test_baselines() -> None:
    train = [Example("the king and his crown", 1, "a"), Example("love and jest and wooing", 0, "b")] * 5
    train.append(Example("the king", 1, "c"))
    test = [Example("crown of the king", 1, "d"), Example("jest of love", 0, "e")]
    assert tasks.majority_baseline(train, test) == [1, 1]
    assert tasks.tfidf_baseline(train, test, min_df=1) == [1, 0]
    # A pair is one bag of words: swapping its halves cannot change the prediction.
    pairs = [Example("aa bb cc", i % 2, "p", "dd ee ff" if i % 2 else "ff ee dd") for i in range(20)]
    swapped = [Example(e.text_pair or "", e.label, e.play, e.text) for e in pairs]
    assert tasks.tfidf_baseline(pairs, pairs, min_df=1, ngram_range=(1, 1)) == \
        tasks.tfidf_baseline(pairs, swapped, min_df=1, ngram_range=(1, 1))


def test_classification_metrics_equal_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 3, (200,), generator=generator).tolist()
    y_pred = torch.randint(0, 3, (200,), generator=generator).tolist()
    ours = tasks.classification_metrics(y_true, y_pred)
    precision, recall, f1, _ = sk.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert ours == pytest.approx({"accuracy": sk.accuracy_score(y_true, y_pred), "precision": precision,
                                  "recall": recall, "macro_f1": f1}, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Encoding and batches


def test_encode_and_batches() -> None:
    from llmcourse.models import load_minilm_tokenizer

    tokenizer = load_minilm_tokenizer()
    examples = [Example("To be, or not to be", 0, "x"), Example("that is the question", 1, "x"),
                Example("Whether 'tis nobler in the mind to suffer the slings and arrows", 2, "x")]
    encoded = classifier.encode(tokenizer, examples, max_length=12)
    assert encoded["labels"].tolist() == [0, 1, 2] and encoded["labels"].dtype == torch.long
    assert encoded["input_ids"].shape == (3, 12)  # the long line is cut at 12 tokens
    assert tokenizer.decode(encoded["input_ids"][0][encoded["attention_mask"][0] == 1]) == "[CLS] to be, or not to be [SEP]"
    batches = list(classifier.classification_batches(encoded, batch_size=2))
    assert [b["input_ids"].shape for b in batches] == [(2, 9), (1, 12)]  # trimmed to each batch's longest row
    shuffled = list(classifier.classification_batches(encoded, batch_size=2, shuffle=True, seed=3))
    assert sorted(sum((b["labels"].tolist() for b in shuffled), [])) == [0, 1, 2]
    endless = classifier.classification_batches(encoded, batch_size=2, shuffle=True, endless=True)
    assert len([next(endless) for _ in range(7)]) == 7

    pair = classifier.encode(tokenizer, [Example("to be", 1, "x", "or not to be")], max_length=16)
    assert pair["token_type_ids"][0].tolist()[:9] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="pairs"):
        classifier.encode(tokenizer, [examples[0], Example("a", 0, "x", "b")])


# ---------------------------------------------------------------------------------------------
# The head, and Transformers' AutoModelForSequenceClassification


def test_encoder_classifier_with_the_pooler_is_transformers_sequence_classifier() -> None:
    reference = tiny_bert()
    ours = EncoderClassifier(copy.deepcopy(reference.bert), num_labels=3, pooling="pooler", dropout=0.1).eval()
    ours.classifier.load_state_dict(reference.classifier.state_dict())
    # the same parameters under the same names, with encoder. for bert.
    theirs = {name.replace("bert.", "encoder.", 1): p.shape for name, p in reference.named_parameters()}
    assert {name: p.shape for name, p in ours.named_parameters()} == theirs
    batch = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch), reference(**batch).logits)


def test_mean_and_cls_pooling() -> None:
    encoder = tiny_bert().bert
    batch = inputs()
    hidden = encoder(**batch).last_hidden_state.detach()
    for pooling, expected in (("cls", hidden[:, 0]),
                              ("mean", torch.stack([hidden[i, batch["attention_mask"][i] == 1].mean(0) for i in range(3)]))):
        model = EncoderClassifier(encoder, num_labels=2, pooling=pooling).eval()
        assert model.encoder.pooler is None  # unused with these poolings: not counted, not trained
        with torch.no_grad():
            torch.testing.assert_close(model(**batch), model.classifier(expected))
    with pytest.raises(ValueError, match="pooling"):
        EncoderClassifier(encoder, 2, pooling="max")


# ---------------------------------------------------------------------------------------------
# What trains


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_full_head_only_and_ffn_only_train_what_they_say() -> None:
    model = minilm_shaped()
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(freezing.full_finetuning(model)) == (total, total)
    assert trainable_names(head_only(model)) == {"classifier.weight", "classifier.bias"}
    names = trainable_names(ffn_only(model))
    per_layer = {"intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight", "output.dense.bias",
                 "output.LayerNorm.weight", "output.LayerNorm.bias"}
    assert names == {f"bert.encoder.layer.{i}.{n}" for i in range(6) for n in per_layer} | {"classifier.weight", "classifier.bias"}
    d, d_ff = 384, 1536
    assert count_parameters(model)[0] == 6 * (d * d_ff + d_ff + d_ff * d + d + 2 * d) + d * 3 + 3
    assert not any(re.search(r"attention\.output", name) for name in names)  # W^O is attention, not FFN


def test_ffn_only_works_on_the_course_classifier_too() -> None:
    model = ffn_only(EncoderClassifier(tiny_bert().bert, num_labels=3))
    assert trainable_names(model) == {n for n in trainable_names(freezing.full_finetuning(copy.deepcopy(model)))
                                      if ".intermediate." in n or (".output." in n and "attention" not in n)
                                      or n.startswith("classifier.")}


# ---------------------------------------------------------------------------------------------
# Prompt tuning against PEFT


def test_prompt_tuning_matches_peft() -> None:
    from peft import PromptTuningConfig, TaskType

    base = tiny_bert()
    theirs = peft_model(copy.deepcopy(base), PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=5))
    ours = PromptTuning(copy.deepcopy(base), n_tokens=5).eval()
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == 5 * 24 + 24 * 3 + 3
    assert trainable_names(ours) == {"prompt", "model.classifier.weight", "model.classifier.bias"}
    batch = inputs()
    with torch.no_grad():
        ours.prompt.copy_(theirs.prompt_encoder["default"].embedding.weight)
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits)
        # with segment ids too (zeros for the prompt, as PEFT does)
        segments = torch.zeros_like(batch["input_ids"])
        segments[:, 4:] = 1
        torch.testing.assert_close(ours(**batch, token_type_ids=segments).logits,
                                   theirs(**batch, token_type_ids=segments).logits)


def test_prompt_tuning_counts_on_minilm_and_starts_from_vocabulary_embeddings() -> None:
    from peft import PromptTuningConfig, TaskType

    model = minilm_shaped()
    theirs = peft_model(copy.deepcopy(model), PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=20))
    ours = PromptTuning(model, n_tokens=20)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == 20 * 384 + 384 * 3 + 3
    table = model.get_input_embeddings().weight
    assert all(any(torch.equal(row, word) for word in table) for row in ours.prompt[:3])
    course = PromptTuning(EncoderClassifier(tiny_bert().bert, num_labels=3), n_tokens=4)
    assert trainable_names(course) == {"prompt", "model.classifier.weight", "model.classifier.bias"}
    assert course(**inputs()).shape == (3, 3)


# ---------------------------------------------------------------------------------------------
# Prefix tuning against PEFT


def copy_peft_prefixes(ours: torch.nn.Module, theirs, n_prefix: int, n_layers: int, n_heads: int) -> None:
    # PEFT keeps one table (P, layers * 2 * D): per virtual token, layer 0's key, layer 0's value, layer 1's key...
    table = theirs.prompt_encoder["default"].embedding.weight
    table = table.view(n_prefix, n_layers, 2, n_heads, -1)  # (P, L, key/value, H, d)
    layers = [m for m in ours.modules() if isinstance(m, PrefixSelfAttention)]
    assert len(layers) == n_layers
    with torch.no_grad():
        for index, layer in enumerate(layers):
            layer.prefix_keys.copy_(table[:, index, 0].transpose(0, 1))  # (H, P, d)
            layer.prefix_values.copy_(table[:, index, 1].transpose(0, 1))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_tuning_matches_peft(attn: str) -> None:
    from peft import PrefixTuningConfig, TaskType

    base = tiny_bert(attn=attn)
    theirs = peft_model(copy.deepcopy(base), PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=4))
    ours = apply_prefix_tuning(copy.deepcopy(base), n_prefix=4).eval()
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == 4 * 2 * 2 * 24 + 24 * 3 + 3
    copy_peft_prefixes(ours, theirs, 4, 2, 3)
    batch = inputs()
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        # PEFT passes the prefixes as a key/value cache, which moves the text to positions P, P+1, ...
        shifted = torch.arange(4, 4 + length)[None]
        torch.testing.assert_close(ours(**batch, position_ids=shifted).logits, theirs(**batch).logits)
        # no prefix effect at all when the prefix values are zero and the keys are -inf-like: sanity of the mask
        plain = base(**batch).logits
        for layer in (m for m in ours.modules() if isinstance(m, PrefixSelfAttention)):
            layer.prefix_keys.fill_(0.0)
            layer.prefix_values.fill_(0.0)
        changed = ours(**batch).logits
    assert not torch.allclose(changed, plain)  # zero values still take attention weight away from the text


def test_prefix_tuning_counts_on_minilm_and_rejects_other_models() -> None:
    from peft import PrefixTuningConfig, TaskType

    model = minilm_shaped()
    theirs = peft_model(copy.deepcopy(model), PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=10))
    ours = apply_prefix_tuning(model, n_prefix=10)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == 10 * 6 * 2 * 384 + 384 * 3 + 3
    with pytest.raises(ValueError, match="self-attention"):
        apply_prefix_tuning(torch.nn.Sequential(torch.nn.Linear(3, 3)))


# ---------------------------------------------------------------------------------------------
# LoRA against PEFT, and its own properties


def test_lora_linear_starts_equal_to_its_base_and_merges() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(10, 6)
    layer = LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = torch.randn(5, 3, 10)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # B = 0 at the start
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    assert layer.scaling == 2.0 and layer.lora_A.shape == (4, 10) and layer.lora_B.shape == (6, 4)
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    unmerged = layer(x)
    torch.testing.assert_close(unmerged, expected)
    assert not torch.allclose(unmerged, base(x))
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.base.weight, base.weight + layer.delta_weight())
    layer.merge()  # twice changes nothing
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, base.weight, rtol=0, atol=1e-6)
    # only A and B receive gradients
    layer(x).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None and layer.base.weight.grad is None
    with pytest.raises(TypeError):
        LoRALinear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(base, r=0)


def test_lora_dropout_applies_only_in_training() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(8, 8), r=2, alpha=2, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def copy_lora_to_peft(ours: torch.nn.Module, theirs) -> None:
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(std=0.1)  # a trained-looking update, so the comparison means something
                target = theirs.get_submodule(f"base_model.model.{name}")
                target.lora_A["default"].weight.copy_(module.lora_A)
                target.lora_B["default"].weight.copy_(module.lora_B)


def test_lora_matches_peft() -> None:
    from peft import LoraConfig, TaskType

    base = tiny_bert()
    theirs = peft_model(copy.deepcopy(base), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                        target_modules=["query", "value"]))
    ours = apply_lora(copy.deepcopy(base), targets=("query", "value"), r=4, alpha=8).eval()
    per_layer = 2 * 4 * (24 + 24)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == 2 * per_layer + 24 * 3 + 3
    batch = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, base(**batch).logits)  # starts as the base model
        copy_lora_to_peft(ours, theirs)
        expected = theirs(**batch).logits
        torch.testing.assert_close(ours(**batch).logits, expected)
        assert not torch.allclose(expected, base(**batch).logits)
        adapters.merge_lora(ours)
        torch.testing.assert_close(ours(**batch).logits, expected, rtol=1e-5, atol=1e-6)
        theirs.merge_adapter()
        torch.testing.assert_close(ours.bert.encoder.layer[0].attention.self.query.base.weight,
                                   theirs.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight)
        adapters.unmerge_lora(ours)
        torch.testing.assert_close(ours.bert.encoder.layer[1].attention.self.value.base.weight,
                                   base.bert.encoder.layer[1].attention.self.value.weight, rtol=0, atol=1e-6)


def test_lora_on_minilm_trains_under_two_percent_of_the_weights() -> None:
    from peft import LoraConfig, TaskType

    model = minilm_shaped()
    theirs = peft_model(copy.deepcopy(model), LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                                         target_modules=["query", "value"]))
    ours = apply_lora(model, r=8, alpha=16)
    trainable, total = count_parameters(ours)
    assert trainable == theirs.get_nb_trainable_parameters()[0] == 6 * 2 * 8 * (384 + 384) + 384 * 3 + 3
    assert trainable / total < 0.004
    with pytest.raises(ValueError, match="linear layers are called"):
        apply_lora(minilm_shaped(), targets=("q_proj",))


# ---------------------------------------------------------------------------------------------
# Memory and training


def test_training_memory_accounts_for_what_trains() -> None:
    batch = {**inputs(batch=4, length=16), "labels": torch.tensor([0, 1, 2, 0])}
    full = profiling.training_memory(freezing.full_finetuning(tiny_bert()), batch)
    head = profiling.training_memory(head_only(tiny_bert()), batch)
    lora = profiling.training_memory(apply_lora(tiny_bert(), r=2, alpha=4), batch)
    assert full["weights"] == full["gradients"] == sum(p.numel() * 4 for p in tiny_bert().parameters())
    assert full["optimizer"] == 2 * full["gradients"]
    assert head["gradients"] == (24 * 3 + 3) * 4
    assert head["activations"] < full["activations"] / 20  # nothing to backpropagate through
    assert lora["activations"] > full["activations"] / 2  # gradients still flow through every layer


def test_training_a_classifier_with_the_course_loop() -> None:
    # A separable toy task: low or high token ids? The model must learn it; the base weights must not move.
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,), generator=generator)
    input_ids = torch.randint(5, 30, (64, 10), generator=generator) + 30 * labels[:, None]
    encoded = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    batches = list(classifier.classification_batches(encoded, batch_size=16))
    model = apply_lora(EncoderClassifier(tiny_bert().bert, num_labels=2, pooling="mean"), r=4, alpha=8)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    config = TrainConfig(max_steps=40, warmup_steps=5, learning_rate=1e-2, eval_every=10, progress=False,
                         device="cpu", monitor="val_accuracy", maximize=True, restore_best=True)
    history = train(model, classifier.classification_loss(tasks.class_weights(labels.tolist(), 2)), batches,
                    batches, config, metrics_fn=classifier.metrics_fn(batches))
    accuracy = history.monitored("val_accuracy")
    assert accuracy[0] < 0.8 and max(accuracy) == 1.0
    assert tasks.classification_metrics(*classifier.predict(model, batches))["accuracy"] == 1.0
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name


def test_run_strategy_reports_the_table_figures() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (48,), generator=generator)
    input_ids = torch.randint(5, 30, (48, 8), generator=generator) + 30 * labels[:, None]
    encoded = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    batches = list(classifier.classification_batches(encoded, batch_size=16))
    config = TrainConfig(max_steps=6, warmup_steps=1, learning_rate=1e-2, eval_every=3, progress=False, device="cpu")
    run = strategies.run_strategy("LoRA", lambda: EncoderClassifier(tiny_bert().bert, 2), encoded, batches, batches,
                                  config, batch_size=16)
    expected = count_parameters(apply_lora(EncoderClassifier(tiny_bert().bert, 2), r=8, alpha=16))
    assert (run.trainable, run.total) == expected
    assert run.history.val_step == [0, 3, 6] and len(run.history.metrics) == 3
    assert 0 < run.seconds_per_epoch and run.cuda_peak_mb is None and run.memory_mb > expected[1] * 4 / 2**20
    y_true, y_pred = classifier.predict(run.model, batches)  # the scores are those of the model it returns
    assert run.accuracy == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert run.macro_f1 == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))
    assert run.row()["trainable %"] == pytest.approx(100 * expected[0] / expected[1])
    with pytest.raises(KeyError, match="unknown strategy"):
        strategies.run_strategy("adapters", lambda: None, encoded, batches, batches, config)


def test_markdown_table() -> None:
    text = plots.markdown_table({"full": {"trainable": 1234567, "accuracy": 0.8512}, "TF-IDF": {"accuracy": 0.6}},
                                {"trainable": "{:,}", "accuracy": "{:.3f}"}, index="strategy")
    assert text.splitlines() == ["| strategy | trainable | accuracy |", "|---|---|---|",
                                 "| full | 1,234,567 | 0.851 |", "| TF-IDF |  | 0.600 |"]
