#!/usr/bin/env python3
"""Golden fixtures for the trainer (fixtures/train/), from transformers + PEFT.

Run by hand (CI never runs Python), from the repository root:

    /tmp/refvenv/bin/python scripts/gen_train_fixtures.py

(venv: torch, transformers >= 5, peft >= 0.17, safetensors.) Writes:

- fixtures/train/model/          a tiny random gpt-oss (GptOssForCausalLM.save_pretrained, f32,
                                 dense experts, 2 layers: sliding + full, window 8, YaRN)
- fixtures/train/adapter_init.safetensors
                                 an initial LoRA adapter in osstune's layout (design.md §2),
                                 rank 4, alpha 8, all targets, with NONZERO B so gradients
                                 reach A as well as B
- fixtures/train/peft/           the same adapter in PEFT's layout (adapter_model.safetensors
                                 + adapter_config.json), built here independently of the Rust
                                 exporter; `osstune adapters export --format peft` must produce
                                 the same tensors
- fixtures/train/parity.json     two right-padded sequences with loss masks, the base model's
                                 loss, the adapted model's loss
- fixtures/train/parity_grads.safetensors
                                 d loss / d (every LoRA factor), in osstune's names/layout

Loss = sum over trained target tokens of cross-entropy / number of trained tokens (the
trainer's normalisation, train/src/loss.rs). Each sequence runs through transformers alone
(no padding), so the fixture also checks that right padding changes nothing in osstune.

Mapping osstune → PEFT (see train/src/export.rs): PEFT has one LoRA on the fused,
interleaved gate_up_proj; osstune's separate gate and up LoRAs of rank r are exactly one
fused LoRA of rank 2r (A = [A_gate; A_up]; B rows 2i = [B_gate_i, 0], 2i+1 = [0, B_up_i]).
PEFT uses one rank everywhere, so every other factor is zero-padded to 2r, and lora_alpha is
doubled to keep the scale alpha/r. PEFT's expert A is [E*2r, in] (expert slowest) and B is
[out, 2r*E] (expert FASTEST). The script also checks PEFT's adapted logits against a model
whose weights were merged by hand with osstune's convention (W + scale * B @ A on the
[out, in] matrix; HF experts are stored [E, in, out]), so the layout itself is verified.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train")
R, ALPHA = 4, 8.0
SCALE = ALPHA / R
SEED = 1234


def build_model():
    from transformers import GptOssConfig, GptOssForCausalLM

    n_layers = 2
    cfg = GptOssConfig(
        hidden_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        intermediate_size=32,
        vocab_size=384,
        sliding_window=8,
        max_position_embeddings=131072,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)],
        rope_parameters={
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
            "rope_theta": 150000.0,
        },
        rms_norm_eps=1e-5,
        attention_bias=True,
        swiglu_alpha=1.702,
        swiglu_limit=7.0,
        tie_word_embeddings=False,
        output_router_logits=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(SEED)
    model = GptOssForCausalLM(cfg).float()
    # Larger-than-default random weights (and random biases, sinks, norms) so every path,
    # including the clamps and the routing, carries signal.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "sinks" in n:
                p.copy_(torch.randn_like(p))
            elif "router" in n:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model.eval()
    return model


def module_path(target):
    return {
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj",
        "router": "mlp.router",
        "gate_proj": "mlp.experts.gate_proj",
        "up_proj": "mlp.experts.up_proj",
        "down_proj": "mlp.experts.down_proj",
    }[target]


def make_adapter(cfg, gen):
    """osstune layout: dense A [r, in], B [out, r]; experts A [E, r, in], B [E, out, r]."""
    H, I, E = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    dims = {
        "q_proj": (H, q, None),
        "k_proj": (H, kv, None),
        "v_proj": (H, kv, None),
        "o_proj": (q, H, None),
        "router": (H, E, None),
        "gate_proj": (H, I, E),
        "up_proj": (H, I, E),
        "down_proj": (I, H, E),
    }
    ad = {}
    for l in range(cfg.num_hidden_layers):
        for t, (din, dout, e) in dims.items():
            name = f"model.layers.{l}.{module_path(t)}"
            lead = (e,) if e else ()
            bound = 1.0 / din**0.5
            a = (torch.rand(lead + (R, din), generator=gen) * 2 - 1) * bound
            b = 0.05 * torch.randn(lead + (dout, R), generator=gen)
            ad[f"{name}.lora_a"] = a.float().contiguous()
            ad[f"{name}.lora_b"] = b.float().contiguous()
    return ad


def pad_rank(a, b, r2):
    """Zero-pad A [.., r, in] rows and B [.., out, r] columns to rank r2."""
    r = a.shape[-2]
    za = torch.zeros(a.shape[:-2] + (r2 - r, a.shape[-1]))
    zb = torch.zeros(b.shape[:-1] + (r2 - r,))
    return torch.cat([a, za], dim=-2), torch.cat([b, zb], dim=-1)


def to_peft(ad, cfg):
    """osstune adapter → PEFT state dict (keys as saved by save_pretrained)."""
    r2 = 2 * R
    E = cfg.num_local_experts
    sd = {}
    for l in range(cfg.num_hidden_layers):
        pre = f"base_model.model.model.layers.{l}"
        src = f"model.layers.{l}"
        for m in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.router"]:
            a, b = pad_rank(ad[f"{src}.{m}.lora_a"], ad[f"{src}.{m}.lora_b"], r2)
            sd[f"{pre}.{m}.lora_A.weight"] = a
            sd[f"{pre}.{m}.lora_B.weight"] = b
        ga, gb = ad[f"{src}.mlp.experts.gate_proj.lora_a"], ad[f"{src}.mlp.experts.gate_proj.lora_b"]
        ua, ub = ad[f"{src}.mlp.experts.up_proj.lora_a"], ad[f"{src}.mlp.experts.up_proj.lora_b"]
        a = torch.cat([ga, ua], dim=1)  # [E, 2r, H]
        z = torch.zeros_like(gb)
        gbf = torch.cat([gb, z], dim=2)  # [E, I, 2r]
        ubf = torch.cat([z, ub], dim=2)
        b = torch.stack([gbf, ubf], dim=2).reshape(E, -1, r2)  # rows interleaved: [E, 2I, 2r]
        sd[f"{pre}.mlp.experts.base_layer.lora_A.weight"] = a.reshape(E * r2, -1).contiguous()
        sd[f"{pre}.mlp.experts.base_layer.lora_B.weight"] = b.permute(1, 2, 0).reshape(b.shape[1], r2 * E).contiguous()
        da, db = pad_rank(ad[f"{src}.mlp.experts.down_proj.lora_a"], ad[f"{src}.mlp.experts.down_proj.lora_b"], r2)
        sd[f"{pre}.mlp.experts.lora_A.weight"] = da.reshape(E * r2, -1).contiguous()
        sd[f"{pre}.mlp.experts.lora_B.weight"] = db.permute(1, 2, 0).reshape(db.shape[1], r2 * E).contiguous()
    return sd


def grads_to_osstune(g, cfg):
    """PEFT gradient dict (same keys as to_peft) → osstune names/layout; checks padding."""
    r2 = 2 * R
    E = cfg.num_local_experts
    out = {}
    for l in range(cfg.num_hidden_layers):
        pre = f"base_model.model.model.layers.{l}"
        dst = f"model.layers.{l}"
        for m in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.router"]:
            ga, gb = g[f"{pre}.{m}.lora_A.weight"], g[f"{pre}.{m}.lora_B.weight"]
            assert ga[R:].abs().max() == 0 and gb[:, R:].abs().max() == 0, m
            out[f"{dst}.{m}.lora_a"] = ga[:R]
            out[f"{dst}.{m}.lora_b"] = gb[:, :R]
        ga = g[f"{pre}.mlp.experts.base_layer.lora_A.weight"].reshape(E, r2, -1)
        gb = g[f"{pre}.mlp.experts.base_layer.lora_B.weight"]
        gb = gb.reshape(gb.shape[0], r2, E).permute(2, 0, 1)  # [E, 2I, 2r]
        out[f"{dst}.mlp.experts.gate_proj.lora_a"] = ga[:, :R]
        out[f"{dst}.mlp.experts.up_proj.lora_a"] = ga[:, R:]
        out[f"{dst}.mlp.experts.gate_proj.lora_b"] = gb[:, 0::2, :R]
        out[f"{dst}.mlp.experts.up_proj.lora_b"] = gb[:, 1::2, R:]
        da = g[f"{pre}.mlp.experts.lora_A.weight"].reshape(E, r2, -1)
        db = g[f"{pre}.mlp.experts.lora_B.weight"]
        db = db.reshape(db.shape[0], r2, E).permute(2, 0, 1)
        assert da[:, R:].abs().max() == 0 and db[:, :, R:].abs().max() == 0
        out[f"{dst}.mlp.experts.down_proj.lora_a"] = da[:, :R]
        out[f"{dst}.mlp.experts.down_proj.lora_b"] = db[:, :, :R]
    return {k: v.contiguous().float() for k, v in out.items()}


def merged_by_hand(model_dir, ad, cfg):
    """Base + osstune deltas folded into the HF weights, as osstune's merge defines them."""
    from transformers import GptOssForCausalLM

    m = GptOssForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for l, layer in enumerate(m.model.layers):
            src = f"model.layers.{l}"

            def d(mod):
                return SCALE * ad[f"{src}.{mod}.lora_b"] @ ad[f"{src}.{mod}.lora_a"]

            for p in ["q_proj", "k_proj", "v_proj", "o_proj"]:
                getattr(layer.self_attn, p).weight += d(f"self_attn.{p}")
            layer.mlp.router.weight += d("mlp.router")
            ex = layer.mlp.experts
            # HF experts: gate_up_proj [E, H, 2I] (gate = even output columns), down [E, I, H].
            ex.gate_up_proj[:, :, 0::2] += d("mlp.experts.gate_proj").transpose(1, 2)
            ex.gate_up_proj[:, :, 1::2] += d("mlp.experts.up_proj").transpose(1, 2)
            ex.down_proj += d("mlp.experts.down_proj").transpose(1, 2)
    m.eval()
    return m


