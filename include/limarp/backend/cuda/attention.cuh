#pragma once
/// \file attention.cuh
/// \brief CUDA decode attention over the rolling KV cache: `ops::attention_sliding_window_decode`
/// (one query token, grouped-query, sliding window, online softmax, split over the keys as in
/// flash-decoding) and `ops::kv_cache_store` (the new token's key and value into the ring).
///
/// Cache layout: the CPU `KvCache`'s, per layer two rings [C, n_kv_heads * head_dim] (f32, or bf16
/// to halve the bytes), position p in row p % C. As on the CPU the new token's key and value are
/// passed separately (k_new, v_new) and stored into the ring only after the attention
/// (`kv_cache_store`): with C = window_keys - 1 (the CPU's smallest ring), row p % C still holds
/// position p - C, which the query at p needs.
///
/// Window (Hugging Face convention, `window_keys` = W): the query at position p sees the key
/// positions max(0, p - W + 1) .. p; W = 0 means all of 0 .. p.
///
/// Kernel (`attention_decode_kernel<HD, NREP, KV>`): grid (kv head, split), 128 threads. A block
/// takes one kv head and all NREP = n_heads / n_kv_heads query heads that share it, so each key
/// and value row is read once per token. Its keys are a contiguous range of the visible ones,
/// split evenly at run time (the position is read from device memory, so one captured graph
/// serves every step) over the grid's splits, or with the fused combine over only as many as the
/// visible keys fill (one per block step of NG * TK keys; the other blocks leave at once): the
/// grid is sized for the longest context, and at a short one fewer partial states are merged.
/// With `store_new` (`ops::attention_decode_and_store`) the kernel also writes the new key and
/// value into the ring, after every block of the kv head has read it: no store launch. With
/// `AttentionDecodeConfig::rope_theta` > 0 (and the store inside) q and k_new come without RoPE:
/// each block rotates its NREP query heads (in the registers that hold them, the pair's other
/// half from a neighbour lane) and its kv head's new key (into shared memory), with the rope
/// kernel's numerics (rope.cuh), and the rotated key is what the ring gets: no RoPE launch
/// either. The position, the queries and the new key are loaded together, the inverse
/// frequencies computed before the programmatic wait, and the first keys' ring rows requested
/// before the rotation (the new key's row is filled in after it). Inside the block, groups of
/// G = HD / 8 lanes own one key at a time, a lane 8 dimensions (one 16-byte load of bf16, two of
/// f32); a group folds TK keys per step into its running max, sum and output (online softmax, one
/// rescale per step), with the score reduced over the G lanes by shuffles; the next step's keys and values are loaded before
/// this step's arithmetic (register double buffer). The groups' states merge in shared memory;
/// with one split the block writes the normalised output, else its (max, sum, unnormalised
/// output) go to the workspace and the last block of the kv head to finish (a ticket counter per
/// kv head, reset by that block) merges the splits: one launch per call. On sm_90 the grid is
/// launched in clusters of kAttnCluster (4) splits when all its clusters fit on the device at
/// once (`cudaOccupancyMaxActiveClusters`; `LIMARP_CUDA_ATTN_CLUSTER=0` turns it off): when the
/// visible keys need at most 4 splits, they all lie in the kv head's first cluster, which merges
/// them through distributed shared memory (a cluster barrier, then its first block reads the
/// others' states) instead of the workspace and the ticket (H200: decode +0.7%,
/// benchmarks/NOTES.md, session 17). The separate
/// `attention_decode_combine_kernel` (`AttentionDecodeConfig::fused_combine = false`) is the
/// first version, kept as a measured variant: it walked the splits with one dependent L2 read
/// each, which cost more than the attention itself at short contexts (benchmarks/NOTES.md).
/// Summation orders are fixed: bitwise reproducible run to run.
///
/// Numerics: f32 throughout (scores q·k * scale, expf, the final division), as the CPU
/// `ops::attention_sliding_window`; orders differ, so results agree to f32 rounding. A bf16 cache
/// holds keys and values rounded to bf16 (round to nearest even) by `kv_cache_store`.
///
/// Supported: head_dim 8, 16, 32, 64, 128 or 256; n_heads / n_kv_heads 1, 2, 4 or 8. Floor and
/// measurements: benchmarks/NOTES.md ("CUDA decode kernels").

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

#include "limarp/backend/attention_shape.hpp"
#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"
#include "limarp/backend/cuda/detail/rope_math.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/core/error.hpp"

