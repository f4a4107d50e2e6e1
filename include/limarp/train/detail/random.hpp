#pragma once
/// \file random.hpp
/// \brief Deterministic random helpers for training (same results with every standard library:
/// no std::uniform_*_distribution, no std::shuffle, whose algorithms are unspecified).

#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "limarp/core/error.hpp"

namespace limarp::train::detail {

/// SplitMix64 finaliser: a well-mixed 64-bit value from `x`.
constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/// A seed derived from `seed` and a stream number (epochs, purposes), well separated.
constexpr std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) noexcept {
    return splitmix64(splitmix64(seed) ^ splitmix64(stream + 0x632BE59BD9B4E019ull));
}

/// Uniform integer in [0, n) from `rng` without modulo bias (rejection of the low remainder).
/// \pre n > 0
inline std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
    const std::uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    std::uint64_t r = rng();
    while (r < threshold) r = rng();
    return r % n;
}

/// Uniform float in [0, 1) with 24 random bits.
inline float uniform_float01(std::mt19937_64& rng) {
    return static_cast<float>(rng() >> 40) * 0x1.0p-24f;
}

/// Fisher-Yates shuffle of `v` driven by `rng` (i from the back, j uniform in [0, i]).
template <class T>
void shuffle(std::vector<T>& v, std::mt19937_64& rng) {
    for (std::size_t i = v.size(); i > 1; --i) {
        const auto j = static_cast<std::size_t>(uniform_below(rng, i));
        std::swap(v[i - 1], v[j]);
    }
}

/// The 0..n-1 permutation of seed `seed` (identity when `do_shuffle` is false).
inline std::vector<std::size_t> permutation(std::size_t n, std::uint64_t seed, bool do_shuffle = true) {
    std::vector<std::size_t> p(n);
    for (std::size_t i = 0; i < n; ++i) p[i] = i;
    if (do_shuffle) {
        std::mt19937_64 rng(seed);
        shuffle(p, rng);
    }
    return p;
}

}  // namespace limarp::train::detail
