// Tests of limarp/backend/cuda/attention.cuh: ops::attention_sliding_window_decode against the CPU
// ops::attention_sliding_window (T = 1) on fresh random rings, queries and new keys, for the
// Mistral shape (32 / 8 heads, head_dim 128, window 4096, ring 4095 = window - 1, and a ring with
// rewind slack) at positions before, at and far past the window, the golden fixtures' shapes
// (head_dim 8 / 16 / 32, old window convention, full attention), and the other supported head_dim
// and group sizes; f32 and bf16 rings; the default split count, one split, and many (more splits
// than keys). Every ring row holds random data, so reading a row outside the window shows.
// ops::kv_cache_store (and ops::attention_decode_and_store, the store inside the attention launch):
// a decode sequence through the GPU ring against the CPU KvCache-style ring,
// step by step, ending with the rings compared bit for bit; the same steps replayed from one
// captured CUDA graph (the position read from device memory). RoPE inside the attention launch
// against the RoPE kernel and then the attention, bit for bit.
// Tolerances: relative L2 <= 1e-5 (f32 work, decode_test_util.hpp) against the CPU given the same
// (bf16-rounded where the ring is bf16) inputs.
#include <boost/test/unit_test.hpp>

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "decode_reference.hpp"
#include "decode_test_util.hpp"
#include "limarp/backend/cuda/attention.cuh"
#include "limarp/backend/cuda/rope.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/core/error.hpp"

namespace {

using limarp::AttentionDecodeConfig;
using limarp::AttentionDecodeWorkspace;
using limarp::Cuda;
using limarp::DeviceBuffer;
using limarp::ops::AttentionShape;
namespace t = limarp::test;

struct Case {
    AttentionShape s;
    std::int64_t C, p;
};

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& v, const char* what) {
    DeviceBuffer<T> b(v.size(), what);
    b.upload(v.data(), v.size());
    return b;
}

// Ring values for the device (f32 or bf16) and the values the reference must see.
template <class KV>
std::vector<KV> ring_for_device(std::vector<float>& ring) {
    if constexpr (std::is_same_v<KV, float>) {
        return ring;
    } else {
        std::vector<__nv_bfloat16> dev;
        std::vector<std::uint16_t> bits;
        t::round_to_bf16(ring, dev, bits);
        return dev;
    }
}

// One decode call at c.p with `splits` (0 = default) against the CPU; returns the relative error.
template <class KV>
void check_case(const Case& c, AttentionDecodeConfig cfg, std::uint32_t seed, AttentionDecodeWorkspace& ws) {
    const AttentionShape& s = c.s;
    const std::int64_t qd = s.n_heads * s.head_dim, kvd = s.n_kv_heads * s.head_dim;
    auto q = t::random_floats(static_cast<std::size_t>(qd), seed);
    auto kn = t::random_floats(static_cast<std::size_t>(kvd), seed + 1);
    auto vn = t::random_floats(static_cast<std::size_t>(kvd), seed + 2);
    auto kr = t::random_floats(static_cast<std::size_t>(c.C * kvd), seed + 3);
    auto vr = t::random_floats(static_cast<std::size_t>(c.C * kvd), seed + 4);
    const auto kr_dev = ring_for_device<KV>(kr), vr_dev = ring_for_device<KV>(vr);  // kr, vr now as the kernel sees them
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    std::vector<float> ref(static_cast<std::size_t>(qd));
    t::cpu_attention(ref.data(), q.data(), kn.data(), vn.data(), kr.data(), vr.data(), c.C, c.p, 1, s, scale);

    auto dq = to_device(q, "q"), dkn = to_device(kn, "k_new"), dvn = to_device(vn, "v_new");
    auto dkr = to_device(kr_dev, "k ring"), dvr = to_device(vr_dev, "v ring");
    auto dpos = to_device(std::vector<std::int64_t>{c.p}, "position");
    DeviceBuffer<float> dout(static_cast<std::size_t>(qd), "out");
    std::vector<float> first;
    for (int run = 0; run < 2; ++run) {
        dout.upload(std::vector<float>(static_cast<std::size_t>(qd), t::kNaN).data(), static_cast<std::size_t>(qd));
        limarp::ops::attention_sliding_window_decode(Cuda<90>{}, dout.data(), dq.data(), dkn.data(), dvn.data(),
                                                     dkr.data(), dvr.data(), c.C, dpos.data(), s, scale, ws, nullptr, cfg);
        LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> got(static_cast<std::size_t>(qd));
        dout.download(got.data(), got.size());
        if (run == 0) {
            BOOST_TEST(t::count_non_finite(got) == 0u);
            const double e = t::rel_l2(got, ref);
            BOOST_TEST(e <= t::kTolF32, "relative L2 error vs CPU " << e);
            first = got;
        } else {
            BOOST_TEST(t::count_bit_differences(got, first) == 0u, "a second identical call gave different bits");
        }
    }
}