namespace limarp {

/// \cond
namespace cuda_detail {

inline constexpr int kAttnWarps = 4;                 // warps per block
inline constexpr int kAttnCluster = 4;               // blocks a cluster of the cluster merge (sm_90)
inline constexpr int kAttnThreads = 32 * kAttnWarps;  // threads per block
/// Keys one group folds per step: 4, or 2 with 8 query heads per kv head (register budget).
template <int NREP>
inline constexpr int kAttnTileKeys = NREP >= 8 ? 2 : 4;
/// The running max of a softmax state that has seen no key.
inline constexpr float kAttnNegInf = -__builtin_huge_valf();

// The merge of the splits' partial softmax states (max m, sum l, unnormalised output o), shared by
// the three merges (the ticket merge, the cluster merge, the combine kernel). A split's weight
// against the merged max M is exp(m - M), 0 for a split that saw no key (m = -inf: no NaN when M
// is -inf too).
__device__ __forceinline__ float attention_split_weight(float m, float M) {
    return m == kAttnNegInf ? 0.f : expf(m - M);
}
// One output element of the merge, the splits added in split order: L = sum l w, O = sum o w;
// the element is O / L.
struct AttentionSplitMerge {
    float L = 0.f, O = 0.f;
    __device__ __forceinline__ void add(float m, float l, float o, float M) {
        const float w = attention_split_weight(m, M);
        L = fmaf(l, w, L);
        O = fmaf(o, w, O);
    }
};

// The 8 dimensions [sub * 8, sub * 8 + 8) of the key or value row at `pos`: the new token's (f32,
// `fresh` = kv head g's row of it) at pos == p, else ring row pos % C of kv head g.
template <class KV>
__device__ __forceinline__ void load_kv_row8(float (&v)[8], const float* __restrict__ fresh,
                                             const KV* __restrict__ ring, int pos, int p, int C, int kvd, int g,
                                             int HD, int sub) {
    if (pos == p) {
        const float4 a = load4(fresh + sub * 8), b = load4(fresh + sub * 8 + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
        load8_streaming(v, ring + static_cast<long long>(pos % C) * kvd + g * HD + sub * 8);
    }
}

// The fused combine without a cluster: every thread of a block of kv head g calls this once the
// block's partial state is in part_o / part_ml. The last block of g to arrive (a ticket counter,
// threadfence reduction: each block's partials are visible before its ticket) merges the n_splits
// states of its NREP query heads in split order into out and returns true (the caller then stores
// the new ring row and resets counters[g]); the others return false. w_sm: NREP * n_splits floats
// of shared scratch, l_sm: NREP.
template <int HD, int NREP>
__device__ bool attention_merge_by_ticket(float* __restrict__ out, const float* __restrict__ part_o,
                                          const float* __restrict__ part_ml, unsigned* __restrict__ counters, int g,
                                          int n_splits, float* w_sm, float* l_sm, unsigned& s_ticket) {
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_ticket = atomicAdd(&counters[g], 1u);
    __syncthreads();
    if (s_ticket != static_cast<unsigned>(n_splits - 1)) return false;
    __threadfence();
    for (int r = warp; r < NREP; r += kAttnWarps) {  // one warp per query head: max, weights, sum
        const float* ml = part_ml + static_cast<long long>(g * NREP + r) * n_splits * 2;
        float M = kAttnNegInf;
        for (int s2 = lane; s2 < n_splits; s2 += 32) M = fmaxf(M, __ldcg(ml + 2 * s2));
        M = warp_max(M);
        float L = 0.f;
        for (int s2 = lane; s2 < n_splits; s2 += 32) {
            const float w = attention_split_weight(__ldcg(ml + 2 * s2), M);
            w_sm[r * n_splits + s2] = w;
            L = fmaf(__ldcg(ml + 2 * s2 + 1), w, L);
        }
        L = warp_sum(L);
        if (lane == 0) l_sm[r] = L;
    }
    __syncthreads();
    for (int c = static_cast<int>(threadIdx.x); c < NREP * HD / 4; c += kAttnThreads) {  // 4 columns a thread
        const int r = c * 4 / HD, d4 = c * 4 % HD, h = g * NREP + r;
        const float* po = part_o + static_cast<long long>(h) * n_splits * HD + d4;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int s2 = 0; s2 < n_splits; ++s2) {
            const float w = w_sm[r * n_splits + s2];
            const float4 v = __ldcg(reinterpret_cast<const float4*>(po + static_cast<long long>(s2) * HD));
            acc.x = fmaf(v.x, w, acc.x);
            acc.y = fmaf(v.y, w, acc.y);
            acc.z = fmaf(v.z, w, acc.z);
            acc.w = fmaf(v.w, w, acc.w);
        }
        const float L = l_sm[r];
        *reinterpret_cast<float4*>(out + h * HD + d4) = make_float4(acc.x / L, acc.y / L, acc.z / L, acc.w / L);
    }
    return true;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// A cluster-wide barrier: release of this thread's shared-memory writes, acquire of the others'.
__device__ __forceinline__ void attention_cluster_barrier() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// The cluster merge (sm_90): called by every thread of the first block of kv head g's cluster after
// a cluster barrier; block k of the cluster holds split k's (max, sum, unnormalised output) of the
// NREP query heads in its st_m, st_l, st_o. Merges the n_splits (<= kAttnCluster) states in split
// order through distributed shared memory and writes the normalised output.
template <int HD, int NREP>
__device__ __forceinline__ void attention_merge_cluster_states(float* __restrict__ out, float (&st_o)[NREP][HD],
                                                               float (&st_m)[NREP], float (&st_l)[NREP], int g,
                                                               int n_splits) {
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    const float* pm[kAttnCluster];
    const float* pl[kAttnCluster];
    const float* po[kAttnCluster];
#pragma unroll
    for (int k = 0; k < kAttnCluster; ++k) {
        pm[k] = cluster.map_shared_rank(&st_m[0], static_cast<unsigned>(k));
        pl[k] = cluster.map_shared_rank(&st_l[0], static_cast<unsigned>(k));
        po[k] = cluster.map_shared_rank(&st_o[0][0], static_cast<unsigned>(k));
    }
    for (int e = static_cast<int>(threadIdx.x); e < NREP * HD; e += kAttnThreads) {
        const int r = e / HD, dd = e % HD;
        float ms[kAttnCluster], ls[kAttnCluster], os[kAttnCluster];
#pragma unroll
        for (int k = 0; k < kAttnCluster; ++k) {
            const bool in = k < n_splits;
            ms[k] = in ? pm[k][r] : kAttnNegInf;
            ls[k] = in ? pl[k][r] : 0.f;
            os[k] = in ? po[k][r * HD + dd] : 0.f;
        }
        float M = kAttnNegInf;
#pragma unroll
        for (int k = 0; k < kAttnCluster; ++k) M = fmaxf(M, ms[k]);
        AttentionSplitMerge acc;
#pragma unroll
        for (int k = 0; k < kAttnCluster; ++k) acc.add(ms[k], ls[k], os[k], M);
        out[(g * NREP + r) * HD + dd] = acc.O / acc.L;
    }
}
#endif

template <int HD, int NREP, class KV>
__global__ void __launch_bounds__(kAttnThreads)
    attention_decode_kernel(float* __restrict__ out /*[n_heads * HD]*/, float* __restrict__ part_o,
                            float* __restrict__ part_ml, const float* __restrict__ q /*[n_heads * HD]*/,
                            const float* __restrict__ k_new /*[n_kv * HD]*/, const float* __restrict__ v_new,
                            KV* __restrict__ k_cache /*[C, n_kv * HD]*/, KV* __restrict__ v_cache, int C,
                            const std::int64_t* __restrict__ position, int window, int n_kv, float scale,
                            unsigned* __restrict__ counters /*[n_kv]: fused combine, or null*/, bool store_new,
                            float rope_theta /*> 0: rotate q and k_new here*/, int max_splits,
                            bool cluster_merge /*launched in clusters of kAttnCluster along y*/) {
    constexpr int G = HD / 8;              // lanes per key
    constexpr int KPW = 32 / G;            // keys per warp step
    constexpr int NG = kAttnWarps * KPW;   // groups per block
    constexpr int TK = kAttnTileKeys<NREP>;
    constexpr int half = HD / 2;
    static_assert(half <= kAttnThreads, "one thread a RoPE pair");
    __shared__ float sm_o[NG][NREP][HD];
    __shared__ float sm_m[NG][NREP], sm_l[NG][NREP];
    __shared__ unsigned s_ticket;
    __shared__ __align__(16) float s_k[HD];  // rotated new key of kv head g
    __shared__ float s_cs[half][2];
    __shared__ __align__(16) float st_o[NREP][HD];  // the block's merged state (cluster merge)
    __shared__ float st_m[NREP], st_l[NREP];

    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid % 32, warp = tid / 32;
    const int sub = lane % G, grp = warp * KPW + lane / G;
    const int g = static_cast<int>(blockIdx.x), split = static_cast<int>(blockIdx.y);
    const int kvd = n_kv * HD;

    // RoPE here (rope_theta > 0): the rope kernel's numerics (detail/rope_math.cuh: rope_inv_freq,
    // rope_cos_sin_at, rope_rotate, as rope.cuh uses them). Pair tid's inverse frequency depends on nothing a kernel
    // writes: computed before the programmatic wait.
    const bool rope = rope_theta > 0.f;
    float inv_freq = 0.f;
    if (rope && tid < half) inv_freq = rope_inv_freq(tid, HD, rope_theta);
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch

    // The position, this lane's 8 dimensions of the NREP queries and (RoPE) thread tid's pair of
    // the new key are loaded together: none waits for another.
    const std::int64_t pos64 = *position;
    float qr[NREP][8];
#pragma unroll
    for (int r = 0; r < NREP; ++r) {
        const float* qp = q + (g * NREP + r) * HD + sub * 8;
        const float4 a = load4(qp), b = load4(qp + 4);
        qr[r][0] = a.x, qr[r][1] = a.y, qr[r][2] = a.z, qr[r][3] = a.w;
        qr[r][4] = b.x, qr[r][5] = b.y, qr[r][6] = b.z, qr[r][7] = b.w;
    }
    float kx1 = 0.f, kx2 = 0.f;
    if (rope && tid < half) kx1 = k_new[g * HD + tid], kx2 = k_new[g * HD + tid + half];

    const int p = static_cast<int>(pos64);
    const int lo = window > 0 ? max(0, p - window + 1) : 0;
    const int n_keys = p - lo + 1;
    // Splits in use: with the fused combine, no more than one per block step of the visible keys
    // (the grid is sized for the longest context; at a short one the other blocks leave at once and
    // the combine merges fewer partial states). The separate combine kernel reads every split.
    const int n_splits =
        counters != nullptr ? max(1, min(max_splits, (n_keys + NG * TK - 1) / (NG * TK))) : max_splits;
    // Cluster merge: when all splits lie in the first cluster of the kv head, the blocks merge
    // through distributed shared memory instead of the global ticket; that cluster's idle blocks
    // (no keys) stay for its barriers. Uniform over the grid (n_splits depends on p only).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr bool kCanCluster = true;
#else
    constexpr bool kCanCluster = false;  // code for older targets (their PTX on a newer card): the ticket
#endif
    const bool in_cluster = kCanCluster && cluster_merge && n_splits > 1 && n_splits <= kAttnCluster;
    if (split >= n_splits && !(in_cluster && split < kAttnCluster)) return;
    const int chunk = (n_keys + n_splits - 1) / n_splits;
    const int j_begin = min(n_keys, split * chunk), j_end = min(n_keys, j_begin + chunk);
    const float* k_fresh = rope ? s_k : k_new + g * HD;  // the new key (rotated here when rope)

    // Loads the TK keys and values of the step at j0 (zeros past j_end); with `defer_fresh`, the
    // new token's key stays zero (it is rotated later; `fresh_t` says which t holds it, or -1).
    const auto load_step = [&](int j0, float (&kf)[TK][8], float (&vf)[TK][8], bool (&valid)[TK], bool defer_fresh,
                               int& fresh_t) {
        fresh_t = -1;
#pragma unroll
        for (int t = 0; t < TK; ++t) {
            const int j = j0 + t * NG + grp;
            valid[t] = j < j_end;
            if (valid[t]) {
                if (defer_fresh && lo + j == p) {
                    fresh_t = t;
#pragma unroll
                    for (int i = 0; i < 8; ++i) kf[t][i] = 0.f;
                } else {
                    load_kv_row8(kf[t], k_fresh, k_cache, lo + j, p, C, kvd, g, HD, sub);
                }
                load_kv_row8(vf[t], v_new + g * HD, v_cache, lo + j, p, C, kvd, g, HD, sub);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) kf[t][i] = vf[t][i] = 0.f;
            }
        }
    };
    // The first step's ring rows go out as soon as the position is known, before the rotation.
    float kf[TK][8], vf[TK][8];
    bool valid[TK];
    int fresh_t = -1;
    if (j_begin < j_end) load_step(j_begin, kf, vf, valid, rope, fresh_t);

    if (rope) {
        if (tid < half) {
            float c, s;
            rope_cos_sin_at(static_cast<float>(pos64), inv_freq, c, s);
            s_cs[tid][0] = c;
            s_cs[tid][1] = s;
            rope_rotate(kx1, kx2, c, s, s_k[tid], s_k[tid + half]);
        }
        __syncthreads();
        // Rotate the query registers: dimension d pairs with d +- half, which lane sub ^ (G / 2) of
        // the group holds (the same lane, 4 registers away, when one lane holds the head).
#pragma unroll
        for (int r = 0; r < NREP; ++r) {
            float other[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                if constexpr (G == 1) {
                    other[i] = qr[r][(i + 4) % 8];
                } else {
                    other[i] = __shfl_xor_sync(0xffffffffu, qr[r][i], G / 2);
                }
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int d = sub * 8 + i, pi = d % half;
                const float c = s_cs[pi][0], sn = s_cs[pi][1];
                float y1, y2;
                if (d < half) {
                    rope_rotate(qr[r][i], other[i], c, sn, y1, y2);
                    qr[r][i] = y1;
                } else {
                    rope_rotate(other[i], qr[r][i], c, sn, y1, y2);
                    qr[r][i] = y2;
                }
            }
        }
        if (fresh_t >= 0) {  // the new key, now rotated
#pragma unroll
            for (int t = 0; t < TK; ++t)
                if (t == fresh_t) {
                    const float4 a = load4(s_k + sub * 8), b = load4(s_k + sub * 8 + 4);
                    kf[t][0] = a.x, kf[t][1] = a.y, kf[t][2] = a.z, kf[t][3] = a.w;
                    kf[t][4] = b.x, kf[t][5] = b.y, kf[t][6] = b.z, kf[t][7] = b.w;
                }
        }
    }

    float o[NREP][8], m[NREP], l[NREP];
#pragma unroll
    for (int r = 0; r < NREP; ++r) {
        m[r] = kAttnNegInf;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) o[r][i] = 0.f;
    }
    for (int j0 = j_begin; j0 < j_end; j0 += NG * TK) {  // uniform over the block
        // the next step's loads go out before this step's arithmetic (register double buffer)
        float kn[TK][8], vn[TK][8];
        bool valid_n[TK];
        const bool more = j0 + NG * TK < j_end;
        int unused_fresh;
        if (more) load_step(j0 + NG * TK, kn, vn, valid_n, false, unused_fresh);
        float sc[TK][NREP];
#pragma unroll
        for (int t = 0; t < TK; ++t)
#pragma unroll
            for (int r = 0; r < NREP; ++r) {
                float d = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) d = fmaf(qr[r][i], kf[t][i], d);
                d = group_sum<G>(d);
                sc[t][r] = valid[t] ? d * scale : kAttnNegInf;
            }
#pragma unroll
        for (int r = 0; r < NREP; ++r) {
            float mt = sc[0][r];
#pragma unroll
            for (int t = 1; t < TK; ++t) mt = fmaxf(mt, sc[t][r]);
            const float m_new = fmaxf(m[r], mt);
            if (m_new == kAttnNegInf) continue;          // no visible key in this group yet
            const float alpha = expf(m[r] - m_new);  // 0 while m[r] = -inf
            float pt[TK], ps = 0.f;
#pragma unroll
            for (int t = 0; t < TK; ++t) {
                pt[t] = expf(sc[t][r] - m_new);  // 0 for invalid keys
                ps += pt[t];
            }
            l[r] = l[r] * alpha + ps;
            m[r] = m_new;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float acc = o[r][i] * alpha;
#pragma unroll
                for (int t = 0; t < TK; ++t) acc = fmaf(pt[t], vf[t][i], acc);
                o[r][i] = acc;
            }
        }
        if (more) {
#pragma unroll
            for (int t = 0; t < TK; ++t) {
                valid[t] = valid_n[t];
#pragma unroll
                for (int i = 0; i < 8; ++i) kf[t][i] = kn[t][i], vf[t][i] = vn[t][i];
            }
        }
    }

    // Merge the NG groups' states.
