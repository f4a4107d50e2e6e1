#!/usr/bin/env python3
"""Reference values for tests/train/test_adamw.cpp: torch.optim.AdamW on CPU float32 tensors.

    python3 tests/train/tools/make_adamw_ref.py > tests/train/data/adamw_torch.json

Two parameter tensors (sizes 19 and 8, so both the vector and the scalar tails of PyTorch's
CPU kernels are used), 6 steps with fresh gradients each step, weight decay on, two betas
settings. Every float is written as its IEEE bits (uint32) so the test can compare bit for bit.
"""
import json
import struct
import sys

import torch


def bits(t):
    return [struct.unpack("<I", struct.pack("<f", float(x)))[0] for x in t.detach().flatten().tolist()]


def run(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [19, 8]
    params = [torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float32)) for n in shapes]
    init = [bits(p) for p in params]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    steps = []
    for s in range(cfg["steps"]):
        grads = [torch.randn(n, generator=g, dtype=torch.float32) * (0.1 + s) for n in shapes]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        lr = cfg["lr"] * (1.0 if s < 3 else 0.5)  # a schedule change mid-way (param_group lr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.step()
        steps.append(dict(lr=lr, grads=[bits(x) for x in grads], params=[bits(p) for p in params],
                          exp_avg=[bits(opt.state[p]["exp_avg"]) for p in params],
                          exp_avg_sq=[bits(opt.state[p]["exp_avg_sq"]) for p in params]))
    return dict(config=cfg, shapes=shapes, init=init, steps=steps)


cases = [
    run(dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01, steps=6), 1),
    run(dict(lr=3e-2, betas=[0.3, 0.95], eps=1e-6, weight_decay=0.1, steps=6), 2),
]
json.dump(dict(torch=torch.__version__, cases=cases), sys.stdout)
