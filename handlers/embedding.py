"""Sentence embeddings (BERT-style encoders such as all-MiniLM-L6-v2): pooled, L2-normalised.

Reads the sentence-transformers files of the folder when present (pooling mode, max sequence
length), so the vectors are the ones sentence-transformers would give for the same folder.
"""

from __future__ import annotations

import json
from typing import Sequence

import torch

from tasks.contract.errors import invalid_request

from .base import Handler
from .loading import choose_placement, load_error


class EmbeddingHandler(Handler):
    kind = "embedding"
    family = "embedding"

    def load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        # Embeddings stay fp32 on CPU unless asked: the vectors must match the reference, and an
        # encoder this size is cheap in fp32.
        placement = choose_placement(self.options, bf16_on_cpu=False)
        self.device, self.dtype = placement.device, placement.dtype
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
            self.model = AutoModel.from_pretrained(self.folder, dtype=self.dtype).to(self.device).eval()
        except Exception as e:  # noqa: BLE001
            raise load_error(f"Could not load {self.folder.name}: {type(e).__name__}: {e}") from e
        self.dimensions = int(self.model.config.hidden_size)
        self.pooling = self._pooling_mode()
        self.max_length = self._max_length()

    def _pooling_mode(self) -> str:
        cfg = self.folder / "1_Pooling" / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("pooling_mode_cls_token"):
            return "cls"
        return "mean"

    def _max_length(self) -> int:
        st = self.folder / "sentence_bert_config.json"
        if st.is_file() and "max_seq_length" in (data := json.loads(st.read_text())):
            return int(data["max_seq_length"])
        return int(min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings))

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> tuple[list[list[float]], int]:
        """(vectors, prompt tokens). Inputs longer than the model's window are truncated, as
        sentence-transformers does."""
        if dimensions is not None and dimensions != self.dimensions:
            raise invalid_request(
                f"The model `{self.model_id}` produces {self.dimensions}-dimensional embeddings and cannot "
                f"shorten them to {dimensions} (it is not a Matryoshka model). Omit `dimensions` or pass {self.dimensions}.",
                param="dimensions")
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = int(batch["attention_mask"].sum().item())
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().tolist(), tokens
