#pragma once
/// \file kv_cache.hpp
/// \brief `BasicKvCache<B>`: per-layer rolling buffers of keys and values (mistral-inference style)
/// in backend `B`'s memory; `KvCache` is the host one (every CPU backend uses it).
///
/// Position p lives in slot p % C of a ring of C rows. With a sliding window of W keys,
/// C never exceeds W - 1 + rewind_slack, so memory stays O(window) however long the
/// conversation. Without a window, the buffer grows (doubling) with the sequence.
///
/// The rows are f32 (default) or bf16 (`DType::BF16`: half the memory and half the bytes that
/// attention reads per token; keys and values are rounded to nearest-even when stored and
/// widened exactly when read; the host backends only).

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/memory.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/model/mistral_config.hpp"

namespace limarp {

/// The keys and values of one layer: two rings of `capacity` rows of `kv_dim` values, either
/// f32 (`k`, `v`) or bf16 (`k_bf16`, `v_bf16`); the other pair is null.
struct KvLayer {
    float* k = nullptr;          ///< [capacity, kv_dim] f32 ring, or null
    float* v = nullptr;          ///< [capacity, kv_dim] f32 ring, or null
    std::int64_t capacity = 0;   ///< ring length C
    bf16* k_bf16 = nullptr;      ///< [capacity, kv_dim] bf16 ring, or null
    bf16* v_bf16 = nullptr;      ///< [capacity, kv_dim] bf16 ring, or null
    /// The key ring, whichever its type (an identity for the step's key).
    const void* data() const noexcept { return k ? static_cast<const void*>(k) : static_cast<const void*>(k_bf16); }
};

/// Checks a key/value cache element type: f32 or bf16 ("f32"/"bf16" from a flag).
/// \throws ArgumentError naming the type otherwise.
inline DType kv_cache_dtype(std::string_view name) {
    if (name == "f32" || name == "F32" || name == "float32") return DType::F32;
    if (name == "bf16" || name == "BF16" || name == "bfloat16") return DType::BF16;
    throw ArgumentError("key/value cache type \"" + std::string(name) + "\": expected f32 or bf16");
}

/// The key/value cache type that `--kv-cache auto` picks: bf16 on a host backend for quantized
/// weights with int8 activations (half the cache and half the bytes attention reads), f32
/// otherwise (device backends, and the f32 paths: unquantized weights, `--activations f32`).
inline DType auto_kv_cache_dtype(bool host_backend, bool quantized, bool f32_activations) noexcept {
    return host_backend && quantized && !f32_activations ? DType::BF16 : DType::F32;
}

/// The key/value cache of a whole model plus the token ids it holds (on the host), for prompt
/// reuse. The rings live in the memory of backend `B` (`BackendMemory<B>`).
template <class B>
class BasicKvCache {
public:
    using backend_type = B;  ///< backend tag of the rings' memory
    BasicKvCache() = default;
    /// A cache for `cfg`. `rewind_slack` extra rows let `rewind` go back that many tokens
    /// even after the ring has wrapped (chat regeneration); `initial` is the first allocation;
    /// `dtype` the rows' type (F32, or BF16 on the host backends).
    /// \throws ArgumentError for another dtype, or BF16 on a device backend.
    explicit BasicKvCache(const MistralConfig& cfg, std::int64_t rewind_slack = 0, std::int64_t initial = 256,
                          DType dtype = DType::F32)
        : n_layers_(cfg.n_layers), kv_dim_(cfg.kv_dim()), window_keys_(cfg.window_keys()), dtype_(dtype) {
        check_dtype(dtype);
        max_capacity_ = window_keys_ > 0 ? std::max<std::int64_t>(1, window_keys_ - 1 + rewind_slack) : 0;
        capacity_ = max_capacity_ > 0 ? std::min(max_capacity_, std::max<std::int64_t>(1, initial))
                                      : std::max<std::int64_t>(1, initial);
        alloc(capacity_);
    }

    /// Checks that this cache type can hold rows of type `dtype`.
    /// \throws ArgumentError for a type other than F32/BF16, or BF16 on a device backend.
    static void check_dtype(DType dtype) {
        if (dtype != DType::F32 && dtype != DType::BF16)
            throw ArgumentError("KvCache: the rows must be F32 or BF16, not " + std::string(dtype_name(dtype)));
        if (dtype == DType::BF16 && !B::host_memory)
            throw ArgumentError("KvCache: a bf16 key/value cache is implemented on the CPU backends only (use f32)");
    }

    /// Tokens processed so far (the next token's position).
    std::int64_t n_past() const noexcept { return static_cast<std::int64_t>(tokens_.size()); }
    /// The ids processed so far, in order.
    const std::vector<std::int32_t>& tokens() const noexcept { return tokens_; }
    /// Current ring length.
    std::int64_t capacity() const noexcept { return capacity_; }
    /// Largest ring length (0 = unbounded: full attention).
    std::int64_t max_capacity() const noexcept { return max_capacity_; }
    /// Element type of the rows (F32 or BF16).
    DType dtype() const noexcept { return dtype_; }
    /// Bytes held by the buffers.
    std::size_t bytes() const noexcept {
        return static_cast<std::size_t>(2 * n_layers_ * capacity_ * kv_dim_) * (dtype_ == DType::BF16 ? 2 : 4);
    }
    /// The buffers of layer `l`.
    KvLayer layer(std::int64_t l) noexcept {
        const auto i = static_cast<std::size_t>(l);
        if (dtype_ == DType::BF16) return {nullptr, nullptr, capacity_, kh_[i].data(), vh_[i].data()};
        return {k_[i].data(), v_[i].data(), capacity_};
    }