template <class KV>
void check_cases(const std::vector<Case>& cases, const std::vector<AttentionDecodeConfig>& configs, std::uint32_t seed) {
    AttentionDecodeWorkspace ws;
    for (const Case& c : cases)
        for (const AttentionDecodeConfig& cfg : configs) {
            const AttentionShape& s = c.s;
            if (!ws.fits(s, 512)) ws = AttentionDecodeWorkspace(s, 512);
            BOOST_TEST_CONTEXT((std::is_same_v<KV, float> ? "f32" : "bf16")
                               << " ring, heads " << s.n_heads << "/" << s.n_kv_heads << " head_dim " << s.head_dim
                               << " window " << s.window_keys << " C " << c.C << " p " << c.p << " splits "
                               << (cfg.splits ? std::to_string(cfg.splits) : std::string("default"))
                               << (cfg.fused_combine ? "" : ", combine kernel")) {
                check_case<KV>(c, cfg, seed, ws);
            }
            seed += 10;
        }
}

const AttentionShape kMistral{32, 8, 128, 4096};

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_attention_decode)

// Small shapes (the compute-sanitizer runs take these): the fixtures' shapes and the other
// supported head_dim / group sizes.
BOOST_AUTO_TEST_CASE(small_shapes_match_cpu) {
    const std::vector<Case> cases{
        {{8, 2, 8, 25}, 24, 0},    {{8, 2, 8, 25}, 24, 5},    {{8, 2, 8, 25}, 24, 30},  {{8, 2, 8, 25}, 24, 100},
        {{4, 2, 16, 16}, 15, 3},   {{4, 2, 16, 16}, 15, 15},  {{4, 2, 16, 16}, 15, 16}, {{4, 2, 16, 16}, 15, 50},
        {{4, 4, 32, 0}, 64, 0},    {{4, 4, 32, 0}, 64, 63},   {{16, 2, 64, 100}, 120, 300},
        {{2, 2, 256, 0}, 50, 49},  {{8, 1, 128, 40}, 39, 77}, {{8, 8, 16, 7}, 6, 9}};
    check_cases<float>(cases, {{0, true}, {1, true}, {3, true}, {200, true}, {3, false}, {200, false}}, 1000);
    check_cases<__nv_bfloat16>(cases, {{0, true}, {2, true}, {2, false}}, 2000);
}

BOOST_AUTO_TEST_CASE(mistral_shape_matches_cpu) {
    const std::vector<Case> cases{{kMistral, 4095, 0},    {kMistral, 4095, 1},    {kMistral, 4095, 200},
                                  {kMistral, 4095, 4094}, {kMistral, 4095, 4095}, {kMistral, 4095, 4096},
                                  {kMistral, 4095, 10000}, {kMistral, 4095 + 16, 5000}};
    check_cases<float>(cases, {{0, true}, {1, true}, {7, true}, {0, false}}, 3000);
    check_cases<__nv_bfloat16>(cases, {{0, true}, {0, false}}, 4000);
}

