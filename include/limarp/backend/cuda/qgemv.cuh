#pragma once
/// \file qgemv.cuh
/// \brief `ops::qgemv_int8`: the decode-time (batch 1) product with an int8 row-wise weight on
/// CUDA, weight-only: y[o] (=|+=) scale[o] * sum_k q[o, k] * x[k], x f32 or bf16, y f32.
///
/// The kernel (`gemv_int8_rowwise_kernel<R, X, L>`) is memory bound: it streams each weight byte once.
/// - A block of `kQGemvWarps` (4) warps owns R consecutive output rows (`qgemv_default_config`:
///   R = 4, or 2 or 1 when fewer rows would leave under two blocks per multiprocessor; the
///   fastest choice per shape in the H100 measurements; R = 8 when that fits in one wave of
///   resident blocks where R = 4 would take a second, partly empty one: q/k/v). The row is cut into steps of 512 bytes
///   (32 lanes x 16 bytes); warp w takes steps w, w + 4, w + 8, ..., so small n_out still spreads
///   over many warps (split-K inside the block, no atomics, deterministic).
/// - Weights (`QGemvLoad::Registers`, the default): per step a lane issues R 16-byte loads
///   (`ld.global.nc.L1::no_allocate.L2::256B`: read-only, not kept in L1, 256-byte L2 prefetch)
///   and the warp batches U = `kQGemvUnroll<R>` steps before their arithmetic in the source. In
///   the machine code ptxas interleaves these loads with the arithmetic (two or so loads in
///   flight per warp at a time), so the bandwidth comes from occupancy: 0.89-0.98 of the copy
///   bandwidth for the large Mistral shapes on an H100 (benchmarks/NOTES.md).
/// - Chained launches (`QGemvConfig::programmatic`, on by default on sm_90, `detail/pdl.cuh`):
///   the kernel is launched while the previous kernel of the decode step runs and waits for it
///   before its first load.
/// - Several weights in one launch (`QGemvArgs`): up to three weights that read the same x
///   (q/k/v: k and v alone are too small to reach the bandwidth) each over their own blocks; or
///   gate and up side by side, R/2 rows of each per block, combined as silu(gate) * up in the
///   epilogue (SwiGLU without its own kernel and without writing gate and up).
/// - `QGemvLoad::CpAsync` (measured slower, kept for the next step): `cp.async.cg` copies into a
///   per-warp ring of P shared-memory stages, (P - 1) * R * 512 bytes per warp in flight whatever
///   ptxas schedules, read back when their group has landed. Because the copies need no
///   registers, this path issues its first stages before `griddepcontrol.wait` under programmatic
///   dependent launch (`QGemvConfig::programmatic`), which took 1.7-2.8 us off each launch in a
///   chain of the larger shapes on the H100; but the path itself was 8-25% slower than Registers
///   there at R = 2 and 4 (twice as slow at R = 1).
/// - `QGemvLoad::Bulk` (sm_90; opt-in, `LIMARP_CUDA_QGEMV_BULK=2`, then used where each block of
///   its one wave streams at least 4 row groups: gate/up, an int8 lm_head): 8 rows x 4096 bytes
///   a stage, copied by `cp.async.bulk` into a ring of 2-4 shared-memory stages that complete on mbarriers, the first
///   stages before `griddepcontrol.wait`; 256-thread blocks, warp w takes the 512-byte step w of a
///   stage for all 8 rows; a consumed slot is refilled after a proxy fence (`fence.proxy.async`:
///   read through the generic proxy, written by the bulk copy's async proxy) and the stage's
///   `__syncthreads`. On an H200 it streamed gate/up at 0.80 of the copy bandwidth against the
///   registers path's 0.66-0.68, but loses on o/down (512 groups on 396 blocks end unevenly),
///   and in the whole model it was no faster (361-362 against 362-363 tok/s; before the fence).
/// - x: a lane reads its 16 x values (four 16-byte loads for f32, two for bf16) through L1, where
///   x (at most 256 KB) stays resident for all the warps of the SM.
/// - int8 -> f32 without the slow I2F unit: bias the byte by 128 (xor 0x80), place it in the low
///   mantissa byte of 2^23 with one byte permute, subtract 2^23 + 128 (exact); then one FMA with x.
/// - LoRA (`QGemvLora`, optional): one unmerged adapter's B [n_out, r] bf16 times z = scale · A x,
///   added to the rows in the same pass (B's rows are read next to the int8 rows; r * 2 bytes
///   per row, 12% more bytes at r = 256 for q_proj), so the LoRA B product costs no launch. B's
///   and z's chunks are loaded after the weight loop, so the LoRA instance needs no more
///   registers than the base kernel (o_proj's and down_proj's 1,024 blocks stay in one wave,
///   q/k/v runs at R = 8).
/// - Reduction: warp shuffles per row, then the 4 warps' partials through shared memory; the
///   scale is applied once per row at the end.
/// - Tails: rows are stored with a stride padded to 16 bytes with zero weights
///   (`DeviceInt8Weight`), so only x needs a guard: the one 16-value chunk that crosses n_in
///   is read element by element with zeros past the end.
/// Summation order (per lane over its steps, shuffle tree, then warps 0..3) is fixed: results are
/// bitwise reproducible run to run on the same device and configuration; they differ from the CPU
/// `ops::qmatmul_wt` by f32 rounding only.
///
/// Floor and measurements: benchmarks/NOTES.md ("CUDA int8 GEMV"), `bench_cuda_qgemv`.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/activation.cuh"
#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/device_int8_weight.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"
#include "limarp/core/error.hpp"

namespace limarp {

/// \cond
namespace cuda_detail {

inline constexpr int kQGemvWarps = 4;                  // warps per block (they split each row's steps)
inline constexpr int kQGemvThreads = 32 * kQGemvWarps;  // threads per block
inline constexpr int kQGemvStep = 32 * 16;              // int8 weights per warp step (16 per lane)

// 16 int8 weights, read once: no L1 allocation (they are never re-read), 256-byte L2 prefetch.
__device__ __forceinline__ uint4 load_weights_streaming(const std::int8_t* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// x[k0 .. k0+15] as f32, all in range: four (f32) or two (bf16) 16-byte loads through L1.
// x is 16-byte aligned and k0 % 16 == 0.
__device__ __forceinline__ void load_x16(float (&xv)[16], const float* __restrict__ x, int k0) {
    const float4* p = reinterpret_cast<const float4*>(x + k0);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float4 v = __ldg(p + j);
        xv[4 * j + 0] = v.x;
        xv[4 * j + 1] = v.y;
        xv[4 * j + 2] = v.z;
        xv[4 * j + 3] = v.w;
    }
}

__device__ __forceinline__ void load_x16(float (&xv)[16], const __nv_bfloat16* __restrict__ x, int k0) {
    const uint4* p = reinterpret_cast<const uint4*>(x + k0);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const uint4 v = __ldg(p + j);
        const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // bf16 -> f32 is exact: the bf16 bits are the high half
            xv[8 * j + 2 * i + 0] = __uint_as_float(u[i] << 16);
            xv[8 * j + 2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
    }
}

// The same for the chunk that may cross n_in: element by element, 0 at and past n_in.
__device__ __forceinline__ void load_x16_tail(float (&xv)[16], const float* __restrict__ x, int k0, int n_in) {
#pragma unroll
    for (int i = 0; i < 16; ++i) xv[i] = k0 + i < n_in ? __ldg(x + k0 + i) : 0.f;
}

__device__ __forceinline__ void load_x16_tail(float (&xv)[16], const __nv_bfloat16* __restrict__ x, int k0,
                                              int n_in) {
#pragma unroll
    for (int i = 0; i < 16; ++i) xv[i] = k0 + i < n_in ? __bfloat162float(x[k0 + i]) : 0.f;
}

// acc + sum_i float(int8 w_i) * xv[i] over the 16 int8 weights in w (little-endian byte order).
__device__ __forceinline__ float dot16_int8(uint4 w, const float (&xv)[16], float acc) {
    const unsigned words[4] = {w.x ^ 0x80808080u, w.y ^ 0x80808080u, w.z ^ 0x80808080u, w.w ^ 0x80808080u};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            // bits 0x4B0000bb = 2^23 + bb with bb = w + 128; minus (2^23 + 128) gives w exactly
            const float wf = __uint_as_float(__byte_perm(words[j], 0x4B000000u, 0x7540u + i)) - 8388736.0f;
            acc = fmaf(wf, xv[4 * j + i], acc);
        }
    }
    return acc;
}

