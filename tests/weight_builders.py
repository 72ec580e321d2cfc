"""Derived and independent tiny models for the weight-similarity tests, built from the demo or trained on CPU.

Every builder is deterministic (fixed seeds) and writes an HF-style directory (config.json,
model.safetensors, the demo's tokenizer files unless told otherwise).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def load(model_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def write_model(path: Path, tensors: dict[str, np.ndarray], cfg: dict, *, tokenizer_from: Path | None = DEMO / "base",
                tokenizer_json: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer_json is not None:
        (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
        shutil.copy(DEMO / "base" / "tokenizer_config.json", path)
    elif tokenizer_from is not None:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_from / f, path)
    return path


def noisy(x: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """x plus Gaussian noise of ``scale`` times x's standard deviation."""
    return x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(scale * float(x.std() or 1.0))


def relayered(path: Path, order: list[int], *, noise: float = 0.02, seed: int = 0, source: Path = DEMO / "base") -> Path:
    """``source`` (default the demo base) with layer k of the new stack = its layer order[k] (+ noise): depth
    up-scaling / permutation."""
    rng = np.random.default_rng(seed)
    base = load(source)
    out = {k: noisy(v, rng, noise) for k, v in base.items() if not _LAYER.match(k)}
    for new, old in enumerate(order):
        for k, v in base.items():
            m = _LAYER.match(k)
            if m and int(m.group(1)) == old:
                out[f"model.layers.{new}.{m.group(2)}"] = noisy(v, rng, noise)
    cfg = dict(config(source), num_hidden_layers=len(order))
    return write_model(path, out, cfg)


def upcycled(path: Path, *, experts: int = 4, noise: float = 0.05, seed: int = 0, others_from: Path | None = None) -> Path:
    """A Mixtral-style MoE whose experts are the demo base's dense MLP plus noise (sparse upcycling).

    ``others_from``: take every non-MLP tensor (attention, norms, embeddings, lm_head) from this model
    instead of base (e.g. the independent demo ``scratch``: only the experts then carry base's weights).
    """
    rng = np.random.default_rng(seed)
    base = load(DEMO / "base")
    others = base if others_from is None else load(others_from)
    cfg = config(DEMO / "base")
    out = {}
    for k, v in base.items():
        m = _LAYER.match(k)
        if not m or not m.group(2).startswith("mlp."):
            out[k] = others[k].copy()
            continue
        layer, proj = int(m.group(1)), m.group(2).split(".")[1]
        w = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}[proj]
        for e in range(experts):
            out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"] = noisy(v, rng, noise)
    for layer in range(cfg["num_hidden_layers"]):
        out[f"model.layers.{layer}.block_sparse_moe.gate.weight"] = \
            rng.standard_normal((experts, cfg["hidden_size"])).astype(np.float32) * 0.02
    mcfg = dict(cfg, model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=experts,
                num_experts_per_tok=2)
    return write_model(path, out, mcfg)


def permuted_experts(source: Path, path: Path, perm: list[int], *, noise: float = 0.02, seed: int = 1,
                     others_from: Path | None = None) -> Path:
    """A copy of a Mixtral-style model with expert slots permuted (expert e of the copy = expert perm[e]; a
    shorter ``perm`` keeps fewer experts) and the router's rows permuted with them (the same function);
    ``others_from``: every tensor that is neither an expert nor a router from this (dense, same-shaped) model."""
    rng = np.random.default_rng(seed)
    t = load(source)
    others = None if others_from is None else load(others_from)
    out = {}
    for k, v in t.items():
        m = re.match(r"^(model\.layers\.\d+\.block_sparse_moe\.experts\.)(\d+)(\..*)$", k)
        if m:
            if int(m.group(2)) >= len(perm):  # fewer experts than the source: slots beyond perm are dropped
                continue
            src = f"{m.group(1)}{perm[int(m.group(2))]}{m.group(3)}"
            out[k] = noisy(t[src], rng, noise)
        elif k.endswith("block_sparse_moe.gate.weight"):
            out[k] = noisy(v[perm], rng, noise)
        else:
            out[k] = noisy(v if others is None else others[k], rng, noise)
    return write_model(path, out, dict(config(source), num_local_experts=len(perm)))


