// Tests of limarp/backend/cuda/sampler.cuh against the CPU generate::Sampler:
// - greedy: ops::sample_greedy (and DeviceSampler at temperature 0) picks exactly the CPU's token
//   on random logits, with and without ties (quantised logits), vocabularies 32000, 1000, 7;
// - the kept set of ops::sample_top_k_top_p (its `kept` output) equals the CPU's candidate set after
//   the chain (Sampler::last_candidates) for top-k, top-p, min-p, both temperature positions, and
//   quantised logits with ties at the top-k and top-p thresholds;
// - the draw: 20000 draws against the CPU's final probabilities, chi-square test at p = 1e-6
//   (the draws are a fixed function of the seed, so the test is deterministic);
// - seeding: the same seed and step give the same token; reseed restarts the sequence;
// - the top-k prefilter: the same kept set and draws as the kernel over the whole vocabulary;
// - penalties: ops::apply_penalties rewrites the CPU's penalised logits bit for bit (every stage
//   order, several ranges), and the greedy pick / kept set after them are the CPU's;
// - DeviceSamplingParams::from refuses the stages the device lacks and orders it cannot follow.
// LIMARP_TEST_SHORT=1 (for compute-sanitizer runs, where each launch is checked and slow): the
// draw test takes 400 draws instead of 20000 and skips its chi-square bound (too few draws for it;
// the kept-set bound stays), the prefilter test 4 steps a setting instead of 40.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

// LIMARP_TEST_SHORT=1: fewer repetitions (see the top of the file).
bool short_run() {
    const char* e = std::getenv("LIMARP_TEST_SHORT");
    return e != nullptr && std::string(e) == "1";
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
            const int N = short_run() ? 400 : 20000;
            DeviceBuffer<std::int32_t> ids(static_cast<std::size_t>(N), "ids");
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
                                      << ", 1e-6 critical " << crit << (short_run() ? ", not checked" : "") << ")");
            BOOST_TEST(outside == 0.0, "draws outside the kept set");
            if (!short_run()) BOOST_TEST(chi2 < crit);
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

// The prefilter's first launch alone: each 512-logit slice's top k (larger logit first, then
// smaller id; ties at the k-th logit), written in id order, exactly as a CPU sort picks them.
BOOST_AUTO_TEST_CASE(top_k_candidates_are_each_slices_top_k) {
    namespace cd = limarp::cuda_detail;
    const std::int64_t vocab = 1500;  // slices of 512, 512, 476
    std::uint32_t seed = 1200;
    for (const int k : {1, 40, 128})
        for (const float step : {0.f, 0.5f})
            BOOST_TEST_CONTEXT("top_k " << k << (step > 0 ? ", ties" : "")) {
                const auto logits = random_logits(static_cast<std::size_t>(vocab), seed++, 2.f, step);
                DeviceBuffer<float> dl(logits.size(), "logits");
                dl.upload(logits.data(), logits.size());
                const int blocks = static_cast<int>((vocab + cd::kCandSlice - 1) / cd::kCandSlice);
                DeviceBuffer<float> val(static_cast<std::size_t>(blocks * k), "values");
                DeviceBuffer<std::int32_t> id(static_cast<std::size_t>(blocks * k), "ids");
                cd::topk_candidates_kernel<><<<blocks, cd::kCandThreads>>>(dl.data(), static_cast<int>(vocab), k,
                                                                          val.data(), id.data());
                LIMARP_CUDA_CHECK(cudaGetLastError());
                std::vector<float> hv(val.size());
                std::vector<std::int32_t> hi(id.size());
                val.download(hv.data(), hv.size());
                id.download(hi.data(), hi.size());
                std::vector<std::int32_t> want_ids;
                for (int b = 0; b < blocks; ++b) {
                    std::vector<std::int32_t> slice;
                    for (std::int64_t i = b * cd::kCandSlice; i < std::min<std::int64_t>(vocab, (b + 1) * cd::kCandSlice);
                         ++i)
                        slice.push_back(static_cast<std::int32_t>(i));
                    std::stable_sort(slice.begin(), slice.end(), [&](std::int32_t x, std::int32_t y) {
                        return logits[static_cast<std::size_t>(x)] > logits[static_cast<std::size_t>(y)];
                    });
                    slice.resize(std::min<std::size_t>(slice.size(), static_cast<std::size_t>(k)));
                    std::sort(slice.begin(), slice.end());
                    want_ids.insert(want_ids.end(), slice.begin(), slice.end());
                }
                hi.resize(want_ids.size());
                BOOST_TEST((hi == want_ids), "candidate ids differ from the CPU's per-slice top k");
                bool values_ok = true;
                for (std::size_t i = 0; i < want_ids.size(); ++i)
                    values_ok = values_ok && hv[i] == logits[static_cast<std::size_t>(want_ids[i])];
                BOOST_TEST(values_ok, "a candidate's logit is not its token's");
            }
}

