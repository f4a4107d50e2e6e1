#pragma once
/// \file sampler.cuh
/// \brief Sampling on the GPU, so that only the chosen token id crosses to the host:
/// `ops::sample_greedy` (argmax, ties to the smaller id, as the CPU `generate::Sampler` at
/// temperature 0) and `ops::sample_top_k_top_p` (top-k, top-p, min-p and temperature, then a draw
/// from a seeded counter-based RNG); `DeviceSampler` wraps them with its own device state.
///
/// `sample_top_k_top_p` is one block of 512 threads over the vocabulary (logits stay in L2):
/// - the kept sets are found without sorting, by radix selection on the logits' order-preserving
///   32-bit keys (8 passes of 4 bits): top-k selects the k-th largest key by counts, top-p the key
///   where the cumulative mass (in the CPU's order: decreasing logit) reaches p by masses. Each
///   pass's 16-bin histogram is built in per-thread columns of shared memory (no atomics, no bank
///   conflicts) and summed in a fixed order. Ties at a threshold key are kept in increasing id
///   order (a coalesced block scan with ballots), which is the CPU's order (decreasing logit, then
///   smaller id first). The first version used 8-bit digits and shared-memory atomics: the logits'
///   top bytes (sign and exponent) fall into a few bins, and the contended atomics (64-bit ones are
///   compare-and-swap loops) made top-p alone cost 0.56 ms on an H100; this one takes 0.19 ms there,
///   but 0.24 ms with top-k 40 + top-p (0.13 ms before) and 39 us without truncation: one block is
///   bound by instruction issue (keys, a division and an exp recomputed in each of the 8 passes).
///   With top-k active (k <= 128) a prefilter launch first keeps the top k of every 512-logit
///   slice (`topk_candidates_kernel`, many blocks; the global top k is among them, in id order),
///   and the one block runs over those blocks * k candidates instead of the vocabulary: same
///   kept set, same draw (`DeviceSampler` does this; benchmarks/NOTES.md has the times);
/// - masses are exp(l - max) in f32 turned into 64-bit fixed point (2^-32 units), and every sum is
///   an integer sum: the kept set and the draw are bitwise reproducible. Weights under 2^-33 count
///   as 0 (never drawn; the CPU would draw them with probability < 1e-10 * vocab);
/// - the draw: u = 53-bit uniform from SplitMix64(seed, step), where step is a device counter the
///   kernel increments (a replayed CUDA graph draws fresh numbers); the token is the first, in id
///   order, whose inclusive prefix of masses over the kept set exceeds u * total. The distribution
///   is the CPU's (softmax of l / temperature over the same kept set); the random stream is not.
///
/// Stage order, as `generate::SamplerParams::order`: the penalties (repetition, frequency,
/// presence, in their own order) before every other active stage, then top-k, then top-p, then
/// min-p (each when active); temperature anywhere after the penalties: where it precedes top-p
/// (or min-p), that stage's probabilities are computed from l / temperature, as on the CPU.
/// Top-a, tail-free and typical-p are not on the device yet (`DeviceSamplingParams::from` says
/// so).
///
/// Penalties (`ops::apply_penalties`): the host counts the ids of the last `penalty_range`
/// history tokens (as the CPU sampler does) and uploads the distinct ids with their counts (at
/// most 8 bytes a token of the range); one thread per id rewrites its logit in place with the
/// CPU's float operations, rounded the same way (no contraction), so the penalised logits are the
/// CPU's bit for bit.

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/core/error.hpp"
#include "limarp/generate/sampler.hpp"

namespace limarp {

/// The settings of the on-device sampler (see the file comment).
struct DeviceSamplingParams {
    float temperature = 1.0f;          ///< > 0 (greedy is `ops::sample_greedy`)
    int top_k = 0;                     ///< keep the k largest logits; <= 0 disables
    float top_p = 1.0f;                ///< nucleus mass in (0, 1]; 1 disables
    float min_p = 0.0f;                ///< keep p >= min_p * p_max; 0 disables
    bool temperature_before_top_p = false;  ///< top-p's probabilities from l / temperature
    bool temperature_before_min_p = false;  ///< min-p's probabilities from l / temperature
    std::uint64_t seed = 0;            ///< RNG seed
    float repetition_penalty = 1.0f;   ///< positive logits / P, negative * P; 1 disables
    float frequency_penalty = 0.0f;    ///< logit -= count * F
    float presence_penalty = 0.0f;     ///< logit -= P for every id seen
    int penalty_range = 0;             ///< the last N history ids; 0 disables the penalties, < 0 = all
    /// The active penalty stages in the order they run (`SamplerStage::RepetitionPenalty`,
    /// `FrequencyPenalty`, `PresencePenalty`), at most three.
    std::vector<generate::SamplerStage> penalties;

