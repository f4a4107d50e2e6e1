// bench_cuda_persistent_decode: a feasibility study for issue 6's "persistent decode kernel": the
// int8 GEMV chain of a decode step (32 Mistral-7B-shaped layers: RMSNorm, q/k/v, o_proj + residual,
// RMSNorm, gate/up + SwiGLU, down_proj + residual) in ONE cooperative launch whose phases are
// separated by grid-wide barriers, against the bandwidth floor of its weight bytes (the
// device-to-device copy bandwidth measured in the same process).
//
//   bench_cuda_persistent_decode [--kernel tc|tc8|ring|registers] [--layers 32] [--reps 20]
//                                [--check-layers 2] [--mode 0|1|2|3] [--no-rows] [--l2-items 0] [--blocks-per-sm 1]
//
// What it is not: the model's decode. The attention is left out (the o_proj phase reads the q part
// of the q/k/v output where the attention output would be), as is the lm_head; random weights.
// It asks whether the GEMV phases and their hand-offs can run nearer the copy bandwidth in one
// launch than the model's chained kernels (benchmarks/NOTES.md, session 12: their ramps and tails
// cost ~0.56 ms a token on an H200), before anything is built into the model.
//
// Kernels (one block per multiprocessor, all resident; cross-block data read through L2 only):
// - registers (v1): 256 threads; warp w of the grid takes rows w, w + NW, ... in 4096-byte items,
//   two items in flight a warp (a register double buffer), the next phase's first item issued
//   before the barrier; x in shared memory (f32, swizzled against bank conflicts); int8 -> f32 by a
//   byte permute into 2^23's mantissa and one FMA a weight. --l2-items N also asks the L2 for the
//   next phase's items 1..N (item 0 goes to the registers; measured slower).
// - ring (v2): a producer warp streams every phase's weights with cp.async.bulk into a ring of
//   shared-memory stages (8 rows x 4096 bytes, completing on mbarriers) without ever waiting for a
//   grid barrier, 8 consumer warps (one row of each stage a warp) do v1's arithmetic.
// - tc / tc8 (v3, `kernel<X>`; tc the default): v2's ring with a tensor-core consumer: 16-row
//   groups, the 8 consumer warps splitting each stage's columns (4 segments of 64 inputs a warp)
//   and the last warp of a group adding the 8 partial sums in warp order; a grid barrier on a
//   counter that only grows. How x enters the mma (X): tc (`F16HiLo`): int8 -> f16 exact (byte
//   permute into 1024 + (w + 128), one half2 subtract per two weights), x as two f16 columns
//   x_hi = f16(x), x_lo = f16(x - x_hi) of mma.m16n8k16 (f32 accumulate); tc8 (`Int8Digits`):
//   the int8 weights as they are into mma.m16n8k32.s8, x as four signed digits of base 128 (in
//   [-64, 63], the top one in [-64, 64]) with one scale for the vector (28 bits relative to
//   max|x|), exact int32 sums until a group's end.
// --mode (ring, tc, tc8): 1 no arithmetic (streaming, staging and barriers), 2 no copies (arithmetic on
// stale stages, the ring's handshakes, staging and barriers), 3 (tc, tc8 only) streaming alone (no
// arithmetic, staging or barriers); --no-rows: the phases without rows (staging and barriers
// alone). Both skip the correctness check; the registers kernel takes --no-rows, not --mode.
//
// Correctness: the first --check-layers layers are recomputed with plain one-kernel-per-op
// reference kernels (double accumulation) and the residual streams compared (max relative error
// printed; FAIL above 1e-4, and the exit status is 1).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_timing.cuh"
#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"

using namespace limarp;

namespace {

constexpr int kD = 4096, kQkv = 4096 + 2 * 1024, kFf = 14336;
#ifndef LIMARP_PERSIST_THREADS
#define LIMARP_PERSIST_THREADS 256
#endif
constexpr int kThreads = LIMARP_PERSIST_THREADS, kWarps = kThreads / 32;
constexpr float kEps = 1e-5f;

struct LayerW {
    const std::int8_t *qkv, *o, *gate, *up, *down;
    const float *s_qkv, *s_o, *s_gate, *s_up, *s_down;
    const float *n1, *n2;
};

struct Params {
    const LayerW* layers;
    int n_layers;
    float* h;      // [kD] residual stream
    float* qkv;    // [kQkv]
    float* hid;    // [kFf]
    unsigned* bar; // [3]: the flip barrier's count and generation (v1, v2); the growing count (v3)
    int l2_items;  // registers kernel: next-phase items a warp asks the L2 for (at most 31)
    int rows_on;   // 0: every phase has no rows (measures the barriers and the staging alone)
    int mode;      // ring kernels: 0 normal, 1 no arithmetic, 2 no copies (arithmetic on stale stages), 3 (tc) stream only
};

// ---- device helpers --------------------------------------------------------------------------

__device__ __forceinline__ uint4 ld_stream(const std::int8_t* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ float dot16(uint4 w, const float4 (&x)[4], float acc) {
    const unsigned words[4] = {w.x ^ 0x80808080u, w.y ^ 0x80808080u, w.z ^ 0x80808080u, w.w ^ 0x80808080u};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float xs[4] = {x[j].x, x[j].y, x[j].z, x[j].w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float wf = __uint_as_float(__byte_perm(words[j], 0x4B000000u, 0x7540u + i)) - 8388736.0f;
            acc = fmaf(wf, xs[i], acc);
        }
    }
    return acc;
}

// Position of x[k] in the staged copy: within each 512-value step, lane L's 16 values (k = 512 s +
// 16 L + 4 i + e) hold chunk i at slot (i + L / 2) % 4, so that the 8 lanes of a quarter warp
// reading chunk i touch 8 distinct groups of 4 banks.
__device__ __forceinline__ int swz(int k) {
    const int L = (k >> 4) & 31, i = (k >> 2) & 3;
    return (k & ~15) | ((((i + (L >> 1)) & 3)) << 2) | (k & 3);
}

__device__ __forceinline__ void load_x16(float4 (&x)[4], const float* xs, int k0, int lane) {
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = *reinterpret_cast<const float4*>(xs + k0 + (((i + (lane >> 1)) & 3) << 2));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// All blocks of the grid (all resident) meet here; writes before it are visible after it. `sync`
// synchronises the block's participating threads, `leader` is one of them.
template <class Sync>
__device__ __forceinline__ void grid_barrier_flip(unsigned* bar /*[2]: count, generation*/, bool leader, Sync sync) {
    sync();
    if (leader) {
        const unsigned gen = ld_acquire(bar + 1);
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            bar[0] = 0;
            __threadfence();
            atomicExch(bar + 1, gen + 1);
        } else {
            while (ld_acquire(bar + 1) == gen) {
            }
        }
        __threadfence();
    }
    sync();
}

// x staging, shared by the kernels: NT threads (t = 0..NT-1) of a block put(k, x[k]) for every k
// of the phase's input, then sync(). stage_norm: x = h / rms(h) * w (n = kD); stage_copy: x = src.
// norm_values: thread t's kD / NT values of h / rms(h) * w (k = t + i NT), red free again after it.
template <int NT, class Sync>
__device__ void norm_values(const float* h, const float* w, float* red /*[NT / 32]*/, int t, Sync sync,
                            float (&v)[kD / NT]) {
    static_assert(kD % NT == 0, "the norm gives each thread the same number of values");
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < kD / NT; ++i) {
        v[i] = __ldcg(h + t + i * NT);
        ss = fmaf(v[i], v[i], ss);
    }
    ss = warp_sum(ss);
    if ((t & 31) == 0) red[t / 32] = ss;
    sync();
    float tot = 0.f;
#pragma unroll
    for (int i = 0; i < NT / 32; ++i) tot += red[i];
    sync();
    const float inv = rsqrtf(tot / kD + kEps);
#pragma unroll
    for (int i = 0; i < kD / NT; ++i) v[i] *= inv * __ldg(w + t + i * NT);
}
template <int NT, class Sync, class Put>
__device__ void stage_norm(const float* h, const float* w, float* red, int t, Sync sync, Put put) {
    float v[kD / NT];
    norm_values<NT>(h, w, red, t, sync, v);
#pragma unroll
    for (int i = 0; i < kD / NT; ++i) put(t + i * NT, v[i]);
    sync();
}
template <int NT, class Sync, class Put>
__device__ void stage_copy(const float* src, int n, int t, Sync sync, Put put) {
    int k = t;
    for (; k + 7 * NT < n; k += 8 * NT) {  // 8 loads in flight a thread
        float v[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = __ldcg(src + k + i * NT);
#pragma unroll
        for (int i = 0; i < 8; ++i) put(k + i * NT, v[i]);
    }
    for (; k < n; k += NT) put(k, __ldcg(src + k));
    sync();
}

// Phase ph's input (0 q/k/v: norm 1 of h; 1 o_proj: q, the attention's place; 2 gate/up: norm 2
// of h; 3 down_proj: the SwiGLU row) staged by the kernel's own norm(h, w) or copy(src, n).
template <class Norm, class Copy>
__device__ __forceinline__ void stage_input(int ph, const Params& p, const LayerW& L, Norm norm, Copy copy) {
    if (ph == 0) norm(p.h, L.n1);
    if (ph == 1) copy(p.qkv, kD);
    if (ph == 2) norm(p.h, L.n2);
    if (ph == 3) copy(p.hid, kFf);
}

// Phase ph's output for `row`: q/k/v as it is, o_proj and down_proj added to the residual
// (h_old, its value before the phase), gate/up (v, u) as silu(v) u.
__device__ __forceinline__ void store_output(const Params& p, int ph, int row, float v, float u, float h_old) {
    if (ph == 0)
        p.qkv[row] = v;
    else if (ph == 2)
        p.hid[row] = v / (1.f + __expf(-v)) * u;
    else
        p.h[row] = h_old + v;
}

// One GEMV phase's weight stream for a warp: P matrices (1, or 2 for gate/up) of K columns; item t
// is part (t / NSEG) % P of output row gw + (t / (NSEG P)) NW, columns [4096 seg, 4096 seg + 4096).
template <int K, int P>
struct Stream {
    static constexpr int kSteps = K / 512, kSeg = (kSteps + 7) / 8;
    const std::int8_t* w[P];
    const float* s[P];
    int n_rows, gw, nw;
    __device__ int items() const {
        const int rows = gw < n_rows ? (n_rows - gw + nw - 1) / nw : 0;
        return rows * kSeg * P;
    }
    __device__ __forceinline__ void issue(uint4 (&b)[8], float& sc, int t, int lane) const {
        const int seg = t % kSeg, part = (t / kSeg) % P, row = gw + (t / (kSeg * P)) * nw;
        const std::int8_t* base = (P == 2 && part ? w[P - 1] : w[0]) + static_cast<long long>(row) * K + seg * 4096 + lane * 16;
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (seg * 8 + j < kSteps) b[j] = ld_stream(base + j * 512);
        sc = __ldg((P == 2 && part ? s[P - 1] : s[0]) + row);
    }
    // Asks the L2 for item t's bytes (one bulk prefetch; no registers, no completion to wait for).
    __device__ __forceinline__ void prefetch_l2(int t) const {
        const int seg = t % kSeg, part = (t / kSeg) % P, row = gw + (t / (kSeg * P)) * nw;
        const std::int8_t* base = (P == 2 && part ? w[P - 1] : w[0]) + static_cast<long long>(row) * K + seg * 4096;
        const int bytes = (seg + 1) * 4096 <= K ? 4096 : K - seg * 4096;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base), "r"(bytes) : "memory");
    }
};

