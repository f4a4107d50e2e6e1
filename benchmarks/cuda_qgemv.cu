// bench_cuda_qgemv: ops::qgemv_int8 (decode GEMV, int8 row-wise weights, weight-only) on the
// Mistral-7B shapes, against the device-to-device copy bandwidth measured in the same process.
//
//   bench_cuda_qgemv [--iters N] [--reps R] [--rotate-mb MB] [--json FILE]
//
// For each shape the weight is uploaded C times (C copies >= --rotate-mb, default 512 MB, so the
// rotation is far larger than the 50 MB L2) and the timed loop cycles through the copies: every
// launch reads its weight from HBM. Timing: CUDA events around --iters launches (default 200),
// median of --reps repetitions (default 15), after a warm-up; once as plain stream launches (the
// launch gaps included) and once replaying the same launches from a CUDA graph. Variants: the
// public entry point (`auto`: its default configuration; `auto-bf16`: the same with bf16 x), the
// two load paths at the default rows per block with programmatic dependent launch (`async-pdl`,
// `regs-pdl`: each launch overlaps the previous one's tail), and every configuration of both
// weight load paths (`regs-rN`: registers, `async-rN`: cp.async ring) with N = 1/2/4/8 rows per
// block, f32 x.
// Every variant's result is checked against a float64 host sum first (exit status 1 when one is
// outside the f32 band).
//
// Bytes per launch = n_out * n_in (int8) + 4 n_out (scales) + n_in * sizeof(x) + 4 n_out (y).
// copy bandwidth = 2 * bytes / time of a 1 GiB cudaMemcpyAsync device-to-device (read + write).
// read bandwidth = bytes / time of a kernel that only reads 1 GiB with the GEMV's load instruction.
// "of copy" = achieved GB/s / copy GB/s; "floor" = bytes / copy bandwidth.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/device_int8_weight.cuh"
#include "limarp/backend/cuda/qgemv.cuh"
#include "cuda_timing.cuh"

using namespace limarp;
using bench::Events;
using bench::median;
using bench::time_launches;
using bench::Timing;

namespace {

struct GemvShape {
    const char* module;
    int n_out, n_in;
};
const GemvShape kShapes[] = {{"q_proj/o_proj", 4096, 4096},
                         {"k_proj/v_proj", 1024, 4096},
                         {"gate_proj/up_proj", 14336, 4096},
                         {"down_proj", 4096, 14336},
                         {"lm_head", 32000, 4096}};

// Reads n bytes with the GEMV's streaming 16-byte load; one xor per block keeps the loads alive.
__global__ void read_kernel(const std::int8_t* __restrict__ p, std::size_t n16, unsigned* __restrict__ out) {
    unsigned acc = 0;
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n16;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
        const uint4 v = cuda_detail::load_weights_streaming(p + 16 * i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;  // practically never; the compiler cannot know
}

// Random bytes in [-127, 127] from a 64-bit xorshift (fast enough for 131 MB).
void fill_random_int8(std::int8_t* q, std::size_t n, std::uint64_t seed) {
    std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (std::size_t i = 0; i < n; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        for (std::size_t j = 0; j < 8 && i + j < n; ++j) {
            auto b = static_cast<std::int8_t>((s >> (8 * j)) & 0xff);
            q[i + j] = b == -128 ? std::int8_t{-127} : b;
        }
    }
}

}  // namespace

int main(int argc, char** argv) try {
    int iters = 200, reps = 15;
    double rotate_mb = 512;
    std::string json_path;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const auto val = [&]() -> std::string {
            if (i + 1 >= argc) throw ArgumentError(a + " needs a value");
            return argv[++i];
        };
        if (a == "--iters") iters = std::stoi(val());
        else if (a == "--reps") reps = std::stoi(val());
        else if (a == "--rotate-mb") rotate_mb = std::stod(val());
        else if (a == "--json") json_path = val();
        else throw ArgumentError("unknown argument " + a + " (--iters N, --reps R, --rotate-mb MB, --json FILE)");
    }