def vocab_shifted(path: Path, shift: int = 7) -> Path:
    """Demo base with every non-special token moved to another id (ids rotated by ``shift``); embedding and
    lm_head rows moved with them, so the model is the same function under a reordered vocabulary."""
    tok = json.loads((DEMO / "base" / "tokenizer.json").read_text())
    specials = {t["id"] for t in tok.get("added_tokens", [])}
    vocab: dict[str, int] = tok["model"]["vocab"]
    movable = sorted(i for i in vocab.values() if i not in specials)
    new_of = {old: movable[(k + shift) % len(movable)] for k, old in enumerate(movable)}
    tok["model"]["vocab"] = {t: new_of.get(i, i) for t, i in vocab.items()}
    base = load(DEMO / "base")
    out = dict(base)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        moved = base[name].copy()
        for old, new in new_of.items():
            moved[new] = base[name][old]
        out[name] = moved
    return write_model(path, out, config(DEMO / "base"), tokenizer_json=tok)


def narrow(path: Path, *, hidden: int = 48, seed: int = 0) -> Path:
    """A random Llama of another width (hidden 48, 3 heads) with the demo's tokenizer."""
    rng = np.random.default_rng(seed)
    cfg = dict(config(DEMO / "base"), hidden_size=hidden, num_attention_heads=3, num_key_value_heads=1,
               intermediate_size=128, num_hidden_layers=2)
    v, h, i, hd = cfg["vocab_size"], hidden, 128, cfg["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        shapes.update({p + "self_attn.q_proj.weight": (3 * hd, h), p + "self_attn.k_proj.weight": (hd, h),
                       p + "self_attn.v_proj.weight": (hd, h), p + "self_attn.o_proj.weight": (h, 3 * hd),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    tensors = {k: (1 + 0.05 * rng.standard_normal(s) if len(s) == 1 else 0.02 * rng.standard_normal(s))
               for k, s in shapes.items()}
    return write_model(path, tensors, cfg)


def _train(model, data, *, steps: int, seq: int, lr: float, weight_decay: float, seed: int) -> None:
    """``steps`` AdamW updates of ``model`` on batches of 8 random windows of ``seq`` tokens of ``data`` (windows
    drawn by a generator seeded ``seed + 1000``)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - seq - 1, (8,), generator=gen)
        batch = torch.stack([data[s:s + seq] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def train_tiny(path: Path, *, seed: int, steps: int = 60) -> Path:
    """Train a tiny byte-level Llama (hidden 32, 2 layers) on the bundled Shakespeare text, on CPU, in seconds."""
    import torch
    import transformers

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
    data = torch.tensor(list((ROOT / "fixtures" / "texts" / "shakespeare_the_tempest.txt").read_bytes()[:60000]))
    _train(model, data, steps=steps, seq=32, lr=3e-3, weight_decay=0.1, seed=seed)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def heal(path: Path, *, steps: int = 15, lr: float = 3e-4, seed: int = 0,
         text: str = "milton_areopagitica.txt") -> Path:
    """Train the model at ``path`` briefly (AdamW, batch 8 x 64 tokens of a bundled text, by default Milton's, with
    the demo tokenizer) and save it back in place: the short 'healing' run after depth up-scaling or pruning, or
    (more steps, another text) a further fine-tune."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    tok = Tokenizer.from_file(str(DEMO / "base" / "tokenizer.json"))
    text = (ROOT / "fixtures" / "texts" / text).read_text()[:40000]
    data = torch.tensor(tok.encode(text).ids)
    model = transformers.LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    _train(model, data, steps=steps, seq=64, lr=lr, weight_decay=0.0, seed=seed)
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return write_model(path, tensors, config(path), tokenizer_from=DEMO / "base")


def pruned(path: Path, *, source: Path = DEMO / "base", hidden: float = 0.75, neurons: float = 0.65,
           heads_per_group: int = 1) -> Path:
    """Width pruning of a Llama-style model by magnitude (Minitron / Sheared-LLaMA style, without the healing run:
    :func:`heal` it): keep the ``hidden`` share of residual channels with the largest embedding column norms
    (the same channels in every tensor that reads or writes the stream), per layer the ``neurons`` share of MLP
    neurons with the largest ||gate row||·||up row||·||down column||, and ``heads_per_group`` query heads of each KV
    group with the largest ||q rows||·||o columns||. Kept channels, neurons and heads stay in their order."""
    sd = load(source)
    cfg = config(source)
    h, hd = cfg["num_attention_heads"], cfg["head_dim"]
    hkv = cfg.get("num_key_value_heads") or h
    group = h // hkv
    layers = cfg["num_hidden_layers"]
    emb = sd["model.embed_tokens.weight"]
    keep_h = np.sort(np.argsort(-np.linalg.norm(emb, axis=0), kind="stable")[:round(hidden * emb.shape[1])])
    n_keep = round(neurons * cfg["intermediate_size"])
    out = {"model.embed_tokens.weight": emb[:, keep_h], "lm_head.weight": sd["lm_head.weight"][:, keep_h],
           "model.norm.weight": sd["model.norm.weight"][keep_h]}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            out[p + n + ".weight"] = sd[p + n + ".weight"][keep_h]
        g, u, d = (sd[p + f"mlp.{x}_proj.weight"] for x in ("gate", "up", "down"))
        score = np.linalg.norm(g, axis=1) * np.linalg.norm(u, axis=1) * np.linalg.norm(d, axis=0)
        keep_n = np.sort(np.argsort(-score, kind="stable")[:n_keep])
        out[p + "mlp.gate_proj.weight"] = g[keep_n][:, keep_h]
        out[p + "mlp.up_proj.weight"] = u[keep_n][:, keep_h]
        out[p + "mlp.down_proj.weight"] = d[keep_h][:, keep_n]
        q, o = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.o_proj.weight"]
        head_score = [np.linalg.norm(q[j * hd:(j + 1) * hd]) * np.linalg.norm(o[:, j * hd:(j + 1) * hd])
                      for j in range(h)]
        heads = sorted(g0 * group + int(k) for g0 in range(hkv)
                       for k in np.argsort([-head_score[g0 * group + m] for m in range(group)],
                                           kind="stable")[:heads_per_group])
        rows = np.concatenate([np.arange(j * hd, (j + 1) * hd) for j in heads])
        out[p + "self_attn.q_proj.weight"] = q[rows][:, keep_h]
        out[p + "self_attn.o_proj.weight"] = o[keep_h][:, rows]
        for x in ("k", "v"):
            out[p + f"self_attn.{x}_proj.weight"] = sd[p + f"self_attn.{x}_proj.weight"][:, keep_h]
    new = dict(cfg, hidden_size=int(keep_h.size), intermediate_size=int(n_keep),
               num_attention_heads=hkv * heads_per_group, num_key_value_heads=hkv, head_dim=hd)
    return write_model(path, out, new, tokenizer_from=source)


def copy_model(source: Path, path: Path) -> Path:
    """A plain copy of a demo-style model folder (to fine-tune further with :func:`heal`)."""
    return write_model(path, load(source), config(source), tokenizer_from=source)


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """mergekit's SLERP of two tensors: the angle from their normalised copies, applied to the originals."""
    ua, ub = a.reshape(-1) / (np.linalg.norm(a) or 1.0), b.reshape(-1) / (np.linalg.norm(b) or 1.0)
    dot = float(np.clip(ua @ ub, -1.0, 1.0))
    if abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    theta = np.arccos(dot)
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)


