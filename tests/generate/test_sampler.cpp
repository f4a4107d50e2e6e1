// Tests for limarp/generate/sampler.hpp: every stage against its definition on hand-made
// logits, the chain order, greedy, seeding and the draw's distribution, parameter checks.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "limarp/generate/sampler.hpp"

using namespace limarp;
using namespace limarp::generate;

namespace {

// p = softmax: 0.6236 (id 4), 0.2294 (id 0), 0.0844 (id 1), 0.0512 (id 2), 0.0114 (id 3)
const std::vector<float> kLogits = {2.0f, 1.0f, 0.5f, -1.0f, 3.0f};

Candidates make(const std::vector<float>& logits = kLogits) {
    Candidates c;
    c.assign(logits);
    return c;
}

std::set<std::int32_t> ids(const Candidates& c) {
    std::set<std::int32_t> s;
    for (const auto& x : c.items) s.insert(x.id);
    return s;
}

float logit_of(const Candidates& c, std::int32_t id) {
    for (const auto& x : c.items)
        if (x.id == id) return x.logit;
    BOOST_FAIL("id not among the candidates");
    return 0;
}

std::vector<double> softmax_ref(const std::vector<float>& l) {
    double z = 0;
    std::vector<double> p(l.size());
    for (std::size_t i = 0; i < l.size(); ++i) z += p[i] = std::exp(static_cast<double>(l[i]));
    for (double& x : p) x /= z;
    return p;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sampler)

BOOST_AUTO_TEST_CASE(softmax_and_sorting) {
    Candidates c = make();
    c.softmax();
    const auto ref = softmax_ref(kLogits);
    const std::int32_t order[] = {4, 0, 1, 2, 3};
    for (std::size_t i = 0; i < 5; ++i) {
        BOOST_CHECK_EQUAL(c.items[i].id, order[i]);
        BOOST_CHECK_CLOSE(c.items[i].p, ref[static_cast<std::size_t>(order[i])], 1e-4);
    }
}

BOOST_AUTO_TEST_CASE(repetition_penalty_divides_positive_multiplies_negative) {
    const std::vector<std::int32_t> hist = {4, 0, 3, 3};
    Candidates c = make();
    apply_repetition_penalty(c, hist, 2.0f, 3);  // last 3: {0, 3}
    BOOST_CHECK_EQUAL(logit_of(c, 0), 1.0f);     // 2 / 2
    BOOST_CHECK_EQUAL(logit_of(c, 3), -2.0f);    // -1 * 2
    BOOST_CHECK_EQUAL(logit_of(c, 4), 3.0f);     // outside the range
    BOOST_CHECK_EQUAL(logit_of(c, 1), 1.0f);
    c = make();
    apply_repetition_penalty(c, hist, 2.0f, -1);  // whole history
    BOOST_CHECK_EQUAL(logit_of(c, 4), 1.5f);
    c = make();
    apply_repetition_penalty(c, hist, 2.0f, 0);  // N = 0 disables
    for (std::int32_t i = 0; i < 5; ++i) BOOST_CHECK_EQUAL(logit_of(c, i), kLogits[static_cast<std::size_t>(i)]);
    c = make();
    apply_repetition_penalty(c, hist, 1.0f, 64);  // penalty 1 disables
    BOOST_CHECK_EQUAL(logit_of(c, 0), 2.0f);
    c = make();
    apply_repetition_penalty(c, hist, 0.5f, 64);  // < 1 encourages repetition
    BOOST_CHECK_EQUAL(logit_of(c, 0), 4.0f);
    BOOST_CHECK_EQUAL(logit_of(c, 3), -0.5f);
}

BOOST_AUTO_TEST_CASE(frequency_and_presence_penalties) {
    const std::vector<std::int32_t> hist = {1, 3, 3, 0, 3};
    Candidates c = make();
    apply_frequency_penalty(c, hist, 0.5f, 64);  // counts: 3 x3, 0 x1, 1 x1
    BOOST_CHECK_CLOSE(logit_of(c, 3), -1.0f - 1.5f, 1e-5);
    BOOST_CHECK_CLOSE(logit_of(c, 0), 2.0f - 0.5f, 1e-5);
    BOOST_CHECK_CLOSE(logit_of(c, 1), 1.0f - 0.5f, 1e-5);
    BOOST_CHECK_EQUAL(logit_of(c, 4), 3.0f);
    c = make();
    apply_frequency_penalty(c, hist, 0.5f, 2);  // last 2: {0, 3}
    BOOST_CHECK_CLOSE(logit_of(c, 3), -1.5f, 1e-5);
    BOOST_CHECK_EQUAL(logit_of(c, 1), 1.0f);
    c = make();
    apply_presence_penalty(c, hist, 0.5f, 64);  // once per distinct token
    BOOST_CHECK_CLOSE(logit_of(c, 3), -1.5f, 1e-5);
    BOOST_CHECK_CLOSE(logit_of(c, 0), 1.5f, 1e-5);
    BOOST_CHECK_EQUAL(logit_of(c, 2), 0.5f);
    c = make();
    apply_presence_penalty(c, hist, 0.5f, 0);
    BOOST_CHECK_EQUAL(logit_of(c, 3), -1.0f);
}

BOOST_AUTO_TEST_CASE(temperature_scales_logits) {
    Candidates c = make();
    apply_temperature(c, 2.0f);
    for (std::int32_t i = 0; i < 5; ++i) BOOST_CHECK_EQUAL(logit_of(c, i), kLogits[static_cast<std::size_t>(i)] / 2);
}

BOOST_AUTO_TEST_CASE(top_k) {
    Candidates c = make();
    apply_top_k(c, 2);
    BOOST_CHECK(ids(c) == (std::set<std::int32_t>{4, 0}));
    c = make();
    apply_top_k(c, 0);
    BOOST_CHECK_EQUAL(c.items.size(), 5u);
    c = make();
    apply_top_k(c, 99);
    BOOST_CHECK_EQUAL(c.items.size(), 5u);
    c = make({1.0f, 2.0f, 2.0f, 0.0f});  // ties: smaller id first
    apply_top_k(c, 1);
    BOOST_CHECK(ids(c) == (std::set<std::int32_t>{1}));
}

BOOST_AUTO_TEST_CASE(top_p_keeps_smallest_set_reaching_mass) {
    // cumulative: 0.6236, 0.8530, 0.9374, 0.9886, 1
    const std::pair<float, std::set<std::int32_t>> cases[] = {{0.5f, {4}},
                                                              {0.62f, {4}},
                                                              {0.63f, {4, 0}},
                                                              {0.8f, {4, 0}},
                                                              {0.9f, {4, 0, 1}},
                                                              {0.99f, {4, 0, 1, 2, 3}},
                                                              {1.0f, {0, 1, 2, 3, 4}}};
    for (const auto& [p, want] : cases) {
        Candidates c = make();
        apply_top_p(c, p);
        BOOST_CHECK_MESSAGE(ids(c) == want, "top_p " << p);
    }
}

BOOST_AUTO_TEST_CASE(min_p_relative_to_max) {
    // p_max = 0.6236; 0.1 -> threshold 0.0624 keeps p >= it
    const std::pair<float, std::set<std::int32_t>> cases[] = {
        {0.1f, {4, 0, 1}}, {0.4f, {4}}, {0.3f, {4, 0}}, {0.05f, {4, 0, 1, 2}}, {1.0f, {4}}, {0.0f, {0, 1, 2, 3, 4}}};
    for (const auto& [m, want] : cases) {
        Candidates c = make();
        apply_min_p(c, m);
        BOOST_CHECK_MESSAGE(ids(c) == want, "min_p " << m);
    }
}

BOOST_AUTO_TEST_CASE(top_a_relative_to_max_squared) {
    // p_max^2 = 0.3889
    const std::pair<float, std::set<std::int32_t>> cases[] = {
        {1.0f, {4}}, {0.2f, {4, 0, 1}}, {0.5f, {4, 0}}, {0.0f, {0, 1, 2, 3, 4}}};
    for (const auto& [a, want] : cases) {
        Candidates c = make();
        apply_top_a(c, a);
        BOOST_CHECK_MESSAGE(ids(c) == want, "top_a " << a);
    }
}

BOOST_AUTO_TEST_CASE(tail_free_against_definition) {
    // sorted p: .6236 .2294 .0844 .0512 .0114; |second differences| .2492 .1118 .0066, normalised
    // cumulative .678 .982 1.0: keep the tokens before the first index whose sum exceeds z, plus one.
    const std::pair<float, std::set<std::int32_t>> cases[] = {
        {0.5f, {4}}, {0.95f, {4, 0}}, {0.99f, {4, 0, 1}}, {1.0f, {0, 1, 2, 3, 4}}};
    for (const auto& [z, want] : cases) {
        Candidates c = make();
        apply_tail_free(c, z);
        BOOST_CHECK_MESSAGE(ids(c) == want, "tfs " << z);
    }
}

BOOST_AUTO_TEST_CASE(typical_p_against_definition) {
    // Reference: H = -sum p ln p; order by |-ln p - H|; keep until the mass reaches typical_p.
    const auto p = softmax_ref(kLogits);
    double h = 0;
    for (double x : p) h -= x * std::log(x);
    std::vector<std::size_t> order = {0, 1, 2, 3, 4};
    std::sort(order.begin(), order.end(),
              [&](auto a, auto b) { return std::fabs(-std::log(p[a]) - h) < std::fabs(-std::log(p[b]) - h); });
    BOOST_CHECK_EQUAL(order[0], 0u);  // the most typical token is not the most likely one
    BOOST_CHECK_EQUAL(order[1], 4u);
    for (float mass : {0.1f, 0.2f, 0.5f, 0.86f, 0.95f, 0.999f}) {
        std::set<std::int32_t> want;
        double cum = 0;
        for (std::size_t i : order) {
            want.insert(static_cast<std::int32_t>(i));
            cum += p[i];
            if (cum >= mass) break;
        }
        Candidates c = make();
        apply_typical(c, mass);
        BOOST_CHECK_MESSAGE(ids(c) == want, "typical_p " << mass);
        BOOST_CHECK(c.sorted);
        for (std::size_t i = 1; i < c.items.size(); ++i) BOOST_CHECK_GE(c.items[i - 1].logit, c.items[i].logit);
    }
    Candidates c = make();
    apply_typical(c, 0.2f);
    BOOST_CHECK(ids(c) == (std::set<std::int32_t>{0}));  // by hand: excludes the argmax
}

BOOST_AUTO_TEST_CASE(greedy_at_temperature_zero_after_penalties) {
    SamplerParams sp;
    sp.temperature = 0.0f;
    sp.typical_p = 0.2f;  // would exclude the argmax; greedy ignores truncation
    Sampler s(sp);
    const std::vector<std::int32_t> none;
    BOOST_CHECK_EQUAL(s.sample(kLogits, none), 4);
    sp.repetition_penalty = 2.0f;  // 3 / 2 = 1.5 < 2: id 0 wins
    Sampler s2(sp);
    const std::vector<std::int32_t> hist = {4};
    BOOST_CHECK_EQUAL(s2.sample(kLogits, hist), 0);
    // no random numbers are drawn: the same answer every time
    for (int i = 0; i < 10; ++i) BOOST_CHECK_EQUAL(s2.sample(kLogits, hist), 0);
}

BOOST_AUTO_TEST_CASE(seed_reproduces_and_distribution_matches) {
    SamplerParams sp;
    sp.seed = 42;
    Sampler a(sp), b(sp);
    std::vector<std::int32_t> ra, rb;
    const std::vector<std::int32_t> none;
    for (int i = 0; i < 200; ++i) {
        ra.push_back(a.sample(kLogits, none));
        rb.push_back(b.sample(kLogits, none));
    }
    BOOST_CHECK(ra == rb);
    sp.seed = 43;
    Sampler c(sp);
    std::vector<std::int32_t> rc;
    for (int i = 0; i < 200; ++i) rc.push_back(c.sample(kLogits, none));
    BOOST_CHECK(ra != rc);
    a.reseed(42);
    std::vector<std::int32_t> ra2;
    for (int i = 0; i < 200; ++i) ra2.push_back(a.sample(kLogits, none));
    BOOST_CHECK(ra == ra2);
    // frequencies follow softmax(logits / T)
    sp.temperature = 1.5f;
    Sampler d(sp);
    std::vector<float> scaled(kLogits);
    for (float& x : scaled) x /= 1.5f;
    const auto p = softmax_ref(scaled);
    std::map<std::int32_t, int> freq;
    const int n = 40000;
    for (int i = 0; i < n; ++i) ++freq[d.sample(kLogits, none)];
    for (std::int32_t id = 0; id < 5; ++id) {
        const double f = static_cast<double>(freq[id]) / n;
        BOOST_CHECK_MESSAGE(std::fabs(f - p[static_cast<std::size_t>(id)]) < 0.01,
                            "id " << id << ": " << f << " vs " << p[static_cast<std::size_t>(id)]);
    }
}

BOOST_AUTO_TEST_CASE(truncation_then_draw_only_from_kept) {
    SamplerParams sp;
    sp.top_k = 2;
    sp.seed = 7;
    Sampler s(sp);
    const std::vector<std::int32_t> none;
    std::set<std::int32_t> seen;
    for (int i = 0; i < 500; ++i) seen.insert(s.sample(kLogits, none));
    BOOST_CHECK(seen == (std::set<std::int32_t>{4, 0}));
}

BOOST_AUTO_TEST_CASE(order_matters) {
    // min_p 0.1 before temperature 3: threshold from the sharp distribution keeps 3 tokens;
    // after temperature 3 the distribution is flat and min_p keeps all 5.
    SamplerParams sp;
    sp.temperature = 3.0f;
    sp.min_p = 0.1f;
    const std::vector<std::int32_t> none;
    sp.order = parse_sampler_order("min_p,temperature");
    Sampler first(sp);
    first.sample(kLogits, none);
    BOOST_CHECK(ids(first.last_candidates()) == (std::set<std::int32_t>{4, 0, 1}));
    sp.order = parse_sampler_order("temperature,min_p");
    Sampler second(sp);
    second.sample(kLogits, none);
    BOOST_CHECK_EQUAL(second.last_candidates().items.size(), 5u);
}

BOOST_AUTO_TEST_CASE(order_parsing_and_validation) {
    const auto kobold = parse_sampler_order("[6,0,1,3,4,2,5]");
    const std::vector<SamplerStage> want = {SamplerStage::RepetitionPenalty, SamplerStage::TopK,    SamplerStage::TopA,
                                            SamplerStage::TailFree,          SamplerStage::Typical, SamplerStage::TopP,
                                            SamplerStage::Temperature};
    BOOST_CHECK(kobold == want);
    BOOST_CHECK(parse_sampler_order("repetition_penalty top-k Top_P temp") ==
                (std::vector<SamplerStage>{SamplerStage::RepetitionPenalty, SamplerStage::TopK, SamplerStage::TopP,
                                           SamplerStage::Temperature}));
    for (SamplerStage s : default_sampler_order()) BOOST_CHECK(parse_sampler_stage(to_string(s)) == s);
    BOOST_CHECK_THROW(parse_sampler_order("top_k,top_k"), ArgumentError);
    BOOST_CHECK_THROW(parse_sampler_order(""), ArgumentError);
    try {
        parse_sampler_stage("mirostat");
        BOOST_ERROR("must throw");
    } catch (const ArgumentError& e) {
        BOOST_CHECK(std::string(e.what()).find("typical_p") != std::string::npos);
    }
    SamplerParams sp;
    sp.min_p = 0.05f;
    sp.order = kobold;  // min_p enabled but not in the order
    BOOST_CHECK_THROW(Sampler{sp}, ArgumentError);
    sp.order.push_back(SamplerStage::MinP);
    BOOST_CHECK_NO_THROW(Sampler{sp});
    SamplerParams bad;
    bad.top_p = 0.0f;
    BOOST_CHECK_THROW(Sampler{bad}, ArgumentError);
    bad = {};
    bad.temperature = -1.0f;
    BOOST_CHECK_THROW(Sampler{bad}, ArgumentError);
    bad = {};
    bad.repetition_penalty = 0.0f;
    BOOST_CHECK_THROW(Sampler{bad}, ArgumentError);
    bad = {};
    bad.min_p = 1.5f;
    BOOST_CHECK_THROW(Sampler{bad}, ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
