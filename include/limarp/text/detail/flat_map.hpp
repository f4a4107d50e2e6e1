#pragma once
/// \file flat_map.hpp
/// \brief Open-addressing hash maps with integer keys, used on the tokenizer's hot path.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace limarp::text::detail {

/// An insert-only open-addressing hash map from std::uint64_t keys to trivially copyable values.
/// The key ~0 is reserved (never inserted). Lookups are a multiply, a shift and a short probe.
template <class Value>
class U64FlatMap {
public:
    /// Inserts or overwrites the value stored under `key`. \pre key != ~0
    void insert_or_assign(std::uint64_t key, const Value& value) {
        if ((size_ + 1) * 2 > keys_.size()) grow();
        std::size_t i = slot(key);
        while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
        if (keys_[i] == kEmpty) ++size_;
        keys_[i] = key;
        values_[i] = value;
    }

    /// The value stored under `key`, or nullptr.
    const Value* find(std::uint64_t key) const noexcept {
        if (keys_.empty()) return nullptr;
        std::size_t i = slot(key);
        for (;;) {
            const std::uint64_t k = keys_[i];
            if (k == key) return &values_[i];
            if (k == kEmpty) return nullptr;
            i = (i + 1) & mask_;
        }
    }

    /// Number of stored keys.
    std::size_t size() const noexcept { return size_; }

private:
    static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};

    std::size_t slot(std::uint64_t key) const noexcept {
        return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
    }

    void grow() {
        const std::size_t cap = keys_.empty() ? 64 : keys_.size() * 2;
        std::vector<std::uint64_t> old_keys(cap, kEmpty);
        std::vector<Value> old_values(cap);
        old_keys.swap(keys_);
        old_values.swap(values_);
        mask_ = cap - 1;
        shift_ = 64 - static_cast<unsigned>(std::countr_zero(cap));
        size_ = 0;
        for (std::size_t j = 0; j < old_keys.size(); ++j)
            if (old_keys[j] != kEmpty) insert_or_assign(old_keys[j], old_values[j]);
    }

    std::vector<std::uint64_t> keys_;
    std::vector<Value> values_;
    std::size_t mask_ = 0;
    unsigned shift_ = 64;
    std::size_t size_ = 0;
};

}  // namespace limarp::text::detail
