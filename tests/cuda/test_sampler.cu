// Tests of limarp/backend/cuda/sampler.cuh against the CPU generate::Sampler:
// - greedy: ops::sample_greedy (and DeviceSampler at temperature 0) picks exactly the CPU's token
//   on random logits, with and without ties (quantised logits), vocabularies 32000, 1000, 7;
// - the kept set of ops::sample_top_k_top_p (its `kept` output) equals the CPU's candidate set after
//   the chain (Sampler::last_candidates) for top-k, top-p, min-p, both temperature positions, and
//   quantised logits with ties at the top-k and top-p thresholds;
// - the draw: 20000 draws against the CPU's final probabilities, chi-square test at p = 1e-6
//   (the draws are a fixed function of the seed, so the test is deterministic);
// - seeding: the same seed and step give the same token; reseed restarts the sequence;
// - DeviceSamplingParams::from refuses the stages the device lacks.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/sampler.cuh"
#include "limarp/core/error.hpp"
#include "limarp/generate/sampler.hpp"

namespace {

using limarp::Cuda;
using limarp::DeviceBuffer;
using limarp::DeviceSampler;
using limarp::DeviceSamplingParams;
using limarp::generate::Sampler;
using limarp::generate::SamplerParams;
using limarp::generate::SamplerStage;

// Normal(0, sd) logits; quantised to multiples of `step` when step > 0 (many ties).
std::vector<float> random_logits(std::size_t vocab, std::uint32_t seed, float sd, float step = 0.f) {
    std::mt19937 g(seed);
    std::normal_distribution<float> d(0.f, sd);
    std::vector<float> v(vocab);
    for (auto& e : v) {
        e = d(g);
        if (step > 0) e = std::round(e / step) * step;
    }
    return v;
}

std::int32_t gpu_greedy(const DeviceBuffer<float>& logits, std::int64_t vocab) {
    DeviceBuffer<std::int32_t> id(1, "id");
    limarp::ops::sample_greedy(Cuda<90>{}, id.data(), logits.data(), vocab);
    std::int32_t h = -1;
    id.download(&h, 1);
    return h;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_sampler)

BOOST_AUTO_TEST_CASE(greedy_matches_cpu) {
    std::uint32_t seed = 1;
    for (std::int64_t vocab : {32000, 1000, 7})
        for (float step : {0.f, 0.5f})
            for (int trial = 0; trial < 20; ++trial) {
                const auto logits = random_logits(static_cast<std::size_t>(vocab), seed++, 3.f, step);
                SamplerParams p;
                p.temperature = 0.f;
                Sampler cpu(p);
                const std::int32_t want = cpu.sample(logits, {});
                DeviceBuffer<float> dl(logits.size(), "logits");
                dl.upload(logits.data(), logits.size());
                BOOST_TEST_CONTEXT("vocab " << vocab << " step " << step << " trial " << trial) {
                    BOOST_TEST(gpu_greedy(dl, vocab) == want);
                    DeviceSampler ds(p);
                    BOOST_TEST(ds.sample(Cuda<90>{}, dl.data(), vocab) == want);
                }
            }
}

namespace {

struct KeptCase {
    const char* name;
    SamplerParams p;
    float logit_sd, step;
};

std::vector<KeptCase> kept_cases() {
    std::vector<KeptCase> cs;
    const auto mk = [](float t, int k, float top_p, float min_p) {
        SamplerParams p;
        p.temperature = t;
        p.top_k = k;
        p.top_p = top_p;
        p.min_p = min_p;
        return p;
    };
    cs.push_back({"top_k 40, temperature 0.7 last", mk(0.7f, 40, 1.f, 0.f), 2.f, 0.f});
    cs.push_back({"top_p 0.9", mk(1.f, 0, 0.9f, 0.f), 2.f, 0.f});
    cs.push_back({"top_p 0.5, sharp logits", mk(1.f, 0, 0.5f, 0.f), 5.f, 0.f});
    SamplerParams first = mk(1.3f, 50, 0.8f, 0.f);
    first.order = {SamplerStage::Temperature, SamplerStage::TopK, SamplerStage::TopP};
    cs.push_back({"temperature 1.3 first, top_k 50, top_p 0.8", first, 2.f, 0.f});
    cs.push_back({"top_p 0.95, min_p 0.05", mk(0.8f, 0, 0.95f, 0.05f), 2.f, 0.f});
    SamplerParams first_m = mk(0.5f, 0, 1.f, 0.1f);
    first_m.order = {SamplerStage::Temperature, SamplerStage::MinP};
    cs.push_back({"temperature 0.5 first, min_p 0.1", first_m, 2.f, 0.f});
    cs.push_back({"top_k 5, ties", mk(1.f, 5, 1.f, 0.f), 1.f, 0.25f});
    cs.push_back({"top_k 200, top_p 0.37, ties", mk(1.f, 200, 0.37f, 0.f), 1.f, 0.25f});
    cs.push_back({"top_p 0.61, ties", mk(1.f, 0, 0.61f, 0.f), 1.5f, 0.5f});
    cs.push_back({"top_k 1", mk(1.f, 1, 1.f, 0.f), 2.f, 0.f});
    cs.push_back({"no truncation", mk(1.f, 0, 1.f, 0.f), 2.f, 0.f});
    return cs;
}

}  // namespace

BOOST_AUTO_TEST_CASE(kept_set_matches_cpu) {
    std::uint32_t seed = 100;
    for (const KeptCase& c : kept_cases())
        for (std::int64_t vocab : {32000, 1000, 7}) {
            BOOST_TEST_CONTEXT(c.name << ", vocab " << vocab) {
                const auto logits = random_logits(static_cast<std::size_t>(vocab), seed++, c.logit_sd, c.step);
                Sampler cpu(c.p);
                (void)cpu.sample(logits, {});
                std::set<std::int32_t> want;
                for (const auto& x : cpu.last_candidates().items) want.insert(x.id);
                DeviceBuffer<float> dl(logits.size(), "logits");
                dl.upload(logits.data(), logits.size());
                DeviceBuffer<std::uint8_t> kept(logits.size(), "kept");
                DeviceBuffer<std::int32_t> id(1, "id");
                DeviceBuffer<std::uint64_t> counter(1, "counter");
                LIMARP_CUDA_CHECK(cudaMemset(counter.data(), 0, 8));
                LIMARP_CUDA_CHECK(cudaMemset(kept.data(), 0xee, kept.bytes()));
                limarp::ops::sample_top_k_top_p(Cuda<90>{}, id.data(), dl.data(), vocab,
                                                DeviceSamplingParams::from(c.p), counter.data(), nullptr, kept.data());
                std::vector<std::uint8_t> k(logits.size());
                kept.download(k.data(), k.size());
                std::set<std::int32_t> got;
                std::size_t bad_flag = 0;
                for (std::size_t i = 0; i < k.size(); ++i) {
                    if (k[i] == 1) got.insert(static_cast<std::int32_t>(i));
                    bad_flag += k[i] > 1;
                }
                std::int32_t hid = -1;
                id.download(&hid, 1);
                BOOST_TEST(bad_flag == 0u, "kept flags not written");
                BOOST_TEST(got.size() == want.size());
                BOOST_TEST((got == want), "the kept sets differ (" << got.size() << " vs " << want.size() << ")");
                BOOST_TEST(want.count(hid) == 1u, "the drawn token " << hid << " is not in the CPU's kept set");
            }
        }
}

BOOST_AUTO_TEST_CASE(draws_follow_the_cpu_distribution) {
    struct Dist {
        const char* name;
        SamplerParams p;
    };
    std::vector<Dist> ds;
    SamplerParams a;
    a.temperature = 0.8f;
    a.top_k = 20;
    ds.push_back({"top_k 20, temperature 0.8", a});
    SamplerParams b;
    b.temperature = 1.5f;
    b.top_p = 0.7f;
    b.top_k = 30;
    b.order = {SamplerStage::Temperature, SamplerStage::TopK, SamplerStage::TopP};
    ds.push_back({"temperature 1.5 first, top_k 30, top_p 0.7", b});
    std::uint32_t seed = 500;
    for (const Dist& d : ds) {
        BOOST_TEST_CONTEXT(d.name) {
            const std::int64_t vocab = 32000;
            const auto logits = random_logits(static_cast<std::size_t>(vocab), seed++, 1.f);
            // make the top of the distribution stand out so the kept set is small and dense
            Sampler cpu(d.p);
            (void)cpu.sample(logits, {});
            const auto& items = cpu.last_candidates().items;
            DeviceBuffer<float> dl(logits.size(), "logits");
            dl.upload(logits.data(), logits.size());
            SamplerParams p = d.p;
            p.seed = 12345;
            DeviceSampler s(p);
            DeviceBuffer<std::int32_t> ids(20000, "ids");
            const int N = 20000;
            for (int i = 0; i < N; ++i) {
                s.enqueue(Cuda<90>{}, dl.data(), vocab);
                LIMARP_CUDA_CHECK(
                    cudaMemcpyAsync(ids.data() + i, s.device_id(), 4, cudaMemcpyDeviceToDevice, nullptr));
            }
            std::vector<std::int32_t> h(N);
            ids.download(h.data(), h.size());
            std::vector<double> count(static_cast<std::size_t>(vocab), 0.0);
            for (std::int32_t id : h) count[static_cast<std::size_t>(id)] += 1;
            double chi2 = 0, outside = 0;
            for (const auto& x : items) {
                const double e = N * static_cast<double>(x.p);
                const double o = count[static_cast<std::size_t>(x.id)];
                chi2 += (o - e) * (o - e) / e;
                count[static_cast<std::size_t>(x.id)] = 0;
            }
            for (double c : count) outside += c;
            const double df = static_cast<double>(items.size()) - 1;
            const double z = 4.75;  // upper 1e-6 point of the normal
            const double crit = df * std::pow(1 - 2 / (9 * df) + z * std::sqrt(2 / (9 * df)), 3);  // Wilson-Hilferty
            BOOST_TEST_MESSAGE(d.name << ": " << items.size() << " kept, chi2 " << chi2 << " (df " << df
                                      << ", 1e-6 critical " << crit << ")");
            BOOST_TEST(outside == 0.0, "draws outside the kept set");
            BOOST_TEST(chi2 < crit);
        }
    }
}

BOOST_AUTO_TEST_CASE(seeding_is_reproducible) {
    const auto logits = random_logits(32000, 77, 1.f);
    DeviceBuffer<float> dl(logits.size(), "logits");
    dl.upload(logits.data(), logits.size());
    SamplerParams p;
    p.temperature = 1.0f;
    p.top_p = 0.95f;
    p.seed = 42;
    const auto draw = [&](DeviceSampler& s) {
        std::vector<std::int32_t> v;
        for (int i = 0; i < 16; ++i) v.push_back(s.sample(Cuda<90>{}, dl.data(), 32000));
        return v;
    };
    DeviceSampler a(p), b(p);
    const auto va = draw(a), vb = draw(b);
    BOOST_TEST((va == vb), "two samplers with one seed drew different tokens");
    a.reseed(42);
    BOOST_TEST((draw(a) == va), "reseed did not restart the sequence");
    a.reseed(43);
    BOOST_TEST((draw(a) != va), "seeds 42 and 43 drew the same 16 tokens");
    BOOST_TEST(std::set<std::int32_t>(va.begin(), va.end()).size() > 1u, "16 draws all alike at temperature 1");
}

BOOST_AUTO_TEST_CASE(unsupported_settings_are_refused) {
    SamplerParams p;
    p.repetition_penalty = 1.2f;
    BOOST_CHECK_THROW(DeviceSamplingParams::from(p), limarp::ArgumentError);
    SamplerParams q;
    q.typical_p = 0.9f;
    BOOST_CHECK_THROW(DeviceSamplingParams::from(q), limarp::ArgumentError);
    SamplerParams r;
    r.top_k = 10;
    r.top_p = 0.9f;
    r.order = {SamplerStage::TopP, SamplerStage::TopK, SamplerStage::Temperature};
    BOOST_CHECK_THROW(DeviceSamplingParams::from(r), limarp::ArgumentError);
    SamplerParams g;
    g.temperature = 0.f;
    g.repetition_penalty = 1.1f;
    BOOST_CHECK_THROW(DeviceSampler{g}, limarp::ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