/// How the kernel brings the weights in (`QGemvConfig::load`).
enum class QGemvLoad {
    /// 16-byte loads into registers, U steps issued before their arithmetic (the order of loads
    /// and arithmetic in the machine code is then up to ptxas). The default: fastest measured.
    Registers,
    /// 16-byte `cp.async` copies into a per-warp ring of shared memory, P stages deep: a warp
    /// keeps (P - 1) * R * 512 bytes in flight whatever ptxas schedules, then reads its own
    /// chunks back (conflict-free 16-byte shared loads). Streams its first stages before
    /// `griddepcontrol.wait` under programmatic launch.
    CpAsync,
    /// sm_90 bulk copies (`cp.async.bulk`, completing on an mbarrier) of 8 rows x 4096 bytes into
    /// a ring of P shared-memory stages, P * 32 KB in flight a block, one wave of blocks that
    /// stream their row groups one after the other (`gemv_int8_bulk_kernel`). Its first stages
    /// are copied before `griddepcontrol.wait`. `QGemvConfig::rows` is the registers path's
    /// fallback (LoRA ranks over 256, devices before sm_90).
    Bulk,
};

/// One launch configuration of the GEMV kernel.
struct QGemvConfig {
    int rows = 4;                            ///< output rows per block: 1, 2, 4 or 8
    QGemvLoad load = QGemvLoad::Registers;   ///< weight load path
    /// Programmatic dependent launch (sm_90, `detail/pdl.cuh`): the kernel may start while the
    /// previous kernel in the stream runs; it waits (`griddepcontrol.wait`) for that kernel's
    /// writes before reading x, z or y, so the previous kernel must not write the weight.
    bool programmatic = false;
    /// `QGemvLoad::Bulk`: stages of the ring, 2, 3 or 4 (0: `qgemv_bulk_stages()`, or 2 when that
    /// is off); other values make the launch throw ArgumentError
    int stages = 0;
};

/// An unmerged LoRA product added in the same pass (one token): y[o] += sum_j b[o, j] * z[j],
/// b bf16 [n_out, r] row-major, z = scale * (A x) f32 [r] (written by the previous kernel); r a
/// multiple of 8, b and z 16-byte aligned. b null: none.
struct QGemvLora {
    const __nv_bfloat16* b = nullptr;  ///< LoRA B [n_out, r] (device), or null
    const float* z = nullptr;          ///< the scaled A product [r] (device)
    int r = 0;                         ///< rank
};

/// Steps (of 512 weights) that one warp batches with `QGemvLoad::Registers`: U * R 16-byte weight
/// loads per lane, 128 bytes for R >= 2 (64 for R = 1, where the x registers would grow too many).
template <int R>
inline constexpr int kQGemvUnroll = R >= 8 ? 1 : (R >= 4 ? 2 : 4);
/// Shared-memory stages per warp with `QGemvLoad::CpAsync`: (P - 1) * R = 8 steps' chunks in
/// flight, i.e. 128 bytes per lane (P = 2, 3, 5, 9 for R = 8, 4, 2, 1).
template <int R>
inline constexpr int kQGemvStages = 8 / R + 1;

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/// One weight of a launch: y[o] (=|+=) scale[o] * (q[o, :] · x) (+ the LoRA term) for o < n_out.
struct QGemvPart {
    const std::int8_t* q = nullptr;  ///< values [n_out, ld] (device)
    const float* scale = nullptr;    ///< row scales [n_out] (device)
    float* y = nullptr;              ///< output [n_out] (device)
    int n_out = 0;                   ///< rows
    QGemvLora lora{};                ///< optional unmerged LoRA term
};

/// The kernel's arguments: up to `kMaxParts` weights with the same input x (one launch for
/// q/k/v), each over its own blocks, or (`gated`) two weights of the same shape read side by side,
/// gate and up, whose rows meet in the epilogue: y = parts[0].y = silu(gate x) * (up x).
struct QGemvArgs {
    static constexpr int kMaxParts = 3;  ///< weights per launch
    QGemvPart part[kMaxParts]{};
    int n_parts = 1;                  ///< 1..kMaxParts (2 when gated)
    int block_end[kMaxParts]{};       ///< cumulative block counts of the parts (not gated)
    int n_in = 0, ld = 0;             ///< shared input width and row stride (bytes)
    bool accumulate = false;          ///< y += instead of y = (not gated)
    bool gated = false;               ///< silu(part 0) * part 1 into part 0's y
};

// The R rows of this block: part p_r, row o_r of it. Gated: rows 0..R/2-1 of the block are gate
// rows row0 + r, rows R/2..R-1 the same rows of up. Otherwise all R rows lie in one part.
// Rows past a part's n_out re-read its last row (no divergent loads); their sums are dropped.
template <int R>
__device__ __forceinline__ void qgemv_block_rows(const QGemvArgs& a, int (&part)[R], int (&o)[R]) {
    const int b = static_cast<int>(blockIdx.x);
    if (a.gated) {
        constexpr int H = R / 2 > 0 ? R / 2 : 1;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            part[r] = r < H ? 0 : 1;
            o[r] = b * H + r % H;
        }
        return;
    }
    int p = 0;
#pragma unroll
    for (int i = 0; i + 1 < QGemvArgs::kMaxParts; ++i) p += (i + 1 < a.n_parts && b >= a.block_end[i]) ? 1 : 0;
    const int row0 = (b - (p > 0 ? a.block_end[p - 1] : 0)) * R;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        part[r] = p;
        o[r] = row0 + r;
    }
}