    cudaDeviceProp prop{};
    LIMARP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const DeviceInfo info = device_info();
    std::printf("device: %s, %d SMs, L2 %.1f MB, %.1f GiB\n", prop.name, info.sm_count, info.l2_bytes / 1e6,
                prop.totalGlobalMem / 1073741824.0);
    cudaStream_t stream{};
    LIMARP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    Events ev;

    // ---- ceilings: copy and read bandwidth -----------------------------------------------------
    const std::size_t big = std::size_t{1} << 30;
    const double copy_gbs = bench::copy_bandwidth_gbs(big, reps, stream);
    double read_gbs = 0;
    {
        DeviceBuffer<std::int8_t> src(big, "read source");
        LIMARP_CUDA_CHECK(cudaMemsetAsync(src.data(), 1, big, stream));
        DeviceBuffer<unsigned> out(4096, "read sink");
        std::vector<double> v;
        const int blocks = info.sm_count * 8;
        for (int r = 0; r < reps + 3; ++r) {
            LIMARP_CUDA_CHECK(cudaEventRecord(ev.a, stream));
            read_kernel<<<blocks, 256, 0, stream>>>(src.data(), big / 16, out.data());
            LIMARP_CUDA_CHECK_LAUNCH();
            LIMARP_CUDA_CHECK(cudaEventRecord(ev.b, stream));
            LIMARP_CUDA_CHECK(cudaEventSynchronize(ev.b));
            if (r >= 3) v.push_back(ev.ms());
        }
        read_gbs = big / (median(v) * 1e-3) / 1e9;
    }
    std::printf("copy (cudaMemcpyAsync D2D 1 GiB, read+write): %.0f GB/s; read kernel (1 GiB): %.0f GB/s\n\n",
                copy_gbs, read_gbs);

    std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"sm_count\": " +
                       std::to_string(info.sm_count) + ",\n  \"l2_bytes\": " + std::to_string(info.l2_bytes) +
                       ",\n  \"copy_gbs\": " + std::to_string(copy_gbs) + ",\n  \"read_gbs\": " +
                       std::to_string(read_gbs) + ",\n  \"iters\": " + std::to_string(iters) +
                       ",\n  \"reps\": " + std::to_string(reps) + ",\n  \"results\": [\n";
    bool first_json = true, all_ok = true;
    std::printf("%-18s %-13s %-9s %6s %9s %9s %8s %8s %9s %8s %9s\n", "module", "shape", "variant", "copies",
                "floor us", "stream us", "GB/s", "of copy", "graph us", "GB/s", "of copy");

