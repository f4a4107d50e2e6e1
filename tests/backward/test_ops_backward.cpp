// Backward kernels and layers vs finite differences of double-precision references:
// rms_norm, rope, swiglu, sliding-window GQA attention (forward with log-sum-exp and backward),
// matmul_w / matmul_at_b, fused lm_head + cross-entropy, Lora (with seeded dropout).
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "limarp/backend/cpu/ops.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/linear.hpp"
#include "limarp/layers/lora.hpp"
#include "ops/ops_test_util.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {

// Tolerances, all as max |analytic - reference| / max |reference| over the checked elements; the
// references are central finite differences (step 1e-5) of double-precision forwards, whose own
// error is ~1e-10, so these bound the f32 kernels' rounding.
namespace tol {
constexpr double kGrad = 1e-5;       // norm, swiglu, lm_head + CE, LoRA, matmul_w / matmul_at_b (vs |terms|)
constexpr double kRope = 1e-6;       // rotation: a few roundings per element
constexpr double kAttnGrad = 1e-4;   // dq, dk, dv: exp and long f32 sums
constexpr double kAttnOut = 1e-5;    // forward output vs double, and vs the inference kernel
constexpr double kLse = 1e-6;        // log-sum-exp rows
}  // namespace tol

using Vec = std::vector<double>;
using Fn = std::function<double(const Vec&)>;

/// Central finite difference of f at x along element i (double throughout).
double fd(const Fn& f, Vec x, std::size_t i, double h = 1e-5) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    return (fp - fm) / (2 * h);
}

/// max |got - ref| / max |ref| over the indices `idx` (all when empty).
double rel_err_at(const std::vector<float>& got, const Vec& ref, const std::vector<std::size_t>& idx) {
    double num = 0, den = 0;
    for (std::size_t i : idx) {
        num = std::max(num, std::fabs(got[i] - ref[i]));
        den = std::max(den, std::fabs(ref[i]));
    }
    return den > 0 ? num / den : num;
}

/// Finite-difference gradient of f at x on indices idx; returns the relative error of `analytic` there.
double check_grad(const Fn& f, const Vec& x, const std::vector<float>& analytic, const std::vector<std::size_t>& idx) {
    Vec ref(x.size(), 0.0);
    for (std::size_t i : idx) ref[i] = fd(f, x, i);
    return rel_err_at(analytic, ref, idx);
}

std::vector<std::size_t> all_indices(std::size_t n) {
    std::vector<std::size_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = i;
    return v;
}

/// Up to `k` distinct random indices of [0, n) (all when n <= k).
std::vector<std::size_t> sample_indices(std::size_t n, std::size_t k) {
    if (n <= k) return all_indices(n);
    std::vector<std::size_t> v = all_indices(n);
    std::shuffle(v.begin(), v.end(), test::rng());
    v.resize(k);
    return v;
}