// See QGemvArgs: the R rows of this block (qgemv_block_rows), each row's dot product with x over
// n_in, scaled, plus its LoRA term; stored per part, or combined by silu(gate) * up when gated.
template <int R, class X, QGemvLoad L, bool kLora>
__device__ __forceinline__ void gemv_int8_rowwise_body(const X* __restrict__ x /*[n_in]*/, const QGemvArgs& a) {
    constexpr int W = kQGemvWarps;
    __shared__ float partial[W][R];
    __shared__ float partial_lora[W][R];
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int n_in = a.n_in, ld = a.ld;
    const std::int8_t* wrow[R];  // this lane's first chunk of each row
    {
        int part[R], o[R];
        qgemv_block_rows<R>(a, part, o);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const QGemvPart& pr = a.part[part[r]];
            wrow[r] = pr.q + static_cast<long long>(min(o[r], pr.n_out - 1)) * ld + lane * 16;
        }
    }

    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;

    // Steps 0 .. n_full-1 lie wholly inside n_in; a last step n_full exists when n_in % 512 != 0.
    const int n_full = n_in / kQGemvStep;
    const int n_steps = (ld + kQGemvStep - 1) / kQGemvStep;

    if constexpr (L == QGemvLoad::Registers) {
        constexpr int U = kQGemvUnroll<R>;
        pdl_enter();
        int s = warp;
        for (; s + (U - 1) * W < n_full; s += U * W) {  // U steps at once: all loads, then the arithmetic
            uint4 wq[U][R];
            float xv[U][16];
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int r = 0; r < R; ++r) wq[u][r] = load_weights_streaming(wrow[r] + (s + u * W) * kQGemvStep);
#pragma unroll
            for (int u = 0; u < U; ++u) load_x16(xv[u], x, (s + u * W) * kQGemvStep + lane * 16);
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int r = 0; r < R; ++r) acc[r] = dot16_int8(wq[u][r], xv[u], acc[r]);
        }
        for (; s < n_full; s += W) {  // the remaining whole steps of this warp, one at a time
            uint4 wq[R];
            float xv[16];
#pragma unroll
            for (int r = 0; r < R; ++r) wq[r] = load_weights_streaming(wrow[r] + s * kQGemvStep);
            load_x16(xv, x, s * kQGemvStep + lane * 16);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] = dot16_int8(wq[r], xv, acc[r]);
        }
        if (s < n_steps) {  // s == n_full: the step that crosses n_in (weights zero-padded up to ld)
            const int k0 = s * kQGemvStep + lane * 16;
            if (k0 < ld) {
                uint4 wq[R];
                float xv[16];
#pragma unroll
                for (int r = 0; r < R; ++r) wq[r] = load_weights_streaming(wrow[r] + s * kQGemvStep);
                load_x16_tail(xv, x, k0, n_in);
#pragma unroll
                for (int r = 0; r < R; ++r) acc[r] = dot16_int8(wq[r], xv, acc[r]);
            }
        }
    } else {
        constexpr int P = kQGemvStages<R>;
        __shared__ uint4 ring[W][P][R][32];  // [warp][stage][row][lane]: each lane reads back its own chunks
        // This warp's steps: warp, warp + W, ...; n_mine of them.
        const int n_mine = warp < n_steps ? (n_steps - warp + W - 1) / W : 0;
        const auto issue = [&](int i) {  // copy step i of this warp into stage i % P
            const int s = warp + i * W;
            const bool in_row = s * kQGemvStep + lane * 16 < ld;  // false only in the last step
#pragma unroll
            for (int r = 0; r < R; ++r)  // past ld: 0 source bytes, the chunk is zero-filled
                cp_async_16(&ring[warp][i % P][r][lane], wrow[r] + (in_row ? s * kQGemvStep : 0), in_row ? 16 : 0);
        };
        // Weights never depend on the previous kernel: start streaming them before waiting for it.
#pragma unroll
        for (int i = 0; i < P - 1; ++i) {
            if (i < n_mine) issue(i);
            cp_async_commit();  // one group per step, empty ones included, so the wait count is fixed
        }
        pdl_enter();
        for (int i = 0; i < n_mine; ++i) {
            if (i + P - 1 < n_mine) issue(i + P - 1);
            cp_async_commit();
            cp_async_wait<P - 1>();  // step i's group has landed (each lane waits for its own copies)
            const int s = warp + i * W;
            const int k0 = s * kQGemvStep + lane * 16;
            float xv[16];
            if (s < n_full)
                load_x16(xv, x, k0);
            else
                load_x16_tail(xv, x, k0, n_in);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] = dot16_int8(ring[warp][i % P][r][lane], xv, acc[r]);
        }
    }

    // The LoRA terms (not scaled by the row scale): B's row chunks of 8 bf16 times z, row r by
    // warp r % W, its lanes taking 8 ranks each. Loaded only here, after the loop: loading the
    // first chunks right after the wait (held in registers through the loop) or prefetching them
    // into L2 there made the model's decode with an adapter 2-6% slower, prefetching z into L1
    // 30-37% (r = 256, benchmarks/NOTES.md, sessions 19 and 20).
    int part[R], o[R];  // recomputed rather than kept live through the loop (registers)
    qgemv_block_rows<R>(a, part, o);
    float accl[R];
#pragma unroll
    for (int r = 0; r < R; ++r) accl[r] = 0.f;
    if constexpr (kLora) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r % W != warp) continue;
            const QGemvPart& pr = a.part[part[r]];
            if (pr.lora.b == nullptr) continue;
            float v = 0.f;
            const long long row = min(o[r], pr.n_out - 1);
            for (int c = lane * 8; c < pr.lora.r; c += 32 * 8)
                v += dot8_bf16(__ldg(reinterpret_cast<const uint4*>(pr.lora.b + row * pr.lora.r + c)),
                               __ldg(reinterpret_cast<const float4*>(pr.lora.z + c)),
                               __ldg(reinterpret_cast<const float4*>(pr.lora.z + c + 4)));
            accl[r] = v;
        }
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int off = 16; off > 0; off /= 2) {
            acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
            accl[r] += __shfl_xor_sync(0xffffffffu, accl[r], off);
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            partial[warp][r] = acc[r];
            partial_lora[warp][r] = accl[r];
        }
    }
    __syncthreads();
    const auto row_value = [&](int r) {  // scale * (sum over the warps) + the LoRA term
        float sum = 0.f, suml = 0.f;
#pragma unroll
        for (int w = 0; w < W; ++w) {
            sum += partial[w][r];
            suml += partial_lora[w][r];
        }
        return a.part[part[r]].scale[min(o[r], a.part[part[r]].n_out - 1)] * sum + suml;
    };
    const int t = static_cast<int>(threadIdx.x);
    if (a.gated) {  // thread r < R/2: gate row r and up row r + R/2 of the block
        constexpr int H = R / 2 > 0 ? R / 2 : 1;
#pragma unroll
        for (int r = 0; r < H; ++r)
            if (R >= 2 && t == r && o[r] < a.part[0].n_out)
                a.part[0].y[o[r]] = silu_mul(row_value(r), row_value(r + H));
    } else {
#pragma unroll
        for (int r = 0; r < R; ++r)
            if (t == r && o[r] < a.part[part[r]].n_out) {
                const float v = row_value(r);
                float* y = a.part[part[r]].y + o[r];
                *y = a.accumulate ? *y + v : v;
            }
    }
}

