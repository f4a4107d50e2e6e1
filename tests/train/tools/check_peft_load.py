#!/usr/bin/env python3
"""Checks that adapter folders written by limarp/train/checkpoint.hpp load in Hugging Face PEFT.

    python3 tests/train/tools/check_peft_load.py FIXTURE_DIR REWRITTEN_ALL7 CHECKPOINT_DIR

FIXTURE_DIR     tests/golden/swa_long (base model, golden.json, adapters/all7/ref_logits.npy)
REWRITTEN_ALL7  the all7 fixture adapter read with read_lora_parameters() and written back with
                write_peft_adapter(): PeftModel.from_pretrained must give the fixture's logits
CHECKPOINT_DIR  a write_checkpoint() folder (rsLoRA, r 4, plus training_state.safetensors)
For each folder: every LoRA weight PEFT loaded equals the file's tensor exactly, the scaling
is the config's, and the model runs. Exit status 1 on any mismatch.
"""
import json
import math
import os
import sys

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def load_npy(path):
    return np.load(path)


def check_folder(fixture, folder, ids):
    base = AutoModelForCausalLM.from_pretrained(fixture, dtype=torch.float32, attn_implementation="eager")
    pm = PeftModel.from_pretrained(base, folder)
    pm.eval()
    cfg = pm.peft_config["default"]
    sd = load_file(os.path.join(folder, "adapter_model.safetensors"))
    params = dict(pm.named_parameters())
    bad = 0
    for name, t in sd.items():
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        p = params.get(key)
        if p is None or not torch.equal(p.detach().cpu(), t):
            print(f"  MISMATCH {name}")
            bad += 1
    scale = cfg.lora_alpha / (math.sqrt(cfg.r) if cfg.use_rslora else cfg.r)
    q = pm.base_model.model.model.layers[0].self_attn.q_proj
    if abs(q.scaling["default"] - scale) > 1e-12:
        print(f"  scaling {q.scaling['default']} != {scale}")
        bad += 1
    with torch.no_grad():
        logits = pm(torch.tensor([ids])).logits[0].float().numpy()
    print(f"  {folder}: peft {cfg.peft_type} r={cfg.r} alpha={cfg.lora_alpha} rslora={cfg.use_rslora} "
          f"targets={sorted(cfg.target_modules)} tensors={len(sd)} equal={len(sd) - bad}")
    return bad, logits


def main():
    fixture, rewritten, ckpt = sys.argv[1:4]
    import peft, transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    ids = json.load(open(os.path.join(fixture, "golden.json")))["ids"]
    bad, logits = check_folder(fixture, rewritten, ids)
    ref = load_npy(os.path.join(fixture, "adapters", "all7", "ref_logits.npy"))
    diff = float(np.abs(logits - ref).max())
    print(f"  rewritten all7 vs fixture logits: max |diff| = {diff:.3g} (rel {diff / float(np.abs(ref).max()):.3g})")
    if diff > 1e-4:
        bad += 1
    b2, _ = check_folder(fixture, ckpt, ids)
    bad += b2
    print("PEFT LOAD OK" if bad == 0 else f"PEFT LOAD FAILED ({bad} problems)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