#pragma unroll
    for (int r = 0; r < NREP; ++r) {
#pragma unroll
        for (int i = 0; i < 8; ++i) sm_o[grp][r][sub * 8 + i] = o[r][i];
        if (sub == 0) {
            sm_m[grp][r] = m[r];
            sm_l[grp][r] = l[r];
        }
    }
    __syncthreads();
    for (int e = static_cast<int>(threadIdx.x); e < NREP * HD; e += kAttnThreads) {
        const int r = e / HD, dd = e % HD;
        float M = kAttnNegInf;
#pragma unroll 4
        for (int k = 0; k < NG; ++k) M = fmaxf(M, sm_m[k][r]);
        float L = 0.f, O = 0.f;
        if (M != kAttnNegInf) {
#pragma unroll 4
            for (int k = 0; k < NG; ++k) {
                const float w = expf(sm_m[k][r] - M);
                L = fmaf(sm_l[k][r], w, L);
                O = fmaf(sm_o[k][r][dd], w, O);
            }
        }
        const int h = g * NREP + r;
        if (n_splits == 1) {
            out[h * HD + dd] = O / L;
        } else if (in_cluster) {
            st_o[r][dd] = O;
            if (dd == 0) {
                st_m[r] = M;
                st_l[r] = L;
            }
        } else {
            part_o[(static_cast<long long>(h) * n_splits + split) * HD + dd] = O;
            if (dd == 0) {
                part_ml[(static_cast<long long>(h) * n_splits + split) * 2 + 0] = M;
                part_ml[(static_cast<long long>(h) * n_splits + split) * 2 + 1] = L;
            }
        }
    }
    // With store_new, the new token's key and value go into ring row p % C of kv head g (what
    // kv_cache_store does in a launch of its own) once every block of kv head g has read that row:
    // after this block's merge with one split, in the last block to finish with the fused combine.
    const auto store_new_row = [&] {
        const long long row = static_cast<long long>(p % C) * kvd + g * HD;
        for (int i = static_cast<int>(threadIdx.x); i < HD; i += kAttnThreads) {
            k_cache[row + i] = from_f32<KV>(k_fresh[i]);
            v_cache[row + i] = from_f32<KV>(v_new[g * HD + i]);
        }
    };
    if (n_splits == 1) {
        if (store_new) store_new_row();
        return;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (in_cluster) {
        // Every block of the cluster has its state in shared memory (and has read the ring); the
        // first one merges the n_splits states in split order and writes the output (and the new
        // row); the others keep their shared memory until it has read them.
        attention_cluster_barrier();
        if (split == 0) {
            attention_merge_cluster_states<HD, NREP>(out, st_o, st_m, st_l, g, n_splits);
            if (store_new) store_new_row();
        }
        attention_cluster_barrier();
        return;
    }
#endif
    if (counters == nullptr) return;
    // fused combine: the last block of kv head g to finish merges; sm_o is free now and holds the
    // split weights (NREP * n_splits floats: NG * HD >= 1024 >= n_splits)
    if (!attention_merge_by_ticket<HD, NREP>(out, part_o, part_ml, counters, g, n_splits, &sm_o[0][0][0], &sm_l[0][0],
                                             s_ticket))
        return;
    if (store_new) store_new_row();
    if (threadIdx.x == 0) counters[g] = 0;  // ready for the next launch (stream order)
}

