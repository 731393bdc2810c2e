#!/usr/bin/env python3
"""Golden fixtures for the model crate: tiny random gpt-oss checkpoints + reference logits
computed by transformers' GptOssForCausalLM (eager attention, f32).

Writes fixtures/model/:
  dense/   config.json + model.safetensors  (HF layout, dense experts gate_up_proj [E,H,2I],
           down_proj [E,I,H]) and reference.safetensors
  mxfp4/   config.json (quantization_config mxfp4) + model.safetensors with experts as
           *_blocks / *_scales (quantized here, docs/gpt-oss.md §2.2) and
           reference.safetensors computed by transformers from the DEQUANTIZED expert weights
  mxfp4_bytes.json  known MXFP4 byte patterns and their dequantized values

reference.safetensors holds
  input_ids  [2, T] int64     T = 24 > sliding_window = 8
  logits     [2, T, V] f32    full forward, no cache
  prompt_ids [1, P] int64     greedy prompt (P = 12)
  greedy_ids [1, 8] int64     transformers generate(do_sample=False, max_new_tokens=8)

Weights are drawn larger than transformers' init (unit-scale activations, non-zero biases,
sinks ~ N(0,1), some gate pre-activations beyond the 7.0 clamp) so every part of the block
contributes to the logits.

Run by hand (CI never runs Python):
    /tmp/refvenv/bin/python scripts/gen_model_fixtures.py
Needs torch, transformers (>= 4.55, tested with 5.24), safetensors, numpy.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model")

FP4 = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)

ROPE = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}


def make_config():
    from transformers import GptOssConfig

    n = 4
    rope = dict(ROPE)
    rope["rope_theta"] = 150000.0
    return GptOssConfig(
        hidden_size=64,
        num_hidden_layers=n,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_local_experts=4,
        num_experts_per_tok=2,
        intermediate_size=64,
        vocab_size=256,
        sliding_window=8,
        max_position_embeddings=131072,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
        rope_parameters=rope,
        rms_norm_eps=1e-5,
        attention_bias=True,
        swiglu_limit=7.0,
        tie_word_embeddings=False,
        pad_token_id=255,
        eos_token_id=254,
        bos_token_id=None,
        use_cache=True,
    )


def randomize(model, gen):
    """Unit-scale random weights for every parameter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("experts.gate_up_proj"):
                # [E, H, 2I]: x @ W; std 2.5/sqrt(H) so some gates pass the 7.0 clamp
                p.copy_(2.5 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=gen))
            elif name.endswith("experts.down_proj"):
                p.copy_(1.0 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:
                p.copy_(1.0 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=gen))
            else:
                raise SystemExit(f"unexpected parameter {name} {tuple(p.shape)}")


