// Tests for limarp/quant/*: scheme names and options, the Q8_0 block layout byte for byte,
// quantize -> dequantize error bounds, loading pre-quantized tensors and the error cases.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "limarp/io/safetensors.hpp"
#include "limarp/quant/int8_rowwise.hpp"
#include "limarp/quant/q8_0.hpp"
#include "limarp/quant/scheme.hpp"
#include "quant/reference.hpp"

using namespace limarp;

namespace {

Weight weight_from(const std::vector<float>& v, std::int64_t n_out, std::int64_t n_in, const std::string& name) {
    Tensor<float> t({n_out, n_in});
    std::copy(v.begin(), v.end(), t.data());
    return Weight::owned(std::move(t), name);
}

// A checkpoint held in a temporary file.
std::shared_ptr<const io::SafeTensorsCheckpoint> checkpoint_of(const io::SafeTensorsWriter& w, const std::string& tag) {
    const auto path = std::filesystem::temp_directory_path() / ("limarp_test_quant_" + tag + ".safetensors");
    w.write(path);
    auto ck = std::make_shared<const io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(path));
    std::filesystem::remove(path);  // the mapping stays valid
    return ck;
}

template <class E, class F>
void check_throws_naming(F&& f, const std::string& needle) {
    try {
        f();
        BOOST_ERROR("no exception; expected one naming " << needle);
    } catch (const E& e) {
        BOOST_CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos,
                            "message \"" << e.what() << "\" does not name " << needle);
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(quant_schemes)

BOOST_AUTO_TEST_CASE(scheme_names_and_options) {
    BOOST_CHECK(parse_quant_scheme("none") == QuantScheme::None);
    BOOST_CHECK(parse_quant_scheme("int8") == QuantScheme::Int8);
    BOOST_CHECK(parse_quant_scheme("q8_0") == QuantScheme::Q8_0);
    for (QuantScheme s : {QuantScheme::None, QuantScheme::Int8, QuantScheme::Q8_0})
        BOOST_CHECK(parse_quant_scheme(quant_scheme_name(s)) == s);
    check_throws_naming<ArgumentError>([] { parse_quant_scheme("q4_0"); }, "none, int8, q8_0");
    check_throws_naming<ArgumentError>([] { parse_quant_scheme("INT8"); }, "INT8");
    static_assert(std::is_empty_v<Int8Rowwise> && std::is_empty_v<Q8_0>);

    const QuantOptions d = parse_quant_options("", "");
    BOOST_CHECK(d.int8_activations);
    BOOST_CHECK_EQUAL(d.outlier_threshold, 6.0f);
    const QuantOptions o = parse_quant_options("f32", "0");
    BOOST_CHECK(!o.int8_activations);
    BOOST_CHECK_EQUAL(o.outlier_threshold, 0.0f);
    BOOST_CHECK_EQUAL(parse_quant_options("int8", "3.5").outlier_threshold, 3.5f);
    check_throws_naming<ArgumentError>([] { parse_quant_options("bf16", ""); }, "quant.activations");
    check_throws_naming<ArgumentError>([] { parse_quant_options("", "-1"); }, "quant.outlier_threshold");
    check_throws_naming<ArgumentError>([] { parse_quant_options("", "6x"); }, "quant.outlier_threshold");
    check_throws_naming<ArgumentError>([] { parse_quant_options("", "inf"); }, "quant.outlier_threshold");
}

BOOST_AUTO_TEST_CASE(q8_0_block_layout_bytes) {
    std::vector<float> x(32);
    for (int i = 0; i < 32; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(i - 16) * 0.5f;
    x[31] = -0.3f;
    // Expected bytes computed independently (Python: f32 arithmetic, round-half-even, struct 'e').
    const std::uint8_t expected[34] = {0x08, 0x2c, 0x81, 0x89, 0x91, 0x99, 0xa1, 0xa9, 0xb1, 0xb9, 0xc0, 0xc8,
                                       0xd0, 0xd8, 0xe0, 0xe8, 0xf0, 0xf8, 0x00, 0x08, 0x10, 0x18, 0x20, 0x28,
                                       0x30, 0x38, 0x40, 0x47, 0x4f, 0x57, 0x5f, 0x67, 0x6f, 0xfb};
    std::uint8_t got[34];
    quantize_block_q8_0(x.data(), got);
    BOOST_CHECK_EQUAL_COLLECTIONS(got, got + 34, expected, expected + 34);
    BlockQ8_0 b;
    std::memcpy(&b, got, 34);
    BOOST_CHECK_EQUAL(b.d, 0x2c08);  // f16 of 8/127
    BOOST_CHECK_EQUAL(b.qs[0], -127);
    BOOST_CHECK_EQUAL(b.qs[24], 64);  // 4.0 * 15.875 = 63.5: tie to even

    // A whole weight: row-major blocks, 34 bytes each, no padding between rows.
    std::vector<float> wv(2 * 64);
    for (std::size_t i = 0; i < wv.size(); ++i) wv[i] = static_cast<float>(i % 32 == 5 ? 3.0 : 0.01 * (i % 13));
    std::copy(x.begin(), x.end(), wv.begin() + 96);  // row 1, block 1
    const auto w = QuantizedWeight<Q8_0>::quantize(weight_from(wv, 2, 64, "w"));
    BOOST_CHECK_EQUAL(w.nbytes(), 2u * 2u * 34u);
    BOOST_CHECK_EQUAL(QuantizedWeight<Q8_0>::row_bytes(64), 68);
    BOOST_CHECK_EQUAL(std::memcmp(w.data() + 3 * 34, expected, 34), 0);
    BOOST_CHECK_EQUAL(std::memcmp(w.row(1) + 34, expected, 34), 0);
}

BOOST_AUTO_TEST_CASE(int8_rowwise_quantize_dequantize_bounds) {
    const std::int64_t n_out = 17, n_in = 333;
    auto v = test::random_floats(static_cast<std::size_t>(n_out * n_in), 5u, -2.0f, 2.0f);
    for (std::int64_t k = 0; k < n_in; ++k) v[static_cast<std::size_t>(4 * n_in + k)] = 0.0f;  // an all-zero row
    const auto w = QuantizedWeight<Int8Rowwise>::quantize(weight_from(v, n_out, n_in, "m.weight"));
    const Tensor<float> d = w.dequantize();
    for (std::int64_t o = 0; o < n_out; ++o) {
        float amax = 0;
        std::int32_t sum = 0;
        for (std::int64_t k = 0; k < n_in; ++k) {
            amax = std::max(amax, std::fabs(v[static_cast<std::size_t>(o * n_in + k)]));
            sum += w.row(o)[k];
        }
        BOOST_CHECK_EQUAL(w.scales()[o], amax / 127.0f);
        BOOST_CHECK_EQUAL(w.row_sums()[o], sum);
        for (std::int64_t k = 0; k < n_in; ++k) {
            BOOST_CHECK_LE(std::abs(static_cast<int>(w.row(o)[k])), 127);
            // round to nearest: error <= half a step (plus f32 rounding)
            BOOST_CHECK_LE(std::fabs(d[o * n_in + k] - v[static_cast<std::size_t>(o * n_in + k)]),
                           0.5f * w.scales()[o] * 1.0001f + 1e-30f);
        }
    }
    BOOST_CHECK_EQUAL(w.scales()[4], 0.0f);
    // bf16 input quantizes its exact values
    Tensor<bf16> tb({2, 3});
    for (int i = 0; i < 6; ++i) tb[i].bits = f32_to_bf16(static_cast<float>(i) - 2.5f);
    const auto wb = QuantizedWeight<Int8Rowwise>::quantize(Weight::owned(std::move(tb), "b.weight"));
    BOOST_CHECK_EQUAL(wb.row(0)[0], -127);
    BOOST_CHECK_EQUAL(wb.scales()[1], 2.5f / 127.0f);
}

BOOST_AUTO_TEST_CASE(q8_0_quantize_dequantize_bounds) {
    const std::int64_t n_out = 9, n_in = 4000;
    const auto v = test::random_floats(static_cast<std::size_t>(n_out * n_in), 7u, -3.0f, 3.0f);
    const auto w = QuantizedWeight<Q8_0>::quantize(weight_from(v, n_out, n_in, "q.weight"));
    const Tensor<float> d = w.dequantize();
    for (std::int64_t o = 0; o < n_out; ++o)
        for (std::int64_t b = 0; b < n_in / 32; ++b) {
            float amax = 0;
            for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[static_cast<std::size_t>(o * n_in + 32 * b + i)]));
            const BlockQ8_0 blk = w.block(o, b);
            BOOST_CHECK_EQUAL(blk.d, f32_to_f16(amax / 127.0f));
            // half a step plus the f16 rounding of d (relative 2^-11, times 127 steps)
            const float bound = 0.5f * amax / 127.0f + amax * 0.0005f;
            for (int i = 0; i < 32; ++i) {
                const std::size_t ix = static_cast<std::size_t>(o * n_in + 32 * b + i);
                BOOST_CHECK_LE(std::fabs(d[o * n_in + 32 * b + i] - v[ix]), bound);
            }
        }
}