    /// Makes room before `T` more tokens are processed (grows the ring while it has not wrapped).
    void reserve(std::int64_t T) {
        const std::int64_t need = n_past() + T;
        if (need <= capacity_ || (max_capacity_ > 0 && capacity_ >= max_capacity_)) return;
        std::int64_t c = std::max(need, 2 * capacity_);
        if (max_capacity_ > 0) c = std::min(c, max_capacity_);
        // invariant: below max capacity the ring has not wrapped, so slot == position.
        // One ring at a time, the old one freed before the next grows: the peak is the new cache
        // plus one old ring, not old + new (at 32 layers x 4095 rows of 1024 f32 keys and values,
        // 0.5 GB less). When an allocation throws, the rings already grown hold the same rows
        // and capacity_ is still the old one, so the cache stays usable as it was.
        const std::int64_t rows = std::min(n_past(), capacity_) * kv_dim_;
        for_each_ring_set([&](auto& rings) {
            for (auto& ring : rings) {
                std::remove_reference_t<decltype(ring)> grown;
                BackendMemory<B>::ensure(grown, c * kv_dim_);
                BackendMemory<B>::copy(grown.data(), ring.data(), rows);
                ring = std::move(grown);
            }
        });
        capacity_ = c;
    }

    /// Records that `ids` [T] were processed (after every layer stored its keys and values).
    void advance(std::span<const std::int32_t> ids) { tokens_.insert(tokens_.end(), ids.begin(), ids.end()); }

    /// Forgets everything.
    void clear() { tokens_.clear(); }

    /// True when the cache can be cut back to its first `n` tokens and continue from there:
    /// the keys that later queries need (the last window_keys - 1 before n) are still in the ring.
    bool can_rewind_to(std::int64_t n) const noexcept {
        if (n < 0 || n > n_past()) return false;
        if (n == n_past() || max_capacity_ == 0) return true;
        const std::int64_t oldest = std::max<std::int64_t>(0, n_past() - capacity_);
        const std::int64_t needed = std::max<std::int64_t>(0, n - (window_keys_ - 1));
        return needed >= oldest;
    }
    /// Cuts the cache back to its first `n` tokens. \throws ArgumentError when `can_rewind_to(n)` is false.
    void rewind(std::int64_t n) {
        if (!can_rewind_to(n))
            throw ArgumentError("KvCache: cannot rewind from " + std::to_string(n_past()) + " to " +
                                std::to_string(n) + " tokens: the ring has overwritten keys that are needed");
        tokens_.resize(static_cast<std::size_t>(n));
    }

    /// How many leading tokens of `prompt` can be kept: the longest common prefix with the
    /// cached ids to which the cache can rewind, never the whole prompt (the last prompt
    /// token must be recomputed to get its logits).
    std::int64_t reusable_prefix(std::span<const std::int32_t> prompt) const {
        std::int64_t n = 0;
        const std::int64_t lim = std::min<std::int64_t>(n_past(), static_cast<std::int64_t>(prompt.size()) - 1);
        while (n < lim && tokens_[static_cast<std::size_t>(n)] == prompt[static_cast<std::size_t>(n)]) ++n;
        while (n > 0 && !can_rewind_to(n)) --n;
        return n;
    }

private:
    void alloc(std::int64_t c) {
        for_each_ring_set([&](auto& rings) {
            rings.clear();
            rings.resize(static_cast<std::size_t>(n_layers_));
            for (auto& ring : rings) BackendMemory<B>::ensure(ring, c * kv_dim_);
        });
    }
    // f(key rings), then f(value rings), of the cache's row type.
    template <class F>
    void for_each_ring_set(F&& f) {
        if (dtype_ == DType::BF16) {
            f(kh_);
            f(vh_);
        } else {
            f(k_);
            f(v_);
        }
    }
    std::int64_t n_layers_ = 0, kv_dim_ = 0, window_keys_ = 0;
    std::int64_t capacity_ = 0, max_capacity_ = 0;
    DType dtype_ = DType::F32;
    std::vector<Buffer<B, float>> k_, v_;     // f32 rings (dtype_ F32)
    std::vector<Buffer<B, bf16>> kh_, vh_;    // bf16 rings (dtype_ BF16)
    std::vector<std::int32_t> tokens_;
};

/// The host key/value cache (all CPU backends).
using KvCache = BasicKvCache<Cpu<>>;

/// The cache type of models on backend `B`: `KvCache` for every host backend.
template <class B>
using KvCacheFor = BasicKvCache<std::conditional_t<B::host_memory, Cpu<>, B>>;

}  // namespace limarp
