#!/usr/bin/env python3
"""Golden fixtures for the `osstune-optim` crate (Muon, AdamW, schedules).

Run by hand (CI never runs Python), from the repository root:

    /tmp/refvenv/bin/python scripts/gen_optim_fixtures.py

Needs torch >= 2.9 (for `torch.optim.Muon`), transformers (schedule reference) and
safetensors. Writes:

- `fixtures/optim/optim.safetensors`: every tensor below (f32).
- `fixtures/optim/cases.json`: the hyper-parameters of each case and the tensor names.

What is produced and why:

1. Muon cases (`muon_*`). A parameter, a fixed gradient per step and the per-step learning rate
   are fed to `torch.optim.Muon` (CPU, single-tensor path) for several steps; the parameter after
   every step is recorded. torch runs Newton–Schulz (NS) in bfloat16 and offers no switch, while
   osstune's default is float32. So each case is run twice:
     - `*.ref_f32`: torch.optim.Muon with its module-level `_zeropower_via_newtonschulz` replaced
       by `ns_f32` below — torch's own function line by line, with the bfloat16 cast removed. The
       rest of the step (momentum lerp, Nesterov, decoupled weight decay, lr adjustment) is
       torch's code, unchanged. Rust's f32 path must match this tightly (only matmul summation
       order differs).
     - `*.ref_bf16`: unmodified torch.optim.Muon. Rust's bf16 path is compared with it loosely:
       two bf16 NS implementations differ by bf16 rounding (8-bit mantissa, ~0.4% per op, and
       the quintic amplifies small singular directions by up to ~3.4^5), so the tolerance is
       relative to the update size. The script also asserts torch's bf16 result lies within that
       same tolerance of the f32 reference, so the tolerance is the one torch itself needs.
       Metric: ||p - p_ref||_F / ||p_ref - p0||_F (error over total movement), per step.
2. Per-expert cases (`muon_experts_*`): E matrices of one shape, each its own 2-D parameter
   in one torch Muon. The Rust test stacks them as one [E, rows, cols] tensor, which must give
   the same per-expert result (batched NS, never flattened across experts).
3. AdamW cases (`adamw_*`): `torch.optim.AdamW(foreach=False)` on a 1-D and a 2-D tensor.
4. NS-only cases (`ns_*`): input and `ns_f32(input)` for LoRA-like shapes, including the
   gpt-oss-120b expert LoRA factor shapes 16x2880 and 2880x16.
5. Schedules (`schedule_*`): transformers' `get_cosine_schedule_with_warmup` (floor 0) and
   `get_cosine_with_min_lr_schedule_with_warmup` (floor > 0) multipliers, as `LambdaLR` applies
   them: optimizer step k (0-based) uses lr_lambda(k). The warm-up length is
   ceil(warmup_ratio * total_steps), as transformers' `TrainingArguments.get_warmup_steps`.
"""

import json
import math
import os
import sys

import torch
import torch.optim._muon as torch_muon
from safetensors.torch import save_file
from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "optim")

major, minor = (int(x) for x in torch.__version__.split(".")[:2])
if (major, minor) < (2, 9) or not hasattr(torch.optim, "Muon"):
    sys.exit(f"torch {torch.__version__} has no torch.optim.Muon; need >= 2.9")

TORCH_NS = torch_muon._zeropower_via_newtonschulz


