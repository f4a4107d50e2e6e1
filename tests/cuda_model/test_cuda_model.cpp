// The CUDA backend through the layer templates (backend/cuda/ops.hpp, limarp::cuda): the same
// MistralModel / MistralBlock / Lora / QuantizedLinear code as the CPU tests, instantiated with
// Cuda<>, against the Hugging Face / PEFT golden fixtures and against the CPU backend.
// Built only with the CUDA backend (label "cuda"): it needs a GPU to run.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/fixtures.hpp"
#include "limarp/backend/cuda/api.hpp"
#include "limarp/generate/generator.hpp"
#include "limarp/io/npy.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/adapters.hpp"
#include "limarp/model/mistral_model.hpp"

using namespace limarp;

namespace {
const char* kFixtures[] = {"swa_long", "gqa4_old", "full_attn_hd"};

template <class Proj, class B>
using LoraModel = MistralModel<B, MistralBlock<B, Lora<Proj>>>;
using GpuDense = MistralModel<Cuda<>>;
using CpuDense = MistralModel<Cpu<>>;
using GpuLora = LoraModel<DenseLinear<Cuda<>>, Cuda<>>;
using GpuInt8 = LoraModel<QuantizedLinear<Int8Rowwise, Cuda<>>, Cuda<>>;
using CpuInt8 = LoraModel<QuantizedLinear<Int8Rowwise, Cpu<>>, Cpu<>>;

std::filesystem::path adapter_dir(const std::string& n) { return test::fixture_dir("swa_long") / "adapters" / n; }

template <class M>
M load(const std::string& fixture, std::vector<std::string> adapters = {}, bool weight_only = false) {
    return M::from_dir(test::fixture_dir(fixture), [&](MistralConfig&, LoadContext& ctx) {
        if (weight_only) ctx.extra.emplace_back(kQuantActivationsOption, "f32");
        for (const auto& a : adapters)
            ctx.adapters.push_back({std::make_shared<io::PeftAdapter>(io::PeftAdapter::open(adapter_dir(a))), 1.0f});
    });
}

template <class M>
std::vector<std::int32_t> greedy(M& m, const std::vector<std::int32_t>& prompt, std::size_t n_new) {
    auto cache = m.make_cache();
    std::vector<float> logits(static_cast<std::size_t>(m.config().vocab));
    std::vector<std::int32_t> out, next = prompt;
    for (std::size_t i = 0; i < n_new; ++i) {
        m.forward(logits.data(), next, cache, LogitsRows::Last);
        out.push_back(static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
        next = {out.back()};
    }
    return out;
}

// Fraction of rows whose argmax agrees.
double top1(const Tensor<float>& a, const Tensor<float>& b) {
    const std::int64_t V = a.shape()[1], T = a.shape()[0];
    std::int64_t same = 0;
    for (std::int64_t t = 0; t < T; ++t)
        same += std::max_element(a.data() + t * V, a.data() + (t + 1) * V) - (a.data() + t * V) ==
                std::max_element(b.data() + t * V, b.data() + (t + 1) * V) - (b.data() + t * V);
    return static_cast<double>(same) / static_cast<double>(T);
}

// Token-by-token decode (calls of 1..5 tokens through the ring) of `ids`, all logits rows.
template <class M>
Tensor<float> stepwise(M& m, const std::vector<std::int32_t>& ids) {
    const std::int64_t T = static_cast<std::int64_t>(ids.size()), V = m.config().vocab;
    auto cache = m.make_cache();
    Tensor<float> out({T, V});
    std::int64_t t = 0, len = 1;
    while (t < T) {
        const std::int64_t n = std::min(len, T - t);
        m.forward(out.data() + t * V, std::span(ids).subspan(static_cast<std::size_t>(t), static_cast<std::size_t>(n)),
                  cache, LogitsRows::All);
        t += n;
        len = len % 5 + 1;
    }
    return out;
}
// GqaAttention<Cuda> takes the fused RoPE + attention form (one launch a decode step); the CPU the
// three steps (the deleted generic declaration in attention_shape.hpp).
template <class B>
constexpr bool kFusedRopeAttention = requires(float* f, const float* cf, const std::int64_t* pos,
                                              const ops::AttentionShape& s) {
    ops::attention_with_cache_rope(B{}, f, f, f, cf, f, f, std::int64_t{1}, pos, std::int64_t{1}, s, 1.0f, 1.0);
};
static_assert(kFusedRopeAttention<Cuda<>> && !kFusedRopeAttention<Cpu<>>);

// One layer call on the GPU: x [T, n_in] uploaded, y starting from `y_start` (the start values of
// an accumulating call, or NaN poison that shows any value left unwritten), y downloaded.
template <class Layer, class... Extra>
Tensor<float> forward_on_gpu(Layer& layer, const Tensor<float>& x, const Tensor<float>& y_start, Extra... extra) {
    DeviceBuffer<float> dx(static_cast<std::size_t>(x.size()), "x"), dy(static_cast<std::size_t>(y_start.size()), "y");
    dx.upload(x.data(), dx.size());
    dy.upload(y_start.data(), dy.size());
    layer.forward(dy.data(), dx.data(), x.shape()[0], extra...);
    cuda_api::synchronize();
    Tensor<float> y(y_start.shape());
    dy.download(y.data(), dy.size());
    return y;
}

// NaN-filled [T, n] (poison for forward_on_gpu).
Tensor<float> poison(std::int64_t T, std::int64_t n) {
    Tensor<float> y({T, n});
    std::fill(y.data(), y.data() + y.size(), std::numeric_limits<float>::quiet_NaN());
    return y;
}

// max_rel_err of got against want, or 1 when got holds a non-finite value (max_rel_err skips NaN).
double rel_err_finite(const Tensor<float>& got, const Tensor<float>& want) {
    const bool finite = std::all_of(got.data(), got.data() + got.size(), [](float v) { return std::isfinite(v); });
    return finite ? test::max_rel_err(got.data(), want.data(), want.size()) : 1.0;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_model)

BOOST_AUTO_TEST_CASE(dense_logits_match_transformers_and_the_cpu) {
    for (const char* name : kFixtures) {
        GpuDense g = load<GpuDense>(name);
        CpuDense c = load<CpuDense>(name);
        const auto ids = test::ids_of(test::golden_json(name), "ids");
        const Tensor<float> ref = io::read_npy<float>(test::fixture_dir(name) / "logits.npy");
        const Tensor<float> got = g.logits(ids), cpu = c.logits(ids);
        BOOST_REQUIRE(got.shape() == ref.shape());
        const double e_ref = test::max_rel_err(got.data(), ref.data(), ref.size());
        const double e_cpu = test::max_rel_err(got.data(), cpu.data(), cpu.size());
        BOOST_TEST_MESSAGE(name << " (CUDA, bf16 weights): max rel err vs transformers " << e_ref << ", vs CPU " << e_cpu);
        BOOST_CHECK_LE(e_ref, 1e-4);
        BOOST_CHECK_LE(e_cpu, 1e-4);
    }
}

BOOST_AUTO_TEST_CASE(greedy_continuations_match_transformers) {
    for (const char* name : kFixtures) {
        GpuDense g = load<GpuDense>(name);
        const auto j = test::golden_json(name);
        const auto want = test::ids_of(j, "greedy_new");
        const auto got = greedy(g, test::ids_of(j, "greedy_prompt"), want.size());
        BOOST_CHECK_MESSAGE(got == want, name << ": CUDA greedy continuation differs from transformers");
    }
}

BOOST_AUTO_TEST_CASE(generator_with_device_sampling_matches_host_sampling) {
    // The Generator's device paths: cuda_api::TokenSampler as a generate::StepPicker (its pick
    // inside the model's step, recorded into the decode step's CUDA graph and replayed with each
    // step's penalty upload) and as a LogitsPicker called after the step. Greedy: transformers'
    // continuation on both; greedy with penalties: the host sampler's tokens exactly (the penalised
    // logits are the CPU's bit for bit); sampled: the same tokens on both paths for the same seed,
    // a different stream for another seed, and a new seed after reseed() (a new recording).
    using generate::Generator;
    using generate::GenerationOptions;
    using generate::LogitsPicker;
    using generate::SamplerParams;
    enum class Path { host, after, step };
    const auto j = test::golden_json("swa_long");
    GpuInt8 m = load<GpuInt8>("swa_long", {"all7"});
    const auto prompt = test::ids_of(j, "ids");
    const auto run_with = [&](auto& model, const std::vector<std::int32_t>& p0, const SamplerParams& p, Path path,
                              int n) {
        Generator<std::remove_reference_t<decltype(model)>> g(model);
        GenerationOptions o;
        o.max_new_tokens = n;
        if (path == Path::host) {
            generate::Sampler s(p);
            return g.generate(p0, s, o).tokens;
        }
        cuda_api::TokenSampler ts(p);
        if (path == Path::step) return g.generate(p0, ts, o).tokens;
        const LogitsPicker pick = [&](float* logits, std::int64_t vocab, std::span<const std::int32_t> history) {
            return ts.sample(logits, vocab, history);
        };
        return g.generate(p0, pick, o).tokens;
    };
    const auto run = [&](const SamplerParams& p, Path path, int n) { return run_with(m, prompt, p, path, n); };
    {
        GpuDense d = load<GpuDense>("swa_long");
        const auto want = test::ids_of(j, "greedy_new");
        for (const Path path : {Path::after, Path::step})
            BOOST_CHECK_MESSAGE(run_with(d, test::ids_of(j, "greedy_prompt"), SamplerParams{.temperature = 0.0f}, path,
                                         static_cast<int>(want.size())) == want,
                                "device greedy through the Generator differs from transformers ("
                                    << (path == Path::step ? "pick in the step" : "pick after the step") << ")");
    }
    SamplerParams pen;
    pen.temperature = 0.0f;
    pen.repetition_penalty = 1.3f;
    pen.frequency_penalty = 0.2f;
    pen.presence_penalty = 0.1f;
    pen.penalty_range = 16;
    const auto host = run(pen, Path::host, 24);
    BOOST_CHECK_MESSAGE(host == run(pen, Path::after, 24), "greedy with penalties: device (after) and host differ");
    BOOST_CHECK_MESSAGE(host == run(pen, Path::step, 24), "greedy with penalties: device (in the step) and host differ");
    SamplerParams s;
    s.temperature = 0.8f;
    s.top_k = 40;
    s.min_p = 0.02f;
    s.repetition_penalty = 1.1f;
    s.seed = 3;
    const auto a = run(s, Path::step, 24), b = run(s, Path::step, 24);
    BOOST_CHECK(a == b);
    BOOST_CHECK_EQUAL(a.size(), 24u);
    BOOST_CHECK_MESSAGE(run(s, Path::after, 24) == a, "sampled: the pick in the step and after it differ");
    s.seed = 4;
    const auto c = run(s, Path::step, 24);
    BOOST_CHECK(c != a);
    {  // reseed between two generations on one sampler: the second follows the new seed
        Generator<GpuInt8> g(m);
        GenerationOptions o;
        o.max_new_tokens = 24;
        s.seed = 3;
        cuda_api::TokenSampler ts(s);
        BOOST_CHECK(g.generate(prompt, ts, o).tokens == a);
        ts.reseed(4);
        Generator<GpuInt8> g2(m);  // a fresh cache: the same prefill as c's
        BOOST_CHECK_MESSAGE(g2.generate(prompt, ts, o).tokens == c, "after reseed(4): not the seed-4 tokens");
    }
    // settings the device lacks: a clear error naming the stage
    SamplerParams t;
    t.typical_p = 0.9f;
    BOOST_CHECK_THROW(cuda_api::TokenSampler{t}, ArgumentError);
    // a history id outside the vocabulary: a clear error before anything runs
    {
        cuda_api::TokenSampler ts(pen);
        auto cache = m.make_cache();
        const std::vector<std::int32_t> bad{1, 2, static_cast<std::int32_t>(m.config().vocab)};
        BOOST_CHECK_THROW(m.forward_pick(std::span(prompt), cache, ts, std::span(bad)), ArgumentError);
        BOOST_CHECK_EQUAL(cache.n_past(), 0);
    }
}

BOOST_AUTO_TEST_CASE(chunks_and_token_by_token_match_one_prefill) {
    for (const char* name : kFixtures) {
        GpuDense g = load<GpuDense>(name);
        BOOST_TEST(g.chunk_size() == 4096);  // the device backends' default
        const auto ids = test::ids_of(test::golden_json(name), "ids");
        const Tensor<float> whole = g.logits(ids);
        g.set_chunk_size(7);
        const Tensor<float> chunked = g.logits(ids);
        g.set_chunk_size(256);
        const Tensor<float> steps = stepwise(g, ids);
        const double e_chunk = test::max_rel_err(chunked.data(), whole.data(), whole.size());
        const double e_step = test::max_rel_err(steps.data(), whole.data(), whole.size());
        BOOST_TEST_MESSAGE(name << ": chunks of 7 vs one prefill " << e_chunk << ", token by token " << e_step);
        BOOST_CHECK_LE(e_chunk, 1e-5);
        BOOST_CHECK_LE(e_step, 1e-5);
    }
}

BOOST_AUTO_TEST_CASE(lora_logits_match_peft) {
    const auto ids = test::ids_of(test::golden_json("swa_long"), "ids");
    for (const char* name : {"all7", "rslora_regex"}) {
        GpuLora g = load<GpuLora>("swa_long", {name});
        const Tensor<float> ref = io::read_npy<float>(adapter_dir(name) / "ref_logits.npy");
        const double err = test::max_rel_err(g.logits(ids).data(), ref.data(), ref.size());
        BOOST_TEST_MESSAGE(name << " (CUDA LoRA on bf16 base): max rel err vs PEFT " << err);
        BOOST_CHECK_LE(err, 1e-4);
    }
    // hot swap on the device: scale 0 gives the base model back, detach too
    GpuLora g = load<GpuLora>("swa_long", {"all7"});
    const Tensor<float> base = io::read_npy<float>(test::fixture_dir("swa_long") / "logits.npy");
    for (auto& b : g.blocks()) {
        for (auto* p : {&b.attention().q_proj(), &b.attention().k_proj(), &b.attention().v_proj(), &b.attention().o_proj(),
                        &b.mlp().gate(), &b.mlp().up(), &b.mlp().down()})
            p->set_scale("all7", 0.0f);
    }
    BOOST_CHECK_LE(test::max_rel_err(g.logits(ids).data(), base.data(), base.size()), 1e-4);
}

BOOST_AUTO_TEST_CASE(int8_with_adapter_matches_peft_and_the_cpu) {
    const auto ids = test::ids_of(test::golden_json("swa_long"), "ids");
    const Tensor<float> ref = io::read_npy<float>(adapter_dir("all7") / "ref_logits.npy");
    // default: int8 activations with outlier columns (LLM.int8()) in the prefill GEMM, f32 in the
    // decode GEMV; against the CPU layer with the same (default) options
    GpuInt8 g = load<GpuInt8>("swa_long", {"all7"});
    CpuInt8 ci = load<CpuInt8>("swa_long", {"all7"});
    const Tensor<float> got = g.logits(ids), steps = stepwise(g, ids), cpu_int8 = ci.logits(ids);
    const double e_ref = test::max_rel_err(got.data(), ref.data(), ref.size());
    const double t1 = top1(got, ref);
    const double e_step = test::max_rel_err(steps.data(), got.data(), got.size());
    const double e_cpu_int8 = test::max_rel_err(got.data(), cpu_int8.data(), cpu_int8.size());
    // "quant.activations" = "f32": the prefill GEMM too keeps f32-close activations
    GpuInt8 ge = load<GpuInt8>("swa_long", {"all7"}, /*weight_only=*/true);
    CpuInt8 c = load<CpuInt8>("swa_long", {"all7"}, /*weight_only=*/true);
    const Tensor<float> exact = ge.logits(ids), cpu = c.logits(ids), exact_steps = stepwise(ge, ids);
    const double e_cpu = test::max_rel_err(exact.data(), cpu.data(), cpu.size());
    const double e_exact_step = test::max_rel_err(exact_steps.data(), exact.data(), exact.size());
    BOOST_TEST_MESSAGE("int8 + all7 (CUDA): max rel err vs PEFT " << e_ref << ", top-1 agreement " << 100 * t1
                                                                << "%, vs the CPU with int8 activations " << e_cpu_int8
                                                                << "; weight-only GEMV decode + int8-activation GEMM "
                                                                << "chunks vs one prefill " << e_step
                                                                << "; with f32 activations: vs CPU int8 "
                                                                << "weight-only " << e_cpu << ", decode vs prefill "
                                                                << e_exact_step);
    // Bands measured with the CPU layers on this fixture: int8 activations vs PEFT 2.1e-2 (top-1
    // 46/48); the CUDA stepwise mix (one-token calls weight-only, 2..5-token calls int8 with their
    // own outlier columns) vs one int8 prefill 1.6e-2; int8 vs f32 activations 1.5e-2. The int8
    // model is discontinuous in its inputs (an activation crossing a rounding step or the outlier
    // threshold): scaling the adapter by 1 + 1e-5 moved the CPU int8 logits by 6.8e-3 (weight-only:
    // 1.5e-5), so the CUDA-vs-CPU band for int8 activations is that of int8 vs f32, not 1e-4.
    BOOST_CHECK_LE(e_ref, 8e-2);
    BOOST_CHECK_GE(t1, 0.9);
    BOOST_CHECK_LE(e_step, 4e-2);
    BOOST_CHECK_LE(e_cpu_int8, 3e-2);
    BOOST_CHECK_LE(e_cpu, 1e-4);
    BOOST_CHECK_LE(e_exact_step, 1e-4);
    const auto j = test::golden_json("swa_long");
    GpuInt8 base = load<GpuInt8>("swa_long");
    const auto want = test::ids_of(j, "greedy_new");
    const auto got_ids = greedy(base, test::ids_of(j, "greedy_prompt"), want.size());
    const auto same = std::mismatch(got_ids.begin(), got_ids.end(), want.begin()).first - got_ids.begin();
    BOOST_TEST_MESSAGE("int8 (CUDA) greedy: first " << same << " of " << want.size() << " tokens as transformers bf16");
}

// DenseLinear<Cuda> with bf16 weights on shapes the fixtures lack: many rows (a warp per row),
// few rows (split-K blocks), an input width that is not a multiple of 8 (scalar loads); one token
// (GEMV) and several (split bf16 GEMM); against DenseLinear<Cpu>.
BOOST_AUTO_TEST_CASE(dense_linear_matches_the_cpu_on_odd_shapes) {
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (const auto& [n_out, n_in] : {std::pair<std::int64_t, std::int64_t>{1500, 72}, {300, 4096}, {1100, 70}, {9, 70},
                                      {301, 520}, {13, 4104}, {7, 4096}}) {
        Tensor<bf16> w({n_out, n_in});
        for (std::int64_t i = 0; i < w.size(); ++i) w[i].bits = f32_to_bf16(nd(rng) * 0.1f);
        DenseLinear<Cpu<>> cpu(Weight::owned(Tensor<bf16>(w), "w"));
        DenseLinear<Cuda<>> gpu(Weight::owned(Tensor<bf16>(w), "w"));
        for (const std::int64_t T : {1, 5}) {
            Tensor<float> x({T, n_in}), y_cpu({T, n_out});
            for (std::int64_t i = 0; i < x.size(); ++i) x[i] = nd(rng);
            cpu.forward(y_cpu.data(), x.data(), T);
            const double err = rel_err_finite(forward_on_gpu(gpu, x, poison(T, n_out)), y_cpu);
            BOOST_CHECK_MESSAGE(err <= 2e-5, n_out << "x" << n_in << " T=" << T << ": max rel err " << err);
        }
    }
}

// The grouped bf16 GEMV of one token (the LoRA A products of q/k/v or gate/up in one launch,
// `ops::matmul_wt_scaled_group`): each part bit for bit its own `matmul_wt_scaled` on the GPU, and
// close to the CPU; parts of 5, 12 and 7 rows, one part, two, three; input widths 520, 4096, 4104.
BOOST_AUTO_TEST_CASE(grouped_bf16_gemv_matches_single_products) {
    std::mt19937 rng(41);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const std::int64_t rows[3] = {5, 12, 7};
    const float alphas[3] = {0.5f, 2.0f, -1.25f};
    for (const std::int64_t n_in : {520, 4096, 4104}) {
        Tensor<float> x({1, n_in});
        for (std::int64_t i = 0; i < x.size(); ++i) x[i] = nd(rng);
        DeviceBuffer<float> dx(static_cast<std::size_t>(n_in), "x");
        dx.upload(x.data(), dx.size());
        std::vector<Tensor<bf16>> w;
        std::vector<DeviceBuffer<bf16>> dw;
        for (int p = 0; p < 3; ++p) {
            w.emplace_back(std::vector<std::int64_t>{rows[p], n_in});
            for (std::int64_t i = 0; i < w.back().size(); ++i) w.back()[i].bits = f32_to_bf16(nd(rng) * 0.1f);
            dw.emplace_back(static_cast<std::size_t>(w.back().size()), "w");
            dw.back().upload(w.back().data(), dw.back().size());
        }
        for (int n = 1; n <= 3; ++n) {
            std::vector<DeviceBuffer<float>> dy, dsingle;
            std::vector<ops::ScaledProduct> prods;
            for (int p = 0; p < n; ++p) {
                dy.emplace_back(static_cast<std::size_t>(rows[p]), "y");
                dsingle.emplace_back(static_cast<std::size_t>(rows[p]), "y single");
                const Tensor<float> nan = poison(1, rows[p]);
                dy.back().upload(nan.data(), dy.back().size());
                prods.push_back({dy.back().data(), dw[static_cast<std::size_t>(p)].data(), rows[p], alphas[p]});
            }
            ops::matmul_wt_scaled_group(Cuda<>{}, dx.data(), 1, n_in, prods.data(), n);
            for (int p = 0; p < n; ++p)
                ops::matmul_wt_scaled(Cuda<>{}, dsingle[static_cast<std::size_t>(p)].data(), dx.data(),
                                      dw[static_cast<std::size_t>(p)].data(), 1, n_in, rows[p], alphas[p]);
            cuda_api::synchronize();
            for (int p = 0; p < n; ++p) {
                const auto sp = static_cast<std::size_t>(p);
                Tensor<float> got({1, rows[p]}), single({1, rows[p]}), want({1, rows[p]});
                dy[sp].download(got.data(), dy[sp].size());
                dsingle[sp].download(single.data(), dsingle[sp].size());
                ops::matmul_wt_scaled(Cpu<>{}, want.data(), x.data(), w[sp].data(), 1, n_in, rows[p], alphas[p]);
                BOOST_CHECK_MESSAGE(std::equal(got.data(), got.data() + got.size(), single.data()),
                                    "n_in " << n_in << ", " << n << " parts: part " << p << " differs from its single product");
                const double err = rel_err_finite(got, want);
                BOOST_CHECK_MESSAGE(err <= 2e-5, "n_in " << n_in << ", " << n << " parts: part " << p << " max rel err " << err);
            }
        }
    }
}

// QuantizedLinear<Int8Rowwise, Cuda> with int8 activations (LLM.int8(): outlier columns in f32,
// the rest int8 x int8 on the tensor cores, backend/cuda/qgemm_int8.cuh) against the CPU layer on
// the same quantized weight and options: odd widths (n_in not a multiple of 16: padded K; n_out
// not a multiple of 4: cuBLAS' int8 kernels may refuse and the bf16 fallback runs), 1-3 outlier
// columns or none (threshold 0), overwrite and accumulate. Both sides quantize to the same bytes
// and their integer dots are exact, so only f32 rounding differs (the outlier sums' FMAs, the
// final multiply-add): 1e-4 of max |y| is a wide margin.
BOOST_AUTO_TEST_CASE(int8_activation_gemm_matches_the_cpu_on_odd_shapes) {
    std::mt19937 rng(23);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ux(-2.0f, 2.0f), big(8.0f, 20.0f);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    double worst = 0;
    for (const auto& [n_out, n_in] : {std::pair<std::int64_t, std::int64_t>{3, 64}, {130, 100}, {256, 1000}, {130, 1000},
                                     {3, 100}, {256, 64}, {1024, 4096}}) {
        Tensor<float> wf({n_out, n_in});
        for (std::int64_t i = 0; i < wf.size(); ++i) wf[i] = nd(rng) * 0.05f;
        const auto qw = QuantizedWeight<Int8Rowwise>::quantize(Weight::owned(Tensor<float>(wf), "w"));
        for (const float thr : {6.0f, 0.0f}) {
            QuantizedLinear<Int8Rowwise, Cpu<>> cpu(qw, QuantOptions::int8(thr));
            QuantizedLinear<Int8Rowwise, Cuda<>> gpu(qw, QuantOptions::int8(thr));
            for (const std::int64_t T : {2, 7, 33}) {
                for (const bool accumulate : {false, true}) {
                    Tensor<float> x({T, n_in}), y_cpu({T, n_out});
                    for (std::int64_t i = 0; i < x.size(); ++i) x[i] = ux(rng);
                    // 1-3 outlier columns, each with a few large values (|x| 8..20) in random rows
                    const int n_cols = 1 + static_cast<int>(rng() % 3);
                    for (int c = 0; c < n_cols; ++c) {
                        const std::int64_t j = static_cast<std::int64_t>(rng() % static_cast<unsigned>(n_in));
                        const int n_rows = 1 + static_cast<int>(rng() % 3);
                        for (int k = 0; k < n_rows; ++k) {
                            const std::int64_t t = static_cast<std::int64_t>(rng() % static_cast<unsigned>(T));
                            x[t * n_in + j] = (rng() % 2 ? 1.0f : -1.0f) * big(rng);
                        }
                    }
                    for (std::int64_t i = 0; i < y_cpu.size(); ++i) y_cpu[i] = accumulate ? nd(rng) : nan;
                    const Tensor<float> start(y_cpu);  // accumulate: the start values; else NaN poison
                    cpu.forward(y_cpu.data(), x.data(), T, accumulate);
                    const double err = rel_err_finite(forward_on_gpu(gpu, x, start, accumulate), y_cpu);
                    worst = std::max(worst, err);
                    BOOST_CHECK_MESSAGE(err <= 1e-4, n_out << "x" << n_in << " T=" << T << " threshold " << thr
                                                           << (accumulate ? " (accumulate)" : "") << ": max rel err "
                                                           << err << (err == 1.0 ? " (non-finite output)" : ""));
                }
            }
        }
    }
    BOOST_TEST_MESSAGE("int8-activation GEMM (CUDA) vs CPU layer: worst max rel err " << worst);
}

// The shared-input prefill forms of QuantizedLinear<Int8Rowwise, Cuda> (`try_forward_qkv`,
// `try_forward_pair`: x's outlier columns and row quantization computed once for several weights)
// give each layer's own `forward` bit for bit: the same quantized bytes, the same GEMMs in the same
// order; with hundreds of outlier columns (the outlier GEMM's padded inner dimension), a few, or
// none (threshold 0). Options that differ between the layers decline (false, nothing written).
BOOST_AUTO_TEST_CASE(int8_shared_input_forms_match_each_layer) {
    using Q = QuantizedLinear<Int8Rowwise, Cuda<>>;
    std::mt19937 rng(29);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ux(-2.0f, 2.0f), big(8.0f, 20.0f);
    const std::int64_t n_in = 1000, n_outs[3] = {260, 130, 130};
    std::vector<QuantizedWeight<Int8Rowwise>> qw;
    for (const std::int64_t n_out : n_outs) {
        Tensor<float> wf({n_out, n_in});
        for (std::int64_t i = 0; i < wf.size(); ++i) wf[i] = nd(rng) * 0.05f;
        qw.push_back(QuantizedWeight<Int8Rowwise>::quantize(Weight::owned(std::move(wf), "w")));
    }
    for (const float thr : {6.0f, 0.0f}) {
        Q l0(qw[0], QuantOptions::int8(thr)), l1(qw[1], QuantOptions::int8(thr)), l2(qw[2], QuantOptions::int8(thr));
        for (const int n_outlier_cols : {300, 3}) {
            const std::int64_t T = n_outlier_cols == 300 ? 33 : 2;
            Tensor<float> x({T, n_in});
            for (std::int64_t i = 0; i < x.size(); ++i) x[i] = ux(rng);
            for (int c = 0; c < n_outlier_cols; ++c)
                x[static_cast<std::int64_t>(rng() % static_cast<unsigned>(T)) * n_in +
                  static_cast<std::int64_t>(rng() % static_cast<unsigned>(n_in))] = (rng() % 2 ? 1.0f : -1.0f) * big(rng);
            DeviceBuffer<float> dx(static_cast<std::size_t>(x.size()), "x");
            dx.upload(x.data(), dx.size());
            std::vector<DeviceBuffer<float>> sep, fused;
            for (const std::int64_t n_out : n_outs) {
                sep.emplace_back(static_cast<std::size_t>(T * n_out), "separate");
                fused.emplace_back(static_cast<std::size_t>(T * n_out), "fused");
            }
            l0.forward(sep[0].data(), dx.data(), T);
            l1.forward(sep[1].data(), dx.data(), T);
            l2.forward(sep[2].data(), dx.data(), T);
            BOOST_TEST(Q::try_forward_qkv(l0, fused[0].data(), l1, fused[1].data(), l2, fused[2].data(), dx.data(), T));
            cuda_api::synchronize();
            for (int i = 0; i < 3; ++i) {
                std::vector<float> a(sep[i].size()), b(fused[i].size());
                sep[i].download(a.data(), a.size());
                fused[i].download(b.data(), b.size());
                BOOST_CHECK_MESSAGE(a == b, "q/k/v shared form, weight " << i << ", threshold " << thr << ", "
                                                                          << n_outlier_cols << " outliers: differs");
            }
            DeviceBuffer<float> p0(static_cast<std::size_t>(T * n_outs[1]), "p0"), p1(p0.size(), "p1");
            BOOST_TEST(Q::try_forward_pair(l1, p0.data(), l2, p1.data(), dx.data(), T));
            cuda_api::synchronize();
            std::vector<float> a(p0.size()), b(p0.size()), c(p0.size()), d(p0.size());
            p0.download(a.data(), a.size());
            p1.download(b.data(), b.size());
            sep[1].download(c.data(), c.size());
            sep[2].download(d.data(), d.size());
            BOOST_CHECK(a == c);
            BOOST_CHECK(b == d);
        }
        Q other(qw[1], QuantOptions::int8(thr > 0 ? 0.0f : 6.0f));
        DeviceBuffer<float> dx(static_cast<std::size_t>(2 * n_in), "x"), y0(2 * 260, "y0"), y1(2 * 130, "y1");
        BOOST_TEST(!Q::try_forward_pair(l0, y0.data(), other, y1.data(), dx.data(), 2));
        BOOST_TEST(!Q::try_forward_pair(l0, y0.data(), l1, y1.data(), dx.data(), 1));  // one token: not this form
    }
}

// Lora<QuantizedLinear<Int8Rowwise, Cuda>> with bf16 factors: one token adds the first adapter's
// B product inside the int8 GEMV (`forward_lora`, r % 8 == 0), other ranks and adapters go the
// separate way; against the CPU layer, weight-only (f32 activations on both sides). Rank 264: the
// GEMV's epilogue takes a second pass over the ranks past 256.
BOOST_AUTO_TEST_CASE(lora_fused_into_the_int8_gemv_matches_the_cpu) {
    std::mt19937 rng(31);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const std::int64_t n_out = 300, n_in = 520;
    Tensor<float> wf({n_out, n_in});
    for (std::int64_t i = 0; i < wf.size(); ++i) wf[i] = nd(rng) * 0.05f;
    const auto qw = QuantizedWeight<Int8Rowwise>::quantize(Weight::owned(Tensor<float>(wf), "w"));
    const auto factors = [&](std::int64_t r, const char* name) {
        Tensor<bf16> a({r, n_in}), b({n_out, r});
        for (std::int64_t i = 0; i < a.size(); ++i) a[i].bits = f32_to_bf16(nd(rng) * 0.05f);
        for (std::int64_t i = 0; i < b.size(); ++i) b[i].bits = f32_to_bf16(nd(rng) * 0.05f);
        LoraFactors f;
        f.adapter = name;
        f.A = Weight::owned(std::move(a), std::string(name) + ".A");
        f.B = Weight::owned(std::move(b), std::string(name) + ".B");
        f.file_scale = 2.0f / static_cast<float>(r);
        return f;
    };
    for (const std::vector<std::int64_t>& ranks : {std::vector<std::int64_t>{16}, {12}, {16, 24}, {264}}) {
        Lora<QuantizedLinear<Int8Rowwise, Cpu<>>> cpu(QuantizedLinear<Int8Rowwise, Cpu<>>(qw, QuantOptions::weight_only()), "m");
        Lora<QuantizedLinear<Int8Rowwise, Cuda<>>> gpu(QuantizedLinear<Int8Rowwise, Cuda<>>(qw, QuantOptions::weight_only()), "m");
        for (std::size_t i = 0; i < ranks.size(); ++i) {
            const std::string name = "ad" + std::to_string(i);
            LoraFactors f = factors(ranks[i], name.c_str());
            cpu.attach(f);
            gpu.attach(std::move(f));
        }
        for (const std::int64_t T : {1, 3}) {
            Tensor<float> x({T, n_in}), y_cpu({T, n_out});
            for (std::int64_t i = 0; i < x.size(); ++i) x[i] = nd(rng);
            cpu.forward(y_cpu.data(), x.data(), T);
            const double err = rel_err_finite(forward_on_gpu(gpu, x, poison(T, n_out)), y_cpu);
            BOOST_CHECK_MESSAGE(err <= 1e-4, "ranks " << ranks.front() << (ranks.size() > 1 ? "+" : "") << " T=" << T
                                                      << ": max rel err " << err << (err == 1.0 ? " (non-finite)" : ""));
        }
    }
}

BOOST_AUTO_TEST_CASE(bad_id_is_a_clear_error_and_leaves_the_cache) {
    GpuDense g = load<GpuDense>("swa_long");
    auto cache = g.make_cache();
    std::vector<float> logits(static_cast<std::size_t>(g.config().vocab));
    const std::vector<std::int32_t> ok{1, 5, 7}, bad{3, 1000000};
    g.forward(logits.data(), ok, cache, LogitsRows::Last);
    BOOST_CHECK_THROW(g.forward(logits.data(), bad, cache, LogitsRows::Last), ArgumentError);
    BOOST_CHECK_EQUAL(cache.n_past(), 3);
}

BOOST_AUTO_TEST_SUITE_END()