BOOST_AUTO_TEST_CASE(shape_errors_name_the_tensor) {
    const auto v = test::random_floats(33 * 4, 1u);
    check_throws_naming<ShapeError>([&] { QuantizedWeight<Q8_0>::quantize(weight_from(v, 4, 33, "layers.0.mlp.down_proj.weight")); },
                                    "layers.0.mlp.down_proj.weight");
    check_throws_naming<ShapeError>([&] { QuantizedWeight<Q8_0>::quantize(weight_from(v, 4, 33, "x.weight")); },
                                    "multiple of 32");
    Tensor<float> t3({2, 2, 2});
    check_throws_naming<ShapeError>([&] { QuantizedWeight<Int8Rowwise>::quantize(Weight::owned(std::move(t3), "t3.weight")); },
                                    "t3.weight");
    std::vector<std::int8_t> bad = {1, -128, 3, 4};
    const float s[2] = {1.0f, 1.0f};
    check_throws_naming<FormatError>([&] { QuantizedWeight<Int8Rowwise>(bad.data(), s, 2, 2, "bad.weight", nullptr); },
                                     "bad.weight");
}

BOOST_AUTO_TEST_CASE(pre_quantized_round_trip_and_errors) {
    const std::int64_t n_out = 6, n_in = 64;
    const auto v = test::random_floats(static_cast<std::size_t>(n_out * n_in), 3u);
    const auto wi = QuantizedWeight<Int8Rowwise>::quantize(weight_from(v, n_out, n_in, "a.weight"));
    const auto wq = QuantizedWeight<Q8_0>::quantize(weight_from(v, n_out, n_in, "b.weight"));
    io::SafeTensorsWriter wr;
    wi.write_to(wr, "a");
    wq.write_to(wr, "b");
    const std::vector<float> bad_scale(static_cast<std::size_t>(n_out + 1), 1.0f);
    wr.add("c.weight", DType::I8, {n_out, n_in}, wi.data(), static_cast<std::size_t>(n_out * n_in));
    wr.add("c.weight_scale", DType::F32, {n_out + 1}, bad_scale.data(), bad_scale.size() * 4);
    wr.set_metadata("limarp.quant", "int8");
    const auto ck = checkpoint_of(wr, "roundtrip");
    BOOST_CHECK(QuantizedWeight<Int8Rowwise>::stored_in(*ck, "a"));
    BOOST_CHECK(!QuantizedWeight<Int8Rowwise>::stored_in(*ck, "b"));
    BOOST_CHECK(QuantizedWeight<Q8_0>::stored_in(*ck, "b"));

    const auto li = QuantizedWeight<Int8Rowwise>::from_checkpoint(ck, "a", n_in, n_out);
    BOOST_CHECK_EQUAL(std::memcmp(li.data(), wi.data(), static_cast<std::size_t>(n_out * n_in)), 0);
    BOOST_CHECK_EQUAL(std::memcmp(li.scales(), wi.scales(), static_cast<std::size_t>(n_out) * 4), 0);
    BOOST_CHECK(reinterpret_cast<const std::byte*>(li.data()) == ck->get("a.weight").data);  // zero copy
    const auto lq = QuantizedWeight<Q8_0>::from_checkpoint(ck, "b", n_in, n_out);
    BOOST_CHECK_EQUAL(std::memcmp(lq.data(), wq.data(), wq.nbytes()), 0);
    BOOST_CHECK(reinterpret_cast<const std::byte*>(lq.data()) == ck->get("b.weight").data);

    check_throws_naming<ShapeError>([&] { QuantizedWeight<Int8Rowwise>::from_checkpoint(ck, "c", n_in, n_out); },
                                    "c.weight_scale");
    check_throws_naming<ShapeError>([&] { QuantizedWeight<Int8Rowwise>::from_checkpoint(ck, "a", n_in + 1, n_out); },
                                    "a.weight");
    check_throws_naming<FormatError>([&] { QuantizedWeight<Int8Rowwise>::from_checkpoint(ck, "b", n_in, n_out); },
                                     "b.weight");
    check_throws_naming<ShapeError>([&] { QuantizedWeight<Q8_0>::from_checkpoint(ck, "b", 96, n_out); }, "b.weight");
    check_throws_naming<FormatError>([&] { QuantizedWeight<Q8_0>::from_checkpoint(ck, "a", n_in, n_out); }, "a.weight");
    check_throws_naming<FormatError>([&] { QuantizedWeight<Q8_0>::from_checkpoint(ck, "missing", n_in, n_out); },
                                     "missing.weight");
}

BOOST_AUTO_TEST_SUITE_END()
