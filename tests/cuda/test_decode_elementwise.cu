// Tests of limarp/backend/cuda/{norm,rope,activation,embedding}.cuh: ops::rms_norm,
// ops::add_rms_norm, ops::rope_rotate_half(_qk), ops::swiglu, ops::add_inplace and
// ops::embedding_gather on the GPU against the CPU ops (decode_reference.cpp) on fresh random
// inputs: the vectorised and the scalar paths (widths not a multiple of 4), T = 1 and T > 1, f32 and
// bf16 weights/tables, in-place calls. Outputs start as NaN, so an unwritten element fails.
// Tolerances: decode_test_util.hpp (relative L2 <= 1e-5 for f32 work); the add, the gathers and
// RoPE's rotation are exact operations and are compared bit for bit (RoPE: up to the rare cos/sin
// that the device's double functions round differently, counted and bounded; the DeviceRopeTable
// form exactly).
#include <boost/test/unit_test.hpp>

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "decode_reference.hpp"
#include "decode_test_util.hpp"
#include "limarp/backend/cuda/activation.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/embedding.cuh"
#include "limarp/backend/cuda/norm.cuh"
#include "limarp/backend/cuda/rope.cuh"

namespace {

using limarp::Cuda;
using limarp::DeviceBuffer;
namespace t = limarp::test;

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& v, const char* what) {
    DeviceBuffer<T> b(v.size(), what);
    b.upload(v.data(), v.size());
    return b;
}
template <class T>
std::vector<T> to_host(const DeviceBuffer<T>& b) {
    std::vector<T> v(b.size());
    b.download(v.data(), v.size());
    return v;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_decode_elementwise)

BOOST_AUTO_TEST_CASE(rms_norm_matches_cpu) {
    std::uint32_t seed = 100;
    for (std::int64_t d : {4096, 4099, 64, 1})
        for (std::int64_t T : {1, 3})
            for (bool bf16_w : {false, true})
                for (bool in_place : {false, true}) {
                    BOOST_TEST_CONTEXT("d " << d << " T " << T << (bf16_w ? " bf16" : " f32") << " weight"
                                            << (in_place ? " in place" : "")) {
                        auto x = t::random_floats(static_cast<std::size_t>(T * d), seed++, -3.f, 3.f);
                        auto w = t::random_floats(static_cast<std::size_t>(d), seed++, 0.5f, 1.5f);
                        std::vector<__nv_bfloat16> wb;
                        std::vector<std::uint16_t> wbits;
                        if (bf16_w) t::round_to_bf16(w, wb, wbits);
                        std::vector<float> ref(x.size());
                        t::cpu_rms_norm(ref.data(), x.data(), w.data(), T, d, 1e-5f);
                        auto dx = to_device(x, "x");
                        DeviceBuffer<float> dy(x.size(), "y");
                        dy.upload(std::vector<float>(x.size(), t::kNaN).data(), x.size());
                        float* y = in_place ? dx.data() : dy.data();
                        if (bf16_w) {
                            auto dw = to_device(wb, "w bf16");
                            limarp::ops::rms_norm(Cuda<90>{}, y, dx.data(), dw.data(), T, d, 1e-5f);
                            LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                        } else {
                            auto dw = to_device(w, "w");
                            limarp::ops::rms_norm(Cuda<90>{}, y, dx.data(), dw.data(), T, d, 1e-5f);
                            LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                        }
                        const auto got = to_host(in_place ? dx : dy);
                        BOOST_TEST(t::count_non_finite(got) == 0u);
                        BOOST_TEST(t::rel_l2(got, ref) <= t::kTolF32);
                    }
                }
}

