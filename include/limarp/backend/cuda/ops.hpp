#pragma once
/// \file ops.hpp
/// \brief The `Cuda<Sm>` overloads of the `ops::` calls that the inference layers make, and
/// `BackendMemory<Cuda<Sm>>` (device buffers, weights uploaded once at load). With them,
/// `MistralModel<Cuda<>, MistralBlock<Cuda<>, Lora<QuantizedLinear<Int8Rowwise, Cuda<>>>>>` is the
/// same template code as the CPU model: the backend is chosen at compile time by the tag.
///
/// Included by backend/cpu/ops.hpp when `LIMARP_WITH_CUDA_BACKEND` is defined (by linking
/// `limarp::cuda`), so that every layer template sees these overloads where it is defined. All
/// pointers are device pointers; calls are asynchronous on `cuda_api::stream()`. The kernels
/// behind them: backend/cuda/api_impl.cuh. Training (backward passes) stays on the CPU backend.

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <type_traits>

#include "limarp/backend/attention_shape.hpp"
#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/api.hpp"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/memory.hpp"
#include "limarp/backend/scaled_product.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/error.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// Device memory: `DeviceBuffer`s on the current device; weights are uploaded once when a layer
/// is built; host inputs are copied in and outputs out on `cuda_api::stream()`.
template <int Sm>
struct BackendMemory<Cuda<Sm>> {
    /// Owning device array.
    template <class T>
    using buffer = DeviceBuffer<T>;
    /// Grows `b` to >= n elements (contents not kept); returns its device pointer.
    template <class T>
    static T* ensure(DeviceBuffer<T>& b, std::int64_t n) {
        return grow_device_buffer(b, n, "limarp CUDA workspace", cuda_api::stream());
    }
    /// Uploads an f32 / bf16 host weight (a device weight is returned as it is).
    /// \throws CudaError naming the tensor when the device is out of memory
    static Weight place(Weight w) {
        if (w.on_device || w.data == nullptr) return w;
        if (w.dtype != DType::F32 && w.dtype != DType::BF16)
            throw FormatError(w.name + ": the CUDA backend takes f32 or bf16 weights, got " +
                              std::string(dtype_name(w.dtype)));
        const std::size_t bytes = static_cast<std::size_t>(w.size()) * (w.dtype == DType::BF16 ? 2 : 4);
        std::shared_ptr<void> dev = cuda_api::upload(w.data, bytes, w.name);
        w.data = dev.get();
        w.owner = std::move(dev);
        w.on_device = true;
        return w;
    }
    /// Copies host data [n] into `b` (grown as needed); returns the device copy.
    template <class T>
    static const T* stage(DeviceBuffer<T>& b, const T* host, std::int64_t n) {
        T* d = ensure(b, n);
        cuda_api::to_device(d, host, static_cast<std::size_t>(n) * sizeof(T));
        return d;
    }
    /// Device dst[0..n) = src[0..n).
    template <class T>
    static void copy(T* dst, const T* src, std::int64_t n) {
        cuda_api::copy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
    }
    /// Host dst[0..n) = device src[0..n); waits.
    template <class T>
    static void to_host(T* dst, const T* src, std::int64_t n) {
        cuda_api::to_host(dst, src, static_cast<std::size_t>(n) * sizeof(T));
    }
    /// Where an output meant for host array `host` [n] is written: `b` (then `to_host`).
    template <class T>
    static T* output(DeviceBuffer<T>& b, T* /*host*/, std::int64_t n) {
        return ensure(b, n);
    }
    /// The recorded graph of a model's step (see `cuda_api::run_step`).
    using step_cache = cuda_api::StepGraph;
    /// Runs `body` eagerly the first time a key is seen, records it into a CUDA graph the second
    /// time, and replays the graph while the key stays the same.
    template <class Body, class KeyNow>
    static void run_step(step_cache& c, const StepKey& key, Body&& body, KeyNow&& key_now) {
        cuda_api::run_step(c, key, std::function<void()>(std::forward<Body>(body)),
                           std::function<StepKey()>(std::forward<KeyNow>(key_now)));
    }
};

