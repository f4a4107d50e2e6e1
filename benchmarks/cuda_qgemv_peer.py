#!/usr/bin/env python3
"""PyTorch peer of bench_cuda_qgemv: the same decode GEMV shapes (batch 1) through torch, timed the
same way (CUDA events around N launches cycling through weight copies larger than L2, median of
R repetitions, stream launches and a CUDA graph replay), with the device-to-device copy bandwidth
measured in the same process.

Peers, per shape (n_out x n_in):
  bf16      torch.nn.functional.linear(x_bf16 [1, n_in], W_bf16 [n_out, n_in]): cuBLAS bf16 GEMV,
            2 bytes per weight (twice the bytes of the int8 kernel); the usual fp16/bf16 decode path.
  dequant   x_bf16 @ (q.to(bf16) * s[:, None]).T: what a plain PyTorch int8 weight-only layer does
            without a fused kernel (dequantizes the whole weight every call).
  int8pack  torch._weight_int8pack_mm(x_bf16, q, s) where this build supports it on CUDA (skipped
            otherwise): PyTorch's own fused int8 weight-only matmul.
GB/s counts the bytes each peer must move at least (its weights + x + y once); "of copy" is that
over the copy bandwidth.

    python3 benchmarks/cuda_qgemv_peer.py [--iters 200] [--reps 15] [--rotate-mb 512] [--json FILE]
"""
import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F

SHAPES = [("q_proj/o_proj", 4096, 4096), ("k_proj/v_proj", 1024, 4096), ("gate_proj/up_proj", 14336, 4096),
          ("down_proj", 4096, 14336), ("lm_head", 32000, 4096)]


def events():
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def copy_bandwidth(reps):
    n = 1 << 30
    src = torch.ones(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    a, b = events()
    times = []
    for r in range(reps + 3):
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        if r >= 3:
            times.append(a.elapsed_time(b))
    del src, dst
    return 2 * n / (statistics.median(times) * 1e-3) / 1e9


def time_fn(fn, copies, iters, reps):
    """Median microseconds per call of fn(i) for i cycling over copies: stream launches, graph replay."""
    for i in range(2 * copies + 10):
        fn(i % copies)
    torch.cuda.synchronize()
    a, b = events()
    times = []
    k = 0
    for _ in range(reps):
        a.record()
        for _ in range(iters):
            fn(k % copies)
            k += 1
        b.record()
        b.synchronize()
        times.append(1000.0 * a.elapsed_time(b) / iters)
    stream_us = statistics.median(times)
    graph_us = None
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(3):
                fn(i % copies)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(iters):
                fn(i % copies)
        g.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            times.append(1000.0 * a.elapsed_time(b) / iters)
        graph_us = statistics.median(times)
        del g
    except Exception as e:  # a peer that cannot be captured still has its stream figure
        print(f"  (graph capture failed: {type(e).__name__}: {e})")
    return stream_us, graph_us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rotate-mb", type=float, default=512)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth(args.reps)
    print(f"device: {props.name}; torch {torch.__version__}; copy (1 GiB D2D, read+write): {copy_gbs:.0f} GB/s")
    out = {"device": props.name, "torch": torch.__version__, "copy_gbs": copy_gbs, "results": []}
    print(f"{'module':18s} {'shape':13s} {'peer':9s} {'copies':>6s} {'stream us':>9s} {'GB/s':>7s} "
          f"{'of copy':>7s} {'graph us':>9s} {'GB/s':>7s} {'of copy':>7s}")
    for module, n_out, n_in in SHAPES:
        x = torch.randn(1, n_in, device="cuda").to(torch.bfloat16)
        y_bytes = 2 * n_out
        # bf16 GEMV
        wbytes = 2 * n_out * n_in
        copies = max(2, math.ceil(args.rotate_mb * 1e6 / wbytes))
        ws = [torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        peers = [("bf16", lambda i: F.linear(x, ws[i]), wbytes + 2 * n_in + y_bytes, copies)]
        # int8 weights (+ f32 per-row scales) for the dequant and int8pack peers
        qbytes = n_out * n_in + 4 * n_out
        qcopies = max(2, math.ceil(args.rotate_mb * 1e6 / qbytes))
        qs = [torch.randint(-127, 128, (n_out, n_in), device="cuda", dtype=torch.int8) for _ in range(qcopies)]
        ss = [torch.rand(n_out, device="cuda") * 0.01 + 0.001 for _ in range(qcopies)]
        ssb = [s.to(torch.bfloat16) for s in ss]
        peers.append(("dequant", lambda i: x @ (qs[i].to(torch.bfloat16) * ssb[i][:, None]).T,
                      qbytes + 2 * n_in + y_bytes, qcopies))
        try:
            yi = torch._weight_int8pack_mm(x, qs[0], ssb[0])
            ref = (x.float() @ (qs[0].float() * ssb[0].float()[:, None]).T)
            err = ((yi.float() - ref).norm() / ref.norm()).item()
            print(f"  _weight_int8pack_mm on CUDA runs (rel err vs f32 {err:.2e})")
            peers.append(("int8pack", lambda i: torch._weight_int8pack_mm(x, qs[i], ssb[i]),
                          qbytes + 2 * n_in + y_bytes, qcopies))
        except Exception as e:
            if module == SHAPES[0][0]:
                print(f"  _weight_int8pack_mm not usable on CUDA here: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        for name, fn, nbytes, c in peers:
            stream_us, graph_us = time_fn(fn, c, args.iters, args.reps)
            gs = nbytes / (stream_us * 1e-6) / 1e9
            gg = nbytes / (graph_us * 1e-6) / 1e9 if graph_us else float("nan")
            print(f"{module:18s} {f'{n_out}x{n_in}':13s} {name:9s} {c:6d} {stream_us:9.2f} {gs:7.0f} "
                  f"{gs / copy_gbs:7.3f} {graph_us or float('nan'):9.2f} {gg:7.0f} {gg / copy_gbs:7.3f}")
            out["results"].append({"module": module, "n_out": n_out, "n_in": n_in, "peer": name, "copies": c,
                                   "bytes": nbytes, "stream_us": stream_us, "graph_us": graph_us,
                                   "stream_gbs": gs, "graph_gbs": gg if graph_us else None,
                                   "stream_of_copy": gs / copy_gbs, "graph_of_copy": gg / copy_gbs if graph_us else None})
        del ws, qs, ss, ssb, peers
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
