#pragma once
// Tolerances of the CPU kernel tests (tests/ops), one place for all of them.
// Errors are measured against scalar references computed in double.

namespace limarp::test::tol {

/// matmul_wt / matmul: |y - ref| <= kMatmul * (sum_i |x_i w_i| (+ |y_before| when accumulating)).
/// With all-positive inputs the bound is a plain relative error (no cancellation).
inline constexpr double kMatmul = 1e-5;
/// rms_norm: |y - ref| <= kNorm * |ref| + kNormAbs (a few f32 roundings).
inline constexpr double kNorm = 1e-6;
inline constexpr double kNormAbs = 1e-30;
/// rope: |y - ref| <= kRope * (|x_i| + |x_{i+h/2}|) against a double evaluation with the f32 angle.
inline constexpr double kRope = 1e-6;
/// swiglu: |h - ref| <= kSwiglu * |ref| + kSwigluAbs (exp within ~1 ulp, then 3 roundings).
inline constexpr double kSwiglu = 1e-6;
inline constexpr double kSwigluAbs = 1e-35;
/// attention vs the double reference and chunked vs one-shot: |out - ref| <= kAttention * max|v|.
inline constexpr double kAttention = 1e-5;
/// cross entropy / logsumexp: |got - ref| <= kLoss * (|ref| + number of rows).
inline constexpr double kLoss = 1e-6;

}  // namespace limarp::test::tol