    /// The device form of a CPU sampler's settings (at temperature 0 only the penalties count:
    /// greedy runs no other stage).
    /// \throws ArgumentError when a stage the device sampler lacks is active (top-a, tail-free,
    ///         typical-p), when the order puts top-p before top-k, min-p before top-p/top-k, or a
    ///         penalty after another active stage; the message names the stage and says to use
    ///         the CPU sampler.
    static DeviceSamplingParams from(const generate::SamplerParams& p) {
        using generate::SamplerStage;
        const bool greedy = p.temperature <= 0.0f;
        const auto is_penalty = [](SamplerStage s) {
            return s == SamplerStage::RepetitionPenalty || s == SamplerStage::FrequencyPenalty ||
                   s == SamplerStage::PresencePenalty;
        };
        if (!greedy)
            for (SamplerStage s : {SamplerStage::TopA, SamplerStage::TailFree, SamplerStage::Typical})
                if (p.active(s))
                    throw ArgumentError("device sampler: " + std::string(generate::to_string(s)) +
                                        " is not implemented on the GPU yet; disable it or sample on the CPU");
        DeviceSamplingParams d;
        bool other_before = false;  // an active non-penalty stage ran already
        for (SamplerStage s : p.order) {
            if (!p.active(s) || (greedy && !is_penalty(s))) continue;
            if (!is_penalty(s)) {
                other_before = true;
                continue;
            }
            if (other_before)
                throw ArgumentError("device sampler: " + std::string(generate::to_string(s)) +
                                    " must come before the other active stages in the sampler order; sample on "
                                    "the CPU for other orders");
            d.penalties.push_back(s);
        }
        d.repetition_penalty = p.repetition_penalty;
        d.frequency_penalty = p.frequency_penalty;
        d.presence_penalty = p.presence_penalty;
        d.penalty_range = p.penalty_range;
        d.seed = p.seed;
        if (greedy) return d;
        const auto where = [&](SamplerStage s) {
            const auto it = std::find(p.order.begin(), p.order.end(), s);
            return it == p.order.end() ? static_cast<std::ptrdiff_t>(p.order.size()) : it - p.order.begin();
        };
        const bool k = p.active(SamplerStage::TopK), tp = p.active(SamplerStage::TopP), mp = p.active(SamplerStage::MinP);
        if ((k && tp && where(SamplerStage::TopP) < where(SamplerStage::TopK)) ||
            (mp && ((tp && where(SamplerStage::MinP) < where(SamplerStage::TopP)) ||
                    (k && where(SamplerStage::MinP) < where(SamplerStage::TopK)))))
            throw ArgumentError("device sampler: the order must run top_k, then top_p, then min_p; sample on the CPU "
                                "for other orders");
        d.temperature = p.temperature;
        d.top_k = p.top_k;
        d.top_p = p.top_p;
        d.min_p = p.min_p;
        d.temperature_before_top_p = where(SamplerStage::Temperature) < where(SamplerStage::TopP);
        d.temperature_before_min_p = where(SamplerStage::Temperature) < where(SamplerStage::MinP);
        return d;
    }
};

/// \cond
namespace cuda_detail {

inline constexpr int kSampleThreads = 512;   // threads of the top-k/top-p kernel (one block)
inline constexpr int kGreedyThreads = 1024;  // threads of the greedy kernel (one block)
inline constexpr int kDigitBins = 16;        // radix digits of 4 bits: 8 passes over 32-bit keys
/// Dynamic shared memory of the top-k/top-p kernel: per-thread histogram columns, 2 x 16 x 512 u32.
inline constexpr int kSampleSmem = 2 * kDigitBins * kSampleThreads * 4;
inline constexpr float kFixedOne = 4294967296.0f;  // 2^32: fixed-point unit of the masses

// Order-preserving key: a larger float gives a larger key (finite values and infinities).
__device__ __forceinline__ unsigned float_key(float x) {
    const unsigned u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// w in [0, 1] as a fixed-point integer in [0, 2^32].
__device__ __forceinline__ unsigned long long fixed_mass(float w) {
    return static_cast<unsigned long long>(__float2ull_rn(w * kFixedOne));
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

__device__ __forceinline__ unsigned long long warp_sum_u64(unsigned long long v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Exclusive prefix of v over the block in thread order, and the total. `scratch` holds 33
// unsigned long longs of shared memory. Every thread must call it.
__device__ __forceinline__ unsigned long long block_exclusive_scan(unsigned long long v, unsigned long long* scratch,
                                                                   unsigned long long& total) {
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int n_warps = static_cast<int>(blockDim.x) / 32;
    unsigned long long incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        unsigned long long w = lane < n_warps ? scratch[lane] : 0ull, wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned long long n = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += n;
        }
        scratch[lane] = wi - w;  // exclusive over warps
        if (lane == 31) scratch[32] = wi;
    }
    __syncthreads();
    total = scratch[32];
    return scratch[warp] + incl - v;
}

__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long v, unsigned long long* scratch) {
    unsigned long long total;
    (void)block_exclusive_scan(v, scratch, total);
    return total;
}

// The radix digit, scanning tot[] from the highest bin down, whose bin makes the running total
// cum + tot[...] reach `need`; cum is advanced past the bins above it (0 when no bin reaches).
__device__ __forceinline__ int digit_reaching(const unsigned long long* tot, unsigned long long need,
                                              unsigned long long& cum) {
    for (int b = kDigitBins - 1; b >= 0; --b) {
        if (cum + tot[b] >= need) return b;
        cum += tot[b];
    }
    return 0;
}

// Per-digit totals tot[16] (shared) of weight(i) over the elements with part(i, key) whose key
// matches `prefix` on `pmask`, binned by the 4-bit digit (key >> shift) & 15. Each thread adds into
// its own column of `cols` (2 x 16 x blockDim.x u32 of shared memory: the weight's low 16 bits and
// the rest), so there are no atomics and no bank conflicts (thread t's column is bank t % 32); the
// columns are then summed in a fixed order: deterministic. Every thread must call it.
// \pre weights <= 2^32, fewer than 65536 elements per thread.
template <class Part, class Weight>
__device__ void digit_histogram(unsigned long long* tot, unsigned* cols, const float* __restrict__ logits, int V,
                                unsigned prefix, unsigned pmask, int shift, Part part, Weight weight) {
    const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
    unsigned* lo = cols;
    unsigned* hi = cols + kDigitBins * nt;
#pragma unroll
    for (int b = 0; b < kDigitBins; ++b) lo[b * nt + tid] = hi[b * nt + tid] = 0u;
    for (int i = tid; i < V; i += nt) {
        const unsigned key = float_key(logits[i]);
        if ((key & pmask) != prefix || !part(i, key)) continue;
        const unsigned d = (key >> shift) & (kDigitBins - 1);
        const unsigned long long w = weight(i);
        lo[d * nt + tid] += static_cast<unsigned>(w & 0xffffu);
        hi[d * nt + tid] += static_cast<unsigned>(w >> 16);
    }
    __syncthreads();
    const int warp = tid / 32, lane = tid % 32;
    for (int b = warp; b < kDigitBins; b += nt / 32) {  // a warp per digit
        unsigned long long sl = 0, sh = 0;
        for (int c = lane; c < nt; c += 32) {
            sl += lo[b * nt + c];
            sh += hi[b * nt + c];
        }
        sl = warp_sum_u64(sl);
        sh = warp_sum_u64(sh);
        if (lane == 0) tot[b] = (sh << 16) + sl;
    }
    __syncthreads();
}

// The id of the n-th (1-based) element, in increasing id order, for which pred(i) holds; -1 when
// there are fewer. Warp w owns the ids [w R, (w + 1) R) and reads them coalesced; the warp that
// holds the n-th walks its range with ballots. Every thread must call it.
template <class Pred>
__device__ int block_nth_in_id_order(int V, unsigned long long n, Pred pred, unsigned long long* s_warp, int* s_res) {
    const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
    const int n_warps = static_cast<int>(blockDim.x) / 32;
    const int R = (V + 32 * n_warps - 1) / (32 * n_warps) * 32;
    const int b = min(V, warp * R), e = min(V, b + R);
    unsigned long long c = 0;
    for (int i = b + lane; i < e; i += 32) c += pred(i) ? 1ull : 0ull;
    c = warp_sum_u64(c);
    __syncthreads();  // s_warp / *s_res may still be read by a previous call
    if (tid == 0) *s_res = -1;
    if (lane == 0) s_warp[warp] = c;
    __syncthreads();
    unsigned long long before = 0;
    for (int w = 0; w < warp; ++w) before += s_warp[w];
    if (before < n && n <= before + c) {  // uniform over the warp
        unsigned long long need = n - before;
        for (int i0 = b; i0 < e; i0 += 32) {
            const int i = i0 + lane;
            const unsigned m = __ballot_sync(0xffffffffu, i < e && pred(i));
            const unsigned cnt = static_cast<unsigned>(__popc(m));
            if (need <= cnt) {
                if (((m >> lane) & 1u) && static_cast<unsigned long long>(__popc(m & ((1u << lane) - 1u))) == need - 1)
                    *s_res = i;
                break;
            }
            need -= cnt;
        }
    }
    __syncthreads();
    return *s_res;
}

struct SampleArgs {
    int vocab;
    int top_k;         // 0: off
    float top_p;       // 1: off
    float min_p;       // 0: off
    float t_top_p;     // temperature of top-p's probabilities (1 or temperature)
    float t_min_p;     // temperature of min-p's probabilities
    float temperature; // of the draw
    unsigned long long seed;
};

// `logits` [a.vocab] are the logits of ids 0..vocab-1, or with `ids` a candidate list in increasing
// id order (ids[i] the token of entry i; `topk_candidates_kernel`).
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(kSampleThreads)
    sample_top_k_top_p_kernel(std::int32_t* __restrict__ id_out, const float* __restrict__ logits, SampleArgs a,
                              unsigned long long* __restrict__ counter, std::uint8_t* __restrict__ kept,
                              const std::int32_t* __restrict__ ids) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    extern __shared__ unsigned cols[];  // [2][kDigitBins][kSampleThreads]
    __shared__ unsigned long long tot[kDigitBins];
    __shared__ unsigned long long s_warp[32];
    __shared__ unsigned long long scan[33];
    __shared__ float red[32];
    __shared__ unsigned s_prefix;
    __shared__ unsigned long long s_need;
    __shared__ int s_id;
    const int V = a.vocab, tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
    const int lane = tid % 32, warp = tid / 32;

