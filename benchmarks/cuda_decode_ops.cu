// bench_cuda_decode_ops: the per-token decode kernels of the CUDA backend other than the GEMVs
// (RMSNorm, the residual add fused with it, RoPE on q and k, SwiGLU, the embedding gather, the KV
// ring store, decode attention over the rolling cache, greedy and top-k/top-p sampling) on the
// Mistral-7B shapes (d_model 4096, 32 / 8 heads, head_dim 128, d_ff 14336, window 4096 with a ring
// of 4095 rows, vocab 32000), against the device-to-device copy bandwidth measured in the same
// process and against an empty kernel's launch (plain, and chained with programmatic launch where
// the device has it, at three grid sizes: what one boundary of the decode step costs with no work).
//
//   bench_cuda_decode_ops [--iters N] [--reps R] [--layers L] [--json FILE]
//
// Timing as bench_cuda_qgemv (benchmarks/cuda_timing.cuh): CUDA events around --iters launches
// (default 200), median of --reps (default 15), launched one by one ("stream") and replayed from
// a CUDA graph ("graph"). The attention rotates over --layers (default 16) rings per dtype, so its
// keys and values come from HBM (a layer's f32 ring is 33.5 MB, under the 50 MB L2); the other
// kernels read activations that a real decode step has just written (L2-resident), and only the
// embedding rotates over 64 token ids. floor = bytes / copy bandwidth, bytes = each input read once
// and each output written once (the split attention's partial results not counted).
// The last table estimates one token's share of these kernels for 32 layers from the graph times
// (default configurations: RoPE from the table, attention with the fused combine).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_timing.cuh"
#include "limarp/backend/cuda/activation.cuh"
#include "limarp/backend/cuda/attention.cuh"
#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/embedding.cuh"
#include "limarp/backend/cuda/norm.cuh"
#include "limarp/backend/cuda/rope.cuh"
#include "limarp/backend/cuda/sampler.cuh"

using namespace limarp;

namespace {

constexpr std::int64_t kD = 4096, kHeads = 32, kKvHeads = 8, kHd = 128, kFf = 14336, kVocab = 32000;
constexpr std::int64_t kWindow = 4096, kRing = 4095, kQd = kHeads * kHd, kKvd = kKvHeads * kHd;
using Cu = Cuda<90>;

__device__ __forceinline__ float hash_uniform(unsigned long long i, unsigned long long seed) {
    unsigned long long x = i * 0x9E3779B97F4A7C15ull + seed;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return static_cast<float>(x >> 40) * (2.0f / 16777216.0f) - 1.0f;  // [-1, 1)
}

// Fills n elements with uniform [-scale, scale) values (random, never zeros).
template <class T>
__global__ void fill_kernel(T* p, std::size_t n, unsigned long long seed, float scale) {
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
        p[i] = cuda_detail::from_f32<T>(scale * hash_uniform(i, seed));
}

template <class T>
void fill(DeviceBuffer<T>& b, unsigned long long seed, float scale = 1.f) {
    fill_kernel<T><<<1024, 256>>>(b.data(), b.size(), seed, scale);
    LIMARP_CUDA_CHECK_LAUNCH();
    LIMARP_CUDA_CHECK(cudaDeviceSynchronize());  // the legacy stream does not order the bench's non-blocking one
}

__global__ void empty_kernel() {}
// An empty link of a decode chain: waits for the previous kernel, then lets the next one launch.
__global__ void empty_chained_kernel() { cuda_detail::pdl_enter(); }

struct Row {
    std::string op, variant;
    double bytes, floor_us, stream_us, graph_us;
};

}  // namespace