// The phase after the current one: its first item into the registers, its next `l2_items` items
// into the L2, both issued once the current phase has issued its last loads (weights depend on
// nothing the step computes, so this may run ahead of the grid barrier).
template <class S>
struct Next {
    const S* st;  // null: no next phase
    int l2_items;
    __device__ __forceinline__ void l2(int lane) const {
        if (!st) return;
        const int T = st->items();
        if (lane >= 1 && lane <= l2_items && lane < T) st->prefetch_l2(lane);
    }
    __device__ __forceinline__ void regs(uint4 (&b)[8], float& s, int lane) const {
        if (st && st->items() > 0) st->issue(b, s, 0, lane);
    }
};

template <int K, int P, class Epi, class Next>
__device__ __forceinline__ void gemv_phase(const Stream<K, P>& st, const float* xs, uint4 (&b0)[8], uint4 (&b1)[8],
                                           float& s0, float& s1, Epi epi, const Next& next, int lane) {
    constexpr int kSeg = Stream<K, P>::kSeg, kSteps = Stream<K, P>::kSteps;
    const int T = st.items();
    float acc0 = 0.f, acc1 = 0.f, first = 0.f;  // two accumulators: two FMA chains a lane
    const auto consume = [&](const uint4(&b)[8], float sc, int t) {
        const int seg = t % kSeg;
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (seg * 8 + j < kSteps) {
                float4 x[4];
                load_x16(x, xs, (seg * 8 + j) * 512 + lane * 16, lane);
                if (j % 2 == 0)
                    acc0 = dot16(b[j], x, acc0);
                else
                    acc1 = dot16(b[j], x, acc1);
                asm volatile("" ::: "memory");  // one step's x at a time (else all 8 steps' x stay live)
            }
        if (seg == kSeg - 1) {
            const float v = warp_sum(acc0 + acc1) * sc;
            acc0 = acc1 = 0.f;
            const int part = (t / kSeg) % P, row = st.gw + (t / (kSeg * P)) * st.nw;
            if constexpr (P == 2) {
                if (part == 0)
                    first = v;
                else if (lane == 0)
                    epi(row, first, v);
            } else {
                if (lane == 0) epi(row, v, 0.f);
            }
        }
    };
    bool prefetched = false;
    for (int t = 0; t < T; t += 2) {
        if (t + 1 < T) st.issue(b1, s1, t + 1, lane);
        if (t + 2 >= T) next.l2(lane);  // this phase's last loads are out
        consume(b0, s0, t);
        if (t + 2 < T) {
            st.issue(b0, s0, t + 2, lane);
        } else {
            next.regs(b0, s0, lane);
            prefetched = true;
        }
        if (t + 1 < T) consume(b1, s1, t + 1);
    }
    if (!prefetched) {
        next.l2(lane);
        next.regs(b0, s0, lane);
    }
}

// v1's staging: all threads, x swizzled in shared memory.
__device__ __forceinline__ void block_sync() { __syncthreads(); }
__device__ void v1_stage_norm(float* xs, const float* h, const float* w, float* red) {
    stage_norm<kThreads>(h, w, red, static_cast<int>(threadIdx.x), block_sync, [&](int k, float v) { xs[swz(k)] = v; });
}
__device__ void v1_stage_copy(float* xs, const float* src, int n) {
    stage_copy<kThreads>(src, n, static_cast<int>(threadIdx.x), block_sync, [&](int k, float v) { xs[swz(k)] = v; });
}