template <int R, class X, QGemvLoad L, bool kLora>
__global__ void __launch_bounds__(kQGemvThreads) gemv_int8_rowwise_kernel(const X* __restrict__ x, const QGemvArgs a) {
    gemv_int8_rowwise_body<R, X, L, kLora>(x, a);
}

// ---- QGemvLoad::Bulk: bulk copies (sm_90) into a ring of shared-memory stages ------------------
// A block of kQGemvBulkWarps warps owns row groups of kQGemvBulkRows rows (gated: 4 gate rows and
// the same 4 up rows), g = blockIdx.x, + gridDim.x, ... (the grid is one wave of resident blocks).
// Each group is streamed in chunks of kQGemvBulkChunk bytes of every row: one stage of the ring is
// 8 rows x one chunk, brought in by 8 `cp.async.bulk` copies (one a row) that complete on the
// stage's mbarrier. Warp 0 keeps P stages in flight: the first P before `griddepcontrol.wait`
// (weights are never written by the step's kernels), each later one as soon as the stage it
// replaces has been consumed. Warp w takes the 512-byte step w of a chunk for all 8 rows (x read
// once a block a chunk, through L1); a group's sums are reduced over the lanes by a transposing
// butterfly (9 shuffles for 8 rows) and over the warps in shared memory. The LoRA B rows of a
// group (r <= kQGemvBulkMaxLoraR) come with its last chunk, into the same stage.
inline constexpr int kQGemvBulkWarps = 8;
inline constexpr int kQGemvBulkThreads = 32 * kQGemvBulkWarps;
inline constexpr int kQGemvBulkRows = 8;
inline constexpr int kQGemvBulkChunk = kQGemvBulkWarps * kQGemvStep;  // 4096 bytes of a row
inline constexpr int kQGemvBulkMaxLoraR = 256;                         // ranks a stage holds a row
inline constexpr int kQGemvBulkMinGroups = 4;                          // groups a block, at least
inline constexpr int kQGemvBulkDefaultStages = 2;                      // stages when none are named

