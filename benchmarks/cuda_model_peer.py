#!/usr/bin/env python3
"""Peer of bench_model_cuda: Hugging Face transformers on the same GPU, in the same device call.

A random Mistral-7B-shaped MistralForCausalLM built on the GPU in bf16 (no download), SDPA
attention, sliding window 4096, batch 1. Measures prefill tok/s for each prompt length (one
forward with logits_to_keep=1, after a warm-up at that length) and decode tok/s two ways: a forward loop over
the KV cache with greedy argmax read back to the host every token (what bench_model_cuda does),
and `generate` (greedy, fixed number of new tokens). Prints one JSON line.

    python3 benchmarks/cuda_model_peer.py [--layers 32] [--prompt 512,4096] [--decode 64]
"""
import argparse
import json
import time

import torch
import transformers
from transformers import MistralConfig, MistralForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", default="512,4096")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--attn", default="sdpa")
    a = ap.parse_args()
    prompts = [int(p) for p in a.prompt.split(",")]
    cfg = MistralConfig(vocab_size=32002, hidden_size=4096, intermediate_size=14336, num_hidden_layers=a.layers,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128, sliding_window=4096,
                        max_position_embeddings=32768, rope_theta=10000.0)
    cfg._attn_implementation = a.attn
    torch.manual_seed(0)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = MistralForCausalLM(cfg)
    model.eval()
    torch.cuda.synchronize()
    build_s = time.time() - t0
    out = {"bench": "model_cuda_peer", "peer": "transformers " + transformers.__version__ + " bf16 " + a.attn,
           "layers": a.layers, "device": torch.cuda.get_device_name(), "build_s": build_s, "prefill": []}
    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        for i, T in enumerate(prompts):
            ids = torch.randint(0, cfg.vocab_size, (1, T), generator=g).cuda()
            model(ids, use_cache=True, logits_to_keep=1)  # warm-up at every length (as bench_model_cuda)
            torch.cuda.synchronize()
            t = time.time()
            model(ids, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            s = time.time() - t
            out["prefill"].append({"prompt": T, "tok_s": T / s, "s": s})
        # decode after the first prompt: forward loop with the host reading each token
        ids = torch.randint(0, cfg.vocab_size, (1, prompts[0]), generator=g).cuda()
        r = model(ids, use_cache=True, logits_to_keep=1)
        past, nxt = r.past_key_values, int(r.logits[0, -1].argmax())
        for _ in range(2):  # warm-up
            r = model(torch.tensor([[nxt]], device="cuda"), past_key_values=past, use_cache=True)
            past, nxt = r.past_key_values, int(r.logits[0, -1].argmax())
        t = time.time()
        for _ in range(a.decode):
            r = model(torch.tensor([[nxt]], device="cuda"), past_key_values=past, use_cache=True)
            past, nxt = r.past_key_values, int(r.logits[0, -1].argmax())
        out["decode_loop_tok_s"] = a.decode / (time.time() - t)
        # generate: new tokens only (its prefill of the prompt is timed apart and removed)
        torch.cuda.synchronize()
        t = time.time()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        one = time.time() - t
        t = time.time()
        model.generate(ids, max_new_tokens=a.decode + 1, min_new_tokens=a.decode + 1, do_sample=False)
        torch.cuda.synchronize()
        out["decode_generate_tok_s"] = a.decode / max(1e-9, time.time() - t - one)
    out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    print(json.dumps(out))


if __name__ == "__main__":
    main()
