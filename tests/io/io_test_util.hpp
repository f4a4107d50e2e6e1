// Helpers shared by the io tests: unique temp folders, random data, exception-message checks.
#pragma once

#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace limarp_io_test {

/// A fresh RNG seeded from std::random_device; the seed is logged so a failure can be replayed.
inline std::mt19937_64 make_rng() {
    const std::uint64_t seed = (static_cast<std::uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
    BOOST_TEST_MESSAGE("rng seed " << seed);
    return std::mt19937_64(seed);
}

/// A uniquely named folder under the system temp directory, removed (recursively) on destruction.
class TempDir {
public:
    TempDir() {
        std::mt19937_64 rng(std::random_device{}());
        for (;;) {
            path_ = std::filesystem::temp_directory_path() /
                    ("limarp-io-test-" + std::to_string(::getpid()) + "-" + std::to_string(rng()));
            if (std::filesystem::create_directory(path_)) break;
        }
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

inline std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
    std::vector<std::byte> v(n);
    for (auto& b : v) b = static_cast<std::byte>(rng() & 0xff);
    return v;
}

inline std::vector<float> random_floats(std::mt19937_64& rng, std::size_t n) {
    std::normal_distribution<float> d(0.f, 1.f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

inline void write_bytes(const std::filesystem::path& p, const void* data, std::size_t n) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
    BOOST_REQUIRE(f.good());
}

inline void write_text(const std::filesystem::path& p, const std::string& s) { write_bytes(p, s.data(), s.size()); }

inline std::vector<std::byte> read_bytes(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> r(c.size());
    for (std::size_t i = 0; i < c.size(); ++i) r[i] = static_cast<std::byte>(c[i]);
    return r;
}

/// Runs `fn`, requires it to throw `E`, and checks that the message contains every one of `parts`.
template <class E, class Fn>
void require_throw_with(Fn&& fn, const std::vector<std::string>& parts) {
    try {
        fn();
    } catch (const E& e) {
        const std::string msg = e.what();
        for (const auto& p : parts)
            BOOST_CHECK_MESSAGE(msg.find(p) != std::string::npos, "message \"" << msg << "\" lacks \"" << p << "\"");
        return;
    } catch (const std::exception& e) {
        BOOST_ERROR("wrong exception type: " << e.what());
        return;
    }
    BOOST_ERROR("no exception thrown; expected one mentioning \"" << (parts.empty() ? "" : parts.front()) << "\"");
}

}  // namespace limarp_io_test