int main(int argc, char** argv) try {
    int iters = 200, reps = 15, layers = 16;
    std::string json_path;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const auto val = [&]() -> std::string {
            if (i + 1 >= argc) throw ArgumentError(a + " needs a value");
            return argv[++i];
        };
        if (a == "--iters") iters = std::stoi(val());
        else if (a == "--reps") reps = std::stoi(val());
        else if (a == "--layers") layers = std::stoi(val());
        else if (a == "--json") json_path = val();
        else throw ArgumentError("unknown argument " + a + " (--iters N, --reps R, --layers L, --json FILE)");
    }
    cudaDeviceProp prop{};
    LIMARP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const DeviceInfo info = device_info();
    std::printf("device: %s, %d SMs, L2 %.1f MB\n", prop.name, info.sm_count, info.l2_bytes / 1e6);
    cudaStream_t stream{};
    LIMARP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = bench::copy_bandwidth_gbs(std::size_t{1} << 30, reps, stream);
    std::printf("copy (cudaMemcpyAsync D2D 1 GiB, read+write): %.0f GB/s\n\n", copy_gbs);

    std::vector<Row> rows;
    bool ok = true;
    const auto run = [&](const std::string& op, const std::string& variant, double bytes, int copies, auto&& launch) {
        const bench::Timing t = bench::time_launches(launch, copies, iters, reps, stream);
        rows.push_back({op, variant, bytes, bytes / (copy_gbs * 1e9) * 1e6, t.stream_us, t.graph_us});
        const Row& r = rows.back();
        std::printf("%-22s %-26s %10.0f %9.3f %9.2f %9.2f %9.1f\n", op.c_str(), variant.c_str(), bytes, r.floor_us,
                    r.stream_us, r.graph_us, r.graph_us / r.floor_us);
        std::fflush(stdout);
    };
    std::printf("%-22s %-26s %10s %9s %9s %9s %9s\n", "op", "variant", "bytes", "floor us", "stream us", "graph us",
                "graph/floor");

    run("empty kernel", "1 block of 32", 0.0, 1, [&](int) {
        empty_kernel<<<1, 32, 0, stream>>>();
        LIMARP_CUDA_CHECK_LAUNCH();
    });
    // What one boundary of the chained decode step costs with no work: empty kernels chained with
    // programmatic launch (as every decode kernel is on sm_90; plain launches before sm_90 or with
    // LIMARP_CUDA_PDL=0), grids from one block to a GEMV's one-wave grid (8 blocks of 128 threads
    // a multiprocessor: 1,056 on 132).
    for (const unsigned blocks : {1u, static_cast<unsigned>(info.sm_count), 8u * static_cast<unsigned>(info.sm_count)}) {
        const std::string grid = std::to_string(blocks) + (blocks == 1 ? " block" : " blocks") + " of 128";
        run("empty kernel, chained", grid, 0.0, 1, [&](int) {
            cuda_detail::launch_chained(__FILE__, __LINE__, empty_chained_kernel, dim3(blocks), dim3(128), 0, stream);
        });
    }

    // ---- activations (random, never zeros) -----------------------------------------------------
    DeviceBuffer<float> x(kD, "x"), a(kD, "a"), h(kD, "h"), q(kQd, "q"), k(kKvd, "k"), v(kKvd, "v"), out(kQd, "out");
    DeviceBuffer<float> gate(kFf, "gate"), up(kFf, "up"), act(kFf, "act"), logits(kVocab, "logits");
    DeviceBuffer<__nv_bfloat16> w(kD, "norm weight");
    fill(x, 1), fill(a, 2), fill(q, 3, 2.f), fill(k, 4, 2.f), fill(v, 5), fill(gate, 6, 4.f), fill(up, 7);
    fill(logits, 8, 6.f), fill(w, 9);
    DeviceBuffer<std::int64_t> pos(1, "position");

    const double fd = static_cast<double>(kD);
    run("rms_norm", "bf16 weight", 4 * fd + 2 * fd + 4 * fd, 1,
        [&](int) { ops::rms_norm(Cu{}, h.data(), x.data(), w.data(), 1, kD, 1e-5f, stream); });
    // x += a every launch: a is small (1e-3) so x stays finite over the thousands of launches
    fill(a, 2, 1e-3f);
    run("add_rms_norm", "x += a; h = norm(x)", 8 * fd + 2 * fd + 8 * fd, 1,
        [&](int) { ops::add_rms_norm(Cu{}, h.data(), x.data(), a.data(), w.data(), 1, kD, 1e-5f, stream); });
    {
        const std::int64_t p = 10000;
        pos.upload(&p, 1);
        LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
    }
    run("rope_rotate_half_qk", "32 + 8 heads, pos 10000", 2.0 * 4 * (kQd + kKvd), 1, [&](int) {
        ops::rope_rotate_half_qk(Cu{}, q.data(), k.data(), pos.data(), 1, kHeads, kKvHeads, kHd, 10000.0, stream);
    });
    {
        const DeviceRopeTable table(kHd, 10000.0, 10001);
        run("rope_rotate_half_qk", "table, pos 10000", 2.0 * 4 * (kQd + kKvd) + 2.0 * 4 * (kHd / 2), 1, [&](int) {
            ops::rope_rotate_half_qk(Cu{}, q.data(), k.data(), pos.data(), 1, kHeads, kKvHeads, table, stream);
        });
    }
    fill(q, 3, 2.f), fill(k, 4, 2.f);  // RoPE rotated them thousands of times: fresh values
    run("swiglu", "d_ff 14336", 3.0 * 4 * kFf, 1,
        [&](int) { ops::swiglu(Cu{}, act.data(), gate.data(), up.data(), kFf, stream); });
    {
        DeviceBuffer<__nv_bfloat16> table(static_cast<std::size_t>(kVocab * kD), "embedding table");
        fill(table, 10);
        std::vector<std::int32_t> hid(64);
        for (int i = 0; i < 64; ++i) hid[static_cast<std::size_t>(i)] = (i * 7919 + 13) % static_cast<int>(kVocab);
        DeviceBuffer<std::int32_t> ids(64, "ids");
        ids.upload(hid.data(), hid.size());
        LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
        run("embedding_gather", "bf16 table, 64 ids rotating", 2 * fd + 4 * fd, 64,
            [&](int i) { ops::embedding_gather(Cu{}, x.data(), table.data(), ids.data() + i, 1, kD, stream); });
    }

    // ---- attention over L layers' rings ------------------------------------------------------------
    const ops::AttentionShape shape{kHeads, kKvHeads, kHd, kWindow};
    const float scale = 1.0f / std::sqrt(static_cast<float>(kHd));
    AttentionDecodeWorkspace ws(shape, 512);
    const auto attention_bench = [&](auto tag_kv) {
        using KV = decltype(tag_kv);
        const char* dt = std::is_same_v<KV, float> ? "f32" : "bf16";
        std::vector<DeviceBuffer<KV>> kr, vr;
        for (int l = 0; l < layers; ++l) {
            kr.emplace_back(static_cast<std::size_t>(kRing * kKvd), "k ring");
            vr.emplace_back(static_cast<std::size_t>(kRing * kKvd), "v ring");
            fill(kr.back(), 100 + 2 * l, 2.f);
            fill(vr.back(), 101 + 2 * l);
        }
        run(std::string("kv_cache_store ") + dt, "k and v of one token", 2.0 * kKvd * (4 + sizeof(KV)), layers,
            [&](int l) {
                ops::kv_cache_store(Cu{}, kr[l].data(), vr[l].data(), k.data(), v.data(), kRing, pos.data(), kKvd,
                                    stream);
            });
        const int def_splits = attention_decode_default_splits(shape, kRing, info.sm_count);
        struct V {
            std::int64_t p;
            int splits;
            bool fused;
            bool rope = false;   // the model's form: RoPE and the store inside the launch
        };
        std::vector<V> vs{{127, 0, true},  {1023, 0, true},  {4095, 0, true},  {10000, 0, true},
                          {127, 0, false}, {1023, 0, false}, {4095, 0, false}};
        for (int s : {1, 8, 16, 66, 132})
            if (s != def_splits) vs.push_back({10000, s, true});
        for (std::int64_t p : {15, 127, 1023, 4095}) vs.push_back({p, 0, true, true});
        for (const V& var : vs) {
            pos.upload(&var.p, 1);
            LIMARP_CUDA_CHECK(cudaDeviceSynchronize());  // the pageable upload before the stream's work
            const std::int64_t keys = std::min<std::int64_t>(var.p + 1, kWindow);
            const double bytes = 2.0 * static_cast<double>(keys - 1) * kKvd * sizeof(KV) + 2.0 * 4 * kKvd + 2.0 * 4 * kQd;
            const int splits = var.splits ? var.splits : def_splits;
            char name[160];
            std::snprintf(name, sizeof name, "p %lld (%lld keys), %d splits%s%s%s", static_cast<long long>(var.p),
                          static_cast<long long>(keys), splits, var.splits ? "" : " (default)",
                          var.fused ? "" : ", combine kernel", var.rope ? ", RoPE and the store inside" : "");
            LIMARP_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xff, out.bytes(), stream));
            AttentionDecodeConfig cfg{splits, var.fused};
            if (var.rope) cfg.rope_theta = 1e6;
            run(std::string("attention decode ") + dt, name, bytes, layers, [&](int l) {
                if (var.rope)
                    ops::attention_decode_and_store(Cu{}, out.data(), q.data(), k.data(), v.data(), kr[l].data(),
                                                    vr[l].data(), kRing, pos.data(), shape, scale, ws, stream, cfg);
                else
                    ops::attention_sliding_window_decode(Cu{}, out.data(), q.data(), k.data(), v.data(), kr[l].data(),
                                                         vr[l].data(), kRing, pos.data(), shape, scale, ws, stream,
                                                         cfg);
            });
            std::vector<float> o(kQd);
            LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
            out.download(o.data(), o.size());
            for (float e : o)
                if (!std::isfinite(e)) {
                    std::printf("  WRONG: non-finite attention output\n");
                    ok = false;
                    break;
                }
        }
    };
    attention_bench(float{});
    attention_bench(__nv_bfloat16{});

    // ---- sampling -------------------------------------------------------------------------------------
    DeviceBuffer<std::int32_t> id(1, "id");
    DeviceBuffer<std::uint64_t> counter(1, "counter");
    LIMARP_CUDA_CHECK(cudaMemset(counter.data(), 0, 8));
    LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
    const double lb = 4.0 * kVocab;
    run("sample_greedy", "vocab 32000", lb, 1, [&](int) { ops::sample_greedy(Cu{}, id.data(), logits.data(), kVocab, stream); });
    const auto sampler = [&](const char* name, float t, int top_k, float top_p, float min_p) {
        DeviceSamplingParams p;
        p.temperature = t;
        p.top_k = top_k;
        p.top_p = top_p;
        p.min_p = min_p;
        p.seed = 7;
        run("sample_top_k_top_p", name, lb, 1, [&](int) {
            ops::sample_top_k_top_p(Cu{}, id.data(), logits.data(), kVocab, p, counter.data(), stream);
        });
    };
    sampler("T 0.7, top_k 40, top_p 0.9", 0.7f, 40, 0.9f, 0.f);
    sampler("T 0.7, top_p 0.9", 0.7f, 0, 0.9f, 0.f);
    sampler("T 0.7, min_p 0.05", 0.7f, 0, 1.f, 0.05f);
    sampler("T 1 (no truncation)", 1.f, 0, 1.f, 0.f);
    LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));

    // ---- one token's share (32 layers), graph times ---------------------------------------------
    const auto find = [&](const std::string& op, const std::string& prefix) {
        for (const Row& r : rows)
            if (r.op == op && r.variant.rfind(prefix, 0) == 0) return r.graph_us;
        return 0.0;
    };
    const double per_layer_common = 2 * find("add_rms_norm", "x") + find("rope_rotate_half_qk", "table") +
                                    find("swiglu", "d_ff");
    std::printf("\nper token, 32 layers (graph times): norms+rope+swiglu %.1f us", 32 * per_layer_common);
    for (const char* dt : {"f32", "bf16"}) {
        const double store = find(std::string("kv_cache_store ") + dt, "k");
        for (const char* p : {"p 127 ", "p 4095 "}) {
            const double att = find(std::string("attention decode ") + dt, p);  // the first: default, fused
            std::printf("\n  %s ring, %s: attention+store %.1f us, all %.1f us", dt, p, 32 * (att + store),
                        32 * (per_layer_common + att + store) + find("rms_norm", "bf16") +
                            find("embedding_gather", "bf16") + find("sample_top_k_top_p", "T 0.7, top_k"));
        }
    }
    std::printf("\n");

    if (!json_path.empty()) {
        std::FILE* f = std::fopen(json_path.c_str(), "w");
        if (!f) throw IoError("cannot write " + json_path);
        std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"sm_count\": %d,\n  \"copy_gbs\": %.1f,\n  \"iters\": %d,\n"
                        "  \"reps\": %d,\n  \"layers\": %d,\n  \"results\": [\n",
                     prop.name, info.sm_count, copy_gbs, iters, reps, layers);
        for (std::size_t i = 0; i < rows.size(); ++i) {
            const Row& r = rows[i];
            std::fprintf(f,
                         "    {\"op\": \"%s\", \"variant\": \"%s\", \"bytes\": %.0f, \"floor_us\": %.4f, "
                         "\"stream_us\": %.3f, \"graph_us\": %.3f}%s\n",
                         r.op.c_str(), r.variant.c_str(), r.bytes, r.floor_us, r.stream_us, r.graph_us,
                         i + 1 < rows.size() ? "," : "");
        }
        std::fprintf(f, "  ]\n}\n");
        std::fclose(f);
    }
    LIMARP_CUDA_CHECK(cudaStreamDestroy(stream));
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_decode_ops: %s\n", e.what());
    return 2;
}
