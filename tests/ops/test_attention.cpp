// Tests for limarp/backend/cpu/attention.hpp: attention_sliding_window against a double
// reference (windowed and unlimited, GQA ratios 1/2/4), and chunked calls through a ring-buffer
// KV cache (C = window_keys - 1 and C = window_keys, token by token and in uneven chunks) equal
// to the one-shot computation; a bf16 ring (attention_with_cache) equal, bit for bit, to an f32
// ring that holds the same rounded keys and values.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "limarp/backend/cpu/attention.hpp"
#include "limarp/core/dtype.hpp"
#include "ops/ops_test_util.hpp"
#include "ops/tolerance.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {

// Double-precision reference over a whole sequence of N tokens at positions 0..N-1.
std::vector<double> reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                              std::int64_t N, const ops::AttentionShape& s, float scale) {
    const std::int64_t hd = s.head_dim, qd = s.n_heads * hd, kvd = s.n_kv_heads * hd;
    const std::int64_t n_rep = s.n_heads / s.n_kv_heads;
    std::vector<double> out(static_cast<std::size_t>(N * qd));
    std::vector<double> sc(static_cast<std::size_t>(N));
    for (std::int64_t t = 0; t < N; ++t)
        for (std::int64_t h = 0; h < s.n_heads; ++h) {
            const std::int64_t g = h / n_rep;
            const std::int64_t lo = s.window_keys > 0 ? std::max<std::int64_t>(0, t - s.window_keys + 1) : 0;
            double m = -std::numeric_limits<double>::infinity();
            for (std::int64_t j = lo; j <= t; ++j) {
                double d = 0;
                for (std::int64_t i = 0; i < hd; ++i)
                    d += static_cast<double>(q[t * qd + h * hd + i]) * k[j * kvd + g * hd + i];
                sc[j] = d * scale;
                m = std::max(m, sc[j]);
            }
            double l = 0;
            for (std::int64_t j = lo; j <= t; ++j) l += (sc[j] = std::exp(sc[j] - m));
            for (std::int64_t i = 0; i < hd; ++i) {
                double o = 0;
                for (std::int64_t j = lo; j <= t; ++j) o += sc[j] * v[j * kvd + g * hd + i];
                out[t * qd + h * hd + i] = o / l;
            }
        }
    return out;
}

// Runs the sequence in chunks (sizes cycled from `chunks`) through a ring of C rows.
template <class Bk>
std::vector<float> run_chunked(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                               std::int64_t N, const ops::AttentionShape& s, float scale, std::int64_t C,
                               const std::vector<std::int64_t>& chunks, ThreadPool* pool) {
    const std::int64_t qd = s.n_heads * s.head_dim, kvd = s.n_kv_heads * s.head_dim;
    std::vector<float> out(static_cast<std::size_t>(N * qd), -1.0f);
    // Unwritten ring slots are NaN: reading one poisons the output.
    std::vector<float> kc(static_cast<std::size_t>(std::max<std::int64_t>(C, 1) * kvd),
                          std::numeric_limits<float>::quiet_NaN());
    std::vector<float> vc = kc;
    std::int64_t p0 = 0;
    for (std::size_t ci = 0; p0 < N; ++ci) {
        const std::int64_t T = std::min(chunks[ci % chunks.size()], N - p0);
        ops::attention_sliding_window(Bk{}, out.data() + p0 * qd, q.data() + p0 * qd, k.data() + p0 * kvd,
                                      v.data() + p0 * kvd, C > 0 ? kc.data() : nullptr,
                                      C > 0 ? vc.data() : nullptr, C, p0, T, s, scale, pool);
        if (C > 0)
            for (std::int64_t t = std::max<std::int64_t>(0, T - C); t < T; ++t) {
                const std::int64_t slot = (p0 + t) % C;
                std::copy_n(k.data() + (p0 + t) * kvd, kvd, kc.data() + slot * kvd);
                std::copy_n(v.data() + (p0 + t) * kvd, kvd, vc.data() + slot * kvd);
            }
        p0 += T;
    }
    return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cpu_attention)