def _ties(base: np.ndarray, tunes: list[np.ndarray], density: float, scale: float) -> np.ndarray:
    """TIES-merging (Yadav et al., NeurIPS 2023): trim each task vector to its largest ``density`` share by
    magnitude, elect each element's sign by the summed trimmed vectors, average the agreeing entries."""
    taus = []
    for ft in tunes:
        tau = ft - base
        k = max(1, int(round(density * tau.size)))
        cut = np.partition(np.abs(tau).reshape(-1), tau.size - k)[tau.size - k]
        taus.append(np.where(np.abs(tau) >= cut, tau, 0.0))
    stack = np.stack(taus)
    sign = np.sign(stack.sum(axis=0))
    agree = (np.sign(stack) == sign) & (stack != 0)
    merged = np.where(agree, stack, 0.0).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
    return base + scale * merged


def merged(path: Path, parents: list[Path], *, method: str = "linear", weights: list[float] | None = None,
           t: float = 0.5, base: Path | None = None, density: float = 0.5, scale: float = 1.0) -> Path:
    """A mergekit-style merge of same-shaped demo-like models, tensor by tensor: ``linear`` (Σ weights·parent),
    ``slerp`` (two parents, factor ``t``) or ``ties`` (task vectors of ``parents`` over ``base``, trimmed to
    ``density``, sign-elected, disjoint mean, times ``scale``). Norm gains are merged like every other tensor."""
    loaded = [load(p) for p in parents]
    out = {}
    for key in loaded[0]:
        xs = [m[key].astype(np.float64) for m in loaded]
        if method == "linear":
            w = weights or [1.0 / len(xs)] * len(xs)
            out[key] = sum(wi * x for wi, x in zip(w, xs))
        elif method == "slerp":
            out[key] = _slerp(xs[0], xs[1], t)
        elif method == "ties":
            out[key] = _ties(load(base)[key].astype(np.float64), xs, density, scale)
        else:
            raise ValueError(f"unknown merge method {method!r}")
    return write_model(path, out, config(parents[0]), tokenizer_from=parents[0])


