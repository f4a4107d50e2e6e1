#pragma once
// Helpers shared by tests: fixture paths, golden.json, comparison metrics.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace limarp::test {

inline std::filesystem::path fixture_dir(const std::string& name) { return std::filesystem::path(LIMARP_FIXTURES) / name; }

inline nlohmann::json golden_json(const std::string& name) {
    std::ifstream f(fixture_dir(name) / "golden.json");
    if (!f) throw std::runtime_error("missing fixture " + (fixture_dir(name) / "golden.json").string());
    return nlohmann::json::parse(f);
}

inline std::vector<std::int32_t> ids_of(const nlohmann::json& j, const char* key) {
    return j.at(key).get<std::vector<std::int32_t>>();
}

/// ||a - b|| / ||b|| (Euclidean norms; ||a - b|| when b is zero)
inline double norm_rel_err(const float* a, const float* b, std::int64_t n) {
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(a[i]) - b[i];
        num += d * d;
        den += static_cast<double>(b[i]) * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// max |a - b| / max |b|
inline double max_rel_err(const float* a, const float* b, std::int64_t n) {
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
        den = std::max(den, std::fabs(static_cast<double>(b[i])));
    }
    return den > 0 ? num / den : num;
}

}  // namespace limarp::test