def ns_f32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz with float32 instead of bfloat16."""
    a, b, c = ns_coefficients
    ortho_grad = grad.to(dtype=torch.float32, copy=True)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


tensors = {}
cases = {}
gen = torch.Generator().manual_seed(1234)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float32) * scale


def run_muon(params0, grads, lrs, hp, bf16):
    """params0: list of 2-D tensors; grads: [step][param]; returns [step][param] after each step."""
    torch_muon._zeropower_via_newtonschulz = TORCH_NS if bf16 else ns_f32
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = torch.optim.Muon(
        params,
        lr=lrs[0],
        weight_decay=hp["weight_decay"],
        momentum=hp["momentum"],
        nesterov=hp["nesterov"],
        ns_steps=hp["ns_steps"],
        adjust_lr_fn=hp["lr_adjust"],
    )
    out = []
    for t, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for p, gr in zip(params, grads[t]):
            p.grad = gr.clone()
        opt.step()
        out.append([p.detach().clone() for p in params])
    torch_muon._zeropower_via_newtonschulz = TORCH_NS
    return out


def rel_err(x, ref, base):
    """||x - ref||_F / ||ref - base||_F: error relative to how far the parameter moved."""
    return ((x - ref).norm() / (ref - base).norm()).item()


# bf16 tolerance, relative to the parameter's total movement (see docstring).
BF16_TOL = 0.05


def muon_case(name, shapes, lrs, hp):
    params0 = [randn(*s) for s in shapes]
    # Gradients of varied scale so the Frobenius normalisation matters.
    grads = [[randn(*s, scale=0.1 * (t + 1)) for s in shapes] for t in range(len(lrs))]
    ref = run_muon(params0, grads, lrs, hp, bf16=False)
    refb = run_muon(params0, grads, lrs, hp, bf16=True)
    worst = 0.0
    for i in range(len(shapes)):
        for t in range(len(lrs)):
            worst = max(worst, rel_err(refb[t][i], ref[t][i], params0[i]))
    assert worst < BF16_TOL, f"{name}: torch bf16 vs f32 reference {worst:.3g} >= {BF16_TOL}"
    print(f"{name}: torch bf16 vs f32-NS reference, ||error||_F / ||movement||_F = {worst:.3g}")
    names = []
    for i in range(len(shapes)):
        pfx = f"{name}.{i}"
        names.append(pfx)
        tensors[f"{pfx}.param0"] = params0[i]
        tensors[f"{pfx}.grads"] = torch.stack([grads[t][i] for t in range(len(lrs))])
        tensors[f"{pfx}.ref_f32"] = torch.stack([ref[t][i] for t in range(len(lrs))])
        tensors[f"{pfx}.ref_bf16"] = torch.stack([refb[t][i] for t in range(len(lrs))])
    cases[name] = {"kind": "muon", "params": names, "lrs": lrs, **hp, "torch_bf16_vs_f32": worst}


def adamw_case(name, shapes, lrs, hp):
    params0 = [randn(*s) for s in shapes]
    grads = [[randn(*s, scale=0.1 * (t + 1)) for s in shapes] for t in range(len(lrs))]
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = torch.optim.AdamW(
        params,
        lr=lrs[0],
        betas=(hp["beta1"], hp["beta2"]),
        eps=hp["eps"],
        weight_decay=hp["weight_decay"],
        foreach=False,
    )
    out = []
    for t, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for p, gr in zip(params, grads[t]):
            p.grad = gr.clone()
        opt.step()
        out.append([p.detach().clone() for p in params])
    names = []
    for i in range(len(shapes)):
        pfx = f"{name}.{i}"
        names.append(pfx)
        tensors[f"{pfx}.param0"] = params0[i]
        tensors[f"{pfx}.grads"] = torch.stack([grads[t][i] for t in range(len(lrs))])
        tensors[f"{pfx}.ref_f32"] = torch.stack([out[t][i] for t in range(len(lrs))])
    cases[name] = {"kind": "adamw", "params": names, "lrs": lrs, **hp}


def singular_values(x):
    return torch.linalg.svdvals(x.double())


def ns_case(name, shape, coeffs=(3.4445, -4.7750, 2.0315)):
    x = randn(*shape)
    y = ns_f32(x, coeffs, 5, 1e-7)
    yb = TORCH_NS(x, coeffs, 5, 1e-7).float()
    sv = singular_values(y)
    svb = singular_values(yb)
    print(f"{name} {shape}: f32 NS singular values in [{sv.min():.3f}, {sv.max():.3f}], "
          f"torch bf16 in [{svb.min():.3f}, {svb.max():.3f}]")
    tensors[f"{name}.input"] = x
    tensors[f"{name}.out_f32"] = y
    tensors[f"{name}.out_bf16"] = yb
    cases[name] = {"kind": "ns", "shape": list(shape), "ns_steps": 5,
                   "sv_min": sv.min().item(), "sv_max": sv.max().item()}


def schedule_case(name, total_steps, warmup_ratio, min_lr_rate):
    warmup = math.ceil(total_steps * warmup_ratio)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    if min_lr_rate == 0.0:
        sched = get_cosine_schedule_with_warmup(opt, warmup, total_steps)
    else:
        sched = get_cosine_with_min_lr_schedule_with_warmup(
            opt, warmup, total_steps, min_lr_rate=min_lr_rate)
    mult = []
    for _ in range(total_steps):
        mult.append(opt.param_groups[0]["lr"])  # the lr optimizer step k uses
        opt.step()
        sched.step()
    cases[name] = {"kind": "schedule", "total_steps": total_steps, "warmup_ratio": warmup_ratio,
                   "min_lr_ratio": min_lr_rate, "warmup_steps": warmup, "multipliers": mult}


muon_default = {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.0,
                "lr_adjust": "original"}
lrs5 = [0.02, 0.01, 0.03, 0.005, 0.02]

# LoRA-like: A [r, in] (wide, factor 1) and B [out, r] (tall, factor sqrt(out/r)).
muon_case("muon_lora", [(8, 48), (40, 8)], lrs5, muon_default)
muon_case("muon_wd", [(24, 24), (12, 36)], lrs5, {**muon_default, "weight_decay": 0.1})
muon_case("muon_rms", [(8, 48), (40, 8)], lrs5, {**muon_default, "lr_adjust": "match_rms_adamw"})
muon_case("muon_nonesterov", [(16, 32)], lrs5, {**muon_default, "nesterov": False,
                                                "momentum": 0.9, "ns_steps": 3})
# Per expert: 4 experts of [8, 40] (A-like) and of [40, 8] (B-like).
muon_case("muon_experts_a", [(8, 40)] * 4, lrs5, {**muon_default, "weight_decay": 0.05})
muon_case("muon_experts_b", [(40, 8)] * 4, lrs5, {**muon_default, "weight_decay": 0.05})

adamw_default = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}
adamw_case("adamw_basic", [(64,), (8, 16)], [1e-2, 5e-3, 2e-2, 1e-3, 1e-2, 1e-2], adamw_default)
adamw_case("adamw_betas", [(32,)], [1e-2, 1e-2, 1e-2, 1e-2],
           {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.0})

for nm, shp in [("ns_r16_wide", (16, 2880)), ("ns_r16_tall", (2880, 16)), ("ns_small", (24, 40)),
                ("ns_square", (32, 32))]:
    ns_case(nm, shp)

schedule_case("schedule_recipe", 40, 0.05, 0.0)
schedule_case("schedule_floor", 100, 0.1, 0.1)
schedule_case("schedule_short", 7, 0.3, 0.0)

os.makedirs(OUT, exist_ok=True)
tmp = os.path.join(OUT, "optim.safetensors.tmp")
save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
          metadata={"generator": "scripts/gen_optim_fixtures.py", "torch": torch.__version__})
os.chmod(tmp, 0o644)
os.replace(tmp, os.path.join(OUT, "optim.safetensors"))
tmp = os.path.join(OUT, "cases.json.tmp")
with open(tmp, "w") as f:
    json.dump({"torch": torch.__version__, "bf16_tol": BF16_TOL, "cases": cases}, f, indent=1)
    f.write("\n")
os.replace(tmp, os.path.join(OUT, "cases.json"))
print("wrote", os.path.normpath(OUT))