    float mx = -__builtin_huge_valf();
    for (int i = tid; i < V; i += nt) mx = fmaxf(mx, logits[i]);
    const float M = block_max(mx, red);

    // ---- top-k: the k-th largest key tk; ties at tk kept up to id cut_k ----
    const bool use_k = a.top_k > 0 && a.top_k < V;
    unsigned tk = 0;
    int cut_k = V;
    if (use_k) {
        unsigned prefix = 0, pmask = 0;
        unsigned long long need = static_cast<unsigned long long>(a.top_k);
        for (int shift = 32 - 4; shift >= 0; shift -= 4) {
            digit_histogram(tot, cols, logits, V, prefix, pmask, shift, [](int, unsigned) { return true; },
                            [](int) { return 1ull; });
            if (tid == 0) {
                unsigned long long cum = 0;
                const int digit = digit_reaching(tot, need, cum);
                s_prefix = prefix | (static_cast<unsigned>(digit) << shift);
                s_need = need - cum;
            }
            __syncthreads();
            prefix = s_prefix;
            need = s_need;
            pmask |= static_cast<unsigned>(kDigitBins - 1) << shift;
        }
        tk = prefix;
        cut_k = block_nth_in_id_order(V, need, [&](int i) { return float_key(logits[i]) == tk; }, s_warp, &s_id);
    }
    const auto in_k = [&](int i, unsigned key) { return !use_k || key > tk || (key == tk && i <= cut_k); };