__global__ void __launch_bounds__(kThreads, 1) persistent_kernel(Params p) {
    extern __shared__ __align__(16) float xs[];  // kFf floats
    __shared__ float red[kWarps];
    const int lane = threadIdx.x & 31;
    const int gw = blockIdx.x * kWarps + threadIdx.x / 32, nw = gridDim.x * kWarps;
    uint4 b0[8], b1[8];
    float s0 = 0.f, s1 = 0.f;
    const auto qkv_stream = [&](int l) {
        return Stream<kD, 1>{{p.layers[l].qkv}, {p.layers[l].s_qkv}, p.rows_on ? kQkv : 0, gw, nw};
    };
    const auto o_stream = [&](int l) { return Stream<kD, 1>{{p.layers[l].o}, {p.layers[l].s_o}, p.rows_on ? kD : 0, gw, nw}; };
    const auto gu_stream = [&](int l) {
        return Stream<kD, 2>{{p.layers[l].gate, p.layers[l].up}, {p.layers[l].s_gate, p.layers[l].s_up}, p.rows_on ? kFf : 0, gw, nw};
    };
    const auto down_stream = [&](int l) {
        return Stream<kFf, 1>{{p.layers[l].down}, {p.layers[l].s_down}, p.rows_on ? kD : 0, gw, nw};
    };
    const int l2n = p.l2_items;
    {
        const auto st = qkv_stream(0);
        Next<decltype(st)>{&st, 0}.regs(b0, s0, lane);
    }
    for (int l = 0; l < p.n_layers; ++l) {
        const auto norm = [&](const float* h, const float* w) { v1_stage_norm(xs, h, w, red); };
        const auto copy = [&](const float* src, int n) { v1_stage_copy(xs, src, n); };
        stage_input(0, p, p.layers[l], norm, copy);
        {
            const auto qkv = qkv_stream(l);
            const auto o = o_stream(l);
            gemv_phase(qkv, xs, b0, b1, s0, s1, [&](int r, float v, float) { store_output(p, 0, r, v, 0.f, 0.f); },
                       Next<decltype(o)>{&o, l2n}, lane);
        }
        grid_barrier_flip(p.bar, threadIdx.x == 0, block_sync);
        stage_input(1, p, p.layers[l], norm, copy);
        {
            const auto o = o_stream(l);
            const auto gu = gu_stream(l);
            gemv_phase(o, xs, b0, b1, s0, s1,
                       [&](int r, float v, float) { store_output(p, 1, r, v, 0.f, __ldcg(p.h + r)); },
                       Next<decltype(gu)>{&gu, l2n}, lane);
        }
        grid_barrier_flip(p.bar, threadIdx.x == 0, block_sync);
        stage_input(2, p, p.layers[l], norm, copy);
        {
            const auto gu = gu_stream(l);
            const auto down = down_stream(l);
            gemv_phase(
                gu, xs, b0, b1, s0, s1,
                [&](int r, float g, float u) { store_output(p, 2, r, g, u, 0.f); },
                Next<decltype(down)>{&down, l2n}, lane);
        }
        grid_barrier_flip(p.bar, threadIdx.x == 0, block_sync);
        stage_input(3, p, p.layers[l], norm, copy);
        {
            const auto down = down_stream(l);
            const auto nq = qkv_stream(l + 1 < p.n_layers ? l + 1 : l);
            gemv_phase(down, xs, b0, b1, s0, s1,
                       [&](int r, float v, float) { store_output(p, 3, r, v, 0.f, __ldcg(p.h + r)); },
                       Next<decltype(nq)>{l + 1 < p.n_layers ? &nq : nullptr, l2n}, lane);
        }
        grid_barrier_flip(p.bar, threadIdx.x == 0, block_sync);
    }
}

// ---- shared by the ring kernels (v2, v3) ------------------------------------------------------

// Named barrier 1 over the N consumer warps (the producer warp, warp 0, never joins it).
template <int N>
__device__ __forceinline__ void consumer_warps_sync() {
    asm volatile("bar.sync 1, %0;" ::"n"(N * 32) : "memory");
}

__device__ __forceinline__ unsigned su32(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_wait(std::uint64_t* b, unsigned parity) {
    asm volatile(
        "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}\n" ::"r"(su32(b)),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, std::uint64_t* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(su32(dst)),
                 "l"(src), "r"(bytes), "r"(su32(bar))
                 : "memory");
}

// Phase ph of a layer (0 q/k/v, 1 o_proj, 2 gate/up, 3 down_proj) in groups of Rows rows (gate/up:
// Rows indices, a gate and an up row each) and chunks of Chunk bytes a row (gate/up: Chunk / 2 of
// each).
struct RingPhase {
    int K, groups, chunks, chunk_bytes;
    bool pair;
};
template <int Rows, int Chunk>
__device__ __forceinline__ RingPhase ring_phase(int ph, bool rows_on) {
    const int on = rows_on ? 1 : 0;
    switch (ph) {
        case 0: return {kD, on * kQkv / Rows, kD / Chunk, Chunk, false};
        case 1: return {kD, on * kD / Rows, kD / Chunk, Chunk, false};
        case 2: return {kD, on * kFf / Rows, kD / (Chunk / 2), Chunk / 2, true};
        default: return {kFf, on * kD / Rows, (kFf + Chunk - 1) / Chunk, Chunk, false};
    }
}
__device__ __forceinline__ int my_groups(int groups) {
    const int b = static_cast<int>(blockIdx.x), n = static_cast<int>(gridDim.x);
    return groups > b ? (groups - b + n - 1) / n : 0;
}

// A consumer warp is done with a slot: its lanes read it through the generic proxy and the
// producer refills it through the async one (the bulk copy), so each lane fences the two proxies,
// then lane 0 arrives on the slot's "empty" mbarrier.
__device__ __forceinline__ void ring_release(std::uint64_t* empty_slot, int lane) {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncwarp();
    if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(su32(empty_slot)) : "memory");
}

// Thread 0 initialises the ring's mbarriers: "full" completes on the producer's arrival plus the
// stage's bytes, "empty" on one arrival of each consumer warp. The caller synchronises the block.
template <int Stages, int Consumers>
__device__ __forceinline__ void ring_init(std::uint64_t* full, std::uint64_t* empty) {
    if (threadIdx.x != 0) return;
    for (int s = 0; s < Stages; ++s) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(su32(full + s)) : "memory");
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(su32(empty + s)), "n"(Consumers) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// The producer warp of a ring kernel: walks the consumers' stage sequence (layers, phases, the
// block's groups, chunks), and for each stage waits for its slot, arms the slot's mbarrier with the
// stage's bytes and copies Rows rows (gate/up: Rows gate and Rows up rows) of the chunk, plus the
// group's scales with its first chunk. Layout places them: row(r, up) and scales(up) are offsets in
// the stage.
template <int Rows, int Chunk, int Stages, int StageBytes, class Layout>
__device__ __forceinline__ void ring_producer(const Params& p, unsigned char* ring, std::uint64_t* full, std::uint64_t* empty, int lane,
                              Layout layout) {
    static_assert(2 * Rows <= 32, "one lane a row");
    const int gb = static_cast<int>(blockIdx.x), gn = static_cast<int>(gridDim.x);
    int i = 0;
    for (int l = 0; l < p.n_layers; ++l) {
        const LayerW& L = p.layers[l];
        for (int ph = 0; ph < 4; ++ph) {
            const RingPhase f = ring_phase<Rows, Chunk>(ph, p.rows_on);
            const std::int8_t* w0 = ph == 0 ? L.qkv : ph == 1 ? L.o : ph == 2 ? L.gate : L.down;
            const float* s0 = ph == 0 ? L.s_qkv : ph == 1 ? L.s_o : ph == 2 ? L.s_gate : L.s_down;
            const int G = my_groups(f.groups);
            for (int j = 0; j < G; ++j) {
                const int g = gb + j * gn;
                for (int c = 0; c < f.chunks; ++c, ++i) {
                    const int slot = i % Stages;
                    if (i >= Stages) mbar_wait(empty + slot, ((i / Stages) - 1) & 1);
                    if (p.mode == 2) {  // no copies: the slot is "full" at once (stale bytes), the handshakes stay
                        if (lane == 0)
                            asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(su32(full + slot)) : "memory");
                        continue;
                    }
                    const int cb = min(f.chunk_bytes, f.K - c * f.chunk_bytes);
                    const unsigned scale_bytes = c == 0 ? (f.pair ? 8u : 4u) * Rows : 0u;
                    const unsigned total = (f.pair ? 2u : 1u) * Rows * cb + scale_bytes;
                    if (lane == 0)
                        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(su32(full + slot)),
                                     "r"(total)
                                     : "memory");
                    __syncwarp();
                    unsigned char* st = ring + slot * StageBytes;
                    if (lane < (f.pair ? 2 * Rows : Rows)) {  // a lane a row (a loop here was 5% slower)
                        const int r = lane % Rows, up = lane / Rows;
                        const std::int8_t* src = (up ? L.up : w0) + static_cast<long long>(g * Rows + r) * f.K +
                                                 static_cast<long long>(c) * f.chunk_bytes;
                        bulk_copy(st + layout.row(r, up, f.pair), src, static_cast<unsigned>(cb), full + slot);
                    }
                    if (c == 0 && lane == 0) bulk_copy(st + layout.scales(0), s0 + g * Rows, 4u * Rows, full + slot);
                    if (c == 0 && lane == 1 && f.pair)
                        bulk_copy(st + layout.scales(1), L.s_up + g * Rows, 4u * Rows, full + slot);
                }
            }
        }
    }
}

