// Tests for limarp/core/dtype.hpp: exhaustive bf16/f16 -> f32, round-to-nearest-even f32 -> bf16/f16.
#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <cstring>
#include <string>

#include "limarp/core/dtype.hpp"

using namespace limarp;

namespace {
// Reference f32 -> bf16 RNE computed in double arithmetic (independent of the bit trick).
std::uint16_t ref_bf16(float f) {
    if (std::isnan(f)) return 0x7fc0;
    std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    std::uint16_t lo = static_cast<std::uint16_t>(u >> 16);  // truncation
    float a = bf16_to_f32(lo);
    std::uint16_t hi = static_cast<std::uint16_t>(lo + 1);
    float b = bf16_to_f32(hi);
    if (std::isinf(a)) return lo;
    double da = std::fabs(static_cast<double>(f) - a), db = std::fabs(static_cast<double>(b) - f);
    if (std::isinf(b)) db = std::fabs(std::ldexp(1.0, 128) * (f < 0 ? -1 : 1) - static_cast<double>(f));
    if (da < db) return lo;
    if (db < da) return hi;
    return (lo & 1) ? hi : lo;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(dtype)

BOOST_AUTO_TEST_CASE(bf16_to_f32_exhaustive) {
    for (std::uint32_t b = 0; b < 65536; ++b) {
        float f = bf16_to_f32(static_cast<std::uint16_t>(b));
        std::uint32_t u = std::bit_cast<std::uint32_t>(f);
        BOOST_REQUIRE_EQUAL(u, b << 16);
        if (!std::isnan(f)) BOOST_REQUIRE_EQUAL(f32_to_bf16(f), b);  // round trip
        else BOOST_REQUIRE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
    }
}

BOOST_AUTO_TEST_CASE(f16_to_f32_exhaustive_against_hardware_type) {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        _Float16 hv;
        std::uint16_t hb = static_cast<std::uint16_t>(h);
        std::memcpy(&hv, &hb, 2);
        float expect = static_cast<float>(hv);
        float got = f16_to_f32(hb);
        if (std::isnan(expect)) {
            BOOST_REQUIRE(std::isnan(got));
            BOOST_REQUIRE(std::isnan(f16_to_f32(f32_to_f16(got))));
        } else {
            BOOST_REQUIRE_EQUAL(std::bit_cast<std::uint32_t>(got), std::bit_cast<std::uint32_t>(expect));
            BOOST_REQUIRE_EQUAL(f32_to_f16(got), hb);
        }
    }
}

BOOST_AUTO_TEST_CASE(f32_to_f16_rne_against_hardware_type) {
    // every f16 value, the midpoints between neighbours (ties), and points just off them
    for (std::uint32_t h = 0; h < 0x7c00; ++h) {
        for (int sign = 0; sign < 2; ++sign) {
            std::uint16_t hb = static_cast<std::uint16_t>(h | (sign << 15));
            double a = f16_to_f32(hb), b = f16_to_f32(static_cast<std::uint16_t>(hb + 1));
            if (h + 1 == 0x7c00) b = (sign ? -65536.0 : 65536.0);
            const double mid = 0.5 * (a + b);
            for (float f : {static_cast<float>(mid), std::nextafter(static_cast<float>(mid), 0.f),
                            std::nextafter(static_cast<float>(mid), sign ? -1e30f : 1e30f)}) {
                _Float16 ref = static_cast<_Float16>(f);
                std::uint16_t rb;
                std::memcpy(&rb, &ref, 2);
                BOOST_REQUIRE_MESSAGE(f32_to_f16(f) == rb, "f=" << f << " got " << f32_to_f16(f) << " want " << rb);
            }
        }
    }
    std::mt19937 rng(7);
    std::uniform_int_distribution<std::uint32_t> d;
    for (int i = 0; i < 2000000; ++i) {
        float f = std::bit_cast<float>(d(rng));
        if (std::isnan(f)) continue;
        _Float16 ref = static_cast<_Float16>(f);
        std::uint16_t rb;
        std::memcpy(&rb, &ref, 2);
        BOOST_REQUIRE_EQUAL(f32_to_f16(f), rb);
    }
}

BOOST_AUTO_TEST_CASE(f32_to_bf16_rne) {
    std::mt19937 rng(11);
    std::uniform_int_distribution<std::uint32_t> d;
    for (int i = 0; i < 2000000; ++i) {
        float f = std::bit_cast<float>(d(rng));
        if (std::isnan(f)) {
            BOOST_REQUIRE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
            continue;
        }
        BOOST_REQUIRE_EQUAL(f32_to_bf16(f), ref_bf16(f));
    }
    // ties: exactly half-way rounds to even
    BOOST_CHECK_EQUAL(f32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);
    BOOST_CHECK_EQUAL(f32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);
    BOOST_CHECK_EQUAL(f32_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
    // edge cases
    BOOST_CHECK_EQUAL(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
    BOOST_CHECK_EQUAL(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
    BOOST_CHECK_EQUAL(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflows to Inf under RNE
    BOOST_CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
    BOOST_CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7f800001u)))));  // sNaN stays NaN
    BOOST_CHECK_EQUAL(f32_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);
    BOOST_CHECK_EQUAL(f32_to_bf16(std::bit_cast<float>(0x00010000u)), 0x0001);  // subnormal kept
    BOOST_CHECK_EQUAL(f32_to_bf16(-0.0f), 0x8000);
}

BOOST_AUTO_TEST_CASE(f16_edge_cases) {
    BOOST_CHECK_EQUAL(f32_to_f16(65504.f), 0x7bff);
    BOOST_CHECK_EQUAL(f32_to_f16(65520.f), 0x7c00);  // tie to even -> Inf
    BOOST_CHECK_EQUAL(f32_to_f16(65519.f), 0x7bff);
    BOOST_CHECK_EQUAL(f32_to_f16(std::ldexp(1.f, -24)), 0x0001);      // smallest subnormal
    BOOST_CHECK_EQUAL(f32_to_f16(std::ldexp(1.f, -25)), 0x0000);      // tie -> even (0)
    BOOST_CHECK_EQUAL(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
    BOOST_CHECK_EQUAL(f32_to_f16(std::ldexp(3.f, -25)), 0x0002);      // 1.5 ulp tie -> even (2)
    BOOST_CHECK_EQUAL(f16_to_f32(0x0001), std::ldexp(1.f, -24));
    BOOST_CHECK(std::isinf(f16_to_f32(0x7c00)));
    BOOST_CHECK(std::isnan(f16_to_f32(0x7e00)));
    BOOST_CHECK_EQUAL(f32_to_f16(-0.0f), 0x8000);
}

BOOST_AUTO_TEST_CASE(dtype_names) {
    BOOST_CHECK(parse_dtype("BF16") == DType::BF16);
    BOOST_CHECK_EQUAL(dtype_size(DType::F16), 2u);
    BOOST_CHECK_THROW(parse_dtype("F8_E4M3", "tensor x"), FormatError);
    try {
        parse_dtype("Q4", "model.safetensors: tensor w");
    } catch (const FormatError& e) {
        BOOST_CHECK(std::string(e.what()).find("tensor w") != std::string::npos);
        BOOST_CHECK(std::string(e.what()).find("Q4") != std::string::npos);
    }
}

BOOST_AUTO_TEST_SUITE_END()
