#pragma once
/// \file device_buffer.cuh
/// \brief `DeviceBuffer<T>`: an owning, move-only array in device memory (cudaMalloc / cudaFree),
/// with checked host <-> device copies; and `device_info()`, the cached properties of the current
/// device that launchers size their grids with.
///
/// Like check.cuh, this header holds no device code: it compiles with nvcc and, given the CUDA
/// include folder, with a plain C++ compiler (link `CUDA::cudart`).

#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <utility>

#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/epoch.hpp"
#include "limarp/core/error.hpp"

namespace limarp {

/// An array of `size()` elements of `T` in device memory, allocated with `cuda_malloc_checked`
/// and freed on destruction. Move-only. The contents start uninitialized.
/// \tparam T a trivially copyable element type (float, std::int8_t, __nv_bfloat16, ...)
template <class T>
class DeviceBuffer {
public:
    /// An empty buffer (no allocation).
    DeviceBuffer() = default;

    /// Allocates `n` elements.
    /// \param n    element count (0: no allocation, `data()` is null)
    /// \param what what the memory is for, named in the error message (a tensor name)
    /// \throws CudaError naming `what`, the bytes and the free device memory when cudaMalloc fails;
    ///         ArgumentError when `n * sizeof(T)` overflows
    DeviceBuffer(std::size_t n, const std::string& what) : n_(n) {
        if (n > std::numeric_limits<std::size_t>::max() / sizeof(T))
            throw ArgumentError("device buffer \"" + what + "\": " + std::to_string(n) + " elements of " +
                                std::to_string(sizeof(T)) + " bytes overflow size_t");
        p_ = static_cast<T*>(cuda_malloc_checked(n * sizeof(T), what.c_str()));
    }

    ~DeviceBuffer() { release(); }

    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    /// Takes `o`'s memory; `o` is left empty.
    DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    /// Frees this buffer's memory and takes `o`'s; `o` is left empty.
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) {
            release();
            p_ = std::exchange(o.p_, nullptr);
            n_ = std::exchange(o.n_, 0);
        }
        return *this;
    }

    /// Device pointer to the first element (null when empty).
    T* data() noexcept { return p_; }
    /// Device pointer to the first element (null when empty).
    const T* data() const noexcept { return p_; }
    /// Element count.
    std::size_t size() const noexcept { return n_; }
    /// Size in bytes.
    std::size_t bytes() const noexcept { return n_ * sizeof(T); }
    /// True when nothing is allocated.
    bool empty() const noexcept { return n_ == 0; }

    /// Copies `n` elements from host memory `src` to the start of this buffer and waits for the
    /// copy (so `src` may be freed right after).
    /// \throws ShapeError when `n > size()`; CudaError when the copy fails
    void upload(const T* src, std::size_t n) {
        check_count(n, "upload");
        if (n) LIMARP_CUDA_CHECK(cudaMemcpy(p_, src, n * sizeof(T), cudaMemcpyHostToDevice));
    }
    /// Copies the first `n` elements of this buffer to host memory `dst` and waits for the copy.
    /// \throws ShapeError when `n > size()`; CudaError when the copy (or an earlier kernel) fails
    void download(T* dst, std::size_t n) const {
        check_count(n, "download");
        if (n) LIMARP_CUDA_CHECK(cudaMemcpy(dst, p_, n * sizeof(T), cudaMemcpyDeviceToHost));
    }

private:
    void release() noexcept {
        if (p_) {
            (void)cudaFree(p_);  // no throw from a destructor; a sticky error shows at the next checked call
            backend_epoch().fetch_add(1);  // recorded graphs may have used this memory
        }
        p_ = nullptr;
        n_ = 0;
    }
    void check_count(std::size_t n, const char* op) const {
        if (n > n_)
            throw ShapeError(std::string("device buffer ") + op + " of " + std::to_string(n) +
                             " elements, but it holds " + std::to_string(n_));
    }

    T* p_ = nullptr;
    std::size_t n_ = 0;
};

/// Grows `b` to at least `n` elements (contents not kept) and returns its data. A buffer that
/// grows takes max(n, 1.5 x its old size) elements, so that a scratch whose requests creep up (the
/// outlier columns of successive products, a penalty range filling) is replaced a few times, not
/// at every call: each replacement waits for `stream` (whose queued kernels may still use the old
/// buffer), and freeing the old one bumps `backend_epoch()`, so recorded graphs that used it are
/// recorded again. At most 1.5 x the largest request is held.
/// \throws CudaError naming `what` when the allocation fails
template <class T>
T* grow_device_buffer(DeviceBuffer<T>& b, std::int64_t n, const char* what, cudaStream_t stream) {
    const std::int64_t have = static_cast<std::int64_t>(b.size());
    if (have < n) {
        LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
        const std::int64_t grown = have + have / 2;
        b = DeviceBuffer<T>();  // the old buffer goes first: peak memory is the new one alone
        b = DeviceBuffer<T>(static_cast<std::size_t>(grown > n ? grown : n), what);
    }
    return b.data();
}

/// Properties of one device that launchers need, read once per device.
struct DeviceInfo {
    int id = -1;                ///< device ordinal
    int sm_count = 0;           ///< multiprocessors
    int max_smem_optin = 0;     ///< largest dynamic shared memory per block after opt-in (bytes)
    int l2_bytes = 0;           ///< L2 cache size (bytes)
    int compute_capability = 0; ///< major * 10 + minor
};

/// The properties of the current device (`cudaGetDevice`), read with `cudaDeviceGetAttribute` on
/// the first call for that device and cached (thread-safe; devices 0..63, others are queried each
/// call).
/// \throws CudaError when the device cannot be queried
inline DeviceInfo device_info() {
    constexpr int kMaxDevices = 64;
    static std::array<std::once_flag, kMaxDevices> once;
    static std::array<DeviceInfo, kMaxDevices> cache;
    int dev = 0;
    LIMARP_CUDA_CHECK(cudaGetDevice(&dev));
    const auto query = [dev] {
        DeviceInfo d;
        d.id = dev;
        int major = 0, minor = 0;
        LIMARP_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, dev));
        LIMARP_CUDA_CHECK(cudaDeviceGetAttribute(&d.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        LIMARP_CUDA_CHECK(cudaDeviceGetAttribute(&d.l2_bytes, cudaDevAttrL2CacheSize, dev));
        LIMARP_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        LIMARP_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
        d.compute_capability = major * 10 + minor;
        return d;
    };
    if (dev < 0 || dev >= kMaxDevices) return query();
    // call_once: a throwing query leaves the flag unset, so the next call tries again.
    std::call_once(once[static_cast<std::size_t>(dev)], [&] { cache[static_cast<std::size_t>(dev)] = query(); });
    return cache[static_cast<std::size_t>(dev)];
}

}  // namespace limarp
