#!/usr/bin/env python3
"""Check that `osstune adapters export --format peft` loads in PEFT and gives osstune's logits.

Run by hand from the repository root after `cargo build --release` (venv with torch,
transformers >= 5, peft >= 0.17, safetensors):

    /tmp/refvenv/bin/python scripts/check_peft_export.py
    /tmp/refvenv/bin/python scripts/check_peft_export.py --model DIR --adapter DIR

Without --adapter it makes one: a few `osstune train` steps on the fixture model
(fixtures/train/model) with synthetic samples and a large learning rate, so that every factor
(B included) is nonzero. Then:
1. `osstune adapters export --format peft` → PeftModel.from_pretrained(base, export);
2. `osstune adapters logits` → osstune's base + adapter logits for a token sequence;
3. asserts max |PEFT logits - osstune logits| <= 1e-4 (f32), and that the adapter changes
   the logits by much more than that (so the check could fail).
Exit status 0 = pass.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def sh(*args):
    print("+", " ".join(args), file=sys.stderr)
    subprocess.run(args, check=True)


def make_adapter(bin_, model, tmp):
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    g = torch.Generator().manual_seed(0)
    vocab = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
    for name, n in [("train.jsonl", 16), ("valid.jsonl", 2)]:
        with open(os.path.join(data, name), "w") as f:
            for _ in range(n):
                ids = torch.randint(0, vocab, (24,), generator=g).tolist()
                f.write(json.dumps({"input_ids": ids, "loss_mask": [0] * 8 + [1] * 16}) + "\n")
    out = os.path.join(tmp, "adapter")
    sh(bin_, "train", "--model", model, "--data", data, "--out", out, "--steps", "3", "--quiet",
       "--set", "optim.muon.lr=0.05", "--set", "optim.schedule.warmup_ratio=0.0",
       "--set", "train.micro_batch=2", "--set", "train.grad_accum=1", "--set", "data.max_seq_len=64")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "fixtures/train/model"))
    ap.add_argument("--adapter", default=None, help="osstune adapter folder (default: train one)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/osstune"))
    args = ap.parse_args()

    from peft import PeftModel
    from transformers import GptOssForCausalLM

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or make_adapter(args.bin, args.model, tmp)
        peft_dir = os.path.join(tmp, "peft")
        sh(args.bin, "adapters", "export", "--adapter", adapter, "--format", "peft", "--out", peft_dir)
        vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
        ids = torch.randint(0, vocab, (40,), generator=torch.Generator().manual_seed(1)).tolist()
        ids_s = ",".join(map(str, ids))
        ours_f = os.path.join(tmp, "ours.safetensors")
        base_f = os.path.join(tmp, "base.safetensors")
        sh(args.bin, "adapters", "logits", "--model", args.model, "--adapter", adapter,
           "--ids", ids_s, "--out", ours_f)
        sh(args.bin, "adapters", "logits", "--model", args.model, "--ids", ids_s, "--out", base_f)
        ours = load_file(ours_f)["logits"]
        base_ours = load_file(base_f)["logits"]

        base = GptOssForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        pm = PeftModel.from_pretrained(base, peft_dir)
        pm.eval()
        with torch.no_grad():
            theirs = pm(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        err = (theirs - ours).abs().max().item()
        effect = (ours - base_ours).abs().max().item()
        print(f"max |PEFT - osstune| logits = {err:.3e}; adapter effect on logits = {effect:.3e}")
        ok = err <= 1e-4 and effect > 100 * max(err, 1e-6)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