/// Dynamic shared memory of the bulk kernel with P stages (and room for LoRA B rows when `lora`).
__host__ __device__ inline constexpr int qgemv_bulk_stage_bytes(bool lora) {
    return kQGemvBulkRows * (kQGemvBulkChunk + (lora ? 2 * kQGemvBulkMaxLoraR : 0));
}
__host__ __device__ inline constexpr int qgemv_bulk_smem(int P, bool lora) {
    return P * qgemv_bulk_stage_bytes(lora) + 16 * P;  // the stages, then P mbarriers (8 bytes each, 16 kept)
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

template <int P, class X, bool kLora>
__global__ void __launch_bounds__(kQGemvBulkThreads)
    gemv_int8_bulk_kernel(const X* __restrict__ x, const QGemvArgs a, int n_groups) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int W = kQGemvBulkWarps, RB = kQGemvBulkRows, CH = kQGemvBulkChunk;
    constexpr int SB = qgemv_bulk_stage_bytes(kLora);
    extern __shared__ __align__(128) unsigned char qgemv_bulk_ring[];
    std::uint64_t* bar = reinterpret_cast<std::uint64_t*>(qgemv_bulk_ring + P * SB);
    __shared__ float partial[2][W][RB];
    __shared__ float partial_lora[2][RB];
    const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
    const int n_in = a.n_in, ld = a.ld;
    const int n_chunks = (ld + CH - 1) / CH;
    const int my_groups = n_groups > static_cast<int>(blockIdx.x)
                              ? (n_groups - static_cast<int>(blockIdx.x) + static_cast<int>(gridDim.x) - 1) /
                                    static_cast<int>(gridDim.x)
                              : 0;
    const int n_stages = my_groups * n_chunks;

    // Row r of group g: its part and its row in the part (past n_out: the part's last row, re-read,
    // its sum dropped). Gated: rows 0..3 gate rows 4g + r, rows 4..7 the same rows of up.
    const auto group_row = [&](int g, int r, int& part, int& o) {
        if (a.gated) {
            part = r < RB / 2 ? 0 : 1;
            o = g * (RB / 2) + r % (RB / 2);
            return;
        }
        int p = 0;
#pragma unroll
        for (int i = 0; i + 1 < QGemvArgs::kMaxParts; ++i) p += (i + 1 < a.n_parts && g >= a.block_end[i]) ? 1 : 0;
        part = p;
        o = (g - (p > 0 ? a.block_end[p - 1] : 0)) * RB + r;
    };
    // Lane 0 of warp 0 arms stage i's barrier, lanes 0..7 copy its rows (and B rows at the last
    // chunk).
    const auto issue = [&](int i) {
        const int slot = i % P, gi = i / n_chunks, c = i % n_chunks;
        const int g = static_cast<int>(blockIdx.x) + gi * static_cast<int>(gridDim.x);
        const int cb = min(CH, ld - c * CH);
        const bool with_b = kLora && c == n_chunks - 1;
        int part = 0, o = 0;
        unsigned b_bytes = 0;
        const __nv_bfloat16* b_src = nullptr;
        if (lane < RB) {
            group_row(g, lane, part, o);
            const QGemvPart& pr = a.part[part];
            o = min(o, pr.n_out - 1);
            if (with_b && pr.lora.b != nullptr) {
                b_bytes = static_cast<unsigned>(pr.lora.r) * 2u;
                b_src = pr.lora.b + static_cast<long long>(o) * pr.lora.r;
            }
        }
        const unsigned total = static_cast<unsigned>(RB * cb) + __reduce_add_sync(0xffffffffu, b_bytes);
        if (lane == 0)
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar + slot)),
                         "r"(total)
                         : "memory");
        __syncwarp();
        if (lane < RB) {
            const std::int8_t* src = a.part[part].q + static_cast<long long>(o) * ld + static_cast<long long>(c) * CH;
            unsigned char* dst = qgemv_bulk_ring + slot * SB + lane * CH;
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                    smem_u32(dst)),
                "l"(src), "r"(static_cast<unsigned>(cb)), "r"(smem_u32(bar + slot))
                : "memory");
            if (kLora && b_bytes > 0)
                asm volatile(
                    "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                        smem_u32(qgemv_bulk_ring + slot * SB + RB * CH + lane * 2 * kQGemvBulkMaxLoraR)),
                    "l"(b_src), "r"(b_bytes), "r"(smem_u32(bar + slot))
                    : "memory");
        }
    };

    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < P; ++s)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bar + s)) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == 0)
        for (int i = 0; i < P && i < n_stages; ++i) issue(i);  // weights only: before the wait
    pdl_enter();

    float acc[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) acc[r] = 0.f;
    for (int i = 0; i < n_stages; ++i) {
        const int slot = i % P, gi = i / n_chunks, c = i % n_chunks, buf = gi & 1;
        const bool last = c == n_chunks - 1;  // the group's last chunk: its 8 sums at the end
        const int g = static_cast<int>(blockIdx.x) + gi * static_cast<int>(gridDim.x);
        // What the group's end needs from global memory, asked for before this stage's wait: the row
        // scales and (accumulate) the old outputs for warp 1's lanes, which write the outputs; each
        // warp's z for its row's LoRA term.
        const int cid = tid - 32;  // warp 1's lanes 0..7: the group's outputs
        float sc0 = 0.f, sc1 = 0.f, y_old = 0.f;
        float4 lz0{}, lz1{};
        bool has_b = false;  // this warp's row has a LoRA term with a rank at this lane
        if (last) {
            if (cid >= 0 && cid < RB) {
                int part = 0, o = 0;
                group_row(g, cid % (a.gated ? RB / 2 : RB), part, o);
                const QGemvPart& pr = a.part[part];
                sc0 = __ldg(pr.scale + min(o, pr.n_out - 1));
                if (a.gated) {
                    group_row(g, cid % (RB / 2) + RB / 2, part, o);
                    sc1 = __ldg(a.part[part].scale + min(o, a.part[part].n_out - 1));
                } else if (a.accumulate && o < pr.n_out) {
                    y_old = pr.y[o];
                }
            }
            if constexpr (kLora) {
                int part = 0, o = 0;
                group_row(g, warp, part, o);
                const QGemvPart& pr = a.part[part];
                if (pr.lora.b != nullptr && lane * 8 < pr.lora.r) {
                    has_b = true;
                    lz0 = __ldg(reinterpret_cast<const float4*>(pr.lora.z + lane * 8));
                    lz1 = __ldg(reinterpret_cast<const float4*>(pr.lora.z + lane * 8 + 4));
                }
            }
        }
        const unsigned parity = static_cast<unsigned>((i / P) & 1);
        asm volatile(
            "{\n .reg .pred done;\n WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n @!done bra "
            "WAIT;\n}" ::"r"(smem_u32(bar + slot)),
            "r"(parity)
            : "memory");
        const unsigned char* st = qgemv_bulk_ring + slot * SB;
        const int kin = warp * kQGemvStep + lane * 16;  // this lane's offset in the chunk
        const int k0 = c * CH + kin;
        if (k0 < ld) {
            float xv[16];
            if (k0 + 16 <= n_in)
                load_x16(xv, x, k0);
            else
                load_x16_tail(xv, x, k0, n_in);
#pragma unroll
            for (int r = 0; r < RB; ++r)
                acc[r] = dot16_int8(*reinterpret_cast<const uint4*>(st + r * CH + kin), xv, acc[r]);
        }
        if (last) {
            // lanes -> rows: after xor 16, 8, 4 lane l holds a partial of row 4 b4 + 2 b3 + b2
            const bool b4 = lane & 16, b3 = lane & 8, b2 = lane & 4;
            float h4[4], h2[2];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float send = b4 ? acc[j] : acc[j + 4];
                h4[j] = (b4 ? acc[j + 4] : acc[j]) + __shfl_xor_sync(0xffffffffu, send, 16);
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const float send = b3 ? h4[j] : h4[j + 2];
                h2[j] = (b3 ? h4[j + 2] : h4[j]) + __shfl_xor_sync(0xffffffffu, send, 8);
            }
            float h1 = (b2 ? h2[1] : h2[0]) + __shfl_xor_sync(0xffffffffu, b2 ? h2[0] : h2[1], 4);
            h1 += __shfl_xor_sync(0xffffffffu, h1, 2);
            h1 += __shfl_xor_sync(0xffffffffu, h1, 1);
            if ((lane & 3) == 0) partial[buf][warp][(b4 ? 4 : 0) + (b3 ? 2 : 0) + (b2 ? 1 : 0)] = h1;
            if constexpr (kLora) {  // warp w: row w's B row (in the stage) times z
                float v = has_b ? dot8_bf16(*reinterpret_cast<const uint4*>(st + RB * CH +
                                                                             warp * 2 * kQGemvBulkMaxLoraR + lane * 16),
                                            lz0, lz1)
                                : 0.f;
#pragma unroll
                for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
                if (lane == 0) partial_lora[buf][warp] = v;
            }
#pragma unroll
            for (int r = 0; r < RB; ++r) acc[r] = 0.f;
        }
        // One barrier a stage: stage i is consumed, so warp 0 refills its slot with stage i + P while
        // warp 1 writes the group's outputs (the partials are double-buffered by group parity: the
        // next group's are written after this barrier, the one after next only after the next one).
        // The slot was read through the generic proxy and is written next by the async proxy (the
        // bulk copy): each reading thread orders the two with a proxy fence before the barrier.
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads();
        if (warp == 0 && i + P < n_stages) issue(i + P);
        if (last && cid >= 0 && cid < RB) {
            const auto sum_row = [&](int r) {
                float s2 = 0.f;
#pragma unroll
                for (int w = 0; w < W; ++w) s2 += partial[buf][w][r];
                return s2;
            };
            if (a.gated) {
                if (cid < RB / 2) {
                    const int og = g * (RB / 2) + cid;
                    const float gv = sc0 * sum_row(cid) + (kLora ? partial_lora[buf][cid] : 0.f);
                    const float uv = sc1 * sum_row(cid + RB / 2) + (kLora ? partial_lora[buf][cid + RB / 2] : 0.f);
                    if (og < a.part[0].n_out) a.part[0].y[og] = silu_mul(gv, uv);
                }
            } else {
                int part = 0, o = 0;
                group_row(g, cid, part, o);
                const float v = sc0 * sum_row(cid) + (kLora ? partial_lora[buf][cid] : 0.f);
                if (o < a.part[part].n_out) a.part[part].y[o] = a.accumulate ? y_old + v : v;
            }
        }
    }
#else
    __trap();  // launched only on sm_90 and newer (qgemv_bulk_fits)
#endif
}

/// True when a part of `a` carries a LoRA term (the kernel's `kLora` instance runs).
inline bool qgemv_uses_lora(const QGemvArgs& a) {
    for (int i = 0; i < a.n_parts; ++i)
        if (a.part[i].lora.b != nullptr) return true;
    return false;
}

/// The kernel instance a launch with R rows, input X, load path L runs (the LoRA instance when
/// `lora`).
template <int R, class X, QGemvLoad L>
inline auto qgemv_kernel(bool lora) -> void (*)(const X*, QGemvArgs) {
    return lora ? gemv_int8_rowwise_kernel<R, X, L, true> : gemv_int8_rowwise_kernel<R, X, L, false>;
}

/// Resident blocks a multiprocessor of the Registers kernel with R rows (the LoRA instance when
/// `lora`) on the current device, from the occupancy calculator (cached per instance and device).
template <int R>
inline int qgemv_blocks_per_sm(bool lora) {
    static int cached[2][64] = {};  // [lora][device]
    int dev = 0;
    LIMARP_CUDA_CHECK(cudaGetDevice(&dev));
    int& n = cached[lora ? 1 : 0][dev & 63];
    if (n == 0) {
        const void* k = reinterpret_cast<const void*>(qgemv_kernel<R, float, QGemvLoad::Registers>(lora));
        LIMARP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kQGemvThreads, 0));
        if (n < 1) n = 1;
    }
    return n;
}