// ---- v2: a producer warp streams every phase's weights into a shared-memory ring --------------
//
// Block: warp 0 the producer (its lanes issue cp.async.bulk copies, completing on the stage's
// "full" mbarrier), warps 1..8 the consumers. A stage holds one chunk (up to 4096 bytes) of 8 rows
// of a group (gate/up: 8 indices, each row slot half gate half up, 2048 bytes of each) and, with
// the group's first chunk, their scales. The producer walks the same stage sequence as the
// consumers (layers, phases, the block's groups, chunks) and never waits for a grid barrier: it
// is bounded only by the ring's free slots, so the weights keep streaming while the consumers
// meet at the barriers and stage x. Consumer warp w takes row w of each stage, the whole chunk
// (no reduction across warps), releases the slot (the "empty" mbarrier, one arrival a warp).
namespace v2 {

#ifndef LIMARP_PERSIST_CONSUMERS
#define LIMARP_PERSIST_CONSUMERS 8
#endif
constexpr int kConsumers = LIMARP_PERSIST_CONSUMERS, kThreads = 32 * (kConsumers + 1);
#ifndef LIMARP_PERSIST_STAGES
#define LIMARP_PERSIST_STAGES 5
#endif
constexpr int kStages = LIMARP_PERSIST_STAGES;
constexpr int kRows = kConsumers;                    // a stage: one chunk of one row for each consumer warp
constexpr int kChunk = 32768 / kRows;                 // bytes of a row in a stage (2048 with 16 consumers)
constexpr int kStageBytes = kRows * kChunk + 128;     // rows, then the scales (2 x kRows floats), padded
constexpr int kXBytes = kFf * 4;
constexpr int kSmem = kXBytes + kStages * kStageBytes + 2 * kStages * 8;

__device__ __forceinline__ void consumers_sync() { consumer_warps_sync<kConsumers>(); }

using Phase = RingPhase;
__device__ __forceinline__ Phase phase_of(int ph, bool rows_on) { return ring_phase<kRows, kChunk>(ph, rows_on); }

__device__ void v2_stage_norm(float* xs, const float* h, const float* w, float* red, int ct) {
    stage_norm<kConsumers * 32>(h, w, red, ct, consumers_sync, [&](int k, float v) { xs[swz(k)] = v; });
}
__device__ void v2_stage_copy(float* xs, const float* src, int n, int ct) {
    stage_copy<kConsumers * 32>(src, n, ct, consumers_sync, [&](int k, float v) { xs[swz(k)] = v; });
}

// stage layout: row r of the group at r * kChunk (gate/up: gate then up half), then the scales
struct Layout {
    __device__ int row(int r, int up, bool) const { return r * kChunk + up * (kChunk / 2); }
    __device__ int scales(int up) const { return kRows * kChunk + up * 4 * kRows; }
};

__global__ void __launch_bounds__(kThreads, 1) kernel(Params p) {
    extern __shared__ __align__(128) unsigned char smem[];
    float* xs = reinterpret_cast<float*>(smem);
    unsigned char* ring = smem + kXBytes;
    std::uint64_t* full = reinterpret_cast<std::uint64_t*>(ring + kStages * kStageBytes);
    std::uint64_t* empty = full + kStages;
    __shared__ float red[kConsumers];
    const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
    ring_init<kStages, kConsumers>(full, empty);
    __syncthreads();
    const int gb = static_cast<int>(blockIdx.x), gn = static_cast<int>(gridDim.x);

    if (warp == 0) {  // ---- producer
        ring_producer<kRows, kChunk, kStages, kStageBytes>(p, ring, full, empty, lane, Layout{});
        return;
    }

    // ---- consumers
    const int cw = warp - 1, ct = static_cast<int>(threadIdx.x) - 32;
    int i = 0;
    for (int l = 0; l < p.n_layers; ++l) {
        const LayerW& L = p.layers[l];
        for (int ph = 0; ph < 4; ++ph) {
            stage_input(
                ph, p, L, [&](const float* h, const float* w) { v2_stage_norm(xs, h, w, red, ct); },
                [&](const float* src, int n) { v2_stage_copy(xs, src, n, ct); });
            const Phase f = phase_of(ph, p.rows_on);
            const int G = my_groups(f.groups);
            for (int j = 0; j < G; ++j) {
                const int g = gb + j * gn;
                float a0 = 0.f, a1 = 0.f, u0 = 0.f, u1 = 0.f, sc = 0.f, scu = 0.f;
                for (int c = 0; c < f.chunks; ++c, ++i) {
                    const int slot = i % kStages;
                    mbar_wait(full + slot, (i / kStages) & 1);
                    const unsigned char* st = ring + slot * kStageBytes + cw * kChunk;
                    if (c == 0) {
                        sc = reinterpret_cast<const float*>(ring + slot * kStageBytes + kRows * kChunk)[cw];
                        if (f.pair)
                            scu = reinterpret_cast<const float*>(ring + slot * kStageBytes + kRows * kChunk + 4 * kRows)[cw];
                    }
                    if (p.mode == 1) {
                    } else if (f.pair) {  // the chunk's steps of gate and the same steps of up against one x
#pragma unroll
                        for (int s = 0; s < kChunk / 1024; ++s) {
                            float4 x[4];
                            load_x16(x, xs, c * (kChunk / 2) + s * 512 + lane * 16, lane);
                            const uint4 wg = *reinterpret_cast<const uint4*>(st + s * 512 + lane * 16);
                            const uint4 wu = *reinterpret_cast<const uint4*>(st + kChunk / 2 + s * 512 + lane * 16);
                            if (s % 2 == 0) {
                                a0 = dot16(wg, x, a0);
                                u0 = dot16(wu, x, u0);
                            } else {
                                a1 = dot16(wg, x, a1);
                                u1 = dot16(wu, x, u1);
                            }
                        }
                    } else {
                        const int steps = min(f.chunk_bytes, f.K - c * f.chunk_bytes) / 512;
#pragma unroll
                        for (int s = 0; s < kChunk / 512; ++s)
                            if (s < steps) {
                                float4 x[4];
                                load_x16(x, xs, c * kChunk + s * 512 + lane * 16, lane);
                                const uint4 wv = *reinterpret_cast<const uint4*>(st + s * 512 + lane * 16);
                                if (s % 2 == 0)
                                    a0 = dot16(wv, x, a0);
                                else
                                    a1 = dot16(wv, x, a1);
                            }
                    }
                    ring_release(empty + slot, lane);
                }
                const float v = warp_sum(a0 + a1) * sc;
                const float u = f.pair ? warp_sum(u0 + u1) * scu : 0.f;
                const int row = g * kRows + cw;
                if (lane == 0) store_output(p, ph, row, v, u, ph == 1 || ph == 3 ? __ldcg(p.h + row) : 0.f);
            }
            grid_barrier_flip(p.bar, ct == 0, consumers_sync);
        }
    }
}

}  // namespace v2

