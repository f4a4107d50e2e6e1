#pragma once
// The CPU reference of the CUDA int8 GEMV tests: ops::qmatmul_wt (Cpu<>, weight-only, T = 1),
// compiled as C++ in qgemv_reference.cpp (with the host's SIMD flags), so that the .cu files need
// not compile the CPU kernels.
#include "limarp/quant/int8_rowwise.hpp"

namespace limarp::test {

/// y (=|+=) x · Wᵀ for one row x [n_in] with `ops::qmatmul_wt(Cpu<>{}, ..., QuantOptions::weight_only())`.
void cpu_qgemv_weight_only(float* y /*[n_out]*/, const float* x /*[n_in]*/, const QuantizedWeight<Int8Rowwise>& w,
                           bool accumulate);

}  // namespace limarp::test