/// Stages of the bulk path in the default configuration, 0 when it is off. Off unless
/// `LIMARP_CUDA_QGEMV_BULK` is 2, 3 or 4 (its stages; a measurement switch, read once) on sm_90
/// and newer: in the whole model on an H200 it was no faster than the registers path
/// (benchmarks/NOTES.md, session 10), so the default stays on the registers path.
inline int qgemv_bulk_stages() {
    static const int env = [] {
        const char* e = std::getenv("LIMARP_CUDA_QGEMV_BULK");
        const long v = e != nullptr ? std::strtol(e, nullptr, 10) : 0;
        return v >= 2 && v <= 4 ? static_cast<int>(v) : 0;
    }();
    return device_info().compute_capability >= 90 ? env : 0;
}

/// True when the bulk kernel can run `a`: sm_90 or newer, and every LoRA rank <= 256.
inline bool qgemv_bulk_fits(const QGemvArgs& a) {
    if (device_info().compute_capability < 90) return false;
    for (int i = 0; i < a.n_parts; ++i)
        if (a.part[i].lora.b != nullptr && a.part[i].lora.r > kQGemvBulkMaxLoraR) return false;
    return true;
}

/// Resident blocks a multiprocessor of a bulk kernel instance with `smem` bytes of dynamic shared
/// memory (raises the instance's dynamic shared memory limit first; cached per device).
template <int P, class X, bool kLora>
inline int qgemv_bulk_blocks_per_sm(int smem) {
    static int cached[64] = {};
    int dev = 0;
    LIMARP_CUDA_CHECK(cudaGetDevice(&dev));
    int& n = cached[dev & 63];
    if (n == 0) {
        const void* k = reinterpret_cast<const void*>(gemv_int8_bulk_kernel<P, X, kLora>);
        LIMARP_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        LIMARP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kQGemvBulkThreads, smem));
        if (n < 1) n = 1;
    }
    return n;
}

/// Resident blocks of the bulk kernel with P stages on `sm_count` multiprocessors (f32 x).
inline std::int64_t qgemv_bulk_wave(int P, bool lora, int sm_count) {
    const auto per_sm = [&]<int Q>() {
        return lora ? qgemv_bulk_blocks_per_sm<Q, float, true>(qgemv_bulk_smem(Q, true))
                    : qgemv_bulk_blocks_per_sm<Q, float, false>(qgemv_bulk_smem(Q, false));
    };
    const int n = P == 2 ? per_sm.template operator()<2>() : P == 3 ? per_sm.template operator()<3>()
                                                                    : per_sm.template operator()<4>();
    return static_cast<std::int64_t>(n) * sm_count;
}

/// The configuration `ops::qgemv_int8` uses for `n_rows` weight rows in one launch (all parts;
/// both halves when gated) on a device with `sm_count` multiprocessors: `QGemvLoad::Registers`
/// with R = 4 when that still gives at least 2 * sm_count blocks, else 2 (1 for a single row;
/// on the H100: R = 4 for n_out >= 1056, R = 2 for k/v's 1024 rows), picked from the H100
/// measurements in benchmarks/NOTES.md, where it was the fastest configuration for every Mistral
/// shape (R = 2 and 4 within 1% for gate/up; R = 8 was slower in the whole model on an H200);
/// programmatic launch where `pdl_enabled()`.
///
/// Waves: when R = 4 takes between one and two waves of resident blocks and R = 8 fits in one
/// (q/k/v's 6,144 rows on 132 multiprocessors: 1,536 blocks for 1,056 places at R = 4, 768 for
/// 924 at R = 8 with 72 registers, nvcc 13.0), R = 8 (not for the gated form, whose halves would change; `lora`: the LoRA
/// instance's occupancy; `LIMARP_CUDA_QGEMV_WAVES=0` turns the rule off, a measurement switch).
inline QGemvConfig qgemv_default_config(std::int64_t n_rows, int sm_count, bool lora = false, bool gated = false) {
    QGemvConfig c;
    c.programmatic = pdl_enabled();
    c.load = QGemvLoad::Registers;
    c.rows = (n_rows + 3) / 4 >= 2 * static_cast<std::int64_t>(sm_count) ? 4 : (n_rows >= 2 ? 2 : 1);
    static const bool waves = env_switch_on("LIMARP_CUDA_QGEMV_WAVES");
    if (waves && c.rows == 4 && !gated) {
        const std::int64_t sms = sm_count, b4 = (n_rows + 3) / 4, b8 = (n_rows + 7) / 8;
        const std::int64_t wave4 = qgemv_blocks_per_sm<4>(lora) * sms, wave8 = qgemv_blocks_per_sm<8>(lora) * sms;
        if (b4 > wave4 && b4 <= 2 * wave4 && b8 <= wave8) c.rows = 8;
    }
    // When switched on: the bulk path where each of its blocks streams at least kQGemvBulkMinGroups
    // row groups (gate/up, an int8 lm_head): with fewer, the one wave of blocks ends unevenly (o_proj's and down_proj's
    // 512 groups on 396 blocks: 2 for some, 1 for most), and the registers path was faster there
    // (H200, benchmarks/NOTES.md session 10). The rows above stay as its fallback.
    if (const int p = qgemv_bulk_stages(); p > 0) {
        const std::int64_t groups = (n_rows + kQGemvBulkRows - 1) / kQGemvBulkRows;
        if (groups >= kQGemvBulkMinGroups * qgemv_bulk_wave(p, lora, sm_count)) c.load = QGemvLoad::Bulk;
    }
    return c;
}

/// Blocks of a launch of `a` with R rows per block (and `a.block_end` filled in when not gated).
template <int R>
inline int qgemv_grid(QGemvArgs& a) {
    constexpr int H = R / 2 > 0 ? R / 2 : 1;
    if (a.gated) return (a.part[0].n_out + H - 1) / H;
    int blocks = 0;
    for (int i = 0; i < a.n_parts; ++i) {
        blocks += (a.part[i].n_out + R - 1) / R;
        a.block_end[i] = blocks;
    }
    return blocks;
}

// The launch configuration of both GEMV launchers: grid, block, dynamic shared memory, stream, and
// programmatic stream serialization (detail/pdl.cuh) when `c.programmatic` on sm_90 and newer
// (the attribute lives in `attr`, which must outlive the launch).
inline cudaLaunchConfig_t qgemv_launch_config(const QGemvConfig& c, int blocks, int threads, int smem,
                                              cudaStream_t stream, cudaLaunchAttribute& attr) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(static_cast<unsigned>(blocks));
    cfg.blockDim = dim3(static_cast<unsigned>(threads));
    cfg.dynamicSmemBytes = static_cast<std::size_t>(smem);
    cfg.stream = stream;
    attr = cudaLaunchAttribute{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = c.programmatic && device_info().compute_capability >= 90 ? 1 : 0;  // sm_90 feature
    return cfg;
}