// out[h] = sum_s O_s exp(m_s - M) / sum_s l_s exp(m_s - M) for query head blockIdx.x.
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(128)
    attention_decode_combine_kernel(float* __restrict__ out /*[n_heads * hd]*/, const float* __restrict__ part_o,
                                    const float* __restrict__ part_ml, int n_splits, int hd) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    const int h = static_cast<int>(blockIdx.x);
    const float* ml = part_ml + static_cast<long long>(h) * n_splits * 2;
    float M = kAttnNegInf;
    for (int s = 0; s < n_splits; ++s) M = fmaxf(M, ml[2 * s]);
    for (int dd = static_cast<int>(threadIdx.x); dd < hd; dd += static_cast<int>(blockDim.x)) {
        AttentionSplitMerge acc;
        for (int s = 0; s < n_splits; ++s) {
            const float ms = ml[2 * s];
            if (ms == kAttnNegInf) continue;  // an empty split (its partial output was not written)
            acc.add(ms, ml[2 * s + 1], part_o[(static_cast<long long>(h) * n_splits + s) * hd + dd], M);
        }
        out[h * hd + dd] = acc.O / acc.L;
    }
}

template <class KV>
__global__ void __launch_bounds__(256)
    kv_cache_store_kernel(KV* __restrict__ k_cache, KV* __restrict__ v_cache, const float* __restrict__ k_new,
                          const float* __restrict__ v_new, int C, const std::int64_t* __restrict__ position, int kvd) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    const long long row = static_cast<long long>(*position % C) * kvd;
    for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < kvd;
         i += static_cast<int>(gridDim.x * blockDim.x)) {
        k_cache[row + i] = from_f32<KV>(k_new[i]);
        v_cache[row + i] = from_f32<KV>(v_new[i]);
    }
}