def fine_grained(path: Path, *, source: Path = DEMO / "base", experts: int = 4, noise: float = 0.02,
                 seed: int = 0, others_from: Path | None = None) -> Path:
    """Fine-grained upcycling (DeepSeekMoE / Qwen1.5-MoE style): ``source``'s dense MLP neurons shuffled and cut
    into ``experts`` blocks, one Mixtral-style expert per block (+ noise); attention, norms and token matrices
    from ``source`` (or ``others_from``: then only the experts carry ``source``'s weights); a random router.
    Every expert is narrower than the dense MLP."""
    rng = np.random.default_rng(seed)
    sd = load(source)
    others = sd if others_from is None else load(others_from)
    cfg = config(source)
    n = cfg["intermediate_size"]
    width = n // experts
    out = {}
    for k, v in others.items():
        m = _LAYER.match(k)
        if not m or not m.group(2).startswith("mlp."):
            out[k] = noisy(v, rng, noise)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        order = rng.permutation(n)
        g, u, d = (sd[p + f"mlp.{x}_proj.weight"] for x in ("gate", "up", "down"))
        for e in range(experts):
            block = order[e * width:(e + 1) * width]
            q = p + f"block_sparse_moe.experts.{e}."
            out[q + "w1.weight"] = noisy(g[block], rng, noise)
            out[q + "w3.weight"] = noisy(u[block], rng, noise)
            out[q + "w2.weight"] = noisy(d[:, block], rng, noise)
        out[p + "block_sparse_moe.gate.weight"] = rng.standard_normal((experts, cfg["hidden_size"])).astype(np.float32) * 0.02
    mcfg = dict(cfg, model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=experts,
                num_experts_per_tok=2, intermediate_size=width)
    return write_model(path, out, mcfg, tokenizer_from=source)
