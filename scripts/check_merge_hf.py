#!/usr/bin/env python3
"""Does the real client agree with `osstune merge --format hf`? Run by hand (CI never runs Python):

    cargo build --release
    /tmp/refvenv/bin/python scripts/check_merge_hf.py [--osstune target/release/osstune] [--work DIR]

Steps:
1. `osstune bench merge --layers 2 --keep --base-experts dense --dtype f32` writes a random
   bench-shaped gpt-oss base (hidden 512, 16 experts, vocab 8192, dense bf16 experts), a random
   osstune adapter on every target (nonzero B) and the merged `hf` checkpoint (f32).
2. `osstune adapters export --format peft` turns the adapter into a PEFT adapter.
3. transformers loads the base (float32) and PEFT attaches the exported adapter (unmerged);
   transformers loads the merged checkpoint on its own. The logits of a probe batch must agree
   (max |Δ| below --tol), while the adapter itself must move them (else the check is vacuous).

Exit status 0 = agreement. Prints the numbers either way.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--osstune", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "osstune"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="osstune-check-merge-")
    run = lambda *a: subprocess.run([args.osstune, *a], check=True)
    run("bench", "merge", "--layers", "2", "--keep", "--base-experts", "dense", "--dtype", "f32",
        "--format", "hf", "--work", work)
    base, adapter, merged = (os.path.join(work, f"{n}-2") for n in ("base", "adapter", "merged"))
    peft_dir = os.path.join(work, "peft")
    if not os.path.exists(peft_dir):
        run("adapters", "export", "--adapter", adapter, "--format", "peft", "--out", peft_dir)

    torch.manual_seed(0)
    ids = torch.randint(0, 8192, (2, 24))
    with torch.no_grad():
        m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        m.eval()
        plain = m(ids).logits
        pm = PeftModel.from_pretrained(m, peft_dir)
        pm.eval()
        ref = pm(ids).logits
        del pm, m
        mm = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
        mm.eval()
        got = mm(ids).logits
    effect = (ref - plain).abs().max().item()
    diff = (got - ref).abs().max().item()
    print(f"adapter effect (PEFT vs base): max |Δlogit| {effect:.3e}")
    print(f"merged (transformers) vs PEFT(base + exported adapter): max |Δlogit| {diff:.3e} (tol {args.tol:g})")
    ok = diff <= args.tol and effect > 10 * args.tol
    print("OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
