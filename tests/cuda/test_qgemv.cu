// Tests of limarp/backend/cuda/qgemv.cuh (ops::qgemv_int8), device_int8_weight.cuh and
// device_buffer.cuh: the GPU GEMV against the CPU ops::qmatmul_wt (weight-only, T = 1) and a
// float64 sum, on random weights of odd and Mistral shapes, every configuration (both weight load
// paths x rows per block 1/2/4/8, the default, the cp.async path with programmatic launch), f32
// and bf16 x, overwrite and accumulate; a programmatic launch that reads the previous kernel's
// output; the q/k/v group and gate/up SwiGLU launches against single launches; the device
// layout; and the errors.
//
// Tolerances (METHOD.md: f32 arithmetic lands far under 1e-3): per element
// |y - y64| <= kTolF32 * sum_k |scale q x| (+ tiny), and ||y - y_cpu|| / ||y_cpu|| <= kTolF32, with
// kTolF32 = 1e-5. The bf16 x cases compare against references computed from the same bf16 values
// widened to f32 (the widening is exact), so the same band applies.
#include <boost/test/unit_test.hpp>

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/device_int8_weight.cuh"
#include "limarp/backend/cuda/qgemv.cuh"
#include "limarp/core/error.hpp"
#include "qgemv_reference.hpp"

namespace {

using limarp::DeviceBuffer;
using limarp::DeviceInt8Weight;
using limarp::Int8Rowwise;
using limarp::QuantizedWeight;

constexpr double kTolF32 = 1e-5;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A random int8 weight with its host storage.
struct HostWeight {
    std::vector<std::int8_t> q;
    std::vector<float> scale;
    QuantizedWeight<Int8Rowwise> w;
    HostWeight(std::int64_t n_out, std::int64_t n_in, std::uint32_t seed)
        : q(static_cast<std::size_t>(n_out * n_in)), scale(static_cast<std::size_t>(n_out)) {
        std::mt19937 g(seed);
        std::uniform_int_distribution<int> qd(-127, 127);
        std::uniform_real_distribution<float> sd(0.001f, 0.02f);
        for (auto& v : q) v = static_cast<std::int8_t>(qd(g));
        for (auto& s : scale) s = sd(g);
        w = QuantizedWeight<Int8Rowwise>(q.data(), scale.data(), n_out, n_in,
                                         "test.w" + std::to_string(n_out) + "x" + std::to_string(n_in), nullptr);
    }
};

std::vector<float> random_vec(std::size_t n, std::uint32_t seed, float lo, float hi) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& e : v) e = d(g);
    return v;
}