    // ---- top-p over the top-k set, in the order decreasing logit, then id ----
    const bool use_p = a.top_p < 1.0f;
    unsigned tp = 0;
    int cut_p = V;
    if (use_p) {
        const float mp = M / a.t_top_p;
        const auto w_p = [&](int i) { return fixed_mass(expf(logits[i] / a.t_top_p - mp)); };
        unsigned long long z = 0;
        for (int i = tid; i < V; i += nt)
            if (in_k(i, float_key(logits[i]))) z += w_p(i);
        z = block_sum_u64(z, scan);
        // keep the shortest prefix whose mass reaches top_p * z (the crossing token kept)
        unsigned long long target =
            static_cast<unsigned long long>(ceil(static_cast<double>(a.top_p) * static_cast<double>(z)));
        target = target < 1 ? 1 : (target > z ? z : target);
        unsigned prefix = 0, pmask = 0;
        unsigned long long above = 0;
        for (int shift = 32 - 4; shift >= 0; shift -= 4) {
            digit_histogram(tot, cols, logits, V, prefix, pmask, shift, in_k, w_p);
            if (tid == 0) {
                const int digit = digit_reaching(tot, target, above);
                s_prefix = prefix | (static_cast<unsigned>(digit) << shift);
                s_need = above;
            }
            __syncthreads();
            prefix = s_prefix;
            above = s_need;
            pmask |= static_cast<unsigned>(kDigitBins - 1) << shift;
        }
        tp = prefix;
        // ties at tp (equal logits, equal masses): as many, in id order, as reach the target
        const float tie_logit = __uint_as_float((tp & 0x80000000u) ? (tp & 0x7fffffffu) : ~tp);
        const unsigned long long w_tie = fixed_mass(expf(tie_logit / a.t_top_p - mp));
        const unsigned long long n_tie = w_tie > 0 ? (target - above + w_tie - 1) / w_tie : 1;
        cut_p = block_nth_in_id_order(
            V, n_tie, [&](int i) { const unsigned key = float_key(logits[i]); return key == tp && in_k(i, key); },
            s_warp, &s_id);
        if (cut_p < 0) cut_p = V;  // fewer ties than needed (rounding): keep them all
    }
    const bool use_m = a.min_p > 0.0f;
    const float mm = M / a.t_min_p;
    const auto in_set = [&](int i) {
        const float l = logits[i];
        const unsigned key = float_key(l);
        if (!in_k(i, key)) return false;
        if (use_p && !(key > tp || (key == tp && i <= cut_p))) return false;
        if (use_m && !(expf(l / a.t_min_p - mm) >= a.min_p)) return false;
        return true;
    };

    // ---- the draw: softmax(l / temperature) over the kept set, walked in id order ----
    const float md = M / a.temperature;
    const auto w_d = [&](int i) { return fixed_mass(expf(logits[i] / a.temperature - md)); };
    const int R = (V + nt - 1) / nt * 32;  // ids per warp, coalesced
    const int b = min(V, warp * R), e = min(V, b + R);
    unsigned long long mine = 0;
    for (int i = b + lane; i < e; i += 32) {
        const bool k = in_set(i);
        if (kept) kept[ids ? ids[i] : i] = k ? 1 : 0;
        if (k) mine += w_d(i);
    }
    mine = warp_sum_u64(mine);
    __syncthreads();
    if (lane == 0) s_warp[warp] = mine;
    if (tid == 0) s_id = -1;
    __syncthreads();
    unsigned long long before = 0, total = 0;
    for (int w = 0; w < nt / 32; ++w) {
        if (w < warp) before += s_warp[w];
        total += s_warp[w];
    }
    const unsigned long long step = *counter;
    const double u = static_cast<double>(splitmix64(a.seed ^ splitmix64(step)) >> 11) * 0x1.0p-53;
    unsigned long long t = static_cast<unsigned long long>(u * static_cast<double>(total));
    if (t >= total) t = total - 1;
    if (before <= t && t < before + mine) {  // uniform over the warp
        unsigned long long carry = before;
        for (int i0 = b; i0 < e; i0 += 32) {
            const int i = i0 + lane;
            const unsigned long long w = i < e && in_set(i) ? w_d(i) : 0ull;
            unsigned long long incl = w;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned long long n = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += n;
            }
            const unsigned m = __ballot_sync(0xffffffffu, carry + incl > t);
            if (m) {
                if (lane == __ffs(m) - 1) s_id = i;
                break;
            }
            carry += __shfl_sync(0xffffffffu, incl, 31);
        }
    }
    __syncthreads();
    if (tid == 0) {
        *id_out = s_id >= 0 ? (ids ? ids[s_id] : s_id) : 0;
        *counter = step + 1;
    }
}

inline constexpr int kCandThreads = 256;  // threads of the top-k candidate kernel
inline constexpr int kCandSlice = 512;    // logits per candidate block (2 per thread)