/// Keys one block folds per step (all its groups): 4 warps * (32 / (HD / 8)) groups * TK.
inline int attention_keys_per_step(std::int64_t head_dim, std::int64_t n_rep) {
    const std::int64_t groups = kAttnWarps * (32 / (head_dim / 8));
    return static_cast<int>(groups * (n_rep >= 8 ? 2 : 4));
}

// The head layouts the CUDA attention kernels (decode and prefill) are instantiated for:
// head_dim 8..256 (powers of two), n_heads / n_kv_heads 1, 2, 4 or 8. Throws ArgumentError naming
// `who` otherwise.
inline void check_attention_heads(const char* who, const ops::AttentionShape& s) {
    const std::int64_t hd = s.head_dim, n_rep = s.n_kv_heads > 0 ? s.n_heads / s.n_kv_heads : 0;
    if (!(hd == 8 || hd == 16 || hd == 32 || hd == 64 || hd == 128 || hd == 256) || s.n_kv_heads <= 0 ||
        s.n_heads % s.n_kv_heads != 0 || !(n_rep == 1 || n_rep == 2 || n_rep == 4 || n_rep == 8))
        throw ArgumentError(std::string(who) + " (CUDA): head_dim " + std::to_string(hd) + " with " +
                            std::to_string(s.n_heads) + " query heads over " + std::to_string(s.n_kv_heads) +
                            " kv heads is not supported (head_dim 8/16/32/64/128/256, n_heads / n_kv_heads "
                            "1/2/4/8); use the CPU backend for this model");
}

// Calls f(std::integral_constant<int, HD>{}) with the first HD of the list equal to head_dim, or
// the last one (the caller has checked head_dim: check_attention_heads).
template <int HD, int... More, class F>
void with_head_dim(std::int64_t head_dim, F&& f) {
    if constexpr (sizeof...(More) == 0) {
        f(std::integral_constant<int, HD>{});
    } else {
        if (head_dim == HD) return f(std::integral_constant<int, HD>{});
        with_head_dim<More...>(head_dim, std::forward<F>(f));
    }
}

// Calls f(std::integral_constant<int, HD>{}, std::integral_constant<int, NREP>{}) for the layout
// of s: head_dim among HDs (the last one otherwise), NREP = n_heads / n_kv_heads in 1, 2, 4 (8
// otherwise). The attention kernels' one dispatch from run-time shapes to template arguments; the
// caller has checked s (check_attention_heads).
template <int... HDs, class F>
void with_attention_layout(const ops::AttentionShape& s, F&& f) {
    with_head_dim<HDs...>(s.head_dim, [&](auto hd) {
        switch (s.n_heads / s.n_kv_heads) {
            case 1: return f(hd, std::integral_constant<int, 1>{});
            case 2: return f(hd, std::integral_constant<int, 2>{});
            case 4: return f(hd, std::integral_constant<int, 4>{});
            default: return f(hd, std::integral_constant<int, 8>{});
        }
    });
}

}  // namespace cuda_detail
/// \endcond

