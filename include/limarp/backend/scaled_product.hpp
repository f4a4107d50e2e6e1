#pragma once
/// \file scaled_product.hpp
/// \brief `ops::ScaledProduct`: one product of a grouped call (`ops::matmul_wt_scaled_group`,
/// where a backend has it: the LoRA A products of q/k/v, or of gate/up, in one launch on CUDA).

#include <cstdint>

#include "limarp/core/dtype.hpp"

namespace limarp::ops {

/// y [T, n_out] = alpha · (x Wᵀ), W bf16 [n_out, n_in] row-major; pointers in the backend's memory.
struct ScaledProduct {
    float* y = nullptr;        ///< output
    const bf16* w = nullptr;   ///< weight
    std::int64_t n_out = 0;    ///< rows of W
    float alpha = 1.0f;        ///< scale of the product
};

}  // namespace limarp::ops
