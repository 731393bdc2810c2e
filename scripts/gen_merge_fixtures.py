#!/usr/bin/env python3
"""Golden fixtures for `osstune merge` (fixtures/merge/), computed independently of the Rust code.

Run by hand (CI never runs Python), from the repository root:

    /tmp/refvenv/bin/python scripts/gen_merge_fixtures.py

Writes fixtures/merge/:
- base/        a tiny gpt-oss checkpoint in the official HF MXFP4 layout (2 layers, 4 experts,
               hidden 64, intermediate 32, vocab 64): random packed expert bytes, bf16 rest.
- adapter/     an osstune adapter (docs/design.md §2: f32, nn.Linear orientation, A [r, in],
               B [out, r], experts A [E, r, in], B [E, out, r]) on every target, NONZERO B,
               rank 4, alpha 8. `base_model.fingerprint` is null (the Rust fingerprint is not
               reproduced here; merge compares it only when the adapter records one).
- expected_hf_f32.safetensors    merged weights as `osstune merge --format hf --dtype f32`
               must write them: experts dequantized with transformers' own
               `convert_moe_packed_tensors` ([E, in, out], gate/up interleaved on the last axis),
               then W + alpha/r · (B·A)ᵀ at the interleaved columns; attention/router
               W + alpha/r · B·A.
- expected_hf_mxfp4.safetensors  the merged experts re-quantized (`--format hf-mxfp4`):
               per 32-group the smallest exponent e with amax <= 6·2^e, or e - 1 if encoding
               there (the largest values saturating at 6·2^(e-1)) has the smaller squared
               error (ties keep e); values rounded to the nearest E2M1 value, ties to the even
               table index (= even mantissa), saturating at 6; written here with numpy from that
               definition.
"""

import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save_file
from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "merge")
L, E, H, I, HEADS, KV, HD, V = 2, 4, 64, 32, 4, 2, 16, 64
R, ALPHA = 4, 8.0
SCALE = ALPHA / R

rng = np.random.default_rng(20260401)


def bf16(shape, std=0.03):
    return torch.tensor(rng.normal(0, std, size=shape), dtype=torch.float32).to(torch.bfloat16)


def config():
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "num_hidden_layers": L, "num_local_experts": E, "num_experts_per_tok": 2,
        "hidden_size": H, "intermediate_size": I, "head_dim": HD,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": V,
        "rms_norm_eps": 1e-5, "rope_theta": 150000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": False},
        "max_position_embeddings": 131072, "initial_context_length": 4096, "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"], "attention_bias": True,
        "attention_dropout": 0.0, "swiglu_limit": 7.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "eos_token_id": 200002, "pad_token_id": 199999,
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
    }


def encode_at(g, e):
    """Nibbles of the groups g [..., 32] at exponents e [...], and the values they decode to."""
    lut = np.array(FP4_VALUES[:8], dtype=np.float64)
    x = g / (2.0 ** e)[..., None]
    dist = np.abs(np.minimum(np.abs(x), 6.0)[..., None] - lut)  # [..., 32, 8]
    best = dist.min(-1, keepdims=True)
    # Ties go to the even index: pick the first minimum among even indices if one ties.
    cand = np.isclose(dist, best, rtol=0, atol=1e-12)
    even = cand & (np.arange(8) % 2 == 0)
    mag = np.where(even.any(-1), even.argmax(-1), cand.argmax(-1))
    nib = (mag | np.where(np.signbit(x), 8, 0)).astype(np.uint8)
    deq = np.where(np.signbit(x), -1.0, 1.0) * lut[mag] * (2.0 ** e)[..., None]
    return nib, deq


