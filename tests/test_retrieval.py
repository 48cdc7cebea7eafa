"""llmcourse.retrieval: embeddings against sentence-transformers, pooling by hand, search on toy indexes, accuracy@k."""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse import data
from llmcourse.retrieval import (
    Document,
    Index,
    accuracy_at_k,
    cosine_top_k,
    embed,
    mean_pool,
    speech_documents,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


TEXTS = [
    "To be, or not to be: that is the question.",
    "Out, damned spot! out, I say!",
    "",  # only [CLS] [SEP]
    "Now is the winter of our discontent made glorious summer by this sun of York. " * 30,  # > 256 tokens: truncated
    "O Romeo, Romeo! wherefore art thou Romeo?",
    "Friends, Romans, countrymen, lend me your ears.",
]


def test_embeddings_equal_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    from llmcourse.models import minilm_path

    reference = SentenceTransformer(str(minilm_path()), device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True, show_progress_bar=False)
    got = embed(TEXTS, batch_size=4)  # batches of mixed lengths, padded
    assert got.shape == (6, 384)
    torch.testing.assert_close(got, expected.cpu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(6))


def test_mean_pool_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    for row in range(3):
        n = int(mask[row].sum())
        by_hand = [sum(hidden[row, t, j].item() for t in range(n)) / n for j in range(4)]
        assert pooled[row].tolist() == pytest.approx(by_hand, abs=1e-12)


def test_padding_does_not_change_an_embedding() -> None:
    alone = embed([TEXTS[1]])
    with_longer = embed([TEXTS[1], TEXTS[3]], batch_size=2)[:1]  # padded to the long text's length
    torch.testing.assert_close(alone, with_longer, atol=1e-5, rtol=1e-5)


def test_embed_arguments() -> None:
    with pytest.raises(TypeError, match="list"):
        embed("one text")
    with pytest.raises(ValueError, match="both"):
        embed(["x"], model=object())
    assert embed([]).shape == (0, 384)


def toy_documents(n: int) -> list[Document]:
    return [Document(f"text {i}", "hamlet", "ACT I", f"SCENE {i}. Somewhere.", f"SPEAKER {i % 2}") for i in range(n)]


def test_cosine_top_k_on_a_toy_index() -> None:
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -3.0]])
    queries = torch.tensor([[2.0, 0.1, 0.0], [0.3, -0.2, 1.0]])
    scores, indices = cosine_top_k(queries, keys, k=3)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    for q in range(2):
        by_hand = sorted(((cosine(queries[q].tolist(), keys[i].tolist()), i) for i in range(4)), reverse=True)[:3]
        assert indices[q].tolist() == [i for _, i in by_hand]
        assert scores[q].tolist() == pytest.approx([s for s, _ in by_hand], abs=1e-6)
    assert indices[0].tolist() == [0, 2, 1]  # length does not matter, direction does
    assert cosine_top_k(queries, keys, k=10)[1].shape == (2, 4)
    with pytest.raises(ValueError, match="same width"):
        cosine_top_k(queries, keys[:, :2], 1)


def test_index_search_returns_documents_best_first() -> None:
    documents = toy_documents(4)
    index = Index(documents, torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]) * 5)
    assert len(index) == 4
    torch.testing.assert_close(index.embeddings.norm(dim=-1), torch.ones(4))
    (hits,) = index.search(torch.tensor([[0.8, 0.6]]), k=3)
    assert [hit.position for hit in hits] == [3, 0, 1]
    assert hits[0].document is documents[3] and hits[0].score == pytest.approx(0.96)
    with pytest.raises(ValueError, match="embeddings"):
        Index(documents, torch.zeros(3, 2))


def test_accuracy_at_k_by_hand() -> None:
    ranked = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"], ["x", "y", "z"]]
    gold = ["a", "a", "a", {"y", "a"}]
    assert accuracy_at_k(ranked, gold, 1) == 1 / 4
    assert accuracy_at_k(ranked, gold, 2) == 3 / 4
    assert accuracy_at_k(ranked, gold, 3) == 1.0
    with pytest.raises(ValueError, match="gold"):
        accuracy_at_k(ranked, gold[:2], 1)
    with pytest.raises(ValueError, match="k must"):
        accuracy_at_k(ranked, gold, 0)


def test_speech_documents_cut_speeches_and_keep_their_place() -> None:
    documents = speech_documents(["hamlet"], max_words=40)
    speeches = data.speeches("hamlet")
    # every word of every speech is in exactly one document, in order
    assert " ".join(d.text for d in documents).split() == " ".join(s.text for s in speeches).split()
    assert all(len(d.text.split()) <= 40 or "\n" not in d.text for d in documents)
    soliloquy = [d for d in documents if "To be, or not to be" in d.text]
    assert len(soliloquy) == 1 and soliloquy[0].speaker == "HAMLET"
    assert soliloquy[0].place == ("hamlet", "ACT III", "SCENE I")
    assert soliloquy[0].citation().startswith("HAMLET, in Hamlet, ACT III, SCENE I.")
    assert len(speech_documents(["hamlet"], min_words=10)) < len(speech_documents(["hamlet"]))
    # Macbeth's first scene is headed at act level in the source: its place is repaired
    first = speech_documents(["macbeth"])[0]
    assert first.place == ("macbeth", "ACT I", "SCENE I") and first.speaker == "First Witch"


def test_retrieval_answers_who_and_where_questions() -> None:
    # A small real index: act V of Macbeth (about 130 speeches), searched with MiniLM.
    documents = [d for d in speech_documents(["macbeth"]) if d.act == "ACT V"]
    index = Index.build(documents)
    questions = {
        "Who cannot wash the blood from her hands and cries out against a damned spot?": ("LADY MACBETH", "SCENE I"),
        "Who says that life is a tale told by an idiot, full of sound and fury?": ("MACBETH", "SCENE V"),
        "Who says he was from his mother's womb untimely ripped?": ("MACDUFF", "SCENE VIII"),
    }
    hits = index.search(list(questions), k=5)
    speakers = [[hit.document.speaker for hit in row] for row in hits]
    scenes = [[hit.document.place[2] for hit in row] for row in hits]
    assert accuracy_at_k(speakers, [s for s, _ in questions.values()], 5) == 1.0
    assert accuracy_at_k(scenes, [scene for _, scene in questions.values()], 5) == 1.0
    assert accuracy_at_k(speakers, [s for s, _ in questions.values()], 1) >= 2 / 3