// A decode sequence: CPU ring (KvCache layout: position p in row p % C, stored after the attention)
// against the GPU ring filled by kv_cache_store; then the same steps from one captured graph.
// With `and_store`, ops::attention_decode_and_store (the store inside the attention launch when it
// can: one split, or the fused combine) instead of the two calls; `splits` blocks per kv head.
template <class KV>
void run_sequence(bool graph, bool fused = true, bool and_store = false, int splits = 3) {
    const AttentionShape s{8, 2, 16, 16};
    const std::int64_t C = 15, kvd = s.n_kv_heads * s.head_dim, qd = s.n_heads * s.head_dim, steps = 60;
    const float scale = 0.25f;
    std::vector<float> kr(static_cast<std::size_t>(C * kvd), 0.f), vr(kr.size(), 0.f);
    DeviceBuffer<KV> dkr(kr.size(), "k ring"), dvr(kr.size(), "v ring");
    LIMARP_CUDA_CHECK(cudaMemset(dkr.data(), 0, dkr.bytes()));
    LIMARP_CUDA_CHECK(cudaMemset(dvr.data(), 0, dvr.bytes()));
    DeviceBuffer<float> dq(static_cast<std::size_t>(qd), "q"), dkn(static_cast<std::size_t>(kvd), "k_new"),
        dvn(static_cast<std::size_t>(kvd), "v_new"), dout(static_cast<std::size_t>(qd), "out");
    DeviceBuffer<std::int64_t> dpos(1, "position");
    AttentionDecodeWorkspace ws(s, 4);
    cudaStream_t stream{};
    LIMARP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const auto step_ops = [&] {
        if (and_store) {
            limarp::ops::attention_decode_and_store(Cuda<90>{}, dout.data(), dq.data(), dkn.data(), dvn.data(),
                                                    dkr.data(), dvr.data(), C, dpos.data(), s, scale, ws, stream,
                                                    AttentionDecodeConfig{splits, fused});
            return;
        }
        limarp::ops::attention_sliding_window_decode(Cuda<90>{}, dout.data(), dq.data(), dkn.data(), dvn.data(),
                                                     dkr.data(), dvr.data(), C, dpos.data(), s, scale, ws, stream,
                                                     AttentionDecodeConfig{splits, fused});
        limarp::ops::kv_cache_store(Cuda<90>{}, dkr.data(), dvr.data(), dkn.data(), dvn.data(), C, dpos.data(), kvd,
                                    stream);
    };
    cudaGraphExec_t exec{};
    cudaGraph_t g{};
    if (graph) {
        LIMARP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        step_ops();
        LIMARP_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
        LIMARP_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    }
    double worst = 0;
    std::size_t non_finite = 0;
    for (std::int64_t p = 0; p < steps; ++p) {
        auto q = t::random_floats(static_cast<std::size_t>(qd), 7000 + static_cast<std::uint32_t>(p));
        auto kn = t::random_floats(static_cast<std::size_t>(kvd), 8000 + static_cast<std::uint32_t>(p));
        auto vn = t::random_floats(static_cast<std::size_t>(kvd), 9000 + static_cast<std::uint32_t>(p));
        std::vector<float> ref(static_cast<std::size_t>(qd));
        t::cpu_attention(ref.data(), q.data(), kn.data(), vn.data(), kr.data(), vr.data(), C, p, 1, s, scale);
        // the CPU layer's store (bf16 ring: the values the device ring will hold)
        for (std::int64_t i = 0; i < kvd; ++i) {
            float kv = kn[static_cast<std::size_t>(i)], vv = vn[static_cast<std::size_t>(i)];
            if constexpr (!std::is_same_v<KV, float>) {
                kv = __bfloat162float(__float2bfloat16_rn(kv));
                vv = __bfloat162float(__float2bfloat16_rn(vv));
            }
            kr[static_cast<std::size_t>((p % C) * kvd + i)] = kv;
            vr[static_cast<std::size_t>((p % C) * kvd + i)] = vv;
        }
        dq.upload(q.data(), q.size());
        dkn.upload(kn.data(), kn.size());
        dvn.upload(vn.data(), vn.size());
        dpos.upload(&p, 1);
        // a pageable upload may still be in flight when cudaMemcpy returns: order it before the
        // non-blocking stream's work
        LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
        if (graph)
            LIMARP_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        else
            step_ops();
        LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
        std::vector<float> got(static_cast<std::size_t>(qd));
        dout.download(got.data(), got.size());
        non_finite += t::count_non_finite(got);
        worst = std::max(worst, t::rel_l2(got, ref));
    }
    BOOST_TEST(non_finite == 0u);
    BOOST_TEST(worst <= t::kTolF32, "worst relative L2 error over the steps " << worst);
    const auto ring_f32 = [&](const DeviceBuffer<KV>& d) {  // a device ring as f32
        std::vector<KV> ring(kr.size());
        d.download(ring.data(), ring.size());
        std::vector<float> f(ring.size());
        for (std::size_t i = 0; i < ring.size(); ++i) {
            if constexpr (std::is_same_v<KV, float>)
                f[i] = ring[i];
            else
                f[i] = __bfloat162float(ring[i]);
        }
        return f;
    };
    BOOST_TEST(t::count_bit_differences(ring_f32(dkr), kr) == 0u, "the device key ring differs from the CPU ring");
    BOOST_TEST(t::count_bit_differences(ring_f32(dvr), vr) == 0u, "the device value ring differs from the CPU ring");
    if (graph) {
        LIMARP_CUDA_CHECK(cudaGraphExecDestroy(exec));
        LIMARP_CUDA_CHECK(cudaGraphDestroy(g));
    }
    LIMARP_CUDA_CHECK(cudaStreamDestroy(stream));
}