def quantize(w):
    """[..., n] float64 -> (blocks [..., n/32, 16] u8, scales [..., n/32] u8)."""
    g = w.reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = np.abs(g).max(-1)
    e = np.full(amax.shape, -127, dtype=np.int64)
    for idx in np.ndindex(amax.shape):
        a = amax[idx]
        if a == 0:
            continue
        k = -127
        while a > 6.0 * 2.0 ** k:
            k += 1
        e[idx] = k
    # The exponent below, where the largest values saturate, when its error is smaller.
    lower = np.maximum(e - 1, -127)
    _, deq_e = encode_at(g, e)
    _, deq_l = encode_at(g, lower)
    err_e = ((g - deq_e) ** 2).sum(-1)
    err_l = ((g - deq_l) ** 2).sum(-1)
    e = np.where((e > -127) & (err_l < err_e), lower, e)
    nib, _ = encode_at(g, e)
    blocks = (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (e + 127).astype(np.uint8)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "base"))
    os.makedirs(os.path.join(OUT, "adapter"))
    base = {"model.embed_tokens.weight": bf16((V, H)), "model.norm.weight": bf16((H,), 0.1) + 1,
            "lm_head.weight": bf16((V, H))}
    ad = {}
    exp_f32 = {}
    exp_q = {}
    q, kv = HEADS * HD, KV * HD
    for l in range(L):
        p = f"model.layers.{l}."
        lin = {"self_attn.q_proj": (q, H), "self_attn.k_proj": (kv, H), "self_attn.v_proj": (kv, H),
               "self_attn.o_proj": (H, q), "mlp.router": (E, H)}
        for m, (o, i) in lin.items():
            base[p + m + ".weight"] = bf16((o, i))
            base[p + m + ".bias"] = bf16((o,), 0.01)
            a = rng.uniform(-1 / np.sqrt(i), 1 / np.sqrt(i), size=(R, i)).astype(np.float32)
            b = rng.uniform(-0.05, 0.05, size=(o, R)).astype(np.float32)
            ad[p + m + ".lora_a"], ad[p + m + ".lora_b"] = torch.tensor(a), torch.tensor(b)
            w = base[p + m + ".weight"].double() + SCALE * (torch.tensor(b).double() @ torch.tensor(a).double())
            exp_f32[p + m + ".weight"] = w.float()
        base[p + "self_attn.sinks"] = bf16((HEADS,), 0.1)
        base[p + "input_layernorm.weight"] = bf16((H,), 0.1) + 1
        base[p + "post_attention_layernorm.weight"] = bf16((H,), 0.1) + 1
        deltas = {}
        for t, (o, i) in {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}.items():
            a = rng.uniform(-1 / np.sqrt(i), 1 / np.sqrt(i), size=(E, R, i)).astype(np.float32)
            b = rng.uniform(-0.05, 0.05, size=(E, o, R)).astype(np.float32)
            ad[p + f"mlp.experts.{t}.lora_a"], ad[p + f"mlp.experts.{t}.lora_b"] = torch.tensor(a), torch.tensor(b)
            deltas[t] = SCALE * (torch.tensor(b).double() @ torch.tensor(a).double())  # [E, out, in]
        for leaf, rows, inp in [("gate_up_proj", 2 * I, H), ("down_proj", H, I)]:
            blocks = torch.tensor(rng.integers(0, 256, size=(E, rows, inp // 32, 16)), dtype=torch.uint8)
            scales = torch.tensor(rng.integers(119, 125, size=(E, rows, inp // 32)), dtype=torch.uint8)
            base[p + f"mlp.experts.{leaf}_blocks"] = blocks
            base[p + f"mlp.experts.{leaf}_scales"] = scales
            base[p + f"mlp.experts.{leaf}_bias"] = bf16((E, rows), 0.01)
            dense = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).double()  # [E, in, out]
            if leaf == "gate_up_proj":
                dense[:, :, 0::2] += deltas["gate_proj"].transpose(1, 2)
                dense[:, :, 1::2] += deltas["up_proj"].transpose(1, 2)
            else:
                dense += deltas["down_proj"].transpose(1, 2)
            exp_f32[p + f"mlp.experts.{leaf}"] = dense.float()
            qb, qs = quantize(dense.float().double().transpose(1, 2).numpy())  # [E, out, in]
            exp_q[p + f"mlp.experts.{leaf}_blocks"] = torch.tensor(qb)
            exp_q[p + f"mlp.experts.{leaf}_scales"] = torch.tensor(qs)
    save_file(base, os.path.join(OUT, "base", "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "base", "config.json"), "w") as f:
        json.dump(config(), f, indent=2)
    save_file(ad, os.path.join(OUT, "adapter", "adapters.safetensors"))
    with open(os.path.join(OUT, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"format": "osstune-lora", "version": 1, "rank": R, "alpha": ALPHA, "dropout": 0.0,
                   "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "router",
                               "gate_proj", "up_proj", "down_proj"],
                   "layers": list(range(L)),
                   "base_model": {"model_type": "gpt_oss", "fingerprint": None, "num_hidden_layers": L,
                                  "hidden_size": H, "num_local_experts": E}}, f, indent=2)
    save_file(exp_f32, os.path.join(OUT, "expected_hf_f32.safetensors"))
    save_file(exp_q, os.path.join(OUT, "expected_hf_mxfp4.safetensors"))
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