BOOST_AUTO_TEST_CASE(add_rms_norm_matches_add_then_norm) {
    std::uint32_t seed = 200;
    for (std::int64_t d : {4096, 4098, 32})
        for (std::int64_t T : {1, 2}) {
            BOOST_TEST_CONTEXT("d " << d << " T " << T) {
                const std::size_t n = static_cast<std::size_t>(T * d);
                auto x = t::random_floats(n, seed++, -3.f, 3.f), a = t::random_floats(n, seed++, -1.f, 1.f);
                auto w = t::random_floats(static_cast<std::size_t>(d), seed++, 0.5f, 1.5f);
                std::vector<__nv_bfloat16> wb;
                std::vector<std::uint16_t> wbits;
                t::round_to_bf16(w, wb, wbits);
                std::vector<float> x_ref = x, h_ref(n);
                t::cpu_add_inplace(x_ref.data(), a.data(), static_cast<std::int64_t>(n));
                t::cpu_rms_norm_bf16(h_ref.data(), x_ref.data(), wbits.data(), T, d, 1e-5f);
                auto dx = to_device(x, "x"), da = to_device(a, "a");
                auto dw = to_device(wb, "w");
                DeviceBuffer<float> dh(n, "h");
                dh.upload(std::vector<float>(n, t::kNaN).data(), n);
                limarp::ops::add_rms_norm(Cuda<90>{}, dh.data(), dx.data(), da.data(), dw.data(), T, d, 1e-5f);
                LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                const auto x_got = to_host(dx), h_got = to_host(dh);
                BOOST_TEST(t::count_bit_differences(x_got, x_ref) == 0u, "x += a must be the same f32 add");
                BOOST_TEST(t::count_non_finite(h_got) == 0u);
                BOOST_TEST(t::rel_l2(h_got, h_ref) <= t::kTolF32);
            }
        }
}