// The top-k prefilter (TopKCandidates: each 512-logit slice's top k, then the one-block kernel over
// those) keeps the same set and draws the same tokens, step for step, as the kernel over the whole
// vocabulary: k from 1 to the prefilter's limit, with top-p and min-p after it, ties at the k-th
// logit (quantised logits), a last slice shorter than k, vocabularies of 32000, 1000 and 600.
BOOST_AUTO_TEST_CASE(top_k_prefilter_matches_the_whole_vocabulary) {
    using limarp::TopKCandidates;
    std::uint32_t seed = 1300;
    for (const std::int64_t vocab : {32000, 1000, 600})
        for (const int k : {1, 7, 40, TopKCandidates::kMaxK})
            for (const float step : {0.f, 0.25f})
                BOOST_TEST_CONTEXT("vocab " << vocab << ", top_k " << k << (step > 0 ? ", ties" : "")) {
                    const auto logits = random_logits(static_cast<std::size_t>(vocab), seed++, 2.f, step);
                    DeviceBuffer<float> dl(logits.size(), "logits");
                    dl.upload(logits.data(), logits.size());
                    DeviceSamplingParams p;
                    p.temperature = 0.9f;
                    p.top_k = k;
                    p.top_p = k > 7 ? 0.8f : 1.0f;
                    p.min_p = k == 40 ? 0.05f : 0.0f;
                    p.seed = 77;
                    DeviceBuffer<std::uint8_t> kept_a(logits.size(), "kept"), kept_b(logits.size(), "kept");
                    DeviceBuffer<std::uint64_t> ca(1, "counter"), cb(1, "counter");
                    LIMARP_CUDA_CHECK(cudaMemset(ca.data(), 0, 8));
                    LIMARP_CUDA_CHECK(cudaMemset(cb.data(), 0, 8));
                    DeviceBuffer<std::int32_t> ia(1, "id"), ib(1, "id");
                    TopKCandidates cand;
                    std::vector<std::int32_t> da, db;
                    const int steps = short_run() ? 4 : 40;
                    for (int i = 0; i < steps; ++i) {
                        limarp::ops::sample_top_k_top_p(Cuda<90>{}, ia.data(), dl.data(), vocab, p, ca.data(), nullptr,
                                                         kept_a.data());
                        limarp::ops::sample_top_k_top_p(Cuda<90>{}, ib.data(), dl.data(), vocab, p, cb.data(), nullptr,
                                                         kept_b.data(), &cand);
                        std::int32_t a = -1, b = -2;
                        ia.download(&a, 1);
                        ib.download(&b, 1);
                        da.push_back(a);
                        db.push_back(b);
                    }
                    BOOST_TEST((da == db), "the prefiltered draws differ");
                    std::vector<std::uint8_t> ha(logits.size()), hb(logits.size());
                    kept_a.download(ha.data(), ha.size());
                    kept_b.download(hb.data(), hb.size());
                    BOOST_TEST((ha == hb), "the prefiltered kept set differs");
                    BOOST_TEST(std::count(ha.begin(), ha.end(), std::uint8_t{1}) >= 1);
                }
}

BOOST_AUTO_TEST_CASE(unsupported_settings_are_refused) {
    SamplerParams q;
    q.typical_p = 0.9f;
    BOOST_CHECK_THROW(DeviceSamplingParams::from(q), limarp::ArgumentError);
    SamplerParams r;
    r.top_k = 10;
    r.top_p = 0.9f;
    r.order = {SamplerStage::TopP, SamplerStage::TopK, SamplerStage::Temperature};
    BOOST_CHECK_THROW(DeviceSamplingParams::from(r), limarp::ArgumentError);
    // a penalty after another active stage: refused; after an inactive one (or at temperature 0,
    // where only the penalties run): taken
    SamplerParams late;
    late.top_k = 10;
    late.repetition_penalty = 1.2f;
    late.order = {SamplerStage::TopK, SamplerStage::RepetitionPenalty};
    BOOST_CHECK_THROW(DeviceSampler{late}, limarp::ArgumentError);
    late.top_k = 0;
    BOOST_CHECK_NO_THROW(DeviceSampler{late});
    late.top_k = 10;
    late.temperature = 0.f;
    BOOST_CHECK_NO_THROW(DeviceSampler{late});
    SamplerParams t;
    t.temperature = 0.7f;
    t.frequency_penalty = 0.5f;
    t.order = {SamplerStage::Temperature, SamplerStage::FrequencyPenalty};
    BOOST_CHECK_THROW(DeviceSamplingParams::from(t), limarp::ArgumentError);
    // typical-p does not matter at temperature 0 (greedy runs only the penalties)
    SamplerParams g;
    g.temperature = 0.f;
    g.typical_p = 0.5f;
    g.repetition_penalty = 1.1f;
    BOOST_CHECK_NO_THROW(DeviceSampler{g});
}

