#pragma once
/// \file eigen.hpp
/// \brief Includes Eigen/Core for the CPU kernels with GCC 12's AVX-512 false -Wmaybe-uninitialized
/// warnings (GCC PR105593) silenced inside Eigen's kernels. Include this instead of <Eigen/Core>
/// in backend/cpu headers: Eigen's template code keeps the diagnostic state of where it is first
/// included, so the first inclusion in a translation unit must be wrapped.

#include "limarp/backend/cpu/detail/simd.hpp"

LIMARP_CPU_KERNELS_BEGIN
#include <Eigen/Core>
LIMARP_CPU_KERNELS_END