namespace ops {

/// y = x · Wᵀ (+ y) with f32 weights on the device (cuBLAS SGEMM).
template <int Sm>
void matmul_wt(Cuda<Sm>, float* y, const float* x, const float* w, std::int64_t T, std::int64_t n_in,
               std::int64_t n_out, bool accumulate = false) {
    cuda_api::matmul_wt_f32(y, x, w, T, n_in, n_out, accumulate);
}
/// y = x · Wᵀ (+ y) with bf16 weights on the device (x rounded to bf16, tensor cores, f32 out).
template <int Sm>
void matmul_wt(Cuda<Sm>, float* y, const float* x, const bf16* w, std::int64_t T, std::int64_t n_in,
               std::int64_t n_out, bool accumulate = false) {
    cuda_api::matmul_wt_bf16(y, x, w, T, n_in, n_out, accumulate);
}
/// y = alpha · (x · Wᵀ) with f32 weights (alpha through cuBLAS).
template <int Sm>
void matmul_wt_scaled(Cuda<Sm>, float* y, const float* x, const float* w, std::int64_t T, std::int64_t n_in,
                      std::int64_t n_out, float alpha) {
    cuda_api::matmul_wt_f32(y, x, w, T, n_in, n_out, false, alpha);
}
/// y = alpha · (x · Wᵀ) with bf16 weights: the scale inside the GEMV / the GEMM's epilogue (the
/// LoRA A product and its scale in one pass).
template <int Sm>
void matmul_wt_scaled(Cuda<Sm>, float* y, const float* x, const bf16* w, std::int64_t T, std::int64_t n_in,
                      std::int64_t n_out, float alpha) {
    cuda_api::matmul_wt_bf16(y, x, w, T, n_in, n_out, false, alpha);
}
/// The grouped form of `matmul_wt_scaled` for bf16 weights that share x (`ops::ScaledProduct`:
/// y_i = alpha_i · x W_iᵀ): one launch for one token (`cuda_api::matmul_wt_bf16_group`), else
/// one call per product.
template <int Sm>
void matmul_wt_scaled_group(Cuda<Sm>, const float* x, std::int64_t T, std::int64_t n_in, const ScaledProduct* p,
                            int n) {
    if (cuda_api::matmul_wt_bf16_group(x, T, n_in, p, n)) return;
    for (int i = 0; i < n; ++i) cuda_api::matmul_wt_bf16(p[i].y, x, p[i].w, T, n_in, p[i].n_out, false, p[i].alpha);
}
/// RMSNorm with an f32 or bf16 weight.
template <int Sm, class W>
    requires(std::is_same_v<W, float> || std::is_same_v<W, bf16>)
void rms_norm(Cuda<Sm>, float* y, const float* x, const W* w, std::int64_t T, std::int64_t d, float eps) {
    cuda_api::rms_norm(y, x, w, std::is_same_v<W, bf16>, T, d, eps);
}
/// Embedding rows; ids on the device.
template <int Sm, class W>
    requires(std::is_same_v<W, float> || std::is_same_v<W, bf16>)
void embedding_gather(Cuda<Sm>, float* y, const W* table, const std::int32_t* ids, std::int64_t T, std::int64_t d) {
    cuda_api::embedding_gather(y, table, std::is_same_v<W, bf16>, ids, T, d);
}
/// x += a; h = rms_norm(x) in one kernel.
template <int Sm, class W>
    requires(std::is_same_v<W, float> || std::is_same_v<W, bf16>)
void add_rms_norm(Cuda<Sm>, float* h, float* x, const float* a, const W* w, std::int64_t T, std::int64_t d, float eps) {
    cuda_api::add_rms_norm(h, x, a, w, std::is_same_v<W, bf16>, T, d, eps);
}
/// RoPE on queries and keys in one kernel; positions on the device.
template <int Sm>
void rope_rotate_half_qk(Cuda<Sm>, float* q, float* k, const std::int64_t* positions, std::int64_t T,
                         std::int64_t n_heads, std::int64_t n_kv_heads, std::int64_t head_dim, double theta) {
    cuda_api::rope_rotate_half_qk(q, k, positions, T, n_heads, n_kv_heads, head_dim, theta);
}
/// RoPE in place; positions on the device.
template <int Sm>
void rope_rotate_half(Cuda<Sm>, float* x, const std::int64_t* positions, std::int64_t T, std::int64_t n_heads,
                      std::int64_t head_dim, double theta) {
    cuda_api::rope_rotate_half(x, positions, T, n_heads, head_dim, theta);
}
/// Attention of T new tokens over the ring, then the ring update (see `cuda_api::attention_with_cache`).
template <int Sm>
void attention_with_cache(Cuda<Sm>, float* out, const float* q, const float* k_new, const float* v_new,
                          float* k_cache, float* v_cache, std::int64_t C, const std::int64_t* positions, std::int64_t T,
                          const AttentionShape& s, float scale) {
    cuda_api::attention_with_cache(out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale);
}
/// RoPE on q and k_new, then the attention and the ring update, fused for one token (see
/// `cuda_api::attention_with_cache_rope`); the form `GqaAttention` uses where a backend has it.
template <int Sm>
void attention_with_cache_rope(Cuda<Sm>, float* out, float* q, float* k_new, const float* v_new, float* k_cache,
                               float* v_cache, std::int64_t C, const std::int64_t* positions, std::int64_t T,
                               const AttentionShape& s, float scale, double theta) {
    cuda_api::attention_with_cache_rope(out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale, theta);
}
/// y += x.
template <int Sm>
void add_inplace(Cuda<Sm>, float* y, const float* x, std::int64_t n) {
    cuda_api::add_inplace(y, x, n);
}
/// h = silu(gate) * up.
template <int Sm>
void swiglu(Cuda<Sm>, float* h, const float* gate, const float* up, std::int64_t n) {
    cuda_api::swiglu(h, gate, up, n);
}
/// x *= s.
template <int Sm>
void scale_inplace(Cuda<Sm>, float* x, float s, std::int64_t n) {
    cuda_api::scale_inplace(x, s, n);
}

}  // namespace ops
}  // namespace limarp
