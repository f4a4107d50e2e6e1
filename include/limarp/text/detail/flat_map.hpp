#pragma once
/// \file flat_map.hpp
/// \brief Open-addressing hash maps with integer keys, used on the tokenizer's hot path.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace limarp::text::detail {

/// An insert-only open-addressing hash map from std::uint64_t keys to trivially copyable values.
/// The key ~0 is reserved (never inserted). Lookups are a multiply, a shift and a short probe.
template <class Value> class U64FlatMap {
public:
    /// Inserts or overwrites the value stored under `key`. \pre key != ~0
    void insert_or_assign(std::uint64_t key, const Value& value) {
        if ((size_ + 1) * 2 > slots_.size()) grow();
        std::size_t i = slot(key);
        while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
        if (slots_[i].key == kEmpty) ++size_;
        slots_[i] = Slot{key, value};
    }

    /// The value stored under `key`, or nullptr.
    const Value* find(std::uint64_t key) const noexcept {
        if (slots_.empty()) return nullptr;
        std::size_t i = slot(key);
        for (;;) {
            const Slot& s = slots_[i];
            if (s.key == key) return &s.value;
            if (s.key == kEmpty) return nullptr;
            i = (i + 1) & mask_;
        }
    }

    /// Number of stored keys.
    std::size_t size() const noexcept { return size_; }

private:
    static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
    struct Slot {
        std::uint64_t key = kEmpty;
        Value value{};
    };

    std::size_t slot(std::uint64_t key) const noexcept {
        return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
    }

    void grow() {
        const std::size_t cap = slots_.empty() ? 64 : slots_.size() * 2;
        std::vector<Slot> old(cap);
        old.swap(slots_);
        mask_ = cap - 1;
        shift_ = 64 - static_cast<unsigned>(std::countr_zero(cap));
        size_ = 0;
        for (const Slot& s : old)
            if (s.key != kEmpty) insert_or_assign(s.key, s.value);
    }

    std::vector<Slot> slots_;
    std::size_t mask_ = 0;
    unsigned shift_ = 64;
    std::size_t size_ = 0;
};

/// A fast 64-bit hash of a short byte string (8 bytes per multiply-xorshift round).
inline std::uint64_t hash_bytes(std::string_view s) noexcept {
    std::uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xFF51AFD7ED558CCDull);
    const char* p = s.data();
    std::size_t n = s.size();
    while (n >= 8) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    std::uint64_t v = 0;
    if (n) std::memcpy(&v, p, n);
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

/// An open-addressing index from strings to non-negative int ids that stores only the ids:
/// the string of an id is obtained from a caller-supplied `text_of(id)`, so the index holds no
/// pointers and stays valid when its owner is copied or moved.
class StringIdIndex {
public:
    /// Inserts `key` -> `id` unless `key` is present; returns whether it was inserted.
    template <class TextOf> bool insert(std::string_view key, int id, const TextOf& text_of) {
        if ((size_ + 1) * 2 > slots_.size()) grow();
        const std::uint64_t h = hash_bytes(key);
        std::size_t i = static_cast<std::size_t>(h) & mask_;
        while (slots_[i].id >= 0) {
            if (slots_[i].hash == h && text_of(slots_[i].id) == key) return false;
            i = (i + 1) & mask_;
        }
        slots_[i] = Slot{h, id};
        ++size_;
        return true;
    }

    /// The id stored under `key`, or -1.
    template <class TextOf> int find(std::string_view key, const TextOf& text_of) const {
        if (slots_.empty()) return -1;
        const std::uint64_t h = hash_bytes(key);
        std::size_t i = static_cast<std::size_t>(h) & mask_;
        while (slots_[i].id >= 0) {
            if (slots_[i].hash == h && text_of(slots_[i].id) == key) return slots_[i].id;
            i = (i + 1) & mask_;
        }
        return -1;
    }

