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

#include "common/rel_err.hpp"

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

}  // namespace limarp::test