def seq_loss(model, seqs, masks):
    total, n = 0.0, 0
    for ids, mask in zip(seqs, masks):
        x = torch.tensor([ids])
        logits = model(input_ids=x, use_cache=False).logits[0].float()
        tgt = x[0, 1:]
        w = torch.tensor(mask[1:], dtype=torch.float32)
        ce = torch.nn.functional.cross_entropy(logits[:-1], tgt, reduction="none")
        total = total + (ce * w).sum()
        n += int(w.sum())
    return total / n


def main():
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    model_dir = os.path.join(OUT, "model")
    model = build_model()
    model.save_pretrained(model_dir, safe_serialization=True)
    cj_path = os.path.join(model_dir, "config.json")
    with open(cj_path) as f:
        cj = json.load(f)
    cj["rope_theta"] = 150000.0
    cj["rope_scaling"] = {k: v for k, v in cj["rope_parameters"].items() if k != "rope_theta"}
    with open(cj_path, "w") as f:
        json.dump(cj, f, indent=2, sort_keys=True)
    cfg = model.config

    gen = torch.Generator().manual_seed(SEED + 1)
    ad = make_adapter(cfg, gen)
    save_file(ad, os.path.join(OUT, "adapter_init.safetensors"))

    # Two sequences (lengths 21 and 14, longer than the sliding window), prompt-like
    # untrained prefixes and an untrained gap in the middle of the second.
    V = cfg.vocab_size
    seqs = [
        torch.randint(0, V, (21,), generator=gen).tolist(),
        torch.randint(0, V, (14,), generator=gen).tolist(),
    ]
    masks = [
        [0] * 9 + [1] * 12,
        [0] * 4 + [1] * 4 + [0] * 2 + [1] * 4,
    ]

    with torch.no_grad():
        base_loss = float(seq_loss(model, seqs, masks))

    lcfg = LoraConfig(
        r=2 * R,
        lora_alpha=2 * ALPHA,
        lora_dropout=0.0,
        bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.router.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )
    pm = get_peft_model(model, lcfg)
    sd = to_peft(ad, cfg)
    res = set_peft_model_state_dict(pm, sd)
    missing = [k for k in res.missing_keys if "lora_" in k]
    assert not res.unexpected_keys and not missing, (res.unexpected_keys, missing)
    pm.eval()

    # The layout check: PEFT's adapted logits equal a hand-merged model's.
    merged = merged_by_hand(model_dir, ad, cfg)
    x = torch.tensor([seqs[0]])
    with torch.no_grad():
        lp = pm(input_ids=x, use_cache=False).logits
        lm = merged(input_ids=x, use_cache=False).logits
    err = (lp - lm).abs().max().item()
    print(f"PEFT vs hand-merged logits: max |diff| = {err:.3e}")
    assert err < 1e-4, err

    # Loss and gradients of the adapted model.
    params = {n.replace(".default", ""): p for n, p in pm.named_parameters() if p.requires_grad}
    loss = seq_loss(pm, seqs, masks)
    loss.backward()
    g = {n: p.grad.detach().clone() for n, p in params.items()}
    grads = grads_to_osstune(g, cfg)
    save_file(grads, os.path.join(OUT, "parity_grads.safetensors"))

    peft_dir = os.path.join(OUT, "peft")
    os.makedirs(peft_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(peft_dir, "adapter_model.safetensors"))
    with open(os.path.join(peft_dir, "adapter_config.json"), "w") as f:
        json.dump({"r": 2 * R, "lora_alpha": 2 * ALPHA, "lora_dropout": 0.0, "peft_type": "LORA",
                   "target_modules": lcfg.target_modules and sorted(lcfg.target_modules),
                   "target_parameters": list(lcfg.target_parameters)}, f, indent=2)

    with open(os.path.join(OUT, "parity.json"), "w") as f:
        json.dump(
            {
                "rank": R,
                "alpha": ALPHA,
                "seqs": seqs,
                "masks": masks,
                "base_loss": base_loss,
                "loss": float(loss.detach()),
                "peft_vs_merged_max_abs_logit_diff": err,
                "versions": {
                    "torch": torch.__version__,
                    "transformers": __import__("transformers").__version__,
                    "peft": __import__("peft").__version__,
                },
            },
            f,
            indent=1,
        )
    print(f"base loss {base_loss:.6f}, adapted loss {float(loss):.6f}; wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