    /// Removes everything.
    void clear() noexcept {
        slots_.clear();
        mask_ = 0;
        size_ = 0;
    }

    /// Number of stored keys.
    std::size_t size() const noexcept { return size_; }

private:
    struct Slot {
        std::uint64_t hash = 0;
        int id = -1;
    };

    void grow() {
        const std::size_t cap = slots_.empty() ? 64 : slots_.size() * 2;
        std::vector<Slot> old(cap);
        old.swap(slots_);
        mask_ = cap - 1;
        for (const Slot& s : old) {
            if (s.id < 0) continue;
            std::size_t i = static_cast<std::size_t>(s.hash) & mask_;
            while (slots_[i].id >= 0) i = (i + 1) & mask_;
            slots_[i] = s;
        }
    }

    std::vector<Slot> slots_;
    std::size_t mask_ = 0;
    std::size_t size_ = 0;
};

/// A bounded cache from (owner, word) to id sequences, with open addressing; words are copied
/// in. Cleared entirely when it reaches its capacity.
class WordCache {
public:
    static constexpr std::size_t kMaxEntries = 1u << 15;  ///< entries before the cache is cleared
    static constexpr std::size_t kMaxWordBytes = 32;      ///< longer words are not cached

    /// The cached ids of `word` for `owner` (`h` = hash_bytes(word)), or nullopt.
    std::optional<std::span<const int>> find(std::uint64_t owner, std::string_view word, std::uint64_t h) const {
        if (slots_.empty()) return std::nullopt;
        std::size_t i = static_cast<std::size_t>(h ^ owner) & mask_;
        for (;;) {
            const Slot& s = slots_[i];
            if (s.ids_off == kEmpty) return std::nullopt;
            if (s.hash == h && s.owner == owner && std::string_view(keys_).substr(s.key_off, s.key_len) == word)
                return std::span<const int>(ids_).subspan(s.ids_off, s.ids_len);
            i = (i + 1) & mask_;
        }
    }

    /// Stores `ids` for (`owner`, `word`), which must not be present yet.
    void insert(std::uint64_t owner, std::string_view word, std::uint64_t h, std::span<const int> ids) {
        if (size_ >= kMaxEntries) clear();
        if (slots_.empty()) {
            slots_.assign(kMaxEntries * 2, Slot{});
            mask_ = slots_.size() - 1;
        }
        std::size_t i = static_cast<std::size_t>(h ^ owner) & mask_;
        while (slots_[i].ids_off != kEmpty) i = (i + 1) & mask_;
        slots_[i] = Slot{h,
                         owner,
                         static_cast<std::uint32_t>(keys_.size()),
                         static_cast<std::uint32_t>(word.size()),
                         static_cast<std::uint32_t>(ids_.size()),
                         static_cast<std::uint32_t>(ids.size())};
        keys_.append(word);
        ids_.insert(ids_.end(), ids.begin(), ids.end());
        ++size_;
    }

    /// Removes every entry (keeps the memory).
    void clear() {
        if (size_ == 0) return;
        std::fill(slots_.begin(), slots_.end(), Slot{});
        keys_.clear();
        ids_.clear();
        size_ = 0;
    }

    /// Removes every entry and frees the memory.
    void release() {
        std::vector<Slot>().swap(slots_);
        std::string().swap(keys_);
        std::vector<int>().swap(ids_);
        mask_ = 0;
        size_ = 0;
    }

private:
    static constexpr std::uint32_t kEmpty = ~std::uint32_t{0};
    struct Slot {
        std::uint64_t hash = 0;
        std::uint64_t owner = 0;
        std::uint32_t key_off = 0;
        std::uint32_t key_len = 0;
        std::uint32_t ids_off = kEmpty;
        std::uint32_t ids_len = 0;
    };

    std::vector<Slot> slots_;
    std::string keys_;
    std::vector<int> ids_;
    std::size_t mask_ = 0;
    std::size_t size_ = 0;
};

}  // namespace limarp::text::detail
