// Tests for limarp/train/adamw.hpp: AdamW bit for bit against torch.optim.AdamW (values made by
// tests/train/tools/make_adamw_ref.py with torch 2.11 on CPU), the formula written out in
// double, state save/load resuming bit for bit, clipping, accumulation helpers.
#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/io/safetensors.hpp"
#include "limarp/train/adamw.hpp"

using namespace limarp;
using namespace limarp::train;

namespace {

float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }
std::uint32_t to_bits(float f) { return std::bit_cast<std::uint32_t>(f); }

nlohmann::json torch_reference() {
    std::ifstream f(std::string(LIMARP_TRAIN_DATA) + "/adamw_torch.json");
    BOOST_REQUIRE_MESSAGE(f, "missing tests/train/data/adamw_torch.json");
    return nlohmann::json::parse(f);
}

struct Params {
    std::vector<std::vector<float>> p, g;
    std::vector<ParamSlot> slots() {
        std::vector<ParamSlot> s;
        for (std::size_t k = 0; k < p.size(); ++k) {
            std::string name(1, 'p');  // built with += (operator+ on a literal trips GCC 12's -Wrestrict)
            name += std::to_string(k);
            s.push_back({name, p[k].data(), g[k].data(), static_cast<std::int64_t>(p[k].size())});
        }
        return s;
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(adamw)

BOOST_AUTO_TEST_CASE(bit_exact_vs_torch) {
    const auto ref = torch_reference();
    for (const auto& c : ref["cases"]) {
        const auto& cfg = c["config"];
        AdamWOptions o;
        o.lr = cfg["lr"];
        o.beta1 = cfg["betas"][0];
        o.beta2 = cfg["betas"][1];
        o.eps = cfg["eps"];
        o.weight_decay = cfg["weight_decay"];
        AdamW opt(o);
        Params P;
        for (const auto& init : c["init"]) {
            P.p.emplace_back();
            for (const auto& b : init) P.p.back().push_back(from_bits(b.get<std::uint32_t>()));
            P.g.emplace_back(P.p.back().size());
        }
        int step = 0;
        for (const auto& s : c["steps"]) {
            ++step;
            for (std::size_t k = 0; k < P.g.size(); ++k)
                for (std::size_t i = 0; i < P.g[k].size(); ++i) P.g[k][i] = from_bits(s["grads"][k][i]);
            const auto slots = P.slots();
            opt.step(slots, s["lr"].get<double>());
            int bad_p = 0, bad_m = 0, bad_v = 0;
            for (std::size_t k = 0; k < P.p.size(); ++k)
                for (std::size_t i = 0; i < P.p[k].size(); ++i) {
                    bad_p += to_bits(P.p[k][i]) != s["params"][k][i].get<std::uint32_t>();
                    bad_m += to_bits(opt.state()[k].exp_avg[static_cast<std::int64_t>(i)]) != s["exp_avg"][k][i].get<std::uint32_t>();
                    bad_v += to_bits(opt.state()[k].exp_avg_sq[static_cast<std::int64_t>(i)]) != s["exp_avg_sq"][k][i].get<std::uint32_t>();
                }
            BOOST_TEST_INFO("beta1 " << o.beta1 << " step " << step);
            BOOST_TEST(bad_p == 0);
            BOOST_TEST(bad_m == 0);
            BOOST_TEST(bad_v == 0);
        }
        BOOST_TEST(opt.steps() == step);
    }
}

// The update written out in double (torch's formula, no f32 rounding): agrees to ~1e-6 relative.
BOOST_AUTO_TEST_CASE(matches_formula_in_double) {
    std::mt19937_64 rng(7);
    std::normal_distribution<double> nd;
    const int n = 37;
    std::vector<float> p(n), g(n);
    std::vector<double> pd(n), md(n, 0), vd(n, 0);
    for (int i = 0; i < n; ++i) pd[i] = p[i] = static_cast<float>(nd(rng));
    const double lr = 5e-3, b1 = 0.9, b2 = 0.99, eps = 1e-8, wd = 0.05;
    AdamW opt({lr, b1, b2, eps, wd});
    for (int t = 1; t <= 8; ++t) {
        for (int i = 0; i < n; ++i) g[i] = static_cast<float>(nd(rng) * t);
        std::vector<ParamSlot> s = {{"w", p.data(), g.data(), n}};
        opt.step(s, lr);
        for (int i = 0; i < n; ++i) {
            pd[i] *= 1 - lr * wd;
            md[i] = b1 * md[i] + (1 - b1) * g[i];
            vd[i] = b2 * vd[i] + (1 - b2) * double(g[i]) * g[i];
            const double mhat = md[i] / (1 - std::pow(b1, t)), denom = std::sqrt(vd[i]) / std::sqrt(1 - std::pow(b2, t)) + eps;
            pd[i] -= lr * mhat / denom;
        }
    }
    double worst = 0;
    for (int i = 0; i < n; ++i) worst = std::max(worst, std::fabs(pd[i] - p[i]) / std::max(1e-3, std::fabs(pd[i])));
    BOOST_TEST(worst < 2e-6);
}

BOOST_AUTO_TEST_CASE(no_weight_decay_and_first_step_size) {
    // Step 1 with wd 0: m_hat = g, v_hat = g^2, so p moves by -lr * g / (|g| + eps) ~ -lr * sign(g).
    std::vector<float> p = {1.0f, -2.0f, 0.5f}, g = {0.3f, -4.0f, 1e-3f};
    AdamW opt({0.01, 0.9, 0.999, 1e-8, 0.0});
    std::vector<ParamSlot> s = {{"w", p.data(), g.data(), 3}};
    opt.step(s);
    BOOST_TEST(p[0] == 0.99f, boost::test_tools::tolerance(1e-6f));
    BOOST_TEST(p[1] == -1.99f, boost::test_tools::tolerance(1e-6f));
    BOOST_TEST(p[2] == 0.49f, boost::test_tools::tolerance(1e-4f));
}

BOOST_AUTO_TEST_CASE(save_load_resumes_bit_for_bit) {
    std::mt19937_64 rng(3);
    std::normal_distribution<float> nd;
    auto make = [&](int n) {
        std::vector<float> v(n);
        for (auto& x : v) x = nd(rng);
        return v;
    };
    Params A{{make(11), make(5)}, {std::vector<float>(11), std::vector<float>(5)}};
    std::vector<std::vector<std::vector<float>>> grads;  // [step][tensor][i]
    for (int t = 0; t < 6; ++t) grads.push_back({make(11), make(5)});
    AdamW opt({2e-3, 0.9, 0.999, 1e-8, 0.01});
    auto run = [&](AdamW& o, Params& P, int from, int to) {
        for (int t = from; t < to; ++t) {
            P.g = grads[t];
            const auto s = P.slots();
            o.step(s, 1e-3 * (t + 1));
        }
    };
    run(opt, A, 0, 3);
    io::SafeTensorsWriter w;
    opt.save(w);
    const auto image = w.serialize();
    Params B = A;  // the parameters as a checkpoint would hold them
    run(opt, A, 3, 6);

    const auto f = io::SafeTensorsFile::parse(image.data(), image.size(), "adamw-state");
    AdamW resumed;
    resumed.load(f);
    BOOST_TEST(resumed.steps() == 3);
    BOOST_TEST(resumed.options().weight_decay == 0.01);
    run(resumed, B, 3, 6);
    for (std::size_t k = 0; k < A.p.size(); ++k)
        BOOST_TEST(std::memcmp(A.p[k].data(), B.p[k].data(), A.p[k].size() * 4) == 0);
    for (std::size_t k = 0; k < 2; ++k) {
        BOOST_TEST(std::memcmp(opt.state()[k].exp_avg.data(), resumed.state()[k].exp_avg.data(), A.p[k].size() * 4) == 0);
        BOOST_TEST(std::memcmp(opt.state()[k].exp_avg_sq.data(), resumed.state()[k].exp_avg_sq.data(), A.p[k].size() * 4) == 0);
    }
}

BOOST_AUTO_TEST_CASE(mismatched_tensors_are_refused) {
    std::vector<float> p(4), g(4), q(3), h(3);
    AdamW opt;
    std::vector<ParamSlot> s = {{"a", p.data(), g.data(), 4}};
    opt.step(s);
    std::vector<ParamSlot> other = {{"b", p.data(), g.data(), 4}};
    BOOST_CHECK_THROW(opt.step(other), ArgumentError);
    std::vector<ParamSlot> two = {{"a", p.data(), g.data(), 4}, {"c", q.data(), h.data(), 3}};
    BOOST_CHECK_THROW(opt.step(two), ArgumentError);
    BOOST_CHECK_THROW(AdamW({1e-3, 1.0, 0.999, 1e-8, 0}), ArgumentError);
    io::SafeTensorsWriter w;
    const auto img = w.serialize();
    BOOST_CHECK_THROW(opt.load(io::SafeTensorsFile::parse(img.data(), img.size(), "empty")), FormatError);
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_like_torch) {
    std::vector<float> p(2), q(1), g = {3.0f, 0.0f}, h = {4.0f};
    std::vector<ParamSlot> s = {{"a", p.data(), g.data(), 2}, {"b", q.data(), h.data(), 1}};
    BOOST_TEST(grad_norm(s) == 5.0);
    BOOST_TEST(clip_grad_norm(s, 10.0) == 5.0);  // below the limit: untouched
    BOOST_TEST(g[0] == 3.0f);
    BOOST_TEST(clip_grad_norm(s, 1.0) == 5.0);  // returns the norm before clipping
    const float coef = 1.0f / (5.0f + 1e-6f);
    BOOST_TEST(g[0] == 3.0f * coef);
    BOOST_TEST(h[0] == 4.0f * coef);
    BOOST_TEST(grad_norm(s) == 1.0, boost::test_tools::tolerance(1e-6));
    h[0] = NAN;
    const double n = clip_grad_norm(s, 1.0);
    BOOST_TEST(std::isnan(n));
    BOOST_TEST(g[0] == 3.0f * coef);  // left untouched
}

BOOST_AUTO_TEST_CASE(accumulation_helpers) {
    std::vector<float> p(3), g = {1, 2, 3};
    std::vector<ParamSlot> s = {{"a", p.data(), g.data(), 3}};
    scale_grads(s, 0.5f);
    BOOST_TEST(g[2] == 1.5f);
    zero_grads(s);
    BOOST_TEST(g[0] == 0.0f);
    BOOST_TEST(g[2] == 0.0f);
    GradientAccumulation acc(3);
    BOOST_TEST(acc.loss_scale() == 1.0f / 3.0f);
    BOOST_TEST(!acc.micro_step());
    BOOST_TEST(!acc.micro_step());
    BOOST_TEST(acc.micro_step());
    BOOST_TEST(acc.pending() == 0);
    BOOST_TEST(!acc.micro_step());
    acc.reset();
    BOOST_TEST(acc.pending() == 0);
    BOOST_CHECK_THROW(GradientAccumulation(0), ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
