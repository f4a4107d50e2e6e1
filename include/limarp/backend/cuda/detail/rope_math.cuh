#pragma once
/// \file rope_math.cuh
/// \brief The RoPE arithmetic of the CUDA backend, shared by the RoPE kernels (rope.cuh) and the
/// decode attention that rotates q and k itself (attention.cuh): one definition, so both give the
/// same bits. Numerics: see rope.cuh's file comment.

#include <cuda_runtime.h>

/// \cond
namespace limarp::cuda_detail {

// Pair i's inverse frequency theta^(-2i / head_dim) (rope.cuh's numerics: the pow in double,
// rounded to f32). Independent of the position, so a kernel may compute it before its
// programmatic wait.
__device__ __forceinline__ float rope_inv_freq(int i, int head_dim, float theta) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    return 1.0f / static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(e)));
}

// cos and sin of the angle pos * inv (inv from rope_inv_freq): the angle in f32, the
// trigonometry in double rounded to f32.
__device__ __forceinline__ void rope_cos_sin_at(float pos, float inv, float& c, float& s) {
    const double angle = static_cast<double>(__fmul_rn(pos, inv));
    double sd, cd;
    sincos(angle, &sd, &cd);
    c = static_cast<float>(cd);
    s = static_cast<float>(sd);
}

// cos and sin of pair i's angle at position pos (rope.cuh's numerics): rope_inv_freq, then
// rope_cos_sin_at.
__device__ __forceinline__ void rope_cos_sin(int i, int head_dim, float pos, float theta, float& c, float& s) {
    rope_cos_sin_at(pos, rope_inv_freq(i, head_dim, theta), c, s);
}

// (x1, x2) rotated by (c, s): x1 c - x2 s and x2 c + x1 s, each product rounded (no FMA), as the CPU.
__device__ __forceinline__ void rope_rotate(float x1, float x2, float c, float s, float& y1, float& y2) {
    y1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    y2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

}  // namespace limarp::cuda_detail
/// \endcond
