#!/usr/bin/env python3
"""Generate limarp's golden fixtures with Hugging Face transformers (+ PEFT when installed).

Run on the GPU machine (transformers/PEFT live there); the computation itself runs on the
CPU in float32 so that no TF32 or reduced-precision kernel leaks into the references.

    python3 tests/golden/make_golden.py --out tests/golden

For every fixture folder <out>/<name>/ it writes:
  config.json, model.safetensors   the bf16 model, saved by save_pretrained
  golden.json                      token ids, greedy continuation, metadata
  logits.npy                       float32 [T, vocab] reference logits (eager attention)
The references come from a float32 model whose weights equal the bf16 weights exactly
(a float32 model is rounded through bf16, then a deep copy is cast to bf16 and saved;
rotary buffers are never cast, see the pitfall in issue 2).
With PEFT, <out>/swa_long/adapters/<name>/ holds PEFT adapters (save_pretrained) and
references with the adapter applied: logits, loss, LoRA gradients, 5 AdamW step losses.
"""
import argparse
import copy
import json
import os
import re
import sys

import numpy as np
import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

import transformers
from transformers import MistralConfig, MistralForCausalLM

FIXTURES = [
    # name, config kwargs, layout, seq_len, greedy prompt len, greedy new tokens
    dict(name="swa_long", layout="new", seq=48, gprompt=8, gnew=56,
         cfg=dict(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                  rope_theta=10000.0)),
    dict(name="gqa4_old", layout="old", seq=64, gprompt=6, gnew=80,
         cfg=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=8, sliding_window=24,
                  rope_theta=10000.0)),
    dict(name="full_attn_hd", layout="new", seq=40, gprompt=5, gnew=48,
         cfg=dict(vocab_size=1000, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, head_dim=32, sliding_window=None,
                  rope_theta=1000000.0)),
]


def make_config(cfg):
    cfg = dict(cfg)
    theta = cfg.pop("rope_theta")
    common = dict(max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, hidden_act="silu")
    try:
        c = MistralConfig(**cfg, **common, rope_parameters={"rope_type": "default", "rope_theta": theta})
    except TypeError:
        c = MistralConfig(**cfg, **common, rope_theta=theta)
    c._attn_implementation = "eager"
    return c


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # [out, in] linear weight
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
            p.copy_(p.to(torch.bfloat16).to(torch.float32))  # exactly representable in bf16


def rewrite_layout(path, layout):
    with open(path) as f:
        c = json.load(f)
    if layout == "old":
        rp = c.pop("rope_parameters", None) or {}
        c.pop("rope_scaling", None)
        c["rope_theta"] = rp.get("rope_theta", c.get("rope_theta", 10000.0))
        if "dtype" in c:
            c["torch_dtype"] = c.pop("dtype")
    else:
        theta = c.pop("rope_theta", None)
        if "rope_parameters" not in c or c["rope_parameters"] is None:
            c["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)


@torch.no_grad()
def greedy(model, prompt, n_new):
    """Greedy continuation recomputing the whole sequence each step (no cache: exact semantics)."""
    ids = list(prompt)
    margins = []
    for _ in range(n_new):
        logits = model(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(int(top.indices[0]))
    return ids[len(prompt):], min(margins)


def save_npy(path, a):
    np.save(path, np.ascontiguousarray(a, dtype=np.float32))


def make_fixture(fx, out, seed):
    d = os.path.join(out, fx["name"])
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(seed)
    cfg = make_config(fx["cfg"])
    model = MistralForCausalLM(cfg).float().eval()
    init_weights(model, seed)
    bf = copy.deepcopy(model).to(torch.bfloat16)
    bf.save_pretrained(d, safe_serialization=True)
    rewrite_layout(os.path.join(d, "config.json"), fx["layout"])
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)

    g = torch.Generator().manual_seed(seed + 1)
    V = cfg.vocab_size
    ids = [1] + torch.randint(3, V, (fx["seq"] - 1,), generator=g).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    save_npy(os.path.join(d, "logits.npy"), logits)
    lp = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1)
    loss = float(-lp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).mean())
    gprompt = ids[: fx["gprompt"]]
    gen, margin = greedy(model, gprompt, fx["gnew"])
    meta = dict(ids=ids, loss=loss, greedy_prompt=gprompt, greedy_new=gen, greedy_min_margin=margin,
                transformers=transformers.__version__, torch=torch.__version__, layout=fx["layout"],
                attn_implementation="eager", seed=seed)
    print(f"{fx['name']}: T={len(ids)} loss={loss:.5f} greedy min top1-top2 margin={margin:.4g}", flush=True)
    return d, model, ids, meta


def lora_fixtures(d, model, ids, meta, seed):
    try:
        import peft
        from peft import LoraConfig, get_peft_model
    except ImportError:
        print("PEFT not installed: adapter fixtures skipped", flush=True)
        return
    meta["peft"] = peft.__version__
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    specs = {
        "all7": dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets),
        "rslora_regex": dict(r=4, lora_alpha=8, lora_dropout=0.0, use_rslora=True,
                             target_modules=r".*\.(q_proj|v_proj|down_proj)",
                             rank_pattern={"layers.0.self_attn.q_proj": 6}, alpha_pattern={"down_proj": 3}),
    }
    x = torch.tensor([ids])
    adapters = {}
    for k, (aname, spec) in enumerate(specs.items()):
        base = copy.deepcopy(model)
        pm = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=True, **spec))
        g = torch.Generator().manual_seed(seed + 100 + k)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
                elif "lora_A" in n:
                    p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
        pm.eval()
        ad = os.path.join(d, "adapters", aname)
        pm.save_pretrained(ad)
        out = pm(x, labels=x)
        save_npy(os.path.join(ad, "ref_logits.npy"), out.logits[0].detach().float().numpy())
        loss = out.loss
        pm.zero_grad()
        loss.backward()
        grads = {}
        for n, p in pm.named_parameters():
            if p.requires_grad and p.grad is not None:
                key = n.replace(".default", "")
                grads[key] = p.grad.detach().float().contiguous().clone()
        from safetensors.torch import save_file
        save_file(grads, os.path.join(ad, "ref_grads.safetensors"))
        info = dict(loss=float(loss), n_lora_tensors=len(grads))
        if aname == "all7":
            lr, wd = 1e-3, 0.01
            opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999),
                                    eps=1e-8, weight_decay=wd)
            losses = []
            for _ in range(5):
                opt.zero_grad()
                l = pm(x, labels=x).loss
                losses.append(float(l))
                l.backward()
                opt.step()
            info.update(adamw=dict(lr=lr, betas=[0.9, 0.999], eps=1e-8, weight_decay=wd, losses=losses,
                                   note="loss before each of 5 steps, dropout off (eval mode), full-batch"))
        with open(os.path.join(ad, "ref.json"), "w") as f:
            json.dump(info, f, indent=2)
        adapters[aname] = info
        print(f"adapter {aname}: loss={float(loss):.5f} grads={len(grads)}", flush=True)
    meta["adapters"] = adapters


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    for i, fx in enumerate(FIXTURES):
        d, model, ids, meta = make_fixture(fx, a.out, a.seed + 10 * i)
        if fx["name"] == "swa_long":
            lora_fixtures(d, model, ids, meta, a.seed)
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