// ---- v3: the ring of v2 with a tensor-core consumer ----------------------------------------------
//
// The v2 consumer spends ~3.6 instructions a weight byte (int8 -> f32 in two, one FMA, x from
// shared memory) and cannot keep up with the memory at 8-9 warps a multiprocessor. Here a warp
// multiplies 16 rows x 16 inputs per mma.sync.m16n8k16 (f16 in, f32 accumulate): the int8 weights
// become f16 exactly (byte permute into 1024 + (w + 128), one half2 subtract for two weights), and
// x enters as two f16 columns, x_hi = f16(x) and x_lo = f16(x - x_hi) (22 significant bits), so
// W x = W x_hi + W x_lo to about f32 rounding; the other 6 columns of the mma are zeros. A lane's
// 16-byte load of a row feeds four mmas (the inputs' order inside a k-block is free as long as x
// follows it). A group is 16 rows (gate/up: 16 indices, 32 rows); the 8 consumer warps split each
// stage's columns (64-byte segments) and reduce their 16 (32) partial sums through shared memory
// at the group's end (no barrier: the last warp to finish the group adds them and writes).
namespace v3 {

constexpr int kConsumers = 8;  // the stage layout below gives 8 warps 4 segments each (gate/up: 2)
__device__ __forceinline__ void consumers_sync() { consumer_warps_sync<kConsumers>(); }
constexpr int kThreads = 32 * (kConsumers + 1);
constexpr int kStages = 4;
constexpr int kGroupRows = 16;
constexpr int kChunk = 2048;                       // bytes of a row in a stage (gate/up: 1024 of each)
constexpr int kPad = 64;                           // row stride kChunk + 64: rows r and r+1 on other banks
constexpr int kRowStride = kChunk + kPad;          // gate/up: 32 rows of (1024 + 64)
constexpr int kPairStride = kChunk / 2 + kPad;
constexpr int kStageBytes = 32 * kPairStride + 128;  // >= 16 * kRowStride; + scales (2 x 16 floats)
constexpr int kScaleOff = 32 * kPairStride;
constexpr int kXHalf = kFf * 2 + 16;               // F16HiLo: bytes of one f16 copy of x (+16: lo on other banks)
constexpr int kDigitStride = kFf + 64;             // Int8Digits: bytes of one digit row (+64: other banks)
constexpr int kXBytes = 4 * kDigitStride > 2 * kXHalf ? 4 * kDigitStride : 2 * kXHalf;
constexpr int kSmem = kXBytes + kStages * kStageBytes + 2 * kStages * 8;
static_assert(16 * kRowStride <= 32 * kPairStride, "stage layout");
static_assert(kD % kChunk == 0 && kFf % kChunk == 0 && kChunk % (128 * kConsumers) == 0, "whole chunks, whole segments");

using Phase = RingPhase;
__device__ __forceinline__ Phase phase_of(int ph, bool rows_on) { return ring_phase<kGroupRows, kChunk>(ph, rows_on); }
// stage layout: row r (gate/up: gate rows 0..15, then up rows) at r * the row stride, then scales
struct Layout {
    __device__ int row(int r, int up, bool pair) const { return (r + up * kGroupRows) * (pair ? kPairStride : kRowStride); }
    __device__ int scales(int up) const { return kScaleOff + up * 4 * kGroupRows; }
};

// Grid barrier on a counter that only grows (zeroed before the launch): each block adds 1 with a
// release and waits for `target` = (barriers passed + 1) x blocks; no returning atomic, no second
// flag.
__device__ __forceinline__ void grid_barrier_count(unsigned* count, unsigned target, int ct) {
    consumers_sync();
    if (ct == 0) {
        __threadfence();
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
        while (ld_acquire(count) < target) {
        }
    }
    consumers_sync();
}

// ---- how x enters the mmas: two policies for the kernel below. Each stages x into shared memory
// (stage_norm: x = h / rms(h) * w; stage_copy: x = src), loads a lane's B fragment for the 64
// inputs at k0 (load_b), multiplies a 64-byte segment of 16 rows into its accumulators (segment),
// and at a group's end gives rows n and n + 8 of its partial sums on the lanes with q == 0
// (row_sums), to be multiplied by scale().

// F16HiLo: x as two f16 columns of mma.m16n8k16 (f32 accumulate), x_hi = f16(x), x_lo = f16(x - x_hi)
// (22 significant bits for 2^-3 <= |x| <= 65504: x_lo is subnormal below, x_hi infinite above);
// the int8 weights become f16 exactly (byte permute into 1024 + (w + 128), one half2 subtract per
// two weights). Four mmas a segment.
struct F16HiLo {
    struct Acc {
        float d[4][4] = {};
    };
    struct B {
        uint4 v[2];
    };
    unsigned char* xs;
    __device__ __half* hi() const { return reinterpret_cast<__half*>(xs); }
    __device__ __half* lo() const { return reinterpret_cast<__half*>(xs + kXHalf); }
    __device__ void put(int k, float v) const {
        const __half h = __float2half_rn(v);
        hi()[k] = h;
        lo()[k] = __float2half_rn(v - __half2float(h));
    }
    __device__ void stage_norm(const float* h, const float* w, float* red, int ct) const {
        ::stage_norm<kConsumers * 32>(h, w, red, ct, consumers_sync, [&](int k, float v) { put(k, v); });
    }
    __device__ void stage_copy(const float* src, int n, float*, int ct) const {
        ::stage_copy<kConsumers * 32>(src, n, ct, consumers_sync, [&](int k, float v) { put(k, v); });
    }
    __device__ float scale() const { return 1.f; }
    __device__ B load_b(int k0, int lane) const {  // column n = lane / 4: 0 x_hi, 1 x_lo, others zero
        B b{{make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)}};
        const int n = lane >> 2, q = lane & 3;
        if (n < 2) {
            const __half* xp = (n == 0 ? hi() : lo()) + k0 + q * 16;
            b.v[0] = *reinterpret_cast<const uint4*>(xp);
            b.v[1] = *reinterpret_cast<const uint4*>(xp + 8);
        }
        return b;
    }
    // Word j of a row's 16 bytes -> the two f16x2 A registers (weights 0,1 and 2,3), exact.
    static __device__ __forceinline__ void to_f16x2(unsigned word, unsigned& lo2, unsigned& hi2) {
        const unsigned u = word ^ 0x80808080u;  // w + 128
        const unsigned a = __byte_perm(u, 0x64646464u, 0x4140u), b = __byte_perm(u, 0x64646464u, 0x4342u);
        const __half2 bias = __halves2half2(__float2half(1152.f), __float2half(1152.f));
        const __half2 ha = __hsub2(*reinterpret_cast<const __half2*>(&a), bias);
        const __half2 hb = __hsub2(*reinterpret_cast<const __half2*>(&b), bias);
        lo2 = *reinterpret_cast<const unsigned*>(&ha);
        hi2 = *reinterpret_cast<const unsigned*>(&hb);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
    // A lane's 16-byte load of row g (and g + 8) feeds four mmas: the inputs' order inside a k-block
    // is free as long as x follows it.
    static __device__ __forceinline__ void segment(Acc& acc, const unsigned char* rows, int rs, const B& bx, int lane,
                                                   int /*sub: four accumulators already*/) {
        const int g = lane >> 2, q = lane & 3;
        const uint4 r0 = *reinterpret_cast<const uint4*>(rows + g * rs + q * 16);
        const uint4 r1 = *reinterpret_cast<const uint4*>(rows + (g + 8) * rs + q * 16);
        const unsigned w0[4] = {r0.x, r0.y, r0.z, r0.w}, w1[4] = {r1.x, r1.y, r1.z, r1.w};
        const unsigned b[8] = {bx.v[0].x, bx.v[0].y, bx.v[0].z, bx.v[0].w, bx.v[1].x, bx.v[1].y, bx.v[1].z, bx.v[1].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            unsigned a0, a2, a1, a3;
            to_f16x2(w0[j], a0, a2);
            to_f16x2(w1[j], a1, a3);
            mma(acc.d[j], a0, a1, a2, a3, b[2 * j], b[2 * j + 1]);
        }
    }
    static __device__ void row_sums(const Acc& a, int, float& r0, float& r1) {  // columns 0 (hi) + 1 (lo)
        r0 = r1 = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            r0 += a.d[j][0] + a.d[j][1];
            r1 += a.d[j][2] + a.d[j][3];
        }
    }
};

// Int8Digits: the int8 weights go into mma.m16n8k32.s8 as they are; x enters as four signed digits
// of base 128 (columns 0..3; d0..d2 in [-64, 63], d3 in [-64, 64]):
// x = s (d0 + 2^7 d1 + 2^14 d2 + 2^21 d3) with one s = max|x| / 2^27 for
// the whole vector (28 bits relative to the largest |x|), so a group's int32 sums are exact and
// become f32 once, at its end. Two mmas a segment, no conversion of the weights.
struct Int8Digits {
    struct Acc {
        int d[2][4] = {};  // two sets (alternate segments): two independent mma chains
    };
    using B = uint4;
    unsigned char* xs;
    float* s;  // shared: the vector's scale
    __device__ signed char* digit(int n) const { return reinterpret_cast<signed char*>(xs + n * kDigitStride); }
    __device__ void put(int k, float v, float inv) const {
        int X = __float2int_rn(v * inv);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            const int d = n < 3 ? ((X + 64) & 127) - 64 : X;
            digit(n)[k] = static_cast<signed char>(d);
            X = (X - d) >> 7;
        }
    }
    // The block's largest |value| (every consumer thread passes its own).
    static __device__ float block_max(float m, float* red, int ct) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if ((ct & 31) == 0) red[ct / 32] = m;
        consumers_sync();
        float t = 0.f;