def mxfp4_quantize(w):
    """w [..., K] f32 (K % 32 == 0) -> blocks [..., K/32, 16] u8, scales [..., K/32] u8.
    Scale exponent e = floor(log2(amax)) - 2 (OCP rule: amax/2^e in [4, 8)), values rounded
    to the nearest E2M1 code (ties to the lower index), beyond ±6 saturated."""
    shp = w.shape
    g = w.reshape(-1, 32).astype(np.float32)
    amax = np.abs(g).max(axis=1)
    e = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-30))) - 2, -127).astype(np.int32)
    e = np.clip(e, -127, 127)
    scaled = g / np.ldexp(1.0, e)[:, None]
    mags = FP4[:8]
    idx = np.abs(np.abs(scaled)[..., None] - mags).argmin(axis=-1)
    codes = (idx | np.where((scaled < 0) & (idx > 0), 8, 0)).astype(np.uint8)
    blocks = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    scales = (e + 127).astype(np.uint8)
    return blocks.reshape(shp[:-1] + (shp[-1] // 32, 16)), scales.reshape(shp[:-1] + (shp[-1] // 32,))


def mxfp4_dequantize(blocks, scales):
    lo = FP4[blocks & 0x0F]
    hi = FP4[blocks >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(blocks.shape[:-1] + (32,))
    vals = vals * np.ldexp(1.0, scales.astype(np.int32) - 127)[..., None]
    return vals.reshape(scales.shape[:-1] + (scales.shape[-1] * 32,)).astype(np.float32)


def reference(model, gen, vocab):
    T, P = 24, 12
    ids = torch.randint(0, vocab - 2, (2, T), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.float()
        prompt = ids[:1, :P].clone()
        out = model.generate(
            prompt,
            do_sample=False,
            max_new_tokens=8,
            min_new_tokens=8,
            pad_token_id=255,
            eos_token_id=None,
        )
    return {
        "input_ids": ids.contiguous(),
        "logits": logits.contiguous(),
        "prompt_ids": prompt.contiguous(),
        "greedy_ids": out[:, P:].contiguous(),
    }


def write_config(model_dir, extra=None):
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        cj = json.load(f)
    # The hub spelling, as in openai/gpt-oss-20b (the loader accepts both).
    cj["rope_theta"] = 150000.0
    cj["rope_scaling"] = dict(ROPE)
    if extra:
        cj.update(extra)
    with open(path, "w") as f:
        json.dump(cj, f, indent=2, sort_keys=True)


def main():
    from transformers import GptOssForCausalLM

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    cfg = make_config()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)

    # ---- dense experts
    cfg._attn_implementation = "eager"
    model = GptOssForCausalLM(cfg).float().eval()
    assert model.config._attn_implementation == "eager"
    randomize(model, gen)
    ddir = os.path.join(OUT, "dense")
    model.save_pretrained(ddir, safe_serialization=True)
    for f in os.listdir(ddir):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(ddir, f))
    write_config(ddir)
    ref = reference(model, gen, cfg.vocab_size)
    save_file(ref, os.path.join(ddir, "reference.safetensors"))
    print("dense: logits absmax", float(ref["logits"].abs().max()), "greedy", ref["greedy_ids"].tolist())

    # ---- MXFP4 experts: quantize, put the dequantized weights back, recompute
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = {}
    with torch.no_grad():
        for l in range(cfg.num_hidden_layers):
            p = f"model.layers.{l}.mlp.experts"
            exp = model.model.layers[l].mlp.experts
            for n in ("gate_up_proj", "down_proj"):
                w = sd[f"{p}.{n}"].numpy()  # [E, in, out]
                w_lin = np.ascontiguousarray(np.transpose(w, (0, 2, 1)))  # [E, out, in]
                blocks, scales = mxfp4_quantize(w_lin)
                tensors[f"{p}.{n}_blocks"] = blocks
                tensors[f"{p}.{n}_scales"] = scales
                deq = mxfp4_dequantize(blocks, scales)  # [E, out, in]
                getattr(exp, n).copy_(torch.from_numpy(np.transpose(deq, (0, 2, 1)).copy()))
            tensors[f"{p}.gate_up_proj_bias"] = sd[f"{p}.gate_up_proj_bias"].numpy()
            tensors[f"{p}.down_proj_bias"] = sd[f"{p}.down_proj_bias"].numpy()
    for k, v in sd.items():
        if ".mlp.experts." not in k:
            tensors[k] = v.numpy()
    mdir = os.path.join(OUT, "mxfp4")
    os.makedirs(mdir)
    np_save(tensors, os.path.join(mdir, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(ddir, "config.json"), os.path.join(mdir, "config.json"))
    write_config(
        mdir,
        {
            "quantization_config": {
                "quant_method": "mxfp4",
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
            }
        },
    )
    ref = reference(model, gen, cfg.vocab_size)
    save_file(ref, os.path.join(mdir, "reference.safetensors"))
    print("mxfp4: logits absmax", float(ref["logits"].abs().max()), "greedy", ref["greedy_ids"].tolist())

    # ---- known byte patterns
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, size=(3, 2, 16), dtype=np.uint8)
    blocks[0, 0, :] = np.arange(16, dtype=np.uint8) * 17  # both nibbles walk the table
    scales = np.array([[127, 128], [126, 120], [1, 140]], dtype=np.uint8)
    deq = mxfp4_dequantize(blocks, scales)
    with open(os.path.join(OUT, "mxfp4_bytes.json"), "w") as f:
        json.dump(
            {
                "blocks": blocks.tolist(),
                "scales": scales.tolist(),
                "dequantized": deq.tolist(),
            },
            f,
        )
    total = 0
    for root, _, files in os.walk(OUT):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
