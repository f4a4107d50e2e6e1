#pragma once
/// \file epoch.hpp
/// \brief `backend_epoch()`: the counter that invalidates recorded device work (CUDA graphs of
/// model steps). Header of its own (only the standard atomic header) so that device-memory owners can bump it.

#include <atomic>
#include <cstdint>

namespace limarp {

/// A counter bumped whenever memory that kernels may have recorded changes under them: device
/// memory freed or reallocated (a workspace or cache ring grown, a weight or layer replaced, a
/// thread's scratch released), a LoRA adapter attached, detached or rescaled. Replayed work (CUDA
/// graphs) recorded in an older epoch is recorded again.
inline std::atomic<std::uint64_t>& backend_epoch() noexcept {
    static std::atomic<std::uint64_t> epoch{0};
    return epoch;
}

}  // namespace limarp