#pragma unroll
        for (int i = 0; i < kConsumers; ++i) t = fmaxf(t, red[i]);
        consumers_sync();  // red is reused
        return t;
    }
    __device__ float set_scale(float mx, int ct) const {  // returns 1 / s
        const float sc = mx > 0.f ? mx / 134217728.f : 1.f;
        if (ct == 0) *s = sc;
        return 1.f / sc;
    }
    __device__ void stage_norm(const float* h, const float* w, float* red, int ct) const {
        constexpr int NT = kConsumers * 32, PER = kD / NT;
        float v[PER], m = 0.f;
        norm_values<NT>(h, w, red, ct, consumers_sync, v);
#pragma unroll
        for (int i = 0; i < PER; ++i) m = fmaxf(m, fabsf(v[i]));
        const float inv = set_scale(block_max(m, red, ct), ct);
#pragma unroll
        for (int i = 0; i < PER; ++i) put(ct + i * NT, v[i], inv);
        consumers_sync();
    }
    __device__ void stage_copy(const float* src, int n, float* red, int ct) const {  // two passes over src (L2)
        constexpr int NT = kConsumers * 32;
        float m = 0.f;
        for (int k = ct; k < n; k += 8 * NT) {
            float v[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = k + i * NT < n ? __ldcg(src + k + i * NT) : 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(v[i]));
        }
        const float inv = set_scale(block_max(m, red, ct), ct);
        for (int k = ct; k < n; k += 8 * NT) {
            float v[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = k + i * NT < n ? __ldcg(src + k + i * NT) : 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i)
                if (k + i * NT < n) put(k + i * NT, v[i], inv);
        }
        consumers_sync();
    }
    __device__ float scale() const { return *s; }
    __device__ B load_b(int k0, int lane) const {  // column n = lane / 4: digit n, columns 4..7 zero
        const int n = lane >> 2, q = lane & 3;
        return n < 4 ? *reinterpret_cast<const uint4*>(digit(n) + k0 + q * 16) : make_uint4(0, 0, 0, 0);
    }
    static __device__ __forceinline__ void mma(int (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ void segment(Acc& acc, const unsigned char* rows, int rs, const B& bx, int lane,
                                                   int sub) {
        const int g = lane >> 2, q = lane & 3;
        const uint4 ra = *reinterpret_cast<const uint4*>(rows + g * rs + q * 16);
        const uint4 rb = *reinterpret_cast<const uint4*>(rows + (g + 8) * rs + q * 16);
        int(&d)[4] = acc.d[sub];
        mma(d, ra.x, rb.x, ra.y, rb.y, bx.x, bx.y);
        mma(d, ra.z, rb.z, ra.w, rb.w, bx.z, bx.w);
    }
    // Lane 4n holds digits 0 and 1 of rows n and n + 8, lane 4n + 1 digits 2 and 3.
    static __device__ void row_sums(const Acc& a, int lane, float& r0, float& r1) {
        const bool high = (lane & 3) == 1;
        const float f0 = high ? 16384.f : 1.f, f1 = high ? 2097152.f : 128.f;
        const int d0 = a.d[0][0] + a.d[1][0], d1 = a.d[0][1] + a.d[1][1];  // exact: |sum| < 2^31
        const int d2 = a.d[0][2] + a.d[1][2], d3 = a.d[0][3] + a.d[1][3];
        r0 = static_cast<float>(d0) * f0 + static_cast<float>(d1) * f1;
        r1 = static_cast<float>(d2) * f0 + static_cast<float>(d3) * f1;
        if ((lane & 3) > 1) r0 = r1 = 0.f;
        r0 += __shfl_down_sync(0xffffffffu, r0, 1);
        r1 += __shfl_down_sync(0xffffffffu, r1, 1);
    }
};

template <class X>
__global__ void __launch_bounds__(kThreads, 1) kernel(Params p) {
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* ring = smem + kXBytes;
    std::uint64_t* full = reinterpret_cast<std::uint64_t*>(ring + kStages * kStageBytes);
    std::uint64_t* empty = full + kStages;
    __shared__ float red[kConsumers];
    __shared__ float part[4][kConsumers][32];  // partial sums of the last 4 groups (warps run <= 4 stages apart)
    __shared__ int done[4];                     // warps finished with the group in that slot
    __shared__ float x_scale;
    X x;
    x.xs = smem;
    if constexpr (requires { x.s; }) x.s = &x_scale;
    const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
    ring_init<kStages, kConsumers>(full, empty);
    if (threadIdx.x < 4) done[threadIdx.x] = 0;
    __syncthreads();
    const int gb = static_cast<int>(blockIdx.x), gn = static_cast<int>(gridDim.x);

    if (warp == 0) {  // ---- producer
        ring_producer<kGroupRows, kChunk, kStages, kStageBytes>(p, ring, full, empty, lane, Layout{});
        return;
    }

    // ---- consumers
    const int cw = warp - 1, ct = static_cast<int>(threadIdx.x) - 32;
    const int n = lane >> 2, q = lane & 3;
    int i = 0, gcount = 0;
    unsigned nbar = 0;
    for (int l = 0; l < p.n_layers; ++l) {
        const LayerW& L = p.layers[l];
        for (int ph = 0; ph < 4; ++ph) {
            if (p.mode != 3)
                stage_input(
                    ph, p, L, [&](const float* h, const float* w) { x.stage_norm(h, w, red, ct); },
                    [&](const float* src, int n) { x.stage_copy(src, n, red, ct); });
            const Phase f = phase_of(ph, p.rows_on);
            const int G = my_groups(f.groups), rs = f.pair ? kPairStride : kRowStride;
            for (int j = 0; j < G; ++j, ++gcount) {
                const int g = gb + j * gn;
                typename X::Acc d, e;  // e: the up rows (gate/up)
                float sc = 0.f, scu = 0.f;
                // o_proj / down_proj add into h: the old values are read now, not at the group's end (by
                // every warp: any of them may finish the group last)
                const float h_old = (ph == 1 || ph == 3) && lane < 16 ? __ldcg(p.h + g * 16 + lane) : 0.f;
                for (int c = 0; c < f.chunks; ++c, ++i) {
                    const int slot = i % kStages;
                    mbar_wait(full + slot, (i / kStages) & 1);
                    const unsigned char* st = ring + slot * kStageBytes;
                    if (c == 0 && lane < 16) {
                        sc = reinterpret_cast<const float*>(st + kScaleOff)[lane];
                        if (f.pair) scu = reinterpret_cast<const float*>(st + kScaleOff + 64)[lane];
                    }
                    // every chunk is whole (K % kChunk == 0): 4 segments a warp (gate/up: 2 of each)
                    if (p.mode != 1 && p.mode != 3) {
                        if (f.pair) {
#pragma unroll
                            for (int u = 0; u < kChunk / 128 / kConsumers; ++u) {
                                const int s = cw + u * kConsumers;
                                const typename X::B bx = x.load_b(c * f.chunk_bytes + s * 64, lane);
                                X::segment(d, st + s * 64, rs, bx, lane, u & 1);
                                X::segment(e, st + 16 * rs + s * 64, rs, bx, lane, u & 1);
                            }
                        } else {
#pragma unroll
                            for (int u = 0; u < kChunk / 64 / kConsumers; ++u) {
                                const int s = cw + u * kConsumers;
                                const typename X::B bx = x.load_b(c * f.chunk_bytes + s * 64, lane);
                                X::segment(d, st + s * 64, rs, bx, lane, u & 1);
                            }
                        }
                    }
                    ring_release(empty + slot, lane);
                }
                // this warp's partial sums: lanes with q == 0 hold rows n (d[.][0] + d[.][1]) and n + 8;
                // the last warp to finish the group adds the 8 partials in warp order and writes the
                // outputs (no barrier: the others go on to the next group)
                const int buf = gcount & 3;
                {
                    float r0, r1, u0 = 0.f, u1 = 0.f;
                    X::row_sums(d, lane, r0, r1);
                    if (f.pair) X::row_sums(e, lane, u0, u1);
                    if (q == 0) {
                        part[buf][cw][n] = r0;
                        part[buf][cw][n + 8] = r1;
                        part[buf][cw][16 + n] = u0;
                        part[buf][cw][16 + n + 8] = u1;
                    }
                }
                __syncwarp();  // the warp's partials are written (lanes 0, 4, ..., 28)
                int last = 0;
                if (lane == 0) {
                    __threadfence_block();
                    last = atomicAdd(&done[buf], 1) == kConsumers - 1;
                    __threadfence_block();
                }
                last = __shfl_sync(0xffffffffu, last, 0);
                __syncwarp();
                if (last) {
                    if (lane < 16) {
                        float v = 0.f, u = 0.f;
#pragma unroll
                        for (int w = 0; w < kConsumers; ++w) {
                            v += part[buf][w][lane];
                            u += part[buf][w][16 + lane];
                        }
                        const float xsc = x.scale();
                        store_output(p, ph, g * 16 + lane, v * sc * xsc, u * scu * xsc, h_old);
                    }
                    if (lane == 0) done[buf] = 0;
                }
            }
            ++nbar;
            if (p.mode != 3) grid_barrier_count(p.bar + 2, nbar * gridDim.x, ct);
        }
    }
}

}  // namespace v3


