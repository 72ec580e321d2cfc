"""Output-preserving re-parametrisations of the demo Llama (hidden 64, 4 layers, GQA 4/2, head dim 16).

Each function rewrites a ``state_dict`` (name -> torch tensor) of a model with the demo's architecture
in place so that the model computes the same function (the tests check logits and greedy output),
and returns the roles it touched. They are what someone hiding a fine-tune's origin would apply:
residual-stream permutation and sign flips, norm gains rescaled or folded into the linear layers that
read them, per-head q/k rescaling (per RoPE pair), v/o and up/down rescaling with signs, MLP neuron
and attention head permutations.
"""

from __future__ import annotations

import numpy as np
import torch

CFG = dict(layers=4, hidden=64, inter=172, heads=4, kv=2, head_dim=16)


def _L(i: int, rest: str) -> str:
    return f"model.layers.{i}.{rest}"


def permute_mlp(sd, rng):
    for i in range(CFG["layers"]):
        p = torch.from_numpy(rng.permutation(CFG["inter"]))
        sd[_L(i, "mlp.gate_proj.weight")] = sd[_L(i, "mlp.gate_proj.weight")][p]
        sd[_L(i, "mlp.up_proj.weight")] = sd[_L(i, "mlp.up_proj.weight")][p]
        sd[_L(i, "mlp.down_proj.weight")] = sd[_L(i, "mlp.down_proj.weight")][:, p]
    return {"mlp"}


def _readers(i: int) -> dict[str, list[str]]:
    return {_L(i, "input_layernorm.weight"): [_L(i, f"self_attn.{x}_proj.weight") for x in "qkv"],
            _L(i, "post_attention_layernorm.weight"): [_L(i, f"mlp.{x}_proj.weight") for x in ("gate", "up")]}


def permute_residual(sd, rng):
    p = torch.from_numpy(rng.permutation(CFG["hidden"]))
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:, p]
    sd["lm_head.weight"] = sd["lm_head.weight"][:, p]
    sd["model.norm.weight"] = sd["model.norm.weight"][p]
    for i in range(CFG["layers"]):
        for norm, readers in _readers(i).items():
            sd[norm] = sd[norm][p]
            for r in readers:
                sd[r] = sd[r][:, p]
        for w in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            sd[_L(i, w)] = sd[_L(i, w)][p]
    return {"all"}


def _scales(rng, n):
    return torch.from_numpy(rng.choice([-1.0, 1.0], n) * np.exp(rng.uniform(np.log(0.25), np.log(4.0), n))).float()


def rescale_channels(sd, rng):
    """Norm gain g → g·s, every reader's column → column / s (s with random sign and size 1/4..4)."""
    groups = {"model.norm.weight": ["lm_head.weight"]}
    for i in range(CFG["layers"]):
        groups.update(_readers(i))
    for norm, readers in groups.items():
        s = _scales(rng, CFG["hidden"])
        sd[norm] = sd[norm] * s
        for r in readers:
            sd[r] = sd[r] / s
    return {"norm", "q", "k", "v", "gate", "up", "lm_head"}


def shuffle_heads(sd, rng):
    """KV heads permuted (k, v rows with their query group) and query heads permuted within each KV group
    (q rows, o columns); non-identity at both levels. Returns the touched roles and, per layer, the query
    head order: target head h is original head order[h]."""
    hd, kv, group = CFG["head_dim"], CFG["kv"], CFG["heads"] // CFG["kv"]
    applied = []

    def shuffled(n):
        p = rng.permutation(n)
        while n > 1 and np.all(p == np.arange(n)):
            p = rng.permutation(n)
        return p

    def rows(heads):
        return torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])

    for i in range(CFG["layers"]):
        kv_order = shuffled(kv)
        order = [int(g) * group + int(x) for g in kv_order for x in shuffled(group)]
        for w in ("k", "v"):
            sd[_L(i, f"self_attn.{w}_proj.weight")] = sd[_L(i, f"self_attn.{w}_proj.weight")][rows(kv_order)]
        sd[_L(i, "self_attn.q_proj.weight")] = sd[_L(i, "self_attn.q_proj.weight")][rows(order)]
        sd[_L(i, "self_attn.o_proj.weight")] = sd[_L(i, "self_attn.o_proj.weight")][:, rows(order)]
        applied.append(order)
    return {"q", "k", "v", "o"}, applied