/// Launch choice of `ops::attention_sliding_window_decode`.
struct AttentionDecodeConfig {
    /// Blocks per kv head over the keys (flash-decoding splits); 0: `attention_decode_default_splits`.
    int splits = 0;
    /// With splits > 1: merge the splits in the last block of each kv head to finish (one launch;
    /// the default), or in a separate combine kernel (two launches; kept as a measured variant).
    bool fused_combine = true;
    /// > 0: q and k_new come without RoPE and the kernel rotates them at position p (HF
    /// rotate-half with this base, the numerics of `ops::rope_rotate_half_qk`; the rotated key is
    /// what goes into the ring). 0: they are rotated already. Only with the store inside the
    /// launch (`ops::attention_decode_and_store` with one split or the fused combine): otherwise
    /// the calls throw ArgumentError.
    double rope_theta = 0.0;
};

/// Whether a decode launch with `splits` splits and `cfg` can store the new key and value itself
/// (`ops::attention_decode_and_store`): one split, or the fused combine.
inline bool attention_decode_stores_in_kernel(int splits, const AttentionDecodeConfig& cfg) noexcept {
    return splits <= 1 || cfg.fused_combine;
}

/// The default split count: about B blocks per multiprocessor (B * sm_count / n_kv_heads; B = 2,
/// or the environment variable LIMARP_CUDA_ATTN_BLOCKS_PER_SM, for measurements), at most one
/// split per `keys per block step` of the largest visible key count (window_keys, or C + 1
/// without a window), at least 1.
inline int attention_decode_default_splits(const ops::AttentionShape& s, std::int64_t C, int sm_count) {
    static const std::int64_t blocks_per_sm = [] {
        const char* e = std::getenv("LIMARP_CUDA_ATTN_BLOCKS_PER_SM");
        const long v = e ? std::strtol(e, nullptr, 10) : 0;
        return static_cast<std::int64_t>(v >= 1 && v <= 32 ? v : 2);
    }();
    const std::int64_t max_keys = s.window_keys > 0 ? std::min<std::int64_t>(s.window_keys, C + 1) : C + 1;
    const std::int64_t per_step = cuda_detail::attention_keys_per_step(s.head_dim, s.n_heads / s.n_kv_heads);
    const std::int64_t by_keys = (max_keys + per_step - 1) / per_step;
    const std::int64_t by_sms =
        (blocks_per_sm * static_cast<std::int64_t>(sm_count) + s.n_kv_heads - 1) / s.n_kv_heads;
    return static_cast<int>(std::max<std::int64_t>(1, std::min(by_keys, by_sms)));
}

/// Device scratch of `ops::attention_sliding_window_decode`: the per-split partial outputs
/// [n_heads, splits, head_dim] and (max, sum) pairs [n_heads, splits, 2], for up to `max_splits`.
/// One per stream of attention calls (the layers of a model can share one: calls on one stream
/// run one after the other).
class AttentionDecodeWorkspace {
public:
    /// An empty workspace (only 1-split launches fit).
    AttentionDecodeWorkspace() = default;
    /// Room for `max_splits` splits of `s` (n_heads * max_splits * (head_dim + 2) floats).
    /// \throws CudaError when the allocation fails
    AttentionDecodeWorkspace(const ops::AttentionShape& s, int max_splits)
        : n_heads_(s.n_heads), head_dim_(s.head_dim), max_splits_(max_splits),
          o_(static_cast<std::size_t>(s.n_heads * max_splits * s.head_dim), "attention decode partial outputs"),
          ml_(static_cast<std::size_t>(s.n_heads * max_splits * 2), "attention decode partial max/sum"),
          counters_(static_cast<std::size_t>(s.n_heads), "attention decode split counters") {
        LIMARP_CUDA_CHECK(cudaMemset(counters_.data(), 0, counters_.bytes()));  // the fused combine's tickets
    }
    /// The largest split count that fits.
    int max_splits() const noexcept { return max_splits_; }
    /// True when it was made for `s` and holds `splits` splits (1 always fits).
    bool fits(const ops::AttentionShape& s, int splits) const noexcept {
        return splits <= 1 || (s.n_heads == n_heads_ && s.head_dim == head_dim_ && splits <= max_splits_);
    }
    /// Device pointer to the partial outputs.
    float* partial_out() noexcept { return o_.data(); }
    /// Device pointer to the (max, sum) pairs.
    float* partial_max_sum() noexcept { return ml_.data(); }
    /// Device pointer to the per-kv-head tickets of the fused combine (0 between launches).
    unsigned* counters() noexcept { return counters_.data(); }

private:
    std::int64_t n_heads_ = 0, head_dim_ = 0;
    int max_splits_ = 0;
    DeviceBuffer<float> o_, ml_;
    DeviceBuffer<unsigned> counters_;
};