// The penalties on the device rewrite exactly the CPU's logits (bit for bit), in every stage
// order, for ranges shorter than, equal to and longer than the history, and for all of it (-1);
// then the greedy pick and the kept set of a truncating chain equal the CPU's.
BOOST_AUTO_TEST_CASE(penalties_match_cpu_bitwise) {
    using limarp::generate::SamplerStage;
    const std::int64_t vocab = 5000;
    std::mt19937 g(77);
    std::uniform_int_distribution<int> hot(0, 60), any(0, static_cast<int>(vocab) - 1);
    std::vector<std::int32_t> history(300);
    for (auto& h : history) h = g() % 3 ? hot(g) : any(g);  // repeats, so counts above 1
    const std::vector<std::vector<SamplerStage>> orders = {
        {SamplerStage::RepetitionPenalty, SamplerStage::FrequencyPenalty, SamplerStage::PresencePenalty},
        {SamplerStage::PresencePenalty, SamplerStage::RepetitionPenalty, SamplerStage::FrequencyPenalty},
        {SamplerStage::FrequencyPenalty, SamplerStage::PresencePenalty, SamplerStage::RepetitionPenalty}};
    std::uint32_t seed = 900;
    DeviceBuffer<std::int32_t> scratch;
    for (const auto& order : orders)
        for (int range : {1, 64, 300, 1000, -1})
            BOOST_TEST_CONTEXT("range " << range << ", first stage " << limarp::generate::to_string(order[0])) {
                const auto logits = random_logits(static_cast<std::size_t>(vocab), seed++, 3.f);
                SamplerParams p;
                p.temperature = 0.f;  // the CPU chain runs the penalties only; last_candidates shows them
                p.repetition_penalty = 1.3f;
                p.frequency_penalty = 0.37f;
                p.presence_penalty = 0.21f;
                p.penalty_range = range;
                p.order = order;
                p.order.push_back(SamplerStage::Temperature);
                Sampler cpu(p);
                const std::int32_t want = cpu.sample(logits, history);
                std::vector<float> expect(static_cast<std::size_t>(vocab));
                for (const auto& c : cpu.last_candidates().items) expect[static_cast<std::size_t>(c.id)] = c.logit;

                DeviceBuffer<float> dl(logits.size(), "logits");
                dl.upload(logits.data(), logits.size());
                const auto d = DeviceSamplingParams::from(p);
                BOOST_TEST(d.penalties.size() == 3u);
                limarp::ops::apply_penalties(Cuda<90>{}, dl.data(), vocab, d, history, scratch);
                std::vector<float> got(logits.size());
                dl.download(got.data(), got.size());
                std::size_t mismatches = 0;
                for (std::size_t i = 0; i < got.size(); ++i)
                    if (std::memcmp(&got[i], &expect[i], 4) != 0) ++mismatches;
                BOOST_TEST(mismatches == 0u, mismatches << " penalised logits differ from the CPU's");

                dl.upload(logits.data(), logits.size());
                DeviceSampler ds(p);
                BOOST_TEST(ds.sample(Cuda<90>{}, dl.data(), vocab, history) == want);

                // a truncating chain after the penalties: the same kept set
                p.temperature = 0.9f;
                p.top_k = 40;
                p.top_p = 0.8f;
                p.order.insert(p.order.end() - 1, {SamplerStage::TopK, SamplerStage::TopP});
                Sampler cpu2(p);
                (void)cpu2.sample(logits, history);
                std::set<std::int32_t> kept_cpu;
                for (const auto& c : cpu2.last_candidates().items) kept_cpu.insert(c.id);
                dl.upload(logits.data(), logits.size());
                const auto d2 = DeviceSamplingParams::from(p);
                limarp::ops::apply_penalties(Cuda<90>{}, dl.data(), vocab, d2, history, scratch);
                DeviceBuffer<std::uint8_t> kept(logits.size(), "kept");
                DeviceBuffer<std::uint64_t> counter(1, "counter");
                LIMARP_CUDA_CHECK(cudaMemset(counter.data(), 0, 8));
                DeviceBuffer<std::int32_t> id(1, "id");
                limarp::ops::sample_top_k_top_p(Cuda<90>{}, id.data(), dl.data(), vocab, d2, counter.data(), nullptr,
                                                 kept.data());
                std::vector<std::uint8_t> hk(logits.size());
                kept.download(hk.data(), hk.size());
                std::set<std::int32_t> kept_gpu;
                for (std::size_t i = 0; i < hk.size(); ++i)
                    if (hk[i]) kept_gpu.insert(static_cast<std::int32_t>(i));
                BOOST_TEST((kept_gpu == kept_cpu), "kept sets differ: " << kept_gpu.size() << " vs " << kept_cpu.size());
            }
    // an id outside the vocabulary is an error, before anything runs
    DeviceBuffer<float> dl(16, "logits");
    SamplerParams p;
    p.repetition_penalty = 1.2f;
    const std::vector<std::int32_t> bad = {3, 16};
    BOOST_CHECK_THROW(limarp::ops::apply_penalties(Cuda<90>{}, dl.data(), 16, DeviceSamplingParams::from(p), bad, scratch),
                      limarp::ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