BOOST_AUTO_TEST_CASE(decode_sequence_fills_the_ring_like_the_cpu) {
    BOOST_TEST_CONTEXT("f32 ring") { run_sequence<float>(false); }
    BOOST_TEST_CONTEXT("bf16 ring") { run_sequence<__nv_bfloat16>(false); }
    BOOST_TEST_CONTEXT("f32 ring, CUDA graph") { run_sequence<float>(true); }
    BOOST_TEST_CONTEXT("f32 ring, CUDA graph, combine kernel") { run_sequence<float>(true, false); }
    // the store inside the attention launch (ring of window - 1 rows: the row it overwrites is
    // the oldest key the query still needs, so the store must wait for every block's reads)
    for (int splits : {1, 2, 3, 4})
        BOOST_TEST_CONTEXT("attention_decode_and_store, " << splits << " splits") {
            run_sequence<float>(false, true, true, splits);
            run_sequence<__nv_bfloat16>(true, true, true, splits);
        }
    BOOST_TEST_CONTEXT("attention_decode_and_store, combine kernel (separate store)") {
        run_sequence<float>(true, false, true, 3);
    }
}

// RoPE inside the attention launch (AttentionDecodeConfig::rope_theta, the store inside too) against
// ops::rope_rotate_half_qk and then the attention: the same output and the same rings, bit for bit
// (the same rotation arithmetic, rope.cuh), for every head layout the kernel has (head_dim 8..256,
// 1-8 query heads per kv head), positions in and past the window, one split and several.
BOOST_AUTO_TEST_CASE(rope_inside_the_attention_matches_rope_then_attention) {
    const std::vector<Case> cases = {{kMistral, 4095, 0},      {kMistral, 4095, 37},    {kMistral, 4095, 5000},
                                     {{8, 2, 16, 16}, 15, 40}, {{4, 4, 8, 0}, 64, 50},  {{8, 1, 32, 0}, 100, 99},
                                     {{16, 2, 64, 32}, 31, 77}, {{16, 2, 256, 8}, 7, 9}, {{6, 3, 128, 0}, 300, 123}};
    std::uint32_t seed = 9100;
    AttentionDecodeWorkspace ws;
    for (const Case& c : cases)
        for (const int splits : {1, 2, 3, 0})
            for (const double theta : {10000.0, 1e6})
                BOOST_TEST_CONTEXT("heads " << c.s.n_heads << "/" << c.s.n_kv_heads << " head_dim " << c.s.head_dim
                                            << " C " << c.C << " p " << c.p << " splits " << splits << " theta "
                                            << theta) {
                    const AttentionShape& s = c.s;
                    if (!ws.fits(s, 512)) ws = AttentionDecodeWorkspace(s, 512);
                    const std::int64_t qd = s.n_heads * s.head_dim, kvd = s.n_kv_heads * s.head_dim;
                    const auto q = t::random_floats(static_cast<std::size_t>(qd), seed++);
                    const auto kn = t::random_floats(static_cast<std::size_t>(kvd), seed++);
                    const auto vn = t::random_floats(static_cast<std::size_t>(kvd), seed++);
                    const auto kr = t::random_floats(static_cast<std::size_t>(c.C * kvd), seed++);
                    const auto vr = t::random_floats(static_cast<std::size_t>(c.C * kvd), seed++);
                    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
                    auto dpos = to_device(std::vector<std::int64_t>{c.p}, "position");
                    std::vector<float> out[2], kring[2], vring[2];
                    for (int fused = 0; fused < 2; ++fused) {
                        auto dq = to_device(q, "q"), dkn = to_device(kn, "k_new"), dvn = to_device(vn, "v_new");
                        auto dkr = to_device(kr, "k ring"), dvr = to_device(vr, "v ring");
                        DeviceBuffer<float> dout(static_cast<std::size_t>(qd), "out");
                        AttentionDecodeConfig cfg{splits, true};
                        if (fused) {
                            cfg.rope_theta = theta;
                        } else {
                            limarp::ops::rope_rotate_half_qk(Cuda<90>{}, dq.data(), dkn.data(), dpos.data(), 1,
                                                             s.n_heads, s.n_kv_heads, s.head_dim, theta);
                        }
                        limarp::ops::attention_decode_and_store(Cuda<90>{}, dout.data(), dq.data(), dkn.data(),
                                                                dvn.data(), dkr.data(), dvr.data(), c.C, dpos.data(), s,
                                                                scale, ws, nullptr, cfg);
                        LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                        out[fused].resize(static_cast<std::size_t>(qd));
                        kring[fused].resize(kr.size());
                        vring[fused].resize(vr.size());
                        dout.download(out[fused].data(), out[fused].size());
                        dkr.download(kring[fused].data(), kring[fused].size());
                        dvr.download(vring[fused].data(), vring[fused].size());
                    }
                    BOOST_TEST(t::count_non_finite(out[1]) == 0u);
                    BOOST_TEST(t::count_bit_differences(out[1], out[0]) == 0u, "outputs differ");
                    BOOST_TEST(t::count_bit_differences(kring[1], kring[0]) == 0u, "key rings differ");
                    BOOST_TEST(t::count_bit_differences(vring[1], vring[0]) == 0u, "value rings differ");
                }
    // RoPE inside needs the store inside (the ring must get the rotated key)
    const AttentionShape s{8, 2, 16, 16};
    DeviceBuffer<float> buf(4096, "buf");
    DeviceBuffer<std::int64_t> pos(1, "pos");
    AttentionDecodeConfig cfg{3, false};
    cfg.rope_theta = 10000.0;
    BOOST_CHECK_THROW(limarp::ops::attention_decode_and_store(Cuda<90>{}, buf.data(), buf.data(), buf.data(), buf.data(),
                                                              buf.data(), buf.data(), 15, pos.data(), s, 0.25f, ws,
                                                              nullptr, cfg),
                      limarp::ArgumentError);
}

BOOST_AUTO_TEST_CASE(errors) {
    AttentionDecodeWorkspace ws;
    DeviceBuffer<float> buf(4096, "buf");
    DeviceBuffer<std::int64_t> pos(1, "position");
    const auto call = [&](const AttentionShape& s, int splits) {
        limarp::ops::attention_sliding_window_decode(Cuda<90>{}, buf.data(), buf.data(), buf.data(), buf.data(),
                                                     buf.data(), buf.data(), 4, pos.data(), s, 1.f, ws, nullptr,
                                                     AttentionDecodeConfig{splits});
    };
    BOOST_CHECK_THROW(call(AttentionShape{4, 4, 48, 0}, 1), limarp::ArgumentError);  // head_dim 48
    BOOST_CHECK_THROW(call(AttentionShape{6, 2, 16, 0}, 1), limarp::ArgumentError);  // 3 heads per kv head
    BOOST_CHECK_THROW(call(AttentionShape{4, 2, 16, 0}, 2), limarp::ArgumentError);  // no workspace for 2 splits
}

BOOST_AUTO_TEST_SUITE_END()