// ---- reference kernels (plain, one op a launch) -------------------------------------------------

__global__ void ref_gemv(float* y, const std::int8_t* w, const float* s, const float* x, int n_out, int K, int mode,
                         const std::int8_t* w2, const float* s2) {
    // mode 0: y = Wx; 1: y += Wx; 2: y = silu(Wx) * (W2 x)
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= n_out) return;
    double a = 0, a2 = 0;
    for (int k = lane; k < K; k += 32) {
        a += static_cast<double>(w[static_cast<long long>(row) * K + k]) * x[k];
        if (mode == 2) a2 += static_cast<double>(w2[static_cast<long long>(row) * K + k]) * x[k];
    }
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        a2 += __shfl_xor_sync(0xffffffffu, a2, o);
    }
    if (lane) return;
    const float v = static_cast<float>(a) * s[row];
    if (mode == 0) y[row] = v;
    if (mode == 1) y[row] += v;
    if (mode == 2) y[row] = v / (1.f + expf(-v)) * (static_cast<float>(a2) * s2[row]);
}

__global__ void ref_norm(float* y, const float* h, const float* w) {
    __shared__ double red[32];
    double ss = 0;
    for (int k = threadIdx.x; k < kD; k += blockDim.x) ss += static_cast<double>(h[k]) * h[k];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = ss;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) t += red[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(t / kD + kEps));
    for (int k = threadIdx.x; k < kD; k += blockDim.x) y[k] = h[k] * inv * w[k];
}