BOOST_AUTO_TEST_CASE(rope_matches_cpu) {
    struct Case {
        std::int64_t n_heads, n_kv, hd;
        std::vector<std::int64_t> pos;
        double theta;
    };
    const Case cases[] = {{32, 8, 128, {4095}, 10000.0},
                          {32, 8, 128, {123456}, 10000.0},
                          {32, 8, 128, {0, 7, 70000}, 1000000.0},
                          {8, 2, 8, {3, 24, 25}, 10000.0},
                          {4, 2, 16, {15}, 10000.0},
                          {3, 1, 6, {1, 2}, 500.0}};
    std::uint32_t seed = 300;
    for (const Case& c : cases) {
        BOOST_TEST_CONTEXT("heads " << c.n_heads << "/" << c.n_kv << " head_dim " << c.hd << " T " << c.pos.size()
                                    << " first pos " << c.pos[0]) {
            const std::int64_t T = static_cast<std::int64_t>(c.pos.size());
            auto q = t::random_floats(static_cast<std::size_t>(T * c.n_heads * c.hd), seed++);
            auto k = t::random_floats(static_cast<std::size_t>(T * c.n_kv * c.hd), seed++);
            std::vector<float> q_ref = q, k_ref = k;
            t::cpu_rope(q_ref.data(), c.pos.data(), T, c.n_heads, c.hd, c.theta);
            t::cpu_rope(k_ref.data(), c.pos.data(), T, c.n_kv, c.hd, c.theta);
            auto dq = to_device(q, "q"), dk = to_device(k, "k"), dq1 = to_device(q, "q single");
            auto dpos = to_device(c.pos, "positions");
            limarp::ops::rope_rotate_half_qk(Cuda<90>{}, dq.data(), dk.data(), dpos.data(), T, c.n_heads, c.n_kv, c.hd,
                                             c.theta);
            limarp::ops::rope_rotate_half(Cuda<90>{}, dq1.data(), dpos.data(), T, c.n_heads, c.hd, c.theta);
            LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
            const auto qg = to_host(dq), kg = to_host(dk), q1 = to_host(dq1);
            BOOST_TEST(t::rel_l2(qg, q_ref) <= 1e-6);
            BOOST_TEST(t::rel_l2(kg, k_ref) <= 1e-6);
            const std::size_t diff = t::count_bit_differences(qg, q_ref) + t::count_bit_differences(kg, k_ref);
            BOOST_TEST_MESSAGE("rope: " << diff << " of " << qg.size() + kg.size() << " elements differ in bits from the CPU");
            BOOST_TEST(diff * 100 <= qg.size() + kg.size(), "more than 1% of the elements differ in bits");
            BOOST_TEST(t::count_bit_differences(q1, qg) == 0u, "rope_rotate_half and rope_rotate_half_qk differ");
            const std::int64_t max_pos = *std::max_element(c.pos.begin(), c.pos.end());
            if (max_pos <= 70000) {  // the table form: the CPU's values bit for bit
                const limarp::DeviceRopeTable table(c.hd, c.theta, max_pos + 1);
                auto tq = to_device(q, "q table"), tk = to_device(k, "k table");
                limarp::ops::rope_rotate_half_qk(Cuda<90>{}, tq.data(), tk.data(), dpos.data(), T, c.n_heads, c.n_kv,
                                                 table);
                LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                BOOST_TEST(t::count_bit_differences(to_host(tq), q_ref) == 0u, "table form: q differs from the CPU");
                BOOST_TEST(t::count_bit_differences(to_host(tk), k_ref) == 0u, "table form: k differs from the CPU");
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(swiglu_and_add_match_cpu) {
    std::uint32_t seed = 400;
    for (std::int64_t n : {14336, 1001, 4}) {
        for (bool in_place : {false, true}) {
            BOOST_TEST_CONTEXT("n " << n << (in_place ? " in place" : "")) {
                const std::size_t N = static_cast<std::size_t>(n);
                auto g = t::random_floats(N, seed++, -8.f, 8.f), u = t::random_floats(N, seed++);
                std::vector<float> ref(N);
                t::cpu_swiglu(ref.data(), g.data(), u.data(), n);
                auto dg = to_device(g, "gate"), du = to_device(u, "up");
                DeviceBuffer<float> dh(N, "h");
                dh.upload(std::vector<float>(N, t::kNaN).data(), N);
                float* h = in_place ? dg.data() : dh.data();
                limarp::ops::swiglu(Cuda<90>{}, h, dg.data(), du.data(), n);
                LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                const auto got = to_host(in_place ? dg : dh);
                BOOST_TEST(t::count_non_finite(got) == 0u);
                BOOST_TEST(t::rel_l2(got, ref) <= t::kTolF32);

                auto y = t::random_floats(N, seed++), x = t::random_floats(N, seed++);
                std::vector<float> yr = y;
                t::cpu_add_inplace(yr.data(), x.data(), n);
                auto dy = to_device(y, "y"), dx = to_device(x, "x");
                limarp::ops::add_inplace(Cuda<90>{}, dy.data(), dx.data(), n);
                LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                BOOST_TEST(t::count_bit_differences(to_host(dy), yr) == 0u);
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(embedding_gather_matches_cpu) {
    std::uint32_t seed = 500;
    const std::int64_t vocab = 1000;
    for (std::int64_t d : {4096, 66, 4}) {
        const std::vector<std::int32_t> ids{0, 999, 17, 17, 512};
        for (std::int64_t T : {1, 5}) {
            BOOST_TEST_CONTEXT("d " << d << " T " << T) {
                auto table = t::random_floats(static_cast<std::size_t>(vocab * d), seed++);
                std::vector<float> ref(static_cast<std::size_t>(T * d)), ref_b(ref.size());
                t::cpu_embedding(ref.data(), table.data(), ids.data(), T, d);
                std::vector<float> tb = table;
                std::vector<__nv_bfloat16> tdev;
                std::vector<std::uint16_t> tbits;
                t::round_to_bf16(tb, tdev, tbits);
                t::cpu_embedding_bf16(ref_b.data(), tbits.data(), ids.data(), T, d);
                auto dt = to_device(table, "table");
                auto dids = to_device(ids, "ids");
                auto dtb = to_device(tdev, "table bf16");
                DeviceBuffer<float> dy(ref.size(), "y"), dyb(ref.size(), "y bf16");
                dy.upload(std::vector<float>(ref.size(), t::kNaN).data(), ref.size());
                dyb.upload(std::vector<float>(ref.size(), t::kNaN).data(), ref.size());
                limarp::ops::embedding_gather(Cuda<90>{}, dy.data(), dt.data(), dids.data(), T, d);
                limarp::ops::embedding_gather(Cuda<90>{}, dyb.data(), dtb.data(), dids.data(), T, d);
                LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
                BOOST_TEST(t::count_bit_differences(to_host(dy), ref) == 0u);
                BOOST_TEST(t::count_bit_differences(to_host(dyb), ref_b) == 0u);
            }
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