template <int R, class X, QGemvLoad L>
void launch_qgemv_int8_kernel(const QGemvConfig& c, const X* x, QGemvArgs a, cudaStream_t stream) {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = qgemv_launch_config(c, qgemv_grid<R>(a), kQGemvThreads, 0, stream, attr);
    // kLora: the instance with the LoRA epilogue (as many registers as the base on the H200
    // build, nvcc 13.0: 60 at R = 4, 72 at R = 8).
    LIMARP_CUDA_CHECK(cudaLaunchKernelEx(&cfg, qgemv_kernel<R, X, L>(qgemv_uses_lora(a)), x, a));
    LIMARP_CUDA_CHECK_LAUNCH();
}

template <int P, class X, bool kLora>
void launch_qgemv_int8_bulk_kernel(const QGemvConfig& c, const X* x, QGemvArgs a, cudaStream_t stream) {
    const int n_groups = qgemv_grid<kQGemvBulkRows>(a);  // fills a.block_end in groups of 8 rows
    const int smem = qgemv_bulk_smem(P, kLora);
    const int per_sm = qgemv_bulk_blocks_per_sm<P, X, kLora>(smem);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg =
        qgemv_launch_config(c, std::max(1, std::min(n_groups, per_sm * device_info().sm_count)), kQGemvBulkThreads,
                            smem, stream, attr);
    LIMARP_CUDA_CHECK(cudaLaunchKernelEx(&cfg, gemv_int8_bulk_kernel<P, X, kLora>, x, a, n_groups));
    LIMARP_CUDA_CHECK_LAUNCH();
}

// The error for a bulk stage count other than 2, 3 or 4 (0 in a QGemvConfig: the default).
inline ArgumentError qgemv_bulk_stages_error(int stages) {
    return ArgumentError("qgemv_int8: the bulk path takes 2, 3 or 4 stages (or 0 for the default), got " +
                         std::to_string(stages));
}

// The bulk path with `c.stages`, or those of `LIMARP_CUDA_QGEMV_BULK`, or 2. \throws ArgumentError for
// c.stages other than 0 (the default), 2, 3 or 4
template <class X>
void launch_qgemv_int8_bulk(const QGemvConfig& c, const X* x, const QGemvArgs& a, cudaStream_t stream) {
    const int p =
        c.stages > 0 ? c.stages : (qgemv_bulk_stages() > 0 ? qgemv_bulk_stages() : kQGemvBulkDefaultStages);
    const bool lora = qgemv_uses_lora(a);
    switch (p) {
        case 2: return lora ? launch_qgemv_int8_bulk_kernel<2, X, true>(c, x, a, stream)
                            : launch_qgemv_int8_bulk_kernel<2, X, false>(c, x, a, stream);
        case 3: return lora ? launch_qgemv_int8_bulk_kernel<3, X, true>(c, x, a, stream)
                            : launch_qgemv_int8_bulk_kernel<3, X, false>(c, x, a, stream);
        case 4: return lora ? launch_qgemv_int8_bulk_kernel<4, X, true>(c, x, a, stream)
                            : launch_qgemv_int8_bulk_kernel<4, X, false>(c, x, a, stream);
        default:  // launch_qgemv_int8 checked c.stages; the environment's value is 2-4
            throw qgemv_bulk_stages_error(p);
    }
}

template <class X, QGemvLoad L>
void launch_qgemv_int8_rows(const QGemvConfig& c, const X* x, const QGemvArgs& a, cudaStream_t stream) {
    switch (c.rows) {
        case 8: return launch_qgemv_int8_kernel<8, X, L>(c, x, a, stream);
        case 4: return launch_qgemv_int8_kernel<4, X, L>(c, x, a, stream);
        case 2: return launch_qgemv_int8_kernel<2, X, L>(c, x, a, stream);
        case 1:
            if (a.gated) throw ArgumentError("qgemv_int8: the gated (SwiGLU) form needs 2 or more rows per block");
            return launch_qgemv_int8_kernel<1, X, L>(c, x, a, stream);
        default:
            throw ArgumentError("qgemv_int8: rows per block must be 1, 2, 4 or 8, got " + std::to_string(c.rows));
    }
}

/// Launches the GEMV kernel over the parts of `a` (see QGemvArgs; `a.block_end` is filled in
/// here) in configuration `c` on `stream` and checks the launch. The tests and the benchmark call
/// it to cover and compare every configuration; everything else goes through `ops::qgemv_int8*`.
/// \throws ArgumentError for rows not in {1, 2, 4, 8} (1 when gated), or with `QGemvLoad::Bulk` stages not
/// in {0, 2, 3, 4}; CudaError when the launch fails
template <class X>
void launch_qgemv_int8(const QGemvConfig& c, const X* x, const QGemvArgs& a, cudaStream_t stream) {
    if (c.load == QGemvLoad::Bulk && !(c.stages == 0 || (c.stages >= 2 && c.stages <= 4)))
        throw qgemv_bulk_stages_error(c.stages);
    if (c.load == QGemvLoad::Bulk && qgemv_bulk_fits(a))
        launch_qgemv_int8_bulk(c, x, a, stream);
    else if (c.load == QGemvLoad::Registers || c.load == QGemvLoad::Bulk)
        launch_qgemv_int8_rows<X, QGemvLoad::Registers>(c, x, a, stream);
    else
        launch_qgemv_int8_rows<X, QGemvLoad::CpAsync>(c, x, a, stream);
}

/// One weight: y (=|+=) x · Wᵀ (+ lora), as `launch_qgemv_int8` above.
template <class X>
void launch_qgemv_int8(const QGemvConfig& c, float* y, const X* x, const DeviceInt8Weight& w, bool accumulate,
                       cudaStream_t stream, QGemvLora lora = {}) {
    QGemvArgs a;
    a.part[0] = QGemvPart{w.data(), w.scales(), y, static_cast<int>(w.n_out()), lora};
    a.n_parts = 1;
    a.n_in = static_cast<int>(w.n_in());
    a.ld = static_cast<int>(w.ld());
    a.accumulate = accumulate;
    launch_qgemv_int8(c, x, a, stream);
}

}  // namespace cuda_detail
/// \endcond

namespace cuda_detail {

/// One weight of `ops::qgemv_int8_group`: y (=|+=) x · Wᵀ (+ lora).
struct QGemvTarget {
    float* y = nullptr;                   ///< [n_out] device output
    const DeviceInt8Weight* w = nullptr;  ///< the weight
    QGemvLora lora{};                     ///< optional LoRA term
};

/// The checks of the `ops::qgemv_int8*` entry points. \throws ArgumentError
inline void check_qgemv_operands(const DeviceInt8Weight& w, const void* x, const QGemvLora& lora,
                                 std::int64_t n_in) {
    if (w.empty()) throw ArgumentError("qgemv_int8: the weight is empty");
    if (w.n_in() != n_in)
        throw ArgumentError("qgemv_int8: " + w.name() + " takes " + std::to_string(w.n_in()) +
                            " inputs, the launch's other weights " + std::to_string(n_in));
    if (reinterpret_cast<std::uintptr_t>(x) % 16 != 0)
        throw ArgumentError("qgemv_int8 with " + w.name() + ": x must be 16-byte aligned (got a pointer offset by " +
                            std::to_string(reinterpret_cast<std::uintptr_t>(x) % 16) + " bytes)");
    if (lora.b != nullptr && (lora.r % 8 != 0 || reinterpret_cast<std::uintptr_t>(lora.b) % 16 != 0 ||
                              reinterpret_cast<std::uintptr_t>(lora.z) % 16 != 0))
        throw ArgumentError("qgemv_int8 with " + w.name() + ": the fused LoRA term needs r % 8 == 0 and 16-byte "
                            "aligned B and z");
}

}  // namespace cuda_detail