// y0 + W x in float64, and sum |terms| per row (for the per-element tolerance).
void ref_f64(const HostWeight& hw, const std::vector<float>& x, const std::vector<float>* y0, std::vector<double>& y,
             std::vector<double>& mag) {
    const std::int64_t n_out = hw.w.n_out(), n_in = hw.w.n_in();
    y.assign(static_cast<std::size_t>(n_out), 0.0);
    mag.assign(static_cast<std::size_t>(n_out), 0.0);
    for (std::int64_t o = 0; o < n_out; ++o) {
        const std::int8_t* r = hw.w.row(o);
        double s = 0, m = 0;
        for (std::int64_t k = 0; k < n_in; ++k) {
            const double t = static_cast<double>(r[k]) * x[static_cast<std::size_t>(k)];
            s += t;
            m += std::fabs(t);
        }
        const double sc = hw.scale[static_cast<std::size_t>(o)];
        y[static_cast<std::size_t>(o)] = sc * s + (y0 ? (*y0)[static_cast<std::size_t>(o)] : 0.0);
        mag[static_cast<std::size_t>(o)] = sc * m + (y0 ? std::fabs((*y0)[static_cast<std::size_t>(o)]) : 0.0);
    }
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double d = static_cast<double>(a[i]) - b[i];
        num += d * d;
        den += static_cast<double>(b[i]) * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Checks y against the CPU kernel (relative L2) and the float64 sum (per element); every element
// must have been written (finite: y starts as NaN unless accumulating).
void check_result(const std::vector<float>& y, const std::vector<float>& y_cpu, const std::vector<double>& y64,
                  const std::vector<double>& mag, const std::string& what) {
    BOOST_TEST_CONTEXT(what) {
        std::size_t bad = 0, non_finite = 0;
        double worst = 0;
        for (std::size_t o = 0; o < y.size(); ++o) {
            if (!std::isfinite(y[o])) {
                ++non_finite;
                continue;
            }
            const double err = std::fabs(static_cast<double>(y[o]) - y64[o]);
            const double tol = kTolF32 * mag[o] + 1e-30;
            worst = std::max(worst, err / tol);
            bad += err > tol;
        }
        BOOST_TEST(non_finite == 0u);
        BOOST_TEST(bad == 0u, bad << " elements outside the f32 band (worst at " << worst << " x the tolerance)");
        const double e = rel_l2(y, y_cpu);
        BOOST_TEST(e <= kTolF32, "relative L2 error vs CPU qmatmul_wt " << e);
    }
}

struct Shape {
    std::int64_t n_out, n_in;
};

// n_in: 1, under a chunk, not a multiple of 16, one step +- 1, the Mistral widths, the largest
// (kMaxIn-ish) with a tail; n_out: 1 row, fewer rows than a block, not a multiple of 8, many
// blocks of a short row (14336 x 33). Split in two cases so that the slow compute-sanitizer
// tools can run the small ones alone (--run_test=cuda_qgemv/matches_cpu_qmatmul_wt_small_shapes).
const Shape kSmallShapes[] = {{1, 1},     {1, 17},   {3, 37},   {5, 511},    {7, 513},  {8, 1024},
                              {9, 1000},  {33, 4099}, {100, 16}, {257, 14336}, {14336, 33}, {6, 60001}};
// The Mistral-7B shapes (q/o, k/v, down) and one with n_out not a multiple of 8.
const Shape kMistralShapes[] = {{1024, 4096}, {4096, 4096}, {4096, 14336}, {4099, 4096}};

template <class X>
void run_case(const HostWeight& hw, const DeviceInt8Weight& dw, std::uint32_t seed, bool accumulate) {
    const std::int64_t n_out = hw.w.n_out(), n_in = hw.w.n_in();
    auto x = random_vec(static_cast<std::size_t>(n_in), seed, -2.f, 2.f);
    std::vector<X> xd(x.size());
    for (std::size_t k = 0; k < x.size(); ++k) {
        if constexpr (std::is_same_v<X, float>) {
            xd[k] = x[k];
        } else {
            xd[k] = __float2bfloat16(x[k]);
            x[k] = __bfloat162float(xd[k]);  // the reference sees the same (rounded) inputs
        }
    }
    const auto y0 = random_vec(static_cast<std::size_t>(n_out), seed + 1, -1.f, 1.f);
    std::vector<float> y_cpu(y0);
    limarp::test::cpu_qgemv_weight_only(y_cpu.data(), x.data(), hw.w, accumulate);
    std::vector<double> y64, mag;
    ref_f64(hw, x, accumulate ? &y0 : nullptr, y64, mag);

    DeviceBuffer<X> dx(xd.size(), "x");
    dx.upload(xd.data(), xd.size());
    DeviceBuffer<float> dy(static_cast<std::size_t>(n_out), "y");
    const std::vector<float> poison(static_cast<std::size_t>(n_out), std::numeric_limits<float>::quiet_NaN());
    const std::string base = dw.name() + (std::is_same_v<X, float> ? " x f32" : " x bf16") +
                             (accumulate ? " accumulate" : " overwrite");
    // Every configuration: the public entry point (its own choice), the cp.async path at the same
    // rows per block with programmatic launch, then both load paths with each rows-per-block value.
    namespace cd = limarp::cuda_detail;
    cd::QGemvConfig pdl = cd::qgemv_default_config(n_out, limarp::device_info().sm_count);
    pdl.load = cd::QGemvLoad::CpAsync;
    pdl.programmatic = true;
    std::vector<std::string> names{"ops::qgemv_int8", "cp.async programmatic rows/block " + std::to_string(pdl.rows)};
    std::vector<cd::QGemvConfig> configs{{}, pdl};
    for (auto load : {cd::QGemvLoad::Registers, cd::QGemvLoad::CpAsync})
        for (int rows : {1, 2, 4, 8}) {
            configs.push_back({rows, load, false});
            names.push_back(std::string(load == cd::QGemvLoad::Registers ? "registers" : "cp.async") +
                            " rows/block " + std::to_string(rows));
        }
    for (int stages : {2, 3, 4})  // the sm_90 bulk path (the registers path at 4 rows before sm_90)
        for (bool programmatic : {false, true}) {
            configs.push_back({4, cd::QGemvLoad::Bulk, programmatic, stages});
            names.push_back("bulk stages " + std::to_string(stages) + (programmatic ? " programmatic" : ""));
        }
    std::vector<float> first;
    for (std::size_t v = 0; v < configs.size(); ++v) {
        dy.upload(accumulate ? y0.data() : poison.data(), static_cast<std::size_t>(n_out));
        if (v == 0)
            limarp::ops::qgemv_int8(limarp::Cuda<90>{}, dy.data(), dx.data(), dw, accumulate);
        else
            limarp::cuda_detail::launch_qgemv_int8(configs[v], dy.data(), dx.data(), dw, accumulate, nullptr);
        LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> y(static_cast<std::size_t>(n_out));
        dy.download(y.data(), y.size());
        check_result(y, y_cpu, y64, mag, base + " " + names[v]);
        if (v == 0) {
            first = y;
            // same launch again: bitwise the same (fixed summation order, no atomics)
            dy.upload(accumulate ? y0.data() : poison.data(), static_cast<std::size_t>(n_out));
            limarp::ops::qgemv_int8(limarp::Cuda<90>{}, dy.data(), dx.data(), dw, accumulate);
            dy.download(y.data(), y.size());
            BOOST_TEST((std::memcmp(y.data(), first.data(), y.size() * sizeof(float)) == 0),
                       base << ": a second identical launch gave different bits");
        }
    }
}

void check_shapes(const Shape* shapes, std::size_t n, std::uint32_t seed) {
    for (std::size_t i = 0; i < n; ++i) {
        const HostWeight hw(shapes[i].n_out, shapes[i].n_in, seed++);
        const DeviceInt8Weight dw(hw.w);
        run_case<float>(hw, dw, seed++, false);
        run_case<float>(hw, dw, seed++, true);
        run_case<__nv_bfloat16>(hw, dw, seed++, false);
        run_case<__nv_bfloat16>(hw, dw, seed++, true);
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_qgemv)

BOOST_AUTO_TEST_CASE(matches_cpu_qmatmul_wt_small_shapes) {
    check_shapes(kSmallShapes, std::size(kSmallShapes), 100);
}

BOOST_AUTO_TEST_CASE(matches_cpu_qmatmul_wt_mistral_shapes) {
    check_shapes(kMistralShapes, std::size(kMistralShapes), 500);
}

BOOST_AUTO_TEST_CASE(programmatic_launch_waits_for_the_previous_kernel) {
    // y1 = W1 x (a long kernel), then y2 = W2 y1 launched programmatically with both load paths
    // (cp.async streams weights before griddepcontrol.wait): W2's launch overlaps the first
    // kernel, but y1 must be read only after the first kernel wrote it (y1 starts as NaN each time).
    const HostWeight h1(4096, 14336, 41), h2(1027, 4096, 42);
    const DeviceInt8Weight w1(h1.w), w2(h2.w);
    const auto x = random_vec(14336, 43, -1.f, 1.f);
    DeviceBuffer<float> dx(x.size(), "x"), y1(4096, "y1"), y2(1027, "y2");
    dx.upload(x.data(), x.size());
    cudaStream_t stream{};
    LIMARP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (int rep = 0; rep < 12; ++rep) {
        LIMARP_CUDA_CHECK(cudaMemsetAsync(y1.data(), 0xff, y1.bytes(), stream));  // NaN
        LIMARP_CUDA_CHECK(cudaMemsetAsync(y2.data(), 0xff, y2.bytes(), stream));
        namespace cd = limarp::cuda_detail;
        const auto load = rep < 4 ? cd::QGemvLoad::CpAsync : (rep < 8 ? cd::QGemvLoad::Registers : cd::QGemvLoad::Bulk);
        cd::launch_qgemv_int8(cd::QGemvConfig{4, load, rep % 2 == 1}, y1.data(), dx.data(), w1, false,
                              stream);
        cd::launch_qgemv_int8(cd::QGemvConfig{2, load, true}, y2.data(), y1.data(), w2, false, stream);
        LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
        std::vector<float> h_y1(4096), h_y2(1027);
        y1.download(h_y1.data(), h_y1.size());
        y2.download(h_y2.data(), h_y2.size());
        std::vector<double> ref, mag;
        ref_f64(h2, h_y1, nullptr, ref, mag);
        std::size_t bad = 0;
        for (std::size_t o = 0; o < h_y2.size(); ++o)
            bad += !(std::fabs(h_y2[o] - ref[o]) <= kTolF32 * mag[o] + 1e-30);  // NaN counts as bad
        BOOST_TEST(bad == 0u, "rep " << rep << ": " << bad << " outputs of the second GEMV are wrong");
    }
    LIMARP_CUDA_CHECK(cudaStreamDestroy(stream));
}

BOOST_AUTO_TEST_CASE(group_and_swiglu_launches_match_single_launches) {
    // ops::qgemv_int8_group (q/k/v in one launch) and ops::qgemv_int8_swiglu (gate and up side by
    // side, silu(g) * u in the epilogue) against one ops::qgemv_int8 launch per weight: each row's
    // summation order does not depend on the rows per block, so the group must match bitwise and
    // the SwiGLU within expf's rounding. Odd shapes (n_in not a multiple of 512, part sizes that
    // leave partial blocks), without and with LoRA terms of different ranks, overwrite and
    // accumulate.
    namespace cd = limarp::cuda_detail;
    using limarp::Cuda;
    const std::int64_t n_in = 1000;
    const HostWeight h[4] = {HostWeight(37, n_in, 51), HostWeight(1027, n_in, 52), HostWeight(64, n_in, 53),
                             HostWeight(1027, n_in, 54)};
    std::vector<std::unique_ptr<DeviceInt8Weight>> dw;
    for (const auto& hw : h) dw.push_back(std::make_unique<DeviceInt8Weight>(hw.w));
    const auto x = random_vec(static_cast<std::size_t>(n_in), 55, -2.f, 2.f);
    DeviceBuffer<float> dx(x.size(), "x");
    dx.upload(x.data(), x.size());
    const int ranks[4] = {16, 8, 24, 16};
    std::vector<std::unique_ptr<DeviceBuffer<__nv_bfloat16>>> db;
    std::vector<std::unique_ptr<DeviceBuffer<float>>> dz;
    for (int i = 0; i < 4; ++i) {
        const std::int64_t n_out = h[i].w.n_out();
        const auto bf = random_vec(static_cast<std::size_t>(n_out * ranks[i]), 60 + i, -0.5f, 0.5f);
        std::vector<__nv_bfloat16> b(bf.size());
        for (std::size_t j = 0; j < bf.size(); ++j) b[j] = __float2bfloat16(bf[j]);
        const auto z = random_vec(static_cast<std::size_t>(ranks[i]), 70 + i, -1.f, 1.f);
        db.push_back(std::make_unique<DeviceBuffer<__nv_bfloat16>>(b.size(), "B"));
        dz.push_back(std::make_unique<DeviceBuffer<float>>(z.size(), "z"));
        db.back()->upload(b.data(), b.size());
        dz.back()->upload(z.data(), z.size());
    }
    const auto download = [](const DeviceBuffer<float>& d, std::size_t n) {
        std::vector<float> v(n);
        d.download(v.data(), n);
        return v;
    };
    for (const bool with_lora : {false, true}) {
        const auto lora = [&](int i) {
            return with_lora ? cd::QGemvLora{db[static_cast<std::size_t>(i)]->data(),
                                             dz[static_cast<std::size_t>(i)]->data(), ranks[i]}
                             : cd::QGemvLora{};
        };
        std::vector<std::vector<float>> single(4);
        for (int i = 0; i < 4; ++i) {
            const auto n = static_cast<std::size_t>(h[i].w.n_out());
            DeviceBuffer<float> y(n, "y");
            limarp::ops::qgemv_int8(Cuda<90>{}, y.data(), dx.data(), *dw[static_cast<std::size_t>(i)], false, nullptr,
                                    lora(i));
            single[static_cast<std::size_t>(i)] = download(y, n);
        }
        for (const bool accumulate : {false, true}) {
            const std::vector<float> nan(1027, std::numeric_limits<float>::quiet_NaN());
            std::vector<std::vector<float>> y0(3);
            std::vector<std::unique_ptr<DeviceBuffer<float>>> dy;
            cd::QGemvTarget t[3];
            for (int i = 0; i < 3; ++i) {
                const auto n = static_cast<std::size_t>(h[i].w.n_out());
                y0[static_cast<std::size_t>(i)] = accumulate ? random_vec(n, 80 + i, -1.f, 1.f) : nan;
                dy.push_back(std::make_unique<DeviceBuffer<float>>(n, "y"));
                dy.back()->upload(y0[static_cast<std::size_t>(i)].data(), n);
                t[i] = cd::QGemvTarget{dy.back()->data(), dw[static_cast<std::size_t>(i)].get(), lora(i)};
            }
            limarp::ops::qgemv_int8_group(Cuda<90>{}, dx.data(), t, 3, accumulate);
            for (int i = 0; i < 3; ++i) {
                const auto n = static_cast<std::size_t>(h[i].w.n_out());
                const auto y = download(*dy[static_cast<std::size_t>(i)], n);
                std::size_t bad = 0;
                for (std::size_t o = 0; o < n; ++o) {
                    const float want = accumulate ? y0[static_cast<std::size_t>(i)][o] + single[static_cast<std::size_t>(i)][o]
                                                  : single[static_cast<std::size_t>(i)][o];
                    bad += !(y[o] == want);  // NaN (unwritten) counts as bad
                }
                BOOST_TEST(bad == 0u, "group part " << i << (with_lora ? " with LoRA" : "")
                                                    << (accumulate ? " accumulate" : "") << ": " << bad
                                                    << " outputs differ from the single launch");
            }
        }
        // SwiGLU: gate = weight 1, up = weight 3 (same shape), every rows-per-block value >= 2
        const std::size_t n = 1027;
        for (int rows : {0, 2, 4, 8, -1}) {  // 0: the entry point's own configuration; -1: the bulk path
            DeviceBuffer<float> dh(n, "h");
            const std::vector<float> nan(n, std::numeric_limits<float>::quiet_NaN());
            dh.upload(nan.data(), n);
            if (rows == 0) {
                limarp::ops::qgemv_int8_swiglu(Cuda<90>{}, dh.data(), dx.data(), *dw[1], *dw[3], nullptr, lora(1),
                                               lora(3));
            } else {
                cd::QGemvArgs a;
                a.part[0] = cd::QGemvPart{dw[1]->data(), dw[1]->scales(), dh.data(), 1027, lora(1)};
                a.part[1] = cd::QGemvPart{dw[3]->data(), dw[3]->scales(), nullptr, 1027, lora(3)};
                a.n_parts = 2;
                a.n_in = static_cast<int>(n_in);
                a.ld = static_cast<int>(dw[1]->ld());
                a.gated = true;
                cd::launch_qgemv_int8(rows > 0 ? cd::QGemvConfig{rows, cd::QGemvLoad::Registers, false}
                                               : cd::QGemvConfig{4, cd::QGemvLoad::Bulk, true, 3},
                                      dx.data(), a, nullptr);
            }
            const auto hv = download(dh, n);
            double worst = 0;
            for (std::size_t o = 0; o < n; ++o) {
                const double g = single[1][o], u = single[3][o];
                const double want = g / (1.0 + std::exp(-g)) * u;
                const double e = std::fabs(hv[o] - want) / (std::fabs(want) + 1e-6);
                worst = std::isfinite(hv[o]) ? std::max(worst, e) : 1e30;
            }
            BOOST_TEST(worst <= 1e-5, "swiglu rows/block " << rows << (with_lora ? " with LoRA" : "")
                                                           << ": max relative error " << worst);
        }
    }
    // errors: shapes that differ, too many weights, rows per block 1 for the gated form
    DeviceBuffer<float> dh(1027, "h");
    BOOST_CHECK_THROW(limarp::ops::qgemv_int8_swiglu(Cuda<90>{}, dh.data(), dx.data(), *dw[1], *dw[2]),
                      limarp::ArgumentError);
    cd::QGemvTarget t4[4] = {{dh.data(), dw[0].get(), {}}, {dh.data(), dw[0].get(), {}}, {dh.data(), dw[0].get(), {}},
                             {dh.data(), dw[0].get(), {}}};
    BOOST_CHECK_THROW(limarp::ops::qgemv_int8_group(Cuda<90>{}, dx.data(), t4, 4), limarp::ArgumentError);
    cd::QGemvArgs a;
    a.part[0] = cd::QGemvPart{dw[1]->data(), dw[1]->scales(), dh.data(), 1027, {}};
    a.part[1] = cd::QGemvPart{dw[3]->data(), dw[3]->scales(), nullptr, 1027, {}};
    a.n_parts = 2;
    a.n_in = static_cast<int>(n_in);
    a.ld = static_cast<int>(dw[1]->ld());
    a.gated = true;
    BOOST_CHECK_THROW(cd::launch_qgemv_int8(cd::QGemvConfig{1, cd::QGemvLoad::Registers, false}, dx.data(), a, nullptr),
                      limarp::ArgumentError);
    BOOST_TEST(cudaDeviceSynchronize() == cudaSuccess);
}

BOOST_AUTO_TEST_CASE(device_layout_pads_rows_with_zeros) {
    for (const Shape s : {Shape{5, 37}, Shape{3, 64}}) {
        const HostWeight hw(s.n_out, s.n_in, 7);
        const DeviceInt8Weight dw(hw.w);
        const std::int64_t ld = (s.n_in + 15) / 16 * 16;
        BOOST_TEST(dw.ld() == ld);
        BOOST_TEST(dw.n_out() == s.n_out);
        BOOST_TEST(dw.n_in() == s.n_in);
        BOOST_TEST(dw.nbytes() == static_cast<std::size_t>(s.n_out * s.n_in + 4 * s.n_out));
        BOOST_TEST(reinterpret_cast<std::uintptr_t>(dw.data()) % 16 == 0u);
        std::vector<std::int8_t> q(static_cast<std::size_t>(s.n_out * ld));
        LIMARP_CUDA_CHECK(cudaMemcpy(q.data(), dw.data(), q.size(), cudaMemcpyDeviceToHost));
        std::vector<float> sc(static_cast<std::size_t>(s.n_out));
        LIMARP_CUDA_CHECK(cudaMemcpy(sc.data(), dw.scales(), sc.size() * sizeof(float), cudaMemcpyDeviceToHost));
        int wrong = 0;
        for (std::int64_t o = 0; o < s.n_out; ++o) {
            for (std::int64_t k = 0; k < ld; ++k)
                wrong += q[static_cast<std::size_t>(o * ld + k)] != (k < s.n_in ? hw.w.row(o)[k] : 0);
            wrong += sc[static_cast<std::size_t>(o)] != hw.scale[static_cast<std::size_t>(o)];
        }
        BOOST_TEST(wrong == 0);
    }
    DeviceInt8Weight moved(HostWeight(2, 3, 1).w);
    DeviceInt8Weight to(std::move(moved));
    BOOST_TEST(moved.empty());
    BOOST_TEST(!to.empty());
}

BOOST_AUTO_TEST_CASE(errors_name_the_call_and_the_tensor) {
    // out of device memory: CudaError naming the buffer and the bytes
    try {
        DeviceBuffer<float> huge(std::size_t{1} << 48, "layers.0.mlp.down_proj.weight (int8 values)");
        BOOST_FAIL("allocating 1 PiB did not throw");
    } catch (const limarp::CudaError& e) {
        const std::string msg = e.what();
        BOOST_TEST_MESSAGE("message: " << msg);
        BOOST_TEST(has(msg, "cudaMalloc of " + std::to_string(std::size_t{4} << 48) + " bytes"));
        BOOST_TEST(has(msg, "\"layers.0.mlp.down_proj.weight (int8 values)\""));
        BOOST_TEST(has(msg, "out of memory"));
    }
    BOOST_TEST(cudaGetLastError() == cudaSuccess);
    // a byte count that overflows size_t
    BOOST_CHECK_THROW(DeviceBuffer<float>(std::numeric_limits<std::size_t>::max() / 2, "overflow"),
                      limarp::ArgumentError);

    // a failed copy names the call and the source line
    DeviceBuffer<float> small(16, "small");
    std::vector<float> host(32, 1.f);
    try {
        LIMARP_CUDA_CHECK(cudaMemcpy(nullptr, host.data(), 64, cudaMemcpyHostToDevice));
        BOOST_FAIL("a copy to a null pointer did not throw");
    } catch (const limarp::CudaError& e) {
        const std::string msg = e.what();
        BOOST_TEST_MESSAGE("message: " << msg);
        BOOST_TEST(has(msg, "cudaMemcpy(nullptr, host.data(), 64, cudaMemcpyHostToDevice)"));
        BOOST_TEST(has(msg, "test_qgemv.cu:"));
    }
    (void)cudaGetLastError();

    // host-side misuse is an argument / shape error, caught before any launch
    BOOST_CHECK_THROW(small.upload(host.data(), 32), limarp::ShapeError);
    const HostWeight hw(4, 32, 3);
    const DeviceInt8Weight dw(hw.w);
    DeviceBuffer<float> y(4, "y");
    try {
        limarp::ops::qgemv_int8(limarp::Cuda<90>{}, y.data(), small.data() + 1, dw);  // 4-byte offset
        BOOST_FAIL("a misaligned x did not throw");
    } catch (const limarp::ArgumentError& e) {
        BOOST_TEST_MESSAGE("message: " << e.what());
        BOOST_TEST(has(e.what(), "16-byte aligned"));
        BOOST_TEST(has(e.what(), dw.name()));
    }
    BOOST_CHECK_THROW(limarp::ops::qgemv_int8(limarp::Cuda<90>{}, y.data(), small.data(), DeviceInt8Weight{}),
                      limarp::ArgumentError);
    BOOST_CHECK_THROW(limarp::cuda_detail::launch_qgemv_int8(limarp::cuda_detail::QGemvConfig{3}, y.data(),
                                                             small.data(), dw, false, nullptr),
                      limarp::ArgumentError);
    DeviceBuffer<float> x32(32, "x");  // dw's n_in: a launch that got through would stay in bounds
    for (const int stages : {1, 5, -1}) {  // the bulk path's ring: 2, 3 or 4 stages (0: the default)
        limarp::cuda_detail::QGemvConfig bulk{};
        bulk.load = limarp::cuda_detail::QGemvLoad::Bulk;
        bulk.stages = stages;
        try {
            limarp::cuda_detail::launch_qgemv_int8(bulk, y.data(), x32.data(), dw, false, nullptr);
            BOOST_FAIL("bulk stages " << stages << " did not throw");
        } catch (const limarp::ArgumentError& e) {
            BOOST_TEST(has(e.what(), "2, 3 or 4 stages"));
            BOOST_TEST(has(e.what(), "got " + std::to_string(stages)));
        }
    }
    BOOST_TEST(cudaDeviceSynchronize() == cudaSuccess);  // nothing above reached the device in a bad state
}

BOOST_AUTO_TEST_SUITE_END()
