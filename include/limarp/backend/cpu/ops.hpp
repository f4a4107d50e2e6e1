#pragma once
/// \file ops.hpp
/// \brief Umbrella header of the CPU backend kernels (`ops::` overloads taking a `Cpu<A>` tag).

#include "limarp/backend/cpu/activation.hpp"
#include "limarp/backend/cpu/attention.hpp"
#include "limarp/backend/cpu/embedding.hpp"
#include "limarp/backend/cpu/fused.hpp"
#include "limarp/backend/cpu/gemm.hpp"
#include "limarp/backend/cpu/gemm_backward.hpp"
#include "limarp/backend/cpu/loss.hpp"
#include "limarp/backend/cpu/norm.hpp"
#include "limarp/backend/cpu/rope.hpp"

// With the CUDA backend linked (limarp::cuda defines LIMARP_WITH_CUDA_BACKEND), its overloads are
// declared here too, before any layer template that calls ops:: is defined.
#if defined(LIMARP_WITH_CUDA_BACKEND)
#include "limarp/backend/cuda/ops.hpp"
#endif