// The top-k prefilter: block b takes the ids [b * kCandSlice, ...) and writes its k largest
// logits in the sampler's order (larger logit first, then smaller id), or all of them when the
// slice holds fewer, in increasing id order to entries [b * k, ...) of val / id. Every token of
// the global top-k is in the top-k of its own slice, so the list of all blocks (contiguous: only
// the last slice can hold fewer than k) holds it, in increasing id order. Radix selection with
// 8-bit digits in shared memory (a 512-logit slice), ties at the k-th key taken in id order.
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(kCandThreads)
    topk_candidates_kernel(const float* __restrict__ logits, int vocab, int k, float* __restrict__ val,
                           std::int32_t* __restrict__ id) {
    pdl_enter();
    __shared__ unsigned keys[kCandSlice];
    __shared__ unsigned hist[256];
    __shared__ unsigned long long scan[33];
    __shared__ unsigned s_prefix, s_need;
    const int tid = static_cast<int>(threadIdx.x);
    const int base = static_cast<int>(blockIdx.x) * kCandSlice;
    const int n = min(kCandSlice, vocab - base);
    for (int j = tid; j < kCandSlice; j += kCandThreads) keys[j] = j < n ? float_key(logits[base + j]) : 0u;
    __syncthreads();
    unsigned tk = 0, need = 0;  // the k-th largest key; how many of its ties (in id order) to take
    const bool all = n <= k;
    if (!all) {
        unsigned prefix = 0, pmask = 0;
        need = static_cast<unsigned>(k);
        for (int shift = 24; shift >= 0; shift -= 8) {
            hist[tid] = 0u;  // kCandThreads == 256 bins
            __syncthreads();
            for (int j = tid; j < n; j += kCandThreads)
                if ((keys[j] & pmask) == prefix) atomicAdd(&hist[(keys[j] >> shift) & 255u], 1u);
            __syncthreads();
            if (tid == 0) {
                unsigned cum = 0;
                int d = 255;
                for (; d > 0 && cum + hist[d] < need; --d) cum += hist[d];
                s_prefix = prefix | (static_cast<unsigned>(d) << shift);
                s_need = need - cum;
            }
            __syncthreads();
            prefix = s_prefix;
            need = s_need;
            pmask |= 255u << shift;
        }
        tk = prefix;
    }
    // thread t owns entries 2t, 2t + 1 (id order): ties' ranks, then the output positions
    const int j0 = 2 * tid, j1 = j0 + 1;
    const bool t0 = !all && j0 < n && keys[j0] == tk, t1 = !all && j1 < n && keys[j1] == tk;
    unsigned long long total = 0;
    const unsigned long long tie_before = block_exclusive_scan((t0 ? 1ull : 0ull) + (t1 ? 1ull : 0ull), scan, total);
    const bool k0 = j0 < n && (all || keys[j0] > tk || (t0 && tie_before < need));
    const bool k1 = j1 < n && (all || keys[j1] > tk || (t1 && tie_before + (t0 ? 1ull : 0ull) < need));
    const unsigned long long pos = block_exclusive_scan((k0 ? 1ull : 0ull) + (k1 ? 1ull : 0ull), scan, total);
    const long long out = static_cast<long long>(blockIdx.x) * k + static_cast<long long>(pos);
    if (k0) {
        val[out] = logits[base + j0];
        id[out] = base + j0;
    }
    if (k1) {
        val[out + (k0 ? 1 : 0)] = logits[base + j1];
        id[out + (k0 ? 1 : 0)] = base + j1;
    }
}

// Lets the top-k/top-p kernel use kSampleSmem bytes of dynamic shared memory (over the 48 KB
// default), once per device.
inline void sample_kernel_smem_optin() { opt_in_dynamic_smem<sample_top_k_top_p_kernel<>>(kSampleSmem); }

// Keeps (v, i) in (best, bi) when it is larger, or equal with a smaller id.
__device__ __forceinline__ void argmax_update(float& best, int& bi, float v, int i) {
    if (v > best || (v == best && i < bi)) {
        best = v;
        bi = i;
    }
}

// The warp's argmax of (best, bi) in every lane, ties to the smaller id.
__device__ __forceinline__ void warp_argmax(float& best, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_update(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

// argmax over the logits, ties to the smaller id (the CPU sampler's greedy pick).
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(kGreedyThreads)
    sample_greedy_kernel(std::int32_t* __restrict__ id_out, const float* __restrict__ logits, int vocab) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    __shared__ float sv[32];
    __shared__ int si[32];
    const int tid = static_cast<int>(threadIdx.x);
    float best = -__builtin_huge_valf();
    int bi = vocab;  // larger than any id: loses every tie
    for (int i = tid; i < vocab; i += static_cast<int>(blockDim.x)) argmax_update(best, bi, logits[i], i);
    warp_argmax(best, bi);
    if (tid % 32 == 0) {
        sv[tid / 32] = best;
        si[tid / 32] = bi;
    }
    __syncthreads();
    if (tid < 32) {
        const int n_warps = static_cast<int>(blockDim.x) / 32;
        best = tid < n_warps ? sv[tid] : -__builtin_huge_valf();
        bi = tid < n_warps ? si[tid] : vocab;
        warp_argmax(best, bi);
        if (tid == 0) *id_out = bi < vocab ? bi : 0;  // all NaN: token 0
    }
}

// The penalty stages of `ops::apply_penalties`; `ids_counts` holds n, then ids [cap], then
// counts [cap] (n read on the device: a recorded step replays with each step's upload).
struct PenaltyArgs {
    int cap = 0;  // room for ids (and counts) in the scratch
    int n_stages = 0;
    int stage[3] = {0, 0, 0};  // 0 repetition, 1 frequency, 2 presence
    float repetition = 1.0f, frequency = 0.0f, presence = 0.0f;
};

// One thread per distinct id: the CPU's float operations in the stage order, rounded as on the
// CPU (explicit round-to-nearest intrinsics: no fused multiply-add).
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void apply_penalties_kernel(float* __restrict__ logits, const std::int32_t* __restrict__ ids_counts,
                                       PenaltyArgs a) {
    pdl_enter();
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= ids_counts[0] || i >= a.cap) return;
    const int id = ids_counts[1 + i];
    const float count = static_cast<float>(ids_counts[1 + a.cap + i]);
    float l = logits[id];
    for (int s = 0; s < a.n_stages; ++s) {
        if (a.stage[s] == 0)
            l = l > 0.0f ? __fdiv_rn(l, a.repetition) : __fmul_rn(l, a.repetition);
        else if (a.stage[s] == 1)
            l = __fsub_rn(l, __fmul_rn(count, a.frequency));
        else
            l = __fsub_rn(l, a.presence);
    }
    logits[id] = l;
}

}  // namespace cuda_detail
/// \endcond

/// Scratch of the top-k prefilter of `ops::sample_top_k_top_p` (grown on demand): the
/// candidates' logits and ids, vocab / 512 blocks of k each.
struct TopKCandidates {
    /// The largest top-k the prefilter takes (a larger k samples over the whole vocabulary).
    static constexpr int kMaxK = 128;
    DeviceBuffer<float> values;        ///< candidate logits
    DeviceBuffer<std::int32_t> ids;    ///< candidate ids
};