/// \cond
namespace cuda_detail {

// Whether the decode attention may merge its splits through a cluster's shared memory: an sm_90
// device and not LIMARP_CUDA_ATTN_CLUSTER=0 (read once; a measurement switch).
inline bool attention_cluster_merge_enabled() {
    static const bool env_on = env_switch_on("LIMARP_CUDA_ATTN_CLUSTER");
    return env_on && device_info().compute_capability >= 90;
}

// How many clusters of kAttnCluster blocks of attention_decode_kernel<HD, NREP, KV> can be
// resident at once (cudaOccupancyMaxActiveClusters; once per instantiation, 0 when it fails).
template <int HD, int NREP, class KV>
int attention_decode_max_clusters() {
    static const int n = [] {
        // Only a binary built for sm_90 or newer has the cluster merge (an older target's PTX
        // running on a newer card takes the ticket path: no cluster launch for it).
        cudaFuncAttributes fa{};
        if (cudaPeekAtLastError() != cudaSuccess) return 0;  // an earlier error stays for its check
        if (cudaFuncGetAttributes(&fa, attention_decode_kernel<HD, NREP, KV>) != cudaSuccess ||
            fa.binaryVersion < 90) {
            (void)cudaGetLastError();  // this query's own error (none was pending)
            return 0;
        }
        cudaLaunchConfig_t cfg{};
        cfg.gridDim = dim3(1, kAttnCluster, 1);
        cfg.blockDim = dim3(kAttnThreads);
        cudaLaunchAttribute attr[1] = {cluster_dim_attribute(dim3(1, kAttnCluster, 1))};
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        int clusters = 0;
        if (cudaOccupancyMaxActiveClusters(&clusters, attention_decode_kernel<HD, NREP, KV>, &cfg) != cudaSuccess) {
            (void)cudaGetLastError();  // this query's own error (none was pending)
            return 0;
        }
        return clusters;
    }();
    return n;
}

template <int HD, int NREP, class KV>
void launch_attention_decode_kernel(int splits, bool fused, float* out, AttentionDecodeWorkspace& ws, const float* q,
                                    const float* k_new, const float* v_new, KV* k_cache, KV* v_cache,
                                    std::int64_t C, const std::int64_t* position, const ops::AttentionShape& s,
                                    float scale, cudaStream_t stream, bool store_new, float rope_theta) {
    // The cluster merge (sm_90): the grid's y rounded up to clusters of kAttnCluster splits, used
    // only when every cluster of the grid can be resident at once.
    const int gy = (splits + kAttnCluster - 1) / kAttnCluster * kAttnCluster;
    const bool cluster = fused && splits > 1 && attention_cluster_merge_enabled() &&
                         attention_decode_max_clusters<HD, NREP, KV>() >= s.n_kv_heads * (gy / kAttnCluster);
    const dim3 grid(static_cast<unsigned>(s.n_kv_heads), static_cast<unsigned>(cluster ? gy : splits));
    launch_chained_clusters(__FILE__, __LINE__, attention_decode_kernel<HD, NREP, KV>, grid, dim3(kAttnThreads), 0,
                            stream, cluster ? dim3(1, kAttnCluster, 1) : dim3(1, 1, 1), out, ws.partial_out(),
                            ws.partial_max_sum(), q, k_new, v_new, k_cache, v_cache, static_cast<int>(C), position,
                            static_cast<int>(s.window_keys), static_cast<int>(s.n_kv_heads), scale,
                            fused ? ws.counters() : nullptr, store_new, rope_theta, splits, cluster);
    if (splits > 1 && !fused)
        launch_chained(__FILE__, __LINE__, attention_decode_combine_kernel<>, dim3(static_cast<unsigned>(s.n_heads)),
                       dim3(128), 0, stream, out, ws.partial_out(), ws.partial_max_sum(), splits,
                       static_cast<int>(s.head_dim));
}

}  // namespace cuda_detail
/// \endcond

/// \cond
namespace cuda_detail {

// The checks and the launch of the decode attention; stores the new row in the kernel when
// `store_new` and the launch can (returns whether it did).
template <class KV>
bool attention_decode(float* out, const float* q, const float* k_new, const float* v_new, KV* k_cache, KV* v_cache,
                      std::int64_t C, const std::int64_t* position, const ops::AttentionShape& s, float scale,
                      AttentionDecodeWorkspace& ws, cudaStream_t stream, AttentionDecodeConfig cfg, bool store_new) {
    check_attention_heads("attention_sliding_window_decode", s);
    if (!aligned_to(q, 16) || !aligned_to(k_new, 16) || !aligned_to(v_new, 16) || !aligned_to(k_cache, 16) ||
        !aligned_to(v_cache, 16))
        throw ArgumentError("attention_sliding_window_decode (CUDA): q, k_new, v_new and the rings must be 16-byte "
                            "aligned (as cudaMalloc returns)");
    if (C < 1) throw ArgumentError("attention_sliding_window_decode (CUDA): the ring needs at least one row");
    const int splits = cfg.splits > 0 ? cfg.splits : attention_decode_default_splits(s, C, device_info().sm_count);
    if (splits > 1024)
        throw ArgumentError("attention_sliding_window_decode (CUDA): at most 1024 splits, " + std::to_string(splits) +
                            " asked");
    if (!ws.fits(s, splits))
        throw ArgumentError("attention_sliding_window_decode (CUDA): the workspace holds " +
                            std::to_string(ws.max_splits()) + " splits of this shape, " + std::to_string(splits) +
                            " asked; make it with AttentionDecodeWorkspace(shape, attention_decode_default_splits(...))");
    const bool in_kernel = store_new && attention_decode_stores_in_kernel(splits, cfg);
    if (cfg.rope_theta > 0.0 && !in_kernel)
        throw ArgumentError("attention_sliding_window_decode (CUDA): RoPE inside the attention (rope_theta > 0) needs "
                            "the store inside it too (ops::attention_decode_and_store with one split or the fused "
                            "combine): the ring must get the rotated key");
    with_attention_layout<8, 16, 32, 64, 128, 256>(s, [&](auto hd, auto rep) {
        launch_attention_decode_kernel<decltype(hd)::value, decltype(rep)::value>(
            splits, cfg.fused_combine, out, ws, q, k_new, v_new, k_cache, v_cache, C, position, s, scale, stream,
            in_kernel, static_cast<float>(cfg.rope_theta));
    });
    return in_kernel;
}

}  // namespace cuda_detail
/// \endcond