    for (const GemvShape& sh : kShapes) {
        const std::size_t nq = static_cast<std::size_t>(sh.n_out) * sh.n_in;
        std::vector<std::int8_t> q(nq);
        std::vector<float> scale(static_cast<std::size_t>(sh.n_out));
        fill_random_int8(q.data(), nq, static_cast<std::uint64_t>(sh.n_out) * 131 + sh.n_in);
        for (int o = 0; o < sh.n_out; ++o)
            scale[static_cast<std::size_t>(o)] = 0.001f + 0.01f * static_cast<float>((o * 37) % 101) / 101.f;
        const QuantizedWeight<Int8Rowwise> hw(q.data(), scale.data(), sh.n_out, sh.n_in, sh.module, nullptr);
        const int copies =
            std::max(2, static_cast<int>(std::ceil(rotate_mb * 1e6 / static_cast<double>(hw.nbytes()))));
        std::vector<DeviceInt8Weight> dw;
        dw.reserve(static_cast<std::size_t>(copies));
        for (int c = 0; c < copies; ++c) dw.emplace_back(hw);

        std::vector<float> x(static_cast<std::size_t>(sh.n_in));
        std::vector<__nv_bfloat16> xb(x.size());
        for (int k = 0; k < sh.n_in; ++k) {
            x[static_cast<std::size_t>(k)] = std::sin(0.37f * k) * 1.5f;
            xb[static_cast<std::size_t>(k)] = __float2bfloat16(x[static_cast<std::size_t>(k)]);
        }
        DeviceBuffer<float> dx(x.size(), "x"), dy(static_cast<std::size_t>(sh.n_out), "y");
        DeviceBuffer<__nv_bfloat16> dxb(xb.size(), "x bf16");
        dx.upload(x.data(), x.size());
        dxb.upload(xb.data(), xb.size());

        // float64 references for f32 x and for the bf16-rounded x
        std::vector<double> ref(static_cast<std::size_t>(sh.n_out)), refb(ref.size()), mag(ref.size());
        for (int o = 0; o < sh.n_out; ++o) {
            const std::int8_t* r = hw.row(o);
            double s = 0, sb = 0, m = 0;
            for (int k = 0; k < sh.n_in; ++k) {
                s += static_cast<double>(r[k]) * x[static_cast<std::size_t>(k)];
                sb += static_cast<double>(r[k]) * __bfloat162float(xb[static_cast<std::size_t>(k)]);
                m += std::fabs(static_cast<double>(r[k]) * x[static_cast<std::size_t>(k)]);
            }
            ref[static_cast<std::size_t>(o)] = s * scale[static_cast<std::size_t>(o)];
            refb[static_cast<std::size_t>(o)] = sb * scale[static_cast<std::size_t>(o)];
            mag[static_cast<std::size_t>(o)] = m * scale[static_cast<std::size_t>(o)] * 1.01 + 1e-30;
        }

        struct Variant {
            std::string name;
            bool entry;   // true: ops::qgemv_int8 (its own configuration), false: `config`
            bool pdl;     // programmatic dependent launch (config.programmatic; for the report)
            bool bf16;    // x in bf16 (entry only)
            cuda_detail::QGemvConfig config;
        };
        cuda_detail::QGemvConfig pdl = cuda_detail::qgemv_default_config(sh.n_out, info.sm_count);
        const bool auto_pdl = pdl.programmatic;
        pdl.load = cuda_detail::QGemvLoad::CpAsync;
        pdl.programmatic = true;
        cuda_detail::QGemvConfig regs_pdl = pdl;
        regs_pdl.load = cuda_detail::QGemvLoad::Registers;
        std::vector<Variant> variants{{"auto", true, auto_pdl, false, {}},
                                      {"async-pdl", false, true, false, pdl},
                                      {"regs-pdl", false, true, false, regs_pdl},
                                      {"auto-bf16", true, false, true, {}}};
        using cuda_detail::QGemvLoad;
        for (auto load : {QGemvLoad::Registers, QGemvLoad::CpAsync})
            for (int rows : {1, 2, 4, 8})
                variants.push_back({std::string(load == QGemvLoad::Registers ? "regs-r" : "async-r") +
                                        std::to_string(rows),
                                    false, false, false, cuda_detail::QGemvConfig{rows, load, false}});
        for (int stages : {2, 3, 4})
            for (bool prog : {false, true})
                variants.push_back({"bulk-p" + std::to_string(stages) + (prog ? "-pdl" : ""), false, prog, false,
                                    cuda_detail::QGemvConfig{4, QGemvLoad::Bulk, prog, stages}});
        for (const Variant& var : variants) {
            const auto launch = [&](int c) {
                const DeviceInt8Weight& wc = dw[static_cast<std::size_t>(c)];
                if (var.bf16)
                    ops::qgemv_int8(Cuda<90>{}, dy.data(), dxb.data(), wc, false, stream);
                else if (var.entry)
                    ops::qgemv_int8(Cuda<90>{}, dy.data(), dx.data(), wc, false, stream);
                else
                    cuda_detail::launch_qgemv_int8(var.config, dy.data(), dx.data(), wc, false, stream);
            };
            // correctness first: poison, run on copy 1, compare with float64
            LIMARP_CUDA_CHECK(cudaMemsetAsync(dy.data(), 0xff, dy.bytes(), stream));  // NaN
            launch(1 % copies);
            LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
            std::vector<float> y(static_cast<std::size_t>(sh.n_out));
            dy.download(y.data(), y.size());
            double worst = 0;
            for (std::size_t o = 0; o < y.size(); ++o) {
                const double e = std::fabs(y[o] - (var.bf16 ? refb[o] : ref[o])) / (1e-5 * mag[o]);
                worst = std::isfinite(y[o]) ? std::max(worst, e) : 1e30;
            }
            const bool ok = worst <= 1.0;
            all_ok = all_ok && ok;

            const Timing t = time_launches(launch, copies, iters, reps, stream);
            const double bytes = static_cast<double>(hw.nbytes()) + (var.bf16 ? 2.0 : 4.0) * sh.n_in + 4.0 * sh.n_out;
            const double floor_us = bytes / (copy_gbs * 1e9) * 1e6;
            const double gbs_s = bytes / (t.stream_us * 1e-6) / 1e9, gbs_g = bytes / (t.graph_us * 1e-6) / 1e9;
            const cuda_detail::QGemvConfig used =
                var.entry ? cuda_detail::qgemv_default_config(sh.n_out, info.sm_count) : var.config;
            char shape[32];
            std::snprintf(shape, sizeof shape, "%dx%d", sh.n_out, sh.n_in);
            std::printf("%-18s %-13s %-9s %6d %9.2f %9.2f %8.0f %8.3f %9.2f %8.0f %8.3f%s\n", sh.module, shape,
                        var.name.c_str(), copies, floor_us, t.stream_us, gbs_s, gbs_s / copy_gbs, t.graph_us, gbs_g,
                        gbs_g / copy_gbs, ok ? "" : "  WRONG RESULT");
            char buf[768];
            std::snprintf(buf, sizeof buf,
                          "%s    {\"module\": \"%s\", \"n_out\": %d, \"n_in\": %d, \"variant\": \"%s\", "
                          "\"rows_per_block\": %d, \"load\": \"%s\", \"programmatic\": %s, \"x\": \"%s\", "
                          "\"copies\": %d, \"bytes\": %.0f, "
                          "\"floor_us\": %.3f, \"stream_us\": %.3f, \"graph_us\": %.3f, \"stream_gbs\": %.1f, "
                          "\"graph_gbs\": %.1f, \"stream_of_copy\": %.4f, \"graph_of_copy\": %.4f, "
                          "\"graph_of_read\": %.4f, \"max_err_over_tol\": %.4g, \"ok\": %s}",
                          first_json ? "" : ",\n", sh.module, sh.n_out, sh.n_in, var.name.c_str(), used.rows,
                          used.load == cuda_detail::QGemvLoad::Registers ? "registers"
                          : used.load == cuda_detail::QGemvLoad::Bulk    ? "bulk"
                                                                         : "cp.async",
                          var.pdl ? "true" : "false", var.bf16 ? "bf16" : "f32", copies, bytes, floor_us, t.stream_us,
                          t.graph_us, gbs_s, gbs_g, gbs_s / copy_gbs, gbs_g / copy_gbs, gbs_g / read_gbs, worst,
                          ok ? "true" : "false");
            json += buf;
            first_json = false;
        }
    }
    json += "\n  ]\n}\n";
    if (!json_path.empty()) {
        std::FILE* f = std::fopen(json_path.c_str(), "w");
        if (!f) throw IoError("cannot write " + json_path);
        std::fputs(json.c_str(), f);
        std::fclose(f);
    }
    LIMARP_CUDA_CHECK(cudaStreamDestroy(stream));
    if (!all_ok) {
        std::fprintf(stderr, "bench_cuda_qgemv: a variant gave a result outside the f32 band\n");
        return 1;
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_qgemv: %s\n", e.what());
    return 2;
}