__device__ __forceinline__ float hash_uniform(unsigned long long i, unsigned long long seed) {
    unsigned long long x = i * 0x9E3779B97F4A7C15ull + seed;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return static_cast<float>(x >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_i8(std::int8_t* p, std::size_t n, unsigned long long seed) {
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
        p[i] = static_cast<std::int8_t>(lrintf(127.f * hash_uniform(i, seed)));
}
__global__ void fill_f32(float* p, std::size_t n, unsigned long long seed, float lo, float hi) {
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
        p[i] = lo + (hi - lo) * 0.5f * (hash_uniform(i, seed) + 1.f);
}

struct HostLayer {
    DeviceBuffer<std::int8_t> qkv, o, gate, up, down;
    DeviceBuffer<float> s_qkv, s_o, s_gate, s_up, s_down, n1, n2;
};

}  // namespace

int main(int argc, char** argv) try {
    int layers = 32, reps = 20, bps = 1, check_layers = 2, l2_items = 0, rows_on = 1, mode = 0;
    std::string kernel_name = "tc";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const auto val = [&] {
            if (i + 1 >= argc) throw ArgumentError(a + " needs a value");
            const char* v = argv[++i];
            char* end = nullptr;
            const long n = std::strtol(v, &end, 10);
            if (end == v || *end != '\0' || n < 0 || n > 1000000)
                throw ArgumentError(a + ": \"" + v + "\" is not a whole number from 0 to 1000000");
            return static_cast<int>(n);
        };
        if (a == "--layers") layers = val();
        else if (a == "--reps") reps = val();
        else if (a == "--blocks-per-sm") bps = val();
        else if (a == "--check-layers") check_layers = val();
        else if (a == "--l2-items") l2_items = std::clamp(val(), 0, 31);
        else if (a == "--no-rows") rows_on = 0;
        else if (a == "--mode") {
            mode = val();
            if (mode < 0 || mode > 3) throw ArgumentError("--mode: 0, 1, 2 or 3");
        }
        else if (a == "--kernel") {
            if (i + 1 >= argc) throw ArgumentError("--kernel needs a value");
            kernel_name = argv[++i];
            if (kernel_name != "ring" && kernel_name != "registers" && kernel_name != "tc" && kernel_name != "tc8")
                throw ArgumentError("--kernel: tc, tc8, ring or registers");
        }
        else if (a == "--help") {
            std::printf(
                "bench_cuda_persistent_decode [--kernel tc|tc8|ring|registers] [--layers 32] [--reps 20]\n"
                "    [--check-layers 2] [--mode 0|1|2|3] [--no-rows] [--l2-items 0] [--blocks-per-sm 1]\n"
                "The int8 GEMV chain of --layers decode layers in one launch, timed (median of --reps) against the\n"
                "copy bandwidth; the first --check-layers layers checked against reference kernels (exit 1 if off).\n"
                "--mode (ring, tc, tc8): 1 no arithmetic, 2 no weight copies, 3 (tc, tc8) streaming alone;\n"
                "--no-rows: barriers and staging alone; both skip the check. --l2-items (registers): next\n"
                "phase's items 1..N into the L2. See the file's header and benchmarks/NOTES.md.\n");
            return 0;
        } else throw ArgumentError("unknown argument " + a);
    }
    if (layers < 1 || reps < 1 || bps < 1) throw ArgumentError("--layers, --reps and --blocks-per-sm must be at least 1");
    if (mode != 0 && kernel_name == "registers") throw ArgumentError("--mode: the registers kernel has none (use --no-rows)");
    if (mode == 3 && kernel_name == "ring") throw ArgumentError("--mode 3: tc and tc8 only");
    check_layers = rows_on && mode == 0 ? std::min(check_layers, layers) : 0;
    cudaDeviceProp prop{};
    LIMARP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    if (prop.major < 9)
        throw ArgumentError("this study uses sm_90 instructions (cp.async.bulk, mbarrier transactions): it needs an "
                            "H100/H200-class GPU, this one is sm_" + std::to_string(prop.major * 10 + prop.minor));
    cudaStream_t stream;
    LIMARP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

    std::vector<HostLayer> hl;
    std::vector<LayerW> lw;
    double bytes = 0;
    for (int l = 0; l < layers; ++l) {
        HostLayer L{DeviceBuffer<std::int8_t>(std::size_t(kQkv) * kD, "qkv"), DeviceBuffer<std::int8_t>(std::size_t(kD) * kD, "o"),
                    DeviceBuffer<std::int8_t>(std::size_t(kFf) * kD, "gate"), DeviceBuffer<std::int8_t>(std::size_t(kFf) * kD, "up"),
                    DeviceBuffer<std::int8_t>(std::size_t(kD) * kFf, "down"), DeviceBuffer<float>(kQkv, "s"),
                    DeviceBuffer<float>(kD, "s"), DeviceBuffer<float>(kFf, "s"), DeviceBuffer<float>(kFf, "s"),
                    DeviceBuffer<float>(kD, "s"), DeviceBuffer<float>(kD, "n1"), DeviceBuffer<float>(kD, "n2")};
        const unsigned long long sd = 1000ull * l;
        fill_i8<<<1024, 256>>>(L.qkv.data(), L.qkv.size(), sd + 1);
        fill_i8<<<1024, 256>>>(L.o.data(), L.o.size(), sd + 2);
        fill_i8<<<1024, 256>>>(L.gate.data(), L.gate.size(), sd + 3);
        fill_i8<<<1024, 256>>>(L.up.data(), L.up.size(), sd + 4);
        fill_i8<<<1024, 256>>>(L.down.data(), L.down.size(), sd + 5);
        const float a4 = 1.f / (127.f * std::sqrt(4096.f)), a14 = 1.f / (127.f * std::sqrt(14336.f));
        fill_f32<<<64, 256>>>(L.s_qkv.data(), kQkv, sd + 6, 0.5f * a4, 1.5f * a4);
        fill_f32<<<64, 256>>>(L.s_o.data(), kD, sd + 7, 0.5f * a4, 1.5f * a4);
        fill_f32<<<64, 256>>>(L.s_gate.data(), kFf, sd + 8, 0.5f * a4, 1.5f * a4);
        fill_f32<<<64, 256>>>(L.s_up.data(), kFf, sd + 9, 0.5f * a4, 1.5f * a4);
        fill_f32<<<64, 256>>>(L.s_down.data(), kD, sd + 10, 0.5f * a14, 1.5f * a14);
        fill_f32<<<64, 256>>>(L.n1.data(), kD, sd + 11, 0.8f, 1.2f);
        fill_f32<<<64, 256>>>(L.n2.data(), kD, sd + 12, 0.8f, 1.2f);
        LIMARP_CUDA_CHECK_LAUNCH();
        lw.push_back({L.qkv.data(), L.o.data(), L.gate.data(), L.up.data(), L.down.data(), L.s_qkv.data(), L.s_o.data(),
                      L.s_gate.data(), L.s_up.data(), L.s_down.data(), L.n1.data(), L.n2.data()});
        bytes += (double(kQkv) + kD + 2.0 * kFf) * kD + double(kD) * kFf + 4.0 * (kQkv + kD + 2 * kFf + kD);
        hl.push_back(std::move(L));
    }
    LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
    DeviceBuffer<LayerW> d_lw(lw.size(), "layers");
    d_lw.upload(lw.data(), lw.size());
    DeviceBuffer<float> h(kD, "h"), h0(kD, "h0"), qkv(kQkv, "qkv"), hid(kFf, "hid"), xn(kD, "xn");
    DeviceBuffer<unsigned> bar(3, "barrier");  // v1/v2: count, generation; tc: a growing count
    LIMARP_CUDA_CHECK(cudaMemset(bar.data(), 0, bar.bytes()));
    fill_f32<<<16, 256>>>(h0.data(), kD, 77, -1.f, 1.f);
    LIMARP_CUDA_CHECK_LAUNCH();
    LIMARP_CUDA_CHECK(cudaDeviceSynchronize());  // the legacy stream does not order `stream` (non-blocking)

    const bool ring = kernel_name == "ring", tc8 = kernel_name == "tc8", tc = kernel_name == "tc" || tc8;
    const void* kfun = tc8    ? reinterpret_cast<const void*>(v3::kernel<v3::Int8Digits>)
                       : tc   ? reinterpret_cast<const void*>(v3::kernel<v3::F16HiLo>)
                       : ring ? reinterpret_cast<const void*>(v2::kernel)
                              : reinterpret_cast<const void*>(persistent_kernel);
    const int smem = tc ? v3::kSmem : ring ? v2::kSmem : kFf * 4;
    const int threads = tc ? v3::kThreads : ring ? v2::kThreads : kThreads;
    LIMARP_CUDA_CHECK(cudaFuncSetAttribute(kfun, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    int per_sm = 0;
    LIMARP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kfun, threads, smem));
    cudaFuncAttributes fa{};
    LIMARP_CUDA_CHECK(cudaFuncGetAttributes(&fa, kfun));
    std::printf("kernel %s: %d registers, %zu bytes local, %d bytes of shared memory, %d resident blocks/SM possible\n",
                kernel_name.c_str(), fa.numRegs, static_cast<std::size_t>(fa.localSizeBytes), smem, per_sm);
    if (per_sm < bps) throw ArgumentError("fewer resident blocks per SM than --blocks-per-sm");
    const int grid = prop.multiProcessorCount * bps;

    // tc / tc8: their grid barrier's counter only grows during a launch; zero it before each one
    const auto reset_count = [&] {
        if (tc) LIMARP_CUDA_CHECK(cudaMemsetAsync(bar.data() + 2, 0, sizeof(unsigned), stream));
    };
    const auto run_persistent = [&](int n_layers) {
        Params p{d_lw.data(), n_layers, h.data(), qkv.data(), hid.data(), bar.data(), l2_items, rows_on, mode};
        void* args[] = {&p};
        LIMARP_CUDA_CHECK(cudaLaunchCooperativeKernel(kfun, dim3(grid), dim3(threads), args, smem, stream));
    };

    // correctness over the first check_layers layers
    bool ok = true;
    if (check_layers > 0) {
        LIMARP_CUDA_CHECK(cudaMemcpyAsync(h.data(), h0.data(), h.bytes(), cudaMemcpyDeviceToDevice, stream));
        reset_count();
        run_persistent(check_layers);
        std::vector<float> got(kD), ref(kD);
        LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
        h.download(got.data(), kD);
        LIMARP_CUDA_CHECK(cudaMemcpyAsync(h.data(), h0.data(), h.bytes(), cudaMemcpyDeviceToDevice, stream));
        for (int l = 0; l < check_layers; ++l) {
            const LayerW& L = lw[l];
            ref_norm<<<1, 256, 0, stream>>>(xn.data(), h.data(), L.n1);
            ref_gemv<<<(kQkv + 7) / 8, 256, 0, stream>>>(qkv.data(), L.qkv, L.s_qkv, xn.data(), kQkv, kD, 0, nullptr, nullptr);
            ref_gemv<<<kD / 8, 256, 0, stream>>>(h.data(), L.o, L.s_o, qkv.data(), kD, kD, 1, nullptr, nullptr);
            ref_norm<<<1, 256, 0, stream>>>(xn.data(), h.data(), L.n2);
            ref_gemv<<<kFf / 8, 256, 0, stream>>>(hid.data(), L.gate, L.s_gate, xn.data(), kFf, kD, 2, L.up, L.s_up);
            ref_gemv<<<kD / 8, 256, 0, stream>>>(h.data(), L.down, L.s_down, hid.data(), kD, kFf, 1, nullptr, nullptr);
        }
        LIMARP_CUDA_CHECK_LAUNCH();
        LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
        h.download(ref.data(), kD);
        double err = 0, mx = 0;
        for (int i = 0; i < kD; ++i) {
            err = std::max(err, static_cast<double>(std::fabs(got[i] - ref[i])));
            mx = std::max(mx, static_cast<double>(std::fabs(ref[i])));
        }
        const double rel = err / mx;
        ok = std::isfinite(rel) && rel <= 1e-4;
        std::printf("check: %d layers, max |persistent - reference| / max |reference| = %.3g (max |h| %.3g): %s\n",
                    check_layers, rel, mx, ok ? "ok" : "FAIL");
    }

    const double copy = bench::copy_bandwidth_gbs(std::size_t(1) << 30, 10, stream);
    bench::Events ev;
    std::vector<double> v;
    for (int r = 0; r < reps + 2; ++r) {
        LIMARP_CUDA_CHECK(cudaMemcpyAsync(h.data(), h0.data(), h.bytes(), cudaMemcpyDeviceToDevice, stream));
        reset_count();  // outside the timed window
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.a, stream));
        run_persistent(layers);
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.b, stream));
        LIMARP_CUDA_CHECK(cudaEventSynchronize(ev.b));
        if (r >= 2) v.push_back(ev.ms());
    }
    const double ms = bench::median(v), floor_ms = bytes / (copy * 1e9) * 1e3;
    std::printf("persistent GEMV chain (%s): %d layers, %.1f MB of weights, %d blocks x %d threads%s\n",
                kernel_name.c_str(), layers, bytes / 1e6, grid, threads, rows_on ? (mode == 3 ? ", MODE 3: stream only (no arithmetic, no barriers, no staging)" : mode == 1 ? ", MODE 1: no arithmetic" : mode == 2 ? ", MODE 2: no copies" : "") : ", NO ROWS (barriers and staging only)");
    std::printf("  %.3f ms a step (median of %d; min %.3f), floor %.3f ms at the copy bandwidth %.0f GB/s: %.3f of it\n",
                ms, reps, *std::min_element(v.begin(), v.end()), floor_ms, copy, floor_ms / ms);
    std::printf("  per layer %.2f us (floor %.2f us)\n", 1000 * ms / layers, 1000 * floor_ms / layers);
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_persistent_decode: %s\n", e.what());
    return 1;
}
