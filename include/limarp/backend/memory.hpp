#pragma once
/// \file memory.hpp
/// \brief `BackendMemory<B>`: where a backend's tensors live and how data gets there — the one
/// place the layer templates learn the memory of their backend (compile time, no run-time branch).
///
/// Every backend specialises `BackendMemory<B>` with:
/// - `buffer<T>`: an owning array in the backend's memory with `data()` and `size()`
///   (`Tensor<T>` on the CPU, `DeviceBuffer<T>` on CUDA; see backend/cuda/ops.hpp);
/// - `ensure(buf, n)`: grows `buf` to at least `n` elements (contents not kept) and returns `data()`;
/// - `place(w)`: a `Weight` readable by the backend's kernels (the CPU keeps it in place, zero
///   copy; CUDA uploads it once at load);
/// - `stage(buf, host, n)`: host data [n] as the kernels read it (the CPU uses it in place; CUDA
///   copies it into `buf`);
/// - `copy(dst, src, n)` inside the backend's memory, `to_host(dst, src, n)` out of it.
/// - `step_cache` and `run_step(cache, key, body, key_now)`: how a model step runs (the CPU calls
///   `body()`; CUDA records it once into a CUDA graph and replays it while `key` stays the same,
///   see `StepKey`).
/// `SharedScratch<B, T>` (below) gives a layer a per-call working buffer that all layers on the
/// thread share. `Buffer<B, T>` is the buffer type. The CPU specialisation is here; a backend
/// without one is a compile error ("incomplete type BackendMemory<...>"): link its library (limarp::cuda).

#include <algorithm>
#include <array>
#include <cstdint>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/epoch.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// What a model step's recorded kernels depend on: same key, same launches on the same buffers
/// (positions and ids are read from device memory, so they may differ from step to step).
struct StepKey {
    const void* model = nullptr;   ///< the model object
    const void* cache = nullptr;   ///< its cache's first ring
    std::int64_t capacity = 0;     ///< ring rows
    std::int64_t tokens = 0;       ///< tokens in the step
    std::int64_t first_row = 0;    ///< first logits row (-1: none)
    std::uint64_t epoch = 0;       ///< `backend_epoch()` when the key was made
    std::uint64_t pick = 0;        ///< the in-step picker's `version()` (0: none)
    /// Field-wise equality.
    bool operator==(const StepKey&) const = default;
};

/// The memory of backend `B` (specialised per backend; see the file comment).
template <class B>
struct BackendMemory;

/// Host memory: everything is used in place.
template <class A>
struct BackendMemory<Cpu<A>> {
    /// Owning host array.
    template <class T>
    using buffer = Tensor<T>;
    /// Grows `b` to >= n elements (contents not kept); returns its data.
    template <class T>
    static T* ensure(Tensor<T>& b, std::int64_t n) {
        if (b.size() < n) b = Tensor<T>(Shape{n});
        return b.data();
    }
    /// The weight as it is (zero copy).
    static Weight place(Weight w) { return w; }
    /// Host data used in place (`b` is not touched).
    template <class T>
    static const T* stage(Tensor<T>& /*b*/, const T* host, std::int64_t /*n*/) {
        return host;
    }
    /// dst[0..n) = src[0..n).
    template <class T>
    static void copy(T* dst, const T* src, std::int64_t n) {
        std::copy_n(src, n, dst);
    }
    /// Host dst[0..n) = src[0..n) (nothing to do when they are the same array).
    template <class T>
    static void to_host(T* dst, const T* src, std::int64_t n) {
        if (dst != src) std::copy_n(src, n, dst);
    }
    /// Where an output meant for host array `host` [n] is written by the kernels: `host` itself.
    template <class T>
    static T* output(Tensor<T>& /*b*/, T* host, std::int64_t /*n*/) {
        return host;
    }
    /// Nothing to keep between steps.
    struct step_cache {};
    /// Runs the step.
    template <class Body, class KeyNow>
    static void run_step(step_cache& /*c*/, const StepKey& /*key*/, Body&& body, KeyNow&& /*key_now*/) {
        body();
    }
};

/// The owning array type of backend `B`.
template <class B, class T>
using Buffer = typename BackendMemory<B>::template buffer<T>;

/// The working buffers that a layer's inference `forward` needs only during the call.
enum class ScratchSlot : int {
    block_normed,  ///< MistralBlock: the normed input of a branch [T, d_model]
    block_branch,  ///< MistralBlock: a branch's output [T, d_model]
    attn_q,        ///< GqaAttention: queries [T, n_heads * head_dim]
    attn_k,        ///< GqaAttention: new keys [T, n_kv_heads * head_dim]
    attn_v,        ///< GqaAttention: new values [T, n_kv_heads * head_dim]
    attn_o,        ///< GqaAttention: attention output, o_proj's input [T, n_heads * head_dim]
    mlp_hidden,    ///< SwiGluMlp: silu(gate) * up, down_proj's input [T, d_ff]
    mlp_up,        ///< SwiGluMlp: up(x) [T, d_ff]
    count          ///< number of slots (not a slot)
};

/// A layer's per-call working buffer, shared with every other layer's buffer of the same slot
/// on this thread: the layers of a model run one after the other and each needs its buffers
/// only inside its `forward`, so layer i + 1 reuses layer i's memory. A 32-layer Mistral-7B then
/// holds one layer's prefill working set (about 48 MB at 256 tokens a chunk) instead of 32 (about
/// 1.5 GB). One set per thread and element type (on CUDA each growth allocates on the device
/// current at that moment: use one device per thread). `ensure` may move the
/// slot's memory (like `BackendMemory<B>::ensure`; on CUDA freeing it bumps `backend_epoch()`, so
/// recorded step graphs are made again). Not for data kept between calls, nor for two buffers of
/// one slot in use at once (`forward` of a layer must not call another layer's `forward` that
/// uses its own slot: the slots above are distinct per role, so the Mistral layers nest safely;
/// a user layer that nests inside them, e.g. a `Linear` used as down_proj, must keep its own
/// buffers rather than take one of these slots). The memory stays with the thread after the
/// models are gone until `release_all` (on CUDA: device memory).
template <class B, class T>
class SharedScratch {
public:
    /// The buffer of `slot` on the calling thread.
    explicit SharedScratch(ScratchSlot slot) noexcept : slot_(slot) {}
    /// Grows the slot's buffer to >= n elements (contents not kept); returns its data.
    T* ensure(std::int64_t n) { return BackendMemory<B>::ensure(pool()[index()], n); }
    /// The slot's data (as last grown by `ensure` on this thread).
    T* data() { return pool()[index()].data(); }
    /// Frees every slot's buffer of this backend and element type on the calling thread (the next
    /// `ensure` allocates again), e.g. after the last model of a thread is destroyed.
    static void release_all() {
        for (auto& b : pool()) b = Buffer<B, T>{};
    }

private:
    static std::array<Buffer<B, T>, static_cast<std::size_t>(ScratchSlot::count)>& pool() {
        thread_local std::array<Buffer<B, T>, static_cast<std::size_t>(ScratchSlot::count)> p;
        return p;
    }
    std::size_t index() const noexcept { return static_cast<std::size_t>(slot_); }
    ScratchSlot slot_;
};

}  // namespace limarp
