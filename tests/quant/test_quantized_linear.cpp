// Tests for limarp/layers/quantized_linear.hpp: the Linear concept, loading (quantize at load,
// zero copy from pre-quantized tensors, options, errors), and the model level: a Mistral model
// with quantized projections against the transformers golden logits of tests/golden/swa_long.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/fixtures.hpp"
#include "limarp/io/npy.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/mistral_model.hpp"
#include "quant/reference.hpp"

using namespace limarp;

static_assert(Linear<QuantizedLinear<Int8Rowwise, Cpu<>>>);
static_assert(Linear<QuantizedLinear<Q8_0, Cpu<>>>);

namespace {

// A provider context over named f32 tensors.
struct MapSource {
    std::map<std::string, Tensor<float>> t;
    LoadContext context() {
        return LoadContext(
            [this](const std::string& n, const Shape& s) {
                const auto it = t.find(n);
                if (it == t.end()) throw FormatError("no tensor " + n);
                if (it->second.shape() != s) throw ShapeError(n + ": wrong shape");
                return Weight::owned(Tensor<float>(it->second), n);
            },
            [this](const std::string& n) { return t.count(n) > 0; });
    }
};

Tensor<float> random_tensor(Shape s, std::uint32_t seed) {
    Tensor<float> t(s);
    const auto v = test::random_floats(static_cast<std::size_t>(t.size()), seed);
    std::copy(v.begin(), v.end(), t.data());
    return t;
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

template <class Scheme>
using QModel = MistralModel<Cpu<>, MistralBlock<Cpu<>, QuantizedLinear<Scheme, Cpu<>>>>;

struct Accuracy {
    double rel_err;  // max |logit - ref| / max |ref|
    double top1;     // fraction of rows with the same argmax
};

template <class Scheme>
Accuracy model_accuracy(const std::string& fixture, const std::string& activations, const std::string& threshold) {
    auto m = QModel<Scheme>::from_dir(test::fixture_dir(fixture), [&](MistralConfig&, LoadContext& ctx) {
        ctx.extra.push_back({kQuantActivationsOption, activations});
        ctx.extra.push_back({kQuantOutlierOption, threshold});
    });
    const auto ids = test::ids_of(test::golden_json(fixture), "ids");
    const Tensor<float> ref = io::read_npy<float>(test::fixture_dir(fixture) / "logits.npy");
    const Tensor<float> got = m.logits(ids);
    BOOST_REQUIRE(ref.shape() == got.shape());
    const std::int64_t T = ref.dim(0), V = ref.dim(1);
    std::int64_t same = 0;
    for (std::int64_t t = 0; t < T; ++t)
        same += std::max_element(got.row(t), got.row(t) + V) - got.row(t) ==
                std::max_element(ref.row(t), ref.row(t) + V) - ref.row(t);
    return {test::max_rel_err(got.data(), ref.data(), ref.size()), static_cast<double>(same) / static_cast<double>(T)};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(quantized_linear)

BOOST_AUTO_TEST_CASE(load_quantizes_f32_and_runs) {
    MapSource src;
    src.t.emplace("p.weight", random_tensor({40, 96}, 1u));
    LoadContext ctx = src.context();
    auto li = QuantizedLinear<Int8Rowwise, Cpu<>>::load(ctx, "p", 96, 40);
    auto lq = QuantizedLinear<Q8_0, Cpu<>>::load(ctx, "p", 96, 40);
    BOOST_CHECK_EQUAL(li.in_features(), 96);
    BOOST_CHECK_EQUAL(li.out_features(), 40);
    BOOST_CHECK(li.options().int8_activations);
    BOOST_CHECK_EQUAL(li.options().outlier_threshold, 6.0f);
    const Tensor<float>& w = src.t.at("p.weight");
    const auto x = test::random_floats(3 * 96, 2u);
    std::vector<float> yi(3 * 40), yq(3 * 40);
    li.forward(yi.data(), x.data(), 3);
    lq.forward(yq.data(), x.data(), 3);
    double err_i = 0, err_q = 0, mx = 0;
    for (int t = 0; t < 3; ++t)
        for (int o = 0; o < 40; ++o) {
            double e = 0;
            for (int k = 0; k < 96; ++k) e += static_cast<double>(x[t * 96 + k]) * w[o * 96 + k];
            err_i = std::max(err_i, std::fabs(yi[t * 40 + o] - e));
            err_q = std::max(err_q, std::fabs(yq[t * 40 + o] - e));
            mx = std::max(mx, std::fabs(e));
        }
    BOOST_TEST_MESSAGE("int8 rel err " << err_i / mx << ", q8_0 rel err " << err_q / mx);
    BOOST_CHECK_LT(err_i / mx, 0.02);
    BOOST_CHECK_LT(err_q / mx, 0.02);
    // dequantize() is the weight the kernels multiply with
    const Tensor<float> d = li.dequantize();
    BOOST_CHECK_EQUAL(d.dim(0), 40);
    BOOST_CHECK_LE(std::fabs(d[5] - w[5]), 0.5f * li.weight().scales()[0] * 1.001f);
}

BOOST_AUTO_TEST_CASE(options_come_from_the_context) {
    MapSource src;
    src.t.emplace("p.weight", random_tensor({8, 64}, 3u));
    LoadContext ctx = src.context();
    ctx.extra.push_back({kQuantActivationsOption, "f32"});
    ctx.extra.push_back({kQuantOutlierOption, "2.5"});
    auto l = QuantizedLinear<Int8Rowwise, Cpu<>>::load(ctx, "p", 64, 8);
    BOOST_CHECK(!l.options().int8_activations);
    BOOST_CHECK_EQUAL(l.options().outlier_threshold, 2.5f);
    LoadContext bad = src.context();
    bad.extra.push_back({kQuantActivationsOption, "int4"});
    check_throws_naming<ArgumentError>([&] { QuantizedLinear<Q8_0, Cpu<>>::load(bad, "p", 64, 8); }, "quant.activations");
}

BOOST_AUTO_TEST_CASE(load_errors) {
    MapSource src;
    src.t.emplace("odd.weight", random_tensor({8, 33}, 4u));
    LoadContext ctx = src.context();
    check_throws_naming<ShapeError>([&] { QuantizedLinear<Q8_0, Cpu<>>::load(ctx, "odd", 33, 8); }, "odd.weight");
    auto l = QuantizedLinear<Int8Rowwise, Cpu<>>::load(ctx, "odd", 33, 8);  // int8 row-wise takes any n_in
    BOOST_CHECK_EQUAL(l.in_features(), 33);
    check_throws_naming<ShapeError>([&] { QuantizedLinear<Int8Rowwise, Cpu<>>::load(ctx, "odd", 32, 8); }, "odd.weight");
}

BOOST_AUTO_TEST_CASE(pre_quantized_checkpoint_loads_zero_copy) {
    const std::int64_t n_out = 24, n_in = 128;
    const Tensor<float> w = random_tensor({n_out, n_in}, 9u);
    const auto wi = QuantizedWeight<Int8Rowwise>::quantize(Weight::owned(Tensor<float>(w), "i.weight"));
    const auto wq = QuantizedWeight<Q8_0>::quantize(Weight::owned(Tensor<float>(w), "q.weight"));
    io::SafeTensorsWriter wr;
    wi.write_to(wr, "i");
    wq.write_to(wr, "q");
    wr.add("f.weight", w);
    wr.set_metadata("limarp.quant", "int8");
    const auto path = std::filesystem::temp_directory_path() / "limarp_test_quantized_linear.safetensors";
    wr.write(path);
    auto ck = std::make_shared<const io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(path));
    std::filesystem::remove(path);
    BOOST_CHECK(detect_quant_scheme(*ck) == QuantScheme::Int8);
    LoadContext ctx(ck);
    auto li = QuantizedLinear<Int8Rowwise, Cpu<>>::load(ctx, "i", n_in, n_out);
    BOOST_CHECK(reinterpret_cast<const std::byte*>(li.weight().data()) == ck->get("i.weight").data);
    auto lq = QuantizedLinear<Q8_0, Cpu<>>::load(ctx, "q", n_in, n_out);
    BOOST_CHECK(lq.weight().data() == reinterpret_cast<const std::uint8_t*>(ck->get("q.weight").data));
    auto lf = QuantizedLinear<Q8_0, Cpu<>>::load(ctx, "f", n_in, n_out);  // f32 in the file: quantized at load
    BOOST_CHECK_EQUAL(std::memcmp(lf.weight().data(), wq.data(), wq.nbytes()), 0);
    check_throws_naming<FormatError>([&] { QuantizedLinear<Q8_0, Cpu<>>::load(ctx, "i", n_in, n_out); }, "--quant int8");
    check_throws_naming<FormatError>([&] { QuantizedLinear<Int8Rowwise, Cpu<>>::load(ctx, "q", n_in, n_out); },
                                     "--quant q8_0");
    // same outputs as the layer quantized in memory
    const auto x = test::random_floats(static_cast<std::size_t>(5 * n_in), 10u);
    std::vector<float> a(static_cast<std::size_t>(5 * n_out)), b(a.size());
    li.forward(a.data(), x.data(), 5);
    ops::qmatmul_wt(Cpu<>{}, b.data(), x.data(), wi, 5);
    BOOST_CHECK(a == b);
}

BOOST_AUTO_TEST_CASE(mistral_model_with_quantized_projections_vs_golden) {
    struct Case {
        const char* label;
        QuantScheme scheme;
        const char* activations;
        const char* threshold;
    };
    const Case cases[] = {
        {"int8 weight-only", QuantScheme::Int8, "f32", "0"},
        {"int8 x int8, outliers >= 6", QuantScheme::Int8, "int8", "6.0"},
        {"int8 x int8, no outliers", QuantScheme::Int8, "int8", "0"},
        {"q8_0 x q8_0", QuantScheme::Q8_0, "int8", "0"},
        {"q8_0 weight-only", QuantScheme::Q8_0, "f32", "0"},
    };
    for (const Case& c : cases) {
        const Accuracy a = c.scheme == QuantScheme::Int8 ? model_accuracy<Int8Rowwise>("swa_long", c.activations, c.threshold)
                                                         : model_accuracy<Q8_0>("swa_long", c.activations, c.threshold);
        BOOST_TEST_MESSAGE("swa_long " << c.label << ": max|logit-ref|/max|ref| = " << a.rel_err
                                       << ", top-1 agreement = " << 100.0 * a.top1 << "%");
        BOOST_CHECK_MESSAGE(a.rel_err <= 8e-2, c.label << ": rel err " << a.rel_err << " > 8e-2");
        BOOST_CHECK_MESSAGE(a.top1 >= 0.9, c.label << ": top-1 agreement " << a.top1 << " < 0.9");
    }
}

BOOST_AUTO_TEST_SUITE_END()