namespace ops {

/// Decode attention on the GPU: the one new token at position p = *position attends, for query
/// head h, out_h = softmax_j(q_h · k_j * scale) · v_j over the key positions
/// max(0, p - window_keys + 1) .. p (0 .. p when window_keys == 0) of kv head
/// h / (n_heads / n_kv_heads); position p's key and value are k_new / v_new, earlier ones rows
/// pos % C of the rings (the CPU `KvCache` layout). The same function as the CPU
/// `ops::attention_sliding_window` with T = 1, p0 = p. Asynchronous on `stream`: one launch, or
/// two when split (see the file comment); the launches are checked.
///
/// \tparam KV      cache element type, float or __nv_bfloat16
/// \param out      [n_heads * head_dim] device output (before o_proj)
/// \param q        [n_heads * head_dim] device query (RoPE applied), 16-byte aligned
/// \param k_new    [n_kv_heads * head_dim] device key of the new token (RoPE applied), 16-byte aligned
/// \param v_new    [n_kv_heads * head_dim] device value of the new token, 16-byte aligned
/// \param k_cache  [C, n_kv_heads * head_dim] device key ring (row pos % C), 16-byte aligned
/// \param v_cache  [C, n_kv_heads * head_dim] device value ring
/// \param C        ring rows
/// \param position device pointer to the new token's position p (read when the kernel runs)
/// \param s        heads and window
/// \param scale    score scale, normally 1 / sqrt(head_dim)
/// \param ws       split workspace (see `AttentionDecodeWorkspace`), on the same stream
/// \param stream   CUDA stream
/// \param cfg      split count (0: `attention_decode_default_splits`)
/// \pre The rings hold every earlier position the query needs, not yet overwritten by position p
///      (call `kv_cache_store` after): C >= window_keys - 1 when windowed, C >= p when unlimited;
///      p < 2^31; out does not overlap any input.
/// \throws ArgumentError for an unsupported head_dim or n_heads / n_kv_heads, a misaligned
///         pointer, or a split count the workspace cannot hold; CudaError when a launch fails
template <int Sm, class KV>
    requires(std::is_same_v<KV, float> || std::is_same_v<KV, __nv_bfloat16>)
void attention_sliding_window_decode(Cuda<Sm>, float* out /*[n_heads*head_dim]*/,
                                     const float* q /*[n_heads*head_dim]*/, const float* k_new /*[n_kv_heads*head_dim]*/,
                                     const float* v_new /*[n_kv_heads*head_dim]*/,
                                     const KV* k_cache /*[C, n_kv_heads*head_dim]*/,
                                     const KV* v_cache /*[C, n_kv_heads*head_dim]*/, std::int64_t C,
                                     const std::int64_t* position /*[1]*/, const AttentionShape& s, float scale,
                                     AttentionDecodeWorkspace& ws, cudaStream_t stream = nullptr,
                                     AttentionDecodeConfig cfg = {}) {
    // store_new false: the kernel never writes the rings
    cuda_detail::attention_decode(out, q, k_new, v_new, const_cast<KV*>(k_cache), const_cast<KV*>(v_cache), C,
                                  position, s, scale, ws, stream, cfg, /*store_new=*/false);
}

/// Stores the new token's key and value into ring row p % C (p = *position), converted to the
/// ring's element type (bf16: round to nearest even): the CPU layer's copy after its attention.
/// Asynchronous on `stream`; the launch is checked.
///
/// \param k_cache  [C, kv_dim] device key ring
/// \param v_cache  [C, kv_dim] device value ring
/// \param k_new    [kv_dim] device key (RoPE applied)
/// \param v_new    [kv_dim] device value
/// \param C        ring rows
/// \param position device pointer to the token's position
/// \param kv_dim   n_kv_heads * head_dim
/// \param stream   CUDA stream
/// \pre Runs after every attention call that still needs row p % C. \throws CudaError when the launch fails
template <int Sm, class KV>
    requires(std::is_same_v<KV, float> || std::is_same_v<KV, __nv_bfloat16>)
void kv_cache_store(Cuda<Sm>, KV* k_cache /*[C, kv_dim]*/, KV* v_cache /*[C, kv_dim]*/, const float* k_new /*[kv_dim]*/,
                    const float* v_new /*[kv_dim]*/, std::int64_t C, const std::int64_t* position /*[1]*/,
                    std::int64_t kv_dim, cudaStream_t stream = nullptr) {
    if (kv_dim <= 0) return;
    const std::int64_t blocks = std::min<std::int64_t>(32, (kv_dim + 255) / 256);
    cuda_detail::launch_chained(__FILE__, __LINE__, cuda_detail::kv_cache_store_kernel<KV>,
                                dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream, k_cache, v_cache, k_new,
                                v_new, static_cast<int>(C), position, static_cast<int>(kv_dim));
}


/// `attention_sliding_window_decode`, then the new token's key and value into ring row p % C as
/// `kv_cache_store` does — inside the attention launch when
/// `attention_decode_stores_in_kernel(splits, cfg)` (the block that finishes kv head g last
/// writes g's part of the row, after every block of g has read it; with the cluster merge the
/// first block of g's cluster, after the cluster barrier), else by a `kv_cache_store`
/// launch after it. Same arguments, same preconditions and errors; the rings are written.
template <int Sm, class KV>
    requires(std::is_same_v<KV, float> || std::is_same_v<KV, __nv_bfloat16>)
void attention_decode_and_store(Cuda<Sm> tag, float* out /*[n_heads*head_dim]*/, const float* q,
                                const float* k_new /*[n_kv_heads*head_dim]*/, const float* v_new,
                                KV* k_cache /*[C, n_kv_heads*head_dim]*/, KV* v_cache, std::int64_t C,
                                const std::int64_t* position /*[1]*/, const AttentionShape& s, float scale,
                                AttentionDecodeWorkspace& ws, cudaStream_t stream = nullptr,
                                AttentionDecodeConfig cfg = {}) {
    const bool in_kernel = cuda_detail::attention_decode(out, q, k_new, v_new, k_cache, v_cache, C, position, s, scale,
                                                         ws, stream, cfg, /*store_new=*/true);
    if (!in_kernel) kv_cache_store(tag, k_cache, v_cache, k_new, v_new, C, position, s.n_kv_heads * s.head_dim, stream);
}

}  // namespace ops
}  // namespace limarp