BOOST_AUTO_TEST_CASE_TEMPLATE(attention_one_shot_and_chunked_match_reference, Bk, CpuBackends) {
    const std::int64_t N = 45;
    const std::vector<std::vector<std::int64_t>> patterns = {{1}, {3, 1, 7, 2, 17, 5}, {20, 25}};
    const std::int64_t head_pairs[][2] = {{2, 2}, {4, 2}, {8, 2}, {4, 1}};
    for (std::int64_t hd : {8, 12, 32, 128})
        for (const auto& hp : head_pairs)
            for (std::int64_t W : {0, 1, 5, 16}) {
                const ops::AttentionShape s{hp[0], hp[1], hd, W};
                const std::int64_t qd = s.n_heads * hd, kvd = s.n_kv_heads * hd;
                const auto q = test::random_floats(N * qd, -3.0f, 3.0f);
                const auto k = test::random_floats(N * kvd, -1.0f, 1.0f);
                const auto v = test::random_floats(N * kvd, -1.0f, 1.0f);
                const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
                const auto ref = reference(q, k, v, N, s, scale);
                for (ThreadPool* pool : test::test_pools()) {
                    std::vector<float> one(static_cast<std::size_t>(N * qd));
                    ops::attention_sliding_window(Bk{}, one.data(), q.data(), k.data(), v.data(), nullptr, nullptr, 0,
                                                  0, N, s, scale, pool);
                    double err_ref = 0;
                    for (std::size_t i = 0; i < one.size(); ++i) err_ref = std::max(err_ref, std::fabs(one[i] - ref[i]));
                    BOOST_TEST_CONTEXT("hd=" << hd << " heads=" << s.n_heads << "/" << s.n_kv_heads << " W=" << W
                                             << " threads=" << pool->size()) {
                        BOOST_TEST(err_ref <= test::tol::kAttention);  // max|v| <= 1
                        const std::vector<std::int64_t> capacities =
                            W > 0 ? std::vector<std::int64_t>{W - 1, W} : std::vector<std::int64_t>{N};
                        for (std::int64_t C : capacities)
                            for (std::size_t pi = 0; pi < patterns.size(); ++pi) {
                                const auto chunked = run_chunked<Bk>(q, k, v, N, s, scale, C, patterns[pi], pool);
                                double err = 0;
                                for (std::size_t i = 0; i < one.size(); ++i)
                                    err = std::max(err, static_cast<double>(std::fabs(chunked[i] - one[i])));
                                BOOST_TEST(err <= test::tol::kAttention, "C=" << C << " pattern " << pi << " err " << err);
                            }
                    }
                }
            }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(attention_long_window_and_wrapping_ring, Bk, CpuBackends) {
    // A window longer than a key block, a ring that wraps several times, Mistral head shape.
    const std::int64_t N = 150, W = 70;
    const ops::AttentionShape s{8, 2, 128, W};
    const std::int64_t qd = s.n_heads * s.head_dim, kvd = s.n_kv_heads * s.head_dim;
    const auto q = test::random_floats(N * qd, -3.0f, 3.0f);
    const auto k = test::random_floats(N * kvd), v = test::random_floats(N * kvd);
    const float scale = 1.0f / std::sqrt(128.0f);
    const auto ref = reference(q, k, v, N, s, scale);
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t C : {W - 1, W, W + 13}) {
            const auto out = run_chunked<Bk>(q, k, v, N, s, scale, C, {1, 40, 3, 64}, pool);
            double err = 0;
            for (std::size_t i = 0; i < out.size(); ++i) err = std::max(err, std::fabs(out[i] - ref[i]));
            BOOST_TEST(err <= test::tol::kAttention, "C=" << C << " threads=" << pool->size() << " err " << err);
        }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(bf16_ring_equals_f32_ring_of_rounded_rows, Bk, CpuBackends) {
    // attention_with_cache through a bf16 ring stores each key/value rounded to nearest-even and
    // widens it exactly when read: the same outputs, bit for bit, as an f32 ring whose rows are
    // rounded the same way after every chunk. Windowed (the ring wraps) and unlimited, heads not a
    // multiple of the SIMD width, chunks longer than a key block; unwritten slots are NaN.
    const std::int64_t N = 150;
    for (const auto& [s, C] : {std::pair{ops::AttentionShape{8, 2, 128, 70}, std::int64_t{69}},
                               std::pair{ops::AttentionShape{4, 4, 20, 0}, std::int64_t{150}},
                               std::pair{ops::AttentionShape{6, 2, 36, 9}, std::int64_t{12}}}) {
        const std::int64_t qd = s.n_heads * s.head_dim, kvd = s.n_kv_heads * s.head_dim;
        const auto q = test::random_floats(N * qd, -3.0f, 3.0f);
        const auto k = test::random_floats(N * kvd, -2.0f, 2.0f), v = test::random_floats(N * kvd, -2.0f, 2.0f);
        const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
        std::vector<float> kf(static_cast<std::size_t>(C * kvd), std::numeric_limits<float>::quiet_NaN()), vf = kf;
        std::vector<bf16> kh(static_cast<std::size_t>(C * kvd), bf16{0x7fc0}), vh = kh;
        std::vector<float> out_f(static_cast<std::size_t>(N * qd)), out_h(out_f.size());
        std::vector<std::int64_t> pos(static_cast<std::size_t>(N));
        for (std::int64_t i = 0; i < N; ++i) pos[static_cast<std::size_t>(i)] = i;
        const std::int64_t chunks[] = {1, 70, 3, 1, 1, 64, 11};
        std::int64_t p0 = 0;
        for (std::size_t ci = 0; p0 < N; ++ci) {
            const std::int64_t T = std::min(chunks[ci % std::size(chunks)], N - p0);
            ops::attention_with_cache(Bk{}, out_f.data() + p0 * qd, q.data() + p0 * qd, k.data() + p0 * kvd,
                                      v.data() + p0 * kvd, kf.data(), vf.data(), C, pos.data() + p0, T, s, scale);
            for (auto* ring : {&kf, &vf})
                for (float& x : *ring) x = bf16_to_f32(f32_to_bf16(x));
            ops::attention_with_cache(Bk{}, out_h.data() + p0 * qd, q.data() + p0 * qd, k.data() + p0 * kvd,
                                      v.data() + p0 * kvd, kh.data(), vh.data(), C, pos.data() + p0, T, s, scale);
            p0 += T;
        }
        std::int64_t differ = 0, ring_differ = 0;
        for (std::size_t i = 0; i < out_f.size(); ++i) differ += std::bit_cast<std::uint32_t>(out_f[i]) !=
                                                                   std::bit_cast<std::uint32_t>(out_h[i]);
        for (std::size_t i = 0; i < kf.size(); ++i)
            ring_differ += (std::bit_cast<std::uint32_t>(kf[i]) != std::bit_cast<std::uint32_t>(bf16_to_f32(kh[i].bits))) +
                           (std::bit_cast<std::uint32_t>(vf[i]) != std::bit_cast<std::uint32_t>(bf16_to_f32(vh[i].bits)));
        BOOST_TEST_CONTEXT("heads " << s.n_heads << "/" << s.n_kv_heads << " hd " << s.head_dim << " W " << s.window_keys
                                    << " C " << C) {
            BOOST_TEST(differ == 0);
            BOOST_TEST(ring_differ == 0);
            BOOST_TEST(std::none_of(out_h.begin(), out_h.end(), [](float x) { return std::isnan(x); }));
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