namespace ops {

/// y (=|+=) x · Wᵀ for one token with an int8 row-wise weight on the GPU, weight-only:
///   y[o] = scale[o] * sum_k q[o, k] * x[k]   (f32 products and sums; bf16 x is widened exactly).
/// Runs `cuda_detail::qgemv_default_config`. Asynchronous on `stream`; the launch is checked
/// (`LIMARP_CUDA_CHECK_LAUNCH`), errors inside the kernel show at the next synchronizing call.
///
/// \tparam Sm  compute capability of the `Cuda<Sm>` tag (the kernel itself runs on sm_80 and up)
/// \tparam X   float or __nv_bfloat16
/// \param y          [n_out] device f32 output; overwritten, or added to when `accumulate`
/// \param x          [n_in] device input, 16-byte aligned (as cudaMalloc returns)
/// \param w          the weight [n_out, n_in] on the current device
/// \param accumulate false: y = x · Wᵀ; true: y += x · Wᵀ (e.g. the residual add of o_proj / down_proj)
/// \param stream     CUDA stream (default: the legacy default stream)
/// \param lora       optional LoRA term added in the same pass (`cuda_detail::QGemvLora`)
/// \pre y does not overlap x; x holds finite values; y, x and w live on the current device.
/// \throws ArgumentError when x is not 16-byte aligned or w is empty; CudaError when the launch fails
template <int Sm, class X>
    requires(std::is_same_v<X, float> || std::is_same_v<X, __nv_bfloat16>)
void qgemv_int8(Cuda<Sm>, float* y /*[n_out]*/, const X* x /*[n_in]*/, const DeviceInt8Weight& w,
                bool accumulate = false, cudaStream_t stream = nullptr, cuda_detail::QGemvLora lora = {}) {
    static_assert(Sm >= 80, "ops::qgemv_int8 needs Cuda<Sm> with Sm >= 80 (cp.async, L2 prefetch hints)");
    cuda_detail::check_qgemv_operands(w, x, lora, w.n_in());
    const auto c = cuda_detail::qgemv_default_config(w.n_out(), device_info().sm_count, lora.b != nullptr);
    cuda_detail::launch_qgemv_int8(c, y, x, w, accumulate, stream, lora);
}

/// `qgemv_int8` for up to three weights that take the same x, in one launch (q/k/v of a decode
/// step): each target's y (=|+=) x · Wᵀ (+ its LoRA term), with the numerics of separate calls.
/// \pre as `qgemv_int8`, for each target; the outputs do not overlap each other.
/// \throws ArgumentError for 0 or more than 3 targets, weights of different input widths, or the
///         operand errors of `qgemv_int8`; CudaError when the launch fails
template <int Sm, class X>
    requires(std::is_same_v<X, float> || std::is_same_v<X, __nv_bfloat16>)
void qgemv_int8_group(Cuda<Sm>, const X* x /*[n_in]*/, const cuda_detail::QGemvTarget* targets, int n_targets,
                      bool accumulate = false, cudaStream_t stream = nullptr) {
    static_assert(Sm >= 80, "ops::qgemv_int8_group needs Cuda<Sm> with Sm >= 80");
    using cuda_detail::QGemvArgs;
    if (n_targets < 1 || n_targets > QGemvArgs::kMaxParts)
        throw ArgumentError("qgemv_int8_group: 1 to " + std::to_string(QGemvArgs::kMaxParts) + " weights, got " +
                            std::to_string(n_targets));
    QGemvArgs a;
    std::int64_t rows = 0;
    for (int i = 0; i < n_targets; ++i) {
        const auto& t = targets[i];
        if (t.w == nullptr) throw ArgumentError("qgemv_int8_group: a null weight");
        cuda_detail::check_qgemv_operands(*t.w, x, t.lora, targets[0].w->n_in());
        a.part[i] = cuda_detail::QGemvPart{t.w->data(), t.w->scales(), t.y, static_cast<int>(t.w->n_out()), t.lora};
        rows += t.w->n_out();
    }
    a.n_parts = n_targets;
    a.n_in = static_cast<int>(targets[0].w->n_in());
    a.ld = static_cast<int>(targets[0].w->ld());
    a.accumulate = accumulate;
    cuda_detail::launch_qgemv_int8(
        cuda_detail::qgemv_default_config(rows, device_info().sm_count, cuda_detail::qgemv_uses_lora(a)), x, a, stream);
}

/// The SwiGLU input of Mistral's down_proj in one launch, for one token:
///   h[o] = silu(g[o]) * u[o],  g = x · Gateᵀ (+ lg),  u = x · Upᵀ (+ lu)
/// with silu(g) = g / (1 + exp(-g)) as `ops::swiglu`: gate and up are read side by side and never
/// written. \pre as `qgemv_int8`; h does not overlap x.
/// \throws ArgumentError when gate and up differ in shape, or the operand errors of `qgemv_int8`;
///         CudaError when the launch fails
template <int Sm, class X>
    requires(std::is_same_v<X, float> || std::is_same_v<X, __nv_bfloat16>)
void qgemv_int8_swiglu(Cuda<Sm>, float* h /*[n_out]*/, const X* x /*[n_in]*/, const DeviceInt8Weight& gate,
                       const DeviceInt8Weight& up, cudaStream_t stream = nullptr, cuda_detail::QGemvLora lg = {},
                       cuda_detail::QGemvLora lu = {}) {
    static_assert(Sm >= 80, "ops::qgemv_int8_swiglu needs Cuda<Sm> with Sm >= 80");
    cuda_detail::check_qgemv_operands(gate, x, lg, gate.n_in());
    cuda_detail::check_qgemv_operands(up, x, lu, gate.n_in());
    if (up.n_out() != gate.n_out())
        throw ArgumentError("qgemv_int8_swiglu: " + gate.name() + " has " + std::to_string(gate.n_out()) + " rows, " +
                            up.name() + " " + std::to_string(up.n_out()));
    cuda_detail::QGemvArgs a;
    a.part[0] = cuda_detail::QGemvPart{gate.data(), gate.scales(), h, static_cast<int>(gate.n_out()), lg};
    a.part[1] = cuda_detail::QGemvPart{up.data(), up.scales(), nullptr, static_cast<int>(up.n_out()), lu};
    a.n_parts = 2;
    a.n_in = static_cast<int>(gate.n_in());
    a.ld = static_cast<int>(gate.ld());
    a.gated = true;
    cuda_detail::launch_qgemv_int8(cuda_detail::qgemv_default_config(2 * gate.n_out(), device_info().sm_count,
                                                                     cuda_detail::qgemv_uses_lora(a), /*gated=*/true),
                                   x, a, stream);
}

}  // namespace ops
}  // namespace limarp