namespace ops {

/// The host half of `apply_penalties`: counts the ids among the last `p.penalty_range` ids of
/// `history` (all when < 0; none when `history` is empty) as the CPU sampler does and uploads the
/// distinct ids, their counts and how many there are into `scratch` (grown as needed, at least
/// 1,025 entries; an asynchronous copy from pageable memory, so `history` may change when the call
/// returns). Returns the arguments of `launch_penalties`.
/// \throws ArgumentError when an id of the range is outside [0, vocab); CudaError when the copy fails
template <int Sm>
cuda_detail::PenaltyArgs upload_penalties(Cuda<Sm>, std::int64_t vocab, const DeviceSamplingParams& p,
                                          std::span<const std::int32_t> history, DeviceBuffer<std::int32_t>& scratch,
                                          cudaStream_t stream = nullptr) {
    const auto counts = generate::detail::recent_counts(history, p.penalty_range);  // the CPU sampler's counts
    for (const auto& [id, c] : counts)
        if (id < 0 || id >= vocab)
            throw ArgumentError("apply_penalties: history id " + std::to_string(id) + " is outside [0, " +
                                std::to_string(vocab) + ")");
    cuda_detail::PenaltyArgs a;
    a.n_stages = static_cast<int>(std::min<std::size_t>(p.penalties.size(), 3));
    for (int s = 0; s < a.n_stages; ++s)
        a.stage[s] = p.penalties[static_cast<std::size_t>(s)] == generate::SamplerStage::RepetitionPenalty ? 0
                     : p.penalties[static_cast<std::size_t>(s)] == generate::SamplerStage::FrequencyPenalty ? 1
                                                                                                           : 2;
    a.repetition = p.repetition_penalty;
    a.frequency = p.frequency_penalty;
    a.presence = p.presence_penalty;
    // at least 1025 and grown geometrically (grow_device_buffer): freeing device memory invalidates
    // the recorded CUDA graphs of the model (backend_epoch), so a growth per step would re-record
    // the decode step every token while the penalty range fills
    const auto n = static_cast<std::int64_t>(counts.size());
    std::int32_t* d = grow_device_buffer(scratch, std::max<std::int64_t>(2 * n + 1, 1025), "sampler penalty ids", stream);
    a.cap = static_cast<int>(std::min<std::int64_t>((static_cast<std::int64_t>(scratch.size()) - 1) / 2, 1 << 30));
    std::vector<std::int32_t> packed(static_cast<std::size_t>(1 + a.cap + n), 0);  // n, ids [cap], counts [n]
    packed[0] = static_cast<std::int32_t>(n);
    std::size_t j = 0;
    for (const auto& [id, c] : counts) {
        packed[1 + j] = id;
        packed[1 + static_cast<std::size_t>(a.cap) + j] = c;
        ++j;
    }
    LIMARP_CUDA_CHECK(cudaMemcpyAsync(d, packed.data(), packed.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                                      stream));
    return a;
}

/// The device half of `apply_penalties`: rewrites the uploaded ids' logits in place (one thread per
/// id of the scratch's capacity; the count is read on the device, so a recorded step replays with
/// each step's upload). `ids_counts` is the scratch `upload_penalties` filled, `a` what it returned.
/// \throws CudaError when the launch fails
template <int Sm>
void launch_penalties(Cuda<Sm>, float* logits /*[vocab]*/, const std::int32_t* ids_counts, const cuda_detail::PenaltyArgs& a,
                      cudaStream_t stream = nullptr) {
    constexpr int kThreads = 256;
    cuda_detail::launch_chained(__FILE__, __LINE__, cuda_detail::apply_penalties_kernel<>,
                                dim3(static_cast<unsigned>((a.cap + kThreads - 1) / kThreads)), dim3(kThreads), 0,
                                stream, logits, ids_counts, a);
}

/// Applies the active penalties of `p` (`p.penalties`, in that order) to the device `logits` in
/// place: every id among the last `p.penalty_range` ids of `history` (all when < 0) gets the
/// CPU sampler's repetition / frequency / presence penalty, bit for bit (`upload_penalties`, then
/// `launch_penalties`). Nothing happens when no penalty is active or the range holds no id.
///
/// \throws ArgumentError when an id of the range is outside [0, vocab); CudaError when a copy or
///         the launch fails
template <int Sm>
void apply_penalties(Cuda<Sm> tag, float* logits /*[vocab]*/, std::int64_t vocab, const DeviceSamplingParams& p,
                     std::span<const std::int32_t> history, DeviceBuffer<std::int32_t>& scratch,
                     cudaStream_t stream = nullptr) {
    if (p.penalties.empty() || p.penalty_range == 0 || history.empty()) return;
    const cuda_detail::PenaltyArgs a = upload_penalties(tag, vocab, p, history, scratch, stream);
    launch_penalties(tag, logits, scratch.data(), a, stream);
}

/// Greedy pick on the GPU: *id = argmax logits, ties to the smaller id (the CPU `Sampler` at
/// temperature 0 without penalties). One block; asynchronous on `stream`.
///
/// \param id     device int32 output (copy it back, or feed it to the next step's embedding)
/// \param logits [vocab] device logits (finite)
/// \param vocab  vocabulary size, 1 .. 2^31 - 1
/// \param stream CUDA stream
/// \throws CudaError when the launch fails
template <int Sm>
void sample_greedy(Cuda<Sm>, std::int32_t* id /*[1]*/, const float* logits /*[vocab]*/, std::int64_t vocab,
                   cudaStream_t stream = nullptr) {
    cuda_detail::launch_chained(__FILE__, __LINE__, cuda_detail::sample_greedy_kernel<>, dim3(1),
                                dim3(cuda_detail::kGreedyThreads), 0, stream, id, logits, static_cast<int>(vocab));
}

/// What `sample_top_k_top_p` allocates or configures on its first call, done ahead (so that its
/// launches can be recorded into a CUDA graph): the sampling kernel's shared-memory opt-in and,
/// when the prefilter applies, `candidates` grown for `vocab`.
/// \throws CudaError when an allocation fails
inline void prepare_top_k_top_p(std::int64_t vocab, const DeviceSamplingParams& p, TopKCandidates* candidates,
                                cudaStream_t stream = nullptr) {
    cuda_detail::sample_kernel_smem_optin();
    const int k = p.top_k > 0 ? p.top_k : 0;
    const std::int64_t blocks = (vocab + cuda_detail::kCandSlice - 1) / cuda_detail::kCandSlice;
    if (candidates && k > 0 && k <= TopKCandidates::kMaxK && blocks > 1) {
        grow_device_buffer(candidates->values, blocks * k, "top-k candidate logits", stream);
        grow_device_buffer(candidates->ids, blocks * k, "top-k candidate ids", stream);
    }
}

/// Top-k / top-p / min-p / temperature sampling on the GPU (see the file comment): *id is drawn
/// from softmax(l / temperature) over the kept set with the random number of step *counter, and
/// *counter is incremented. One block; asynchronous on `stream`.
///
/// \param id      device int32 output
/// \param logits  [vocab] device logits (finite, or -inf for banned tokens)
/// \param vocab   vocabulary size, 1 .. 2^31 - 1
/// \param p       settings; p.temperature > 0
/// \param counter device step counter (start it at 0 for the seed's first draw)
/// \param stream  CUDA stream
/// \param kept    optional [vocab] device output: 1 for the tokens of the kept set, else 0 (tests)
/// \param candidates optional scratch of the top-k prefilter: with it and 0 < top_k <= 128, a
///                first launch keeps each 512-logit slice's top k (`TopKCandidates`) and the
///                one-block kernel runs over those; the same kept set and the same draw, bit for
///                bit, as without it
/// \throws ArgumentError when p.temperature <= 0 or top_p/min_p are outside their ranges;
///         CudaError when the launch fails
template <int Sm>
void sample_top_k_top_p(Cuda<Sm>, std::int32_t* id /*[1]*/, const float* logits /*[vocab]*/, std::int64_t vocab,
                        const DeviceSamplingParams& p, std::uint64_t* counter /*[1]*/, cudaStream_t stream = nullptr,
                        std::uint8_t* kept /*[vocab]*/ = nullptr, TopKCandidates* candidates = nullptr) {
    if (!(p.temperature > 0.0f) || !(p.top_p > 0.0f && p.top_p <= 1.0f) || !(p.min_p >= 0.0f && p.min_p <= 1.0f))
        throw ArgumentError("sample_top_k_top_p: temperature must be > 0 (greedy: sample_greedy), top_p in (0, 1], "
                            "min_p in [0, 1]");
    cuda_detail::SampleArgs a{};
    a.vocab = static_cast<int>(vocab);
    a.top_k = p.top_k > 0 ? p.top_k : 0;
    a.top_p = p.top_p;
    a.min_p = p.min_p;
    a.t_top_p = p.temperature_before_top_p ? p.temperature : 1.0f;
    a.t_min_p = p.temperature_before_min_p ? p.temperature : 1.0f;
    a.temperature = p.temperature;
    a.seed = p.seed;
    cuda_detail::sample_kernel_smem_optin();
    const float* list = logits;
    const std::int32_t* list_ids = nullptr;
    const std::int64_t blocks = (vocab + cuda_detail::kCandSlice - 1) / cuda_detail::kCandSlice;
    if (candidates && a.top_k > 0 && a.top_k <= TopKCandidates::kMaxK && blocks > 1) {
        // the top-k prefilter: the one-block kernel then runs over blocks * k candidates
        const std::int64_t n = blocks * a.top_k;
        float* cv = grow_device_buffer(candidates->values, n, "top-k candidate logits", stream);
        std::int32_t* ci = grow_device_buffer(candidates->ids, n, "top-k candidate ids", stream);
        cuda_detail::launch_chained(__FILE__, __LINE__, cuda_detail::topk_candidates_kernel<>,
                                    dim3(static_cast<unsigned>(blocks)), dim3(cuda_detail::kCandThreads), 0, stream,
                                    logits, static_cast<int>(vocab), a.top_k, cv, ci);
        const std::int64_t last = vocab - (blocks - 1) * cuda_detail::kCandSlice;
        a.vocab = static_cast<int>((blocks - 1) * a.top_k + std::min<std::int64_t>(a.top_k, last));
        list = cv;
        list_ids = ci;
        if (kept) LIMARP_CUDA_CHECK(cudaMemsetAsync(kept, 0, static_cast<std::size_t>(vocab), stream));
    }
    cuda_detail::launch_chained(__FILE__, __LINE__, cuda_detail::sample_top_k_top_p_kernel<>, dim3(1),
                                dim3(cuda_detail::kSampleThreads), cuda_detail::kSampleSmem, stream, id, list, a,
                                reinterpret_cast<unsigned long long*>(counter), kept, list_ids);
}

}  // namespace ops