def flip_signs(sd, rng):
    """Sign flips the function allows: MLP neuron (up row + down column), v channel (v row + o column),
    residual dimension (embedding column, o/down rows and every norm gain)."""
    for i in range(CFG["layers"]):
        s = torch.from_numpy(rng.choice([-1.0, 1.0], CFG["inter"])).float()
        sd[_L(i, "mlp.up_proj.weight")] = sd[_L(i, "mlp.up_proj.weight")] * s[:, None]
        sd[_L(i, "mlp.down_proj.weight")] = sd[_L(i, "mlp.down_proj.weight")] * s[None, :]
        v = torch.from_numpy(rng.choice([-1.0, 1.0], CFG["kv"] * CFG["head_dim"])).float()
        sd[_L(i, "self_attn.v_proj.weight")] = sd[_L(i, "self_attn.v_proj.weight")] * v[:, None]
        sd[_L(i, "self_attn.o_proj.weight")] = sd[_L(i, "self_attn.o_proj.weight")] * _o_signs(v)[None, :]
    r = torch.from_numpy(rng.choice([-1.0, 1.0], CFG["hidden"])).float()
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"] * r[None, :]
    sd["model.norm.weight"] = sd["model.norm.weight"] * r
    for i in range(CFG["layers"]):
        for norm in _readers(i):
            sd[norm] = sd[norm] * r
        for w in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            sd[_L(i, w)] = sd[_L(i, w)] * r[:, None]
    return {"up", "down", "v", "o", "embed", "norm"}


def _o_signs(v_signs):
    """o_proj column of query head h, channel c reads value head h // group, channel c."""
    hd, group = CFG["head_dim"], CFG["heads"] // CFG["kv"]
    per_kv = v_signs.reshape(CFG["kv"], hd)
    return torch.cat([per_kv[h // group] for h in range(CFG["heads"])])


def everything(sd, rng):
    permute_mlp(sd, rng)
    shuffle_heads(sd, rng)
    rescale_channels(sd, rng)
    flip_signs(sd, rng)
    permute_residual(sd, rng)
    return {"all"}


def fold_gains(sd, rng=None):
    """Every RMSNorm gain multiplied into the columns of the linear layers that read it; the gains become ones."""
    groups = {"model.norm.weight": ["lm_head.weight"]}
    for i in range(CFG["layers"]):
        groups.update(_readers(i))
    for norm, readers in groups.items():
        for r in readers:
            sd[r] = sd[r] * sd[norm][None, :]
        sd[norm] = torch.ones_like(sd[norm])
    return {"norm", "q", "k", "v", "gate", "up", "lm_head"}


def rescale_qk(sd, rng):
    """Per KV group and RoPE pair (dims d and d + head_dim/2 rotate together): k rows × 1/c, the group's q rows × c."""
    hd, group = CFG["head_dim"], CFG["heads"] // CFG["kv"]
    for i in range(CFG["layers"]):
        c = _scales(rng, CFG["kv"] * hd // 2).reshape(CFG["kv"], hd // 2)
        per_kv = torch.cat([c, c], dim=1)  # (kv, hd): the same factor on both dims of a pair
        q = torch.cat([per_kv[h // group] for h in range(CFG["heads"])])
        sd[_L(i, "self_attn.q_proj.weight")] = sd[_L(i, "self_attn.q_proj.weight")] * q[:, None]
        sd[_L(i, "self_attn.k_proj.weight")] = sd[_L(i, "self_attn.k_proj.weight")] / per_kv.reshape(-1)[:, None]
    return {"q", "k"}


def rescale_vo(sd, rng):
    """Per value channel: v row × s, the o columns that read it × 1/s (s with random sign and size 1/4..4)."""
    for i in range(CFG["layers"]):
        s = _scales(rng, CFG["kv"] * CFG["head_dim"])
        sd[_L(i, "self_attn.v_proj.weight")] = sd[_L(i, "self_attn.v_proj.weight")] * s[:, None]
        sd[_L(i, "self_attn.o_proj.weight")] = sd[_L(i, "self_attn.o_proj.weight")] / _o_signs(s)[None, :]
    return {"v", "o"}


def rescale_mlp(sd, rng):
    """Per MLP neuron: up row × s, down column × 1/s (SwiGLU is linear in up)."""
    for i in range(CFG["layers"]):
        s = _scales(rng, CFG["inter"])
        sd[_L(i, "mlp.up_proj.weight")] = sd[_L(i, "mlp.up_proj.weight")] * s[:, None]
        sd[_L(i, "mlp.down_proj.weight")] = sd[_L(i, "mlp.down_proj.weight")] / s[None, :]
    return {"up", "down"}


def hide_origin(sd, rng):
    """All of it, in an order where each step's assumptions hold: neurons and heads permuted, q/k, v/o and up/down
    rescaled, residual signs flipped and gains rescaled, gains folded (norms become ones), residual permuted."""
    permute_mlp(sd, rng)
    shuffle_heads(sd, rng)
    rescale_qk(sd, rng)
    rescale_vo(sd, rng)
    rescale_mlp(sd, rng)
    flip_signs(sd, rng)
    rescale_channels(sd, rng)
    fold_gains(sd)
    permute_residual(sd, rng)
    return {"all"}