Vec to_double(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

double dot(const Vec& a, const Vec& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

// ---- attention reference (double) ------------------------------------------------------------

struct AttnRef {
    Vec out, lse;
};

AttnRef attention_ref(const Vec& q, const Vec& k, const Vec& v, std::int64_t T, const ops::AttentionShape& s,
                      double scale) {
    const std::int64_t hd = s.head_dim, nh = s.n_heads, n_rep = nh / s.n_kv_heads, kvd = s.n_kv_heads * hd;
    AttnRef r{Vec(static_cast<std::size_t>(T * nh * hd), 0.0), Vec(static_cast<std::size_t>(T * nh), 0.0)};
    Vec sc(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t h = 0; h < nh; ++h) {
            const std::int64_t g = h / n_rep, lo = s.window_keys > 0 ? std::max<std::int64_t>(0, t - s.window_keys + 1) : 0;
            double m = -1e300;
            for (std::int64_t j = lo; j <= t; ++j) {
                double a = 0;
                for (std::int64_t d = 0; d < hd; ++d) a += q[t * nh * hd + h * hd + d] * k[j * kvd + g * hd + d];
                sc[j] = a * scale;
                m = std::max(m, sc[j]);
            }
            double z = 0;
            for (std::int64_t j = lo; j <= t; ++j) z += std::exp(sc[j] - m);
            r.lse[t * nh + h] = m + std::log(z);
            for (std::int64_t j = lo; j <= t; ++j) {
                const double p = std::exp(sc[j] - m) / z;
                for (std::int64_t d = 0; d < hd; ++d) r.out[t * nh * hd + h * hd + d] += p * v[j * kvd + g * hd + d];
            }
        }
    return r;
}

// ---- a temporary PEFT adapter folder ----------------------------------------------------------

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        path = std::filesystem::temp_directory_path() / ("limarp_bwd_" + std::to_string(::getpid()) + "_" +
                                                          std::to_string(test::rng()()));
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(backward_ops)

BOOST_AUTO_TEST_CASE_TEMPLATE(rms_norm_backward_vs_finite_differences, Bk, CpuBackends) {
    const std::int64_t T = 5, d = 37;
    const double eps = 1e-5;
    auto run = [&]<class W>(W*) {
        const auto wt = test::random_weights<W>(d, 0.5f, 1.5f);
        const auto x = test::random_floats(T * d, -2.0f, 2.0f);
        const auto c = test::random_floats(T * d);
        const Vec cd = to_double(c);
        Fn f = [&](const Vec& xv) {
            double s = 0;
            for (std::int64_t t = 0; t < T; ++t) {
                double ss = 0;
                for (std::int64_t i = 0; i < d; ++i) ss += xv[t * d + i] * xv[t * d + i];
                const double inv = 1.0 / std::sqrt(ss / d + eps);
                for (std::int64_t i = 0; i < d; ++i) s += cd[t * d + i] * wt.f32[i] * xv[t * d + i] * inv;
            }
            return s;
        };
        for (ThreadPool* pool : test::test_pools()) {
            std::vector<float> dx(static_cast<std::size_t>(T * d));
            ops::rms_norm_backward(Bk{}, dx.data(), c.data(), x.data(), wt.w.data(), T, d, static_cast<float>(eps), pool);
            const double err = check_grad(f, to_double(x), dx, all_indices(dx.size()));
            BOOST_TEST_MESSAGE("rms_norm_backward rel err " << err);
            BOOST_CHECK_LE(err, tol::kGrad);
            // dx may alias dy
            std::vector<float> g = c;
            ops::rms_norm_backward(Bk{}, g.data(), g.data(), x.data(), wt.w.data(), T, d, static_cast<float>(eps), pool);
            BOOST_CHECK(g == dx);
        }
    };
    run(static_cast<float*>(nullptr));
    run(static_cast<bf16*>(nullptr));
}

BOOST_AUTO_TEST_CASE_TEMPLATE(rope_backward_is_the_inverse_rotation, Bk, CpuBackends) {
    const std::int64_t T = 6, nh = 3, hd = 16, half = hd / 2;
    const double theta = 10000.0;
    std::vector<std::int64_t> pos = {0, 1, 17, 300, 4095, 9000};
    const auto x = test::random_floats(T * nh * hd);
    const auto c = test::random_floats(T * nh * hd);
    const Vec cd = to_double(c);
    Fn f = [&](const Vec& xv) {
        double s = 0;
        for (std::int64_t t = 0; t < T; ++t) {
            std::vector<float> cs(half), sn(half);
            ops::rope_cos_sin(cs.data(), sn.data(), pos[t], hd, theta);
            for (std::int64_t h = 0; h < nh; ++h)
                for (std::int64_t i = 0; i < half; ++i) {
                    const std::size_t a = t * nh * hd + h * hd + i, b = a + half;
                    s += cd[a] * (xv[a] * cs[i] - xv[b] * sn[i]) + cd[b] * (xv[b] * cs[i] + xv[a] * sn[i]);
                }
        }
        return s;
    };
    const ops::RopeTable table(hd, theta, 9001);
    for (ThreadPool* pool : test::test_pools()) {
        std::vector<float> g = c;
        ops::rope_rotate_half_backward(Bk{}, g.data(), pos.data(), T, nh, hd, theta, pool);
        const double err = check_grad(f, to_double(x), g, all_indices(g.size()));
        BOOST_TEST_MESSAGE("rope backward rel err " << err);
        BOOST_CHECK_LE(err, tol::kRope);
        std::vector<float> g2 = c;
        ops::rope_rotate_half_backward(Bk{}, g2.data(), pos.data(), T, nh, hd, table, pool);
        BOOST_CHECK(g2 == g);
        // forward then backward restores the input (a rotation), up to rounding
        std::vector<float> y = x;
        ops::rope_rotate_half(Bk{}, y.data(), pos.data(), T, nh, hd, theta, pool);
        ops::rope_rotate_half_backward(Bk{}, y.data(), pos.data(), T, nh, hd, theta, pool);
        double e = 0;
        for (std::size_t i = 0; i < y.size(); ++i) e = std::max(e, static_cast<double>(std::fabs(y[i] - x[i])));
        BOOST_CHECK_LE(e, tol::kRope);
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(swiglu_backward_vs_finite_differences, Bk, CpuBackends) {
    const std::int64_t n = 101;
    const auto gate = test::random_floats(n, -8.0f, 8.0f), up = test::random_floats(n, -2.0f, 2.0f);
    const auto c = test::random_floats(n);
    const Vec cd = to_double(c);
    // f(gate, up) = sum c * silu(gate) * up, as one vector [gate, up]
    Fn f = [&](const Vec& gu) {
        double s = 0;
        for (std::int64_t i = 0; i < n; ++i) s += cd[i] * gu[i] / (1 + std::exp(-gu[i])) * gu[n + i];
        return s;
    };
    Vec gu(2 * n);
    for (std::int64_t i = 0; i < n; ++i) {
        gu[i] = gate[i];
        gu[n + i] = up[i];
    }
    for (ThreadPool* pool : test::test_pools()) {
        std::vector<float> dg(n), du(n);
        ops::swiglu_backward(Bk{}, dg.data(), du.data(), c.data(), gate.data(), up.data(), n, pool);
        std::vector<float> both(dg);
        both.insert(both.end(), du.begin(), du.end());
        const double err = check_grad(f, gu, both, all_indices(both.size()));
        BOOST_TEST_MESSAGE("swiglu backward rel err " << err);
        BOOST_CHECK_LE(err, tol::kGrad);
        // in place: dgate over gate, dup over up
        std::vector<float> g2 = gate, u2 = up;
        ops::swiglu_backward(Bk{}, g2.data(), u2.data(), c.data(), g2.data(), u2.data(), n, pool);
        BOOST_CHECK(g2 == dg);
        BOOST_CHECK(u2 == du);
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(matmul_w_and_matmul_at_b_vs_double, Bk, CpuBackends) {
    auto run = [&]<class W>(W*) {
        for (auto [T, k, n] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{13, 300, 270}, {1, 7, 5}, {40, 64, 600}}) {
            const auto x = test::random_floats(T * k);
            const auto w = test::random_weights<W>(k * n);
            const auto y0 = test::random_floats(T * n);
            for (ThreadPool* pool : test::test_pools())
                for (bool acc : {false, true}) {
                    std::vector<float> y = y0;
                    ops::matmul_w(Bk{}, y.data(), x.data(), w.w.data(), T, k, n, acc, pool);
                    double err = 0;
                    for (std::int64_t t = 0; t < T; ++t)
                        for (std::int64_t j = 0; j < n; ++j) {
                            double r = acc ? y0[t * n + j] : 0.0, bound = std::fabs(r);
                            for (std::int64_t i = 0; i < k; ++i) {
                                r += static_cast<double>(x[t * k + i]) * w.f32[i * n + j];
                                bound += std::fabs(static_cast<double>(x[t * k + i]) * w.f32[i * n + j]);
                            }
                            err = std::max(err, std::fabs(y[t * n + j] - r) / bound);
                        }
                    BOOST_CHECK_LE(err, tol::kGrad);
                }
        }
    };
    run(static_cast<float*>(nullptr));
    run(static_cast<bf16*>(nullptr));
    for (auto [T, m, n] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{37, 270, 8}, {300, 6, 520}, {1, 3, 2}}) {
        const auto a = test::random_floats(T * m), b = test::random_floats(T * n), c0 = test::random_floats(m * n);
        for (ThreadPool* pool : test::test_pools())
            for (bool acc : {false, true}) {
                std::vector<float> c = c0;
                ops::matmul_at_b(Bk{}, c.data(), a.data(), b.data(), T, m, n, acc, pool);
                double err = 0;
                for (std::int64_t i = 0; i < m; ++i)
                    for (std::int64_t j = 0; j < n; ++j) {
                        double r = acc ? c0[i * n + j] : 0.0, bound = std::fabs(r);
                        for (std::int64_t t = 0; t < T; ++t) {
                            r += static_cast<double>(a[t * m + i]) * b[t * n + j];
                            bound += std::fabs(static_cast<double>(a[t * m + i]) * b[t * n + j]);
                        }
                        err = std::max(err, std::fabs(c[i * n + j] - r) / bound);
                    }
                BOOST_CHECK_LE(err, tol::kGrad);
            }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(attention_forward_lse_and_backward_vs_finite_differences, Bk, CpuBackends) {
    struct Case {
        std::int64_t T, nh, nkv, hd, W;
    };
    // Tiles of 64 query rows and key blocks of 64: these cross both, with windows smaller than,
    // equal to and larger than a block, full causal, GQA groups of 1, 2 and 4, odd head_dim.
    for (const Case cs : {Case{150, 4, 1, 8, 20}, Case{70, 4, 2, 16, 0}, Case{130, 2, 2, 12, 1}, Case{90, 6, 3, 7, 64},
                          Case{200, 2, 1, 16, 100}, Case{3, 2, 1, 4, 2}}) {
        const ops::AttentionShape s{cs.nh, cs.nkv, cs.hd, cs.W};
        const std::int64_t T = cs.T, qd = cs.nh * cs.hd, kvd = cs.nkv * cs.hd;
        const float scale = 1.0f / std::sqrt(static_cast<float>(cs.hd));
        const auto q = test::random_floats(T * qd, -1.5f, 1.5f), k = test::random_floats(T * kvd, -1.5f, 1.5f);
        const auto v = test::random_floats(T * kvd);
        const auto c = test::random_floats(T * qd);
        const Vec qd_ = to_double(q), kd = to_double(k), vd = to_double(v), cd = to_double(c);
        const AttnRef ref = attention_ref(qd_, kd, vd, T, s, scale);
        for (ThreadPool* pool : test::test_pools()) {
            std::vector<float> out(T * qd), lse(T * cs.nh), out_inf(T * qd);
            ops::attention_sliding_window_lse(Bk{}, out.data(), lse.data(), q.data(), k.data(), v.data(), T, s, scale, pool);
            BOOST_CHECK_LE(rel_err_at(out, ref.out, all_indices(out.size())), tol::kAttnOut);
            BOOST_CHECK_LE(rel_err_at(lse, ref.lse, all_indices(lse.size())), tol::kLse);
            ops::attention_sliding_window(Bk{}, out_inf.data(), q.data(), k.data(), v.data(), nullptr, nullptr, 1, 0, T, s,
                                          scale, pool);
            double e = 0;
            for (std::size_t i = 0; i < out.size(); ++i) e = std::max(e, static_cast<double>(std::fabs(out[i] - out_inf[i])));
            BOOST_CHECK_LE(e, tol::kAttnOut);

            std::vector<float> dq(T * qd), dk(T * kvd), dv(T * kvd);
            ops::attention_sliding_window_backward(Bk{}, dq.data(), dk.data(), dv.data(), c.data(), q.data(), k.data(),
                                                   v.data(), out.data(), lse.data(), T, s, scale, pool);
            // f = sum c * out, as a function of each input in turn
            Fn fq = [&](const Vec& x) { return dot(cd, attention_ref(x, kd, vd, T, s, scale).out); };
            Fn fk = [&](const Vec& x) { return dot(cd, attention_ref(qd_, x, vd, T, s, scale).out); };
            Fn fv = [&](const Vec& x) { return dot(cd, attention_ref(qd_, kd, x, T, s, scale).out); };
            const double eq = check_grad(fq, qd_, dq, sample_indices(dq.size(), 60));
            const double ek = check_grad(fk, kd, dk, sample_indices(dk.size(), 60));
            const double ev = check_grad(fv, vd, dv, sample_indices(dv.size(), 60));
            BOOST_TEST_MESSAGE("attention T=" << T << " W=" << cs.W << " n_rep=" << cs.nh / cs.nkv << ": rel err dq "
                                              << eq << " dk " << ek << " dv " << ev);
            BOOST_CHECK_LE(eq, tol::kAttnGrad);
            BOOST_CHECK_LE(ek, tol::kAttnGrad);
            BOOST_CHECK_LE(ev, tol::kAttnGrad);
            // Rows near tile and block edges: check every element of the first, a middle and the last token.
            std::vector<std::size_t> edge;
            for (std::int64_t t : {std::int64_t{0}, T / 2, T - 1})
                for (std::int64_t i = 0; i < kvd; ++i) edge.push_back(static_cast<std::size_t>(t * kvd + i));
            BOOST_CHECK_LE(check_grad(fk, kd, dk, edge), tol::kAttnGrad);
        }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(lm_head_cross_entropy_vs_finite_differences, Bk, CpuBackends) {
    const std::int64_t T = 11, d = 19, V = 53;
    // Rows not counted (target < 0) are skipped (never gathered into a chunk): a few ignored rows,
    // most rows ignored (runs longer than a chunk, counted rows split across chunks), none, all.
    const std::vector<std::vector<std::int64_t>> masks = {{3, 7}, {0, 2, 3, 4, 7, 8, 9}, {}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}};
    auto run = [&]<class W>(W*) {
        const auto w = test::random_weights<W>(V * d);
        const auto h = test::random_floats(T * d, -2.0f, 2.0f);
        for (const auto& masked : masks) {
            std::vector<std::int32_t> tg(T);
            for (auto& t : tg) t = static_cast<std::int32_t>(test::rng()() % V);
            for (std::size_t i = 0; i < masked.size(); ++i) tg[masked[i]] = i % 2 ? -1 : -100;  // both ignore ids
            const std::int64_t n = T - static_cast<std::int64_t>(masked.size());
            auto loss_of = [&](const Vec& hv, const Vec& wv) {
                double s = 0;
                for (std::int64_t t = 0; t < T; ++t) {
                    if (tg[t] < 0) continue;
                    Vec z(V);
                    double m = -1e300;
                    for (std::int64_t j = 0; j < V; ++j) {
                        double a = 0;
                        for (std::int64_t i = 0; i < d; ++i) a += hv[t * d + i] * wv[j * d + i];
                        z[j] = a;
                        m = std::max(m, a);
                    }
                    double zz = 0;
                    for (double a : z) zz += std::exp(a - m);
                    s += m + std::log(zz) - z[tg[t]];
                }
                return s;
            };
            const Vec hd = to_double(h), wd = to_double(w.f32);
            Fn fh = [&](const Vec& hv) { return loss_of(hv, wd); };
            Fn fw = [&](const Vec& wv) { return loss_of(hd, wv); };
            const double ref_loss = fh(hd);
            const float gs = n > 0 ? 1.0f / static_cast<float>(n) : 1.0f;
            for (ThreadPool* pool : test::test_pools())
                for (std::int64_t chunk : {std::int64_t{1}, std::int64_t{3}, std::int64_t{256}}) {
                    std::vector<float> dh(T * d, 7.0f);
                    const auto dw0 = test::random_floats(V * d);
                    std::vector<float> dw(dw0);
                    const double loss = ops::lm_head_cross_entropy(Bk{}, dh.data(), h.data(), w.w.data(), tg.data(), T, d,
                                                                   V, gs, chunk, pool, dw.data());
                    BOOST_CHECK_LE(std::fabs(loss - ref_loss), tol::kGrad * std::fabs(ref_loss));
                    const double loss_only = ops::lm_head_cross_entropy(Bk{}, nullptr, h.data(), w.w.data(), tg.data(),
                                                                        T, d, V, 1.0f, chunk, pool);
                    BOOST_CHECK_LE(std::fabs(loss_only - loss), 1e-9 * std::fabs(loss));
                    for (const std::int64_t t : masked)  // ignored rows: dh = 0, whatever dh held
                        for (std::int64_t i = 0; i < d; ++i) BOOST_CHECK_EQUAL(dh[t * d + i], 0.0f);
                    std::vector<float> ddw(V * d);  // what was added to dw
                    for (std::size_t i = 0; i < ddw.size(); ++i) ddw[i] = dw[i] - dw0[i];
                    if (n == 0) {
                        BOOST_CHECK_EQUAL(loss, 0.0);
                        BOOST_CHECK(std::all_of(ddw.begin(), ddw.end(), [](float g) { return g == 0.0f; }));
                        continue;
                    }
                    for (auto& g : dh) g *= static_cast<float>(n);  // gradients of the sum
                    for (auto& g : ddw) g *= static_cast<float>(n);
                    const double eh = check_grad(fh, hd, dh, all_indices(dh.size()));
                    const double ew = check_grad(fw, wd, ddw, sample_indices(ddw.size(), 80));
                    BOOST_TEST_MESSAGE("lm_head_cross_entropy " << masked.size() << " rows ignored, chunk " << chunk
                                                                << ": rel err dh " << eh << " dw " << ew);
                    BOOST_CHECK_LE(eh, tol::kGrad);
                    BOOST_CHECK_LE(ew, tol::kGrad);
                }
        }
    };
    run(static_cast<float*>(nullptr));
    run(static_cast<bf16*>(nullptr));
}

BOOST_AUTO_TEST_CASE(lora_backward_with_dropout_vs_finite_differences) {
    const std::int64_t T = 9, n_in = 24, n_out = 20, r = 4;
    const double alpha = 8, scale = alpha / r;
    const std::string module = "model.layers.0.self_attn.q_proj";
    TempDir dir;
    {
        std::ofstream(dir.path / "adapter_config.json")
            << nlohmann::json{{"peft_type", "LORA"}, {"r", r}, {"lora_alpha", alpha}, {"lora_dropout", 0.3},
                              {"target_modules", {"q_proj"}}}
                   .dump();
    }
    const auto A = test::random_floats(r * n_in), Bf = test::random_floats(n_out * r);
    io::SafeTensorsWriter wr;
    wr.add("base_model.model." + module + ".lora_A.weight", DType::F32, {r, n_in}, A.data(), A.size() * 4);
    wr.add("base_model.model." + module + ".lora_B.weight", DType::F32, {n_out, r}, Bf.data(), Bf.size() * 4);
    wr.write(dir.path / "adapter_model.safetensors");
    const auto Wt = test::random_weights<bf16>(n_out * n_in);
    Tensor<bf16> wt({n_out, n_in});
    std::copy(Wt.w.begin(), Wt.w.end(), wt.data());
    using L = Lora<DenseLinear<Cpu<>>>;
    static_assert(TrainableLinear<L> && TrainableLinear<DenseLinear<Cpu<>>>);
    L lora(DenseLinear<Cpu<>>(Weight::owned(std::move(wt), module + ".weight")), module);
    const auto adapter = io::PeftAdapter::open(dir.path, "ad");
    BOOST_REQUIRE(lora.attach(adapter));

    const auto x = test::random_floats(T * n_in), c = test::random_floats(T * n_out);
    const Vec cd = to_double(c);
    for (float p : {0.0f, 0.3f}) {
        lora.set_dropout(p, 1234);
        lora.zero_grad();
        // mask as the layer draws it
        std::vector<double> keep(T * n_in);
        std::int64_t dropped = 0;
        for (std::int64_t i = 0; i < T * n_in; ++i) {
            keep[i] = lora.dropout_keeps("ad", i) ? 1.0 / (1.0 - p) : 0.0;
            dropped += keep[i] == 0.0;
        }
        if (p > 0) BOOST_CHECK(dropped > 0 && dropped < T * n_in);
        // f(x, A, B) = sum c * (x Wᵀ + scale (mask∘x) Aᵀ Bᵀ), parameters packed [x, A, B]
        Fn f = [&](const Vec& v) {
            const double* xv = v.data();
            const double* av = xv + T * n_in;
            const double* bv = av + r * n_in;
            double s = 0;
            for (std::int64_t t = 0; t < T; ++t) {
                Vec z(r, 0.0);
                for (std::int64_t j = 0; j < r; ++j)
                    for (std::int64_t i = 0; i < n_in; ++i) z[j] += keep[t * n_in + i] * xv[t * n_in + i] * av[j * n_in + i];
                for (std::int64_t o = 0; o < n_out; ++o) {
                    double y = 0;
                    for (std::int64_t i = 0; i < n_in; ++i) y += xv[t * n_in + i] * Wt.f32[o * n_in + i];
                    for (std::int64_t j = 0; j < r; ++j) y += scale * bv[o * r + j] * z[j];
                    s += cd[t * n_out + o] * y;
                }
            }
            return s;
        };
        Vec packed = to_double(x);
        packed.insert(packed.end(), A.begin(), A.end());
        packed.insert(packed.end(), Bf.begin(), Bf.end());
        // forward_train matches the reference forward
        std::vector<float> y(T * n_out), y2(T * n_out);
        lora.forward_train(y.data(), x.data(), T);
        BOOST_CHECK_LE(std::fabs(dot(cd, to_double(y)) - f(packed)), 1e-5 * std::fabs(f(packed)) + 1e-5);
        lora.forward_train(y2.data(), x.data(), T);
        BOOST_CHECK(y == y2);  // the mask is reproducible
        std::vector<float> dx(T * n_in);
        lora.backward(dx.data(), c.data(), x.data(), T);
        lora.backward(dx.data(), c.data(), x.data(), T);  // parameter grads +=, dx =
        const LoraGrads* g = lora.grad("ad");
        BOOST_REQUIRE(g);
        std::vector<float> all(dx);
        for (std::int64_t i = 0; i < g->A.size(); ++i) all.push_back(g->A[i] / 2);
        for (std::int64_t i = 0; i < g->B.size(); ++i) all.push_back(g->B[i] / 2);
        const double err = check_grad(f, packed, all, all_indices(all.size()));
        BOOST_TEST_MESSAGE("lora backward (dropout " << p << ") rel err " << err);
        BOOST_CHECK_LE(err, tol::kGrad);
        lora.zero_grad();
        BOOST_CHECK_EQUAL(g->A[0], 0.0f);
    }
    // other seeds give other masks; the dropped fraction is about p
    lora.set_dropout(0.3f, 1);
    std::int64_t diff = 0, dropped = 0;
    const std::int64_t N = 100000;
    for (std::int64_t i = 0; i < N; ++i) {
        const bool a = lora.dropout_keeps("ad", i);
        dropped += !a;
        lora.set_dropout(0.3f, 2);
        diff += a != lora.dropout_keeps("ad", i);
        lora.set_dropout(0.3f, 1);
    }
    BOOST_CHECK_CLOSE(static_cast<double>(dropped) / N, 0.3, 2.0);
    BOOST_CHECK_GT(diff, N / 5);
    BOOST_CHECK_THROW(lora.set_dropout(1.0f, 0), ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