/// The on-device sampler of a generation loop: the settings of a CPU `generate::SamplerParams`
/// (the supported stages, see `DeviceSamplingParams::from`), a device step counter and a device
/// id. `enqueue` leaves the id on the device (e.g. for the next step's embedding); `sample` also
/// copies those 4 bytes back. With penalties active, the history's ids are applied to the logits
/// in place first (`ops::apply_penalties`). `enqueue` and `sample` are not for stream capture (the
/// first top-k pick allocates the prefilter's scratch, the penalties count the history on the host
/// and upload it); the split form is: `prepare` (host work and uploads) before the capture,
/// `enqueue_prepared` (launches only) inside it, `finish` (the id) after it, with `version()` in
/// the key of the recording.
class DeviceSampler {
public:
    /// \throws ArgumentError as `DeviceSamplingParams::from`; CudaError when the allocation fails
    explicit DeviceSampler(const generate::SamplerParams& params)
        : greedy_(params.temperature <= 0.0f), p_(DeviceSamplingParams::from(params)), state_(2, "device sampler state") {
        // room for the penalty range's ids and counts up front (a later growth frees memory,
        // which makes the model re-record its CUDA graph once)
        if (!p_.penalties.empty() && p_.penalty_range != 0) {
            const std::int64_t ids = p_.penalty_range > 0
                                         ? std::clamp<std::int64_t>(p_.penalty_range, 512, std::int64_t{1} << 17)
                                         : 4096;  // more distinct ids grow it geometrically
            penalty_ids_ = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(2 * ids + 1), "sampler penalty ids");
        }
        reseed(params.seed);
    }
    /// Restarts the random sequence: seed `seed`, step 0 (and a new `version()`).
    void reseed(std::uint64_t seed) {
        p_.seed = seed;
        LIMARP_CUDA_CHECK(cudaMemset(state_.data(), 0, state_.bytes()));
        static std::atomic<std::uint64_t> versions{0};
        version_ = ++versions;
    }
    /// Changes whenever the launches of `enqueue_prepared` would (a new sampler, a new seed); never 0.
    std::uint64_t version() const noexcept { return version_; }
    /// The host half of a pick from logits [vocab] after `history`: the penalties' ids and counts
    /// uploaded, the top-k prefilter's scratch sized. \throws ArgumentError for a history id
    /// outside [0, vocab); CudaError
    template <int Sm>
    void prepare(Cuda<Sm> tag, std::int64_t vocab, std::span<const std::int32_t> history, cudaStream_t stream = nullptr) {
        if (penalties_on()) penalties_ = ops::upload_penalties(tag, vocab, p_, history, penalty_ids_, stream);
        if (!greedy_) ops::prepare_top_k_top_p(vocab, p_, &cand_, stream);
    }
    /// The launches of the pick `prepare` prepared: the penalties on `logits` in place, then the
    /// pick into `device_id()`. No allocation, no synchronisation: recordable.
    template <int Sm>
    void enqueue_prepared(Cuda<Sm> tag, float* logits /*[vocab]*/, std::int64_t vocab, cudaStream_t stream = nullptr) {
        if (penalties_on()) ops::launch_penalties(tag, logits, penalty_ids_.data(), penalties_, stream);
        enqueue(tag, static_cast<const float*>(logits), vocab, stream);
    }
    /// The id of the last pick (a 4-byte copy; waits for `stream`).
    std::int32_t finish(cudaStream_t stream = nullptr) { return read_id(stream); }
    /// The settings in use.
    const DeviceSamplingParams& params() const noexcept { return p_; }
    /// The device id the last enqueue writes.
    std::int32_t* device_id() noexcept { return reinterpret_cast<std::int32_t*>(state_.data() + 1); }
    /// Enqueues the pick from `logits` [vocab] on `stream`; the id stays in `device_id()`.
    /// `history` (prompt and generated ids) feeds the penalties, which rewrite `logits` in place
    /// (`prepare`, then `enqueue_prepared`).
    template <int Sm>
    void enqueue(Cuda<Sm> tag, float* logits /*[vocab]*/, std::int64_t vocab, std::span<const std::int32_t> history,
                 cudaStream_t stream = nullptr) {
        prepare(tag, vocab, history, stream);
        enqueue_prepared(tag, logits, vocab, stream);
    }
    /// Enqueues the pick from `logits` [vocab] without penalties.
    template <int Sm>
    void enqueue(Cuda<Sm> tag, const float* logits /*[vocab]*/, std::int64_t vocab, cudaStream_t stream = nullptr) {
        if (greedy_)
            ops::sample_greedy(tag, device_id(), logits, vocab, stream);
        else
            ops::sample_top_k_top_p(tag, device_id(), logits, vocab, p_, state_.data(), stream, nullptr, &cand_);
    }
    /// Enqueues the pick (penalties from `history` first) and returns it (one 4-byte copy; waits
    /// for `stream`).
    template <int Sm>
    std::int32_t sample(Cuda<Sm> tag, float* logits /*[vocab]*/, std::int64_t vocab,
                        std::span<const std::int32_t> history, cudaStream_t stream = nullptr) {
        enqueue(tag, logits, vocab, history, stream);
        return read_id(stream);
    }
    /// Enqueues the pick without penalties and returns it.
    template <int Sm>
    std::int32_t sample(Cuda<Sm> tag, const float* logits /*[vocab]*/, std::int64_t vocab,
                        cudaStream_t stream = nullptr) {
        enqueue(tag, logits, vocab, stream);
        return read_id(stream);
    }

private:
    bool penalties_on() const noexcept { return !p_.penalties.empty() && p_.penalty_range != 0; }
    std::int32_t read_id(cudaStream_t stream) {
        std::int32_t id = 0;
        LIMARP_CUDA_CHECK(cudaMemcpyAsync(&id, device_id(), sizeof id, cudaMemcpyDeviceToHost, stream));
        LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
        return id;
    }

    bool greedy_;
    DeviceSamplingParams p_;
    DeviceBuffer<std::uint64_t> state_;  // [0]: step counter, [1]: low 4 bytes the id
    DeviceBuffer<std::int32_t> penalty_ids_;
    cuda_detail::PenaltyArgs penalties_{};  // of the last prepare
    TopKCandidates cand_;  // the top-k prefilter's scratch
    std::uint64_t version_ = 0;
};

}  // namespace limarp
