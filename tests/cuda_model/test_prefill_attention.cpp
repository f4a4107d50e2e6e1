// The prefill attention kernels against the CPU's f32 attention — the tensor-core kernel
// (backend/cuda/attention_flash.cuh, bf16 operands) on every layout it takes, the f32 kernels at
// Mistral-7B's head layout — and the tensor-core kernel through the model against transformers.
//
// This file also sets the prefill attention of the whole test binary to the f32 kernel (a global
// fixture): the other cases of test_cuda_model compare with transformers and the CPU at f32
// tolerances (1e-4, 1e-5). The cases here switch to the tensor cores for their own duration.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/fixtures.hpp"
#include "limarp/io/npy.hpp"
#include "limarp/model/mistral_model.hpp"

using namespace limarp;

namespace {

struct F32PrefillAttention {
    F32PrefillAttention() { cuda_api::set_prefill_attention(cuda_api::PrefillAttention::f32); }
};

// Tensor cores for one test case, then back to f32.
struct TensorCoreScope {
    TensorCoreScope() { cuda_api::set_prefill_attention(cuda_api::PrefillAttention::tensor_cores); }
    ~TensorCoreScope() { cuda_api::set_prefill_attention(cuda_api::PrefillAttention::f32); }
    TensorCoreScope(const TensorCoreScope&) = delete;
    TensorCoreScope& operator=(const TensorCoreScope&) = delete;
};

struct Case {
    ops::AttentionShape s;
    std::int64_t C;
    std::vector<std::int64_t> calls;  // tokens per call (1 = a decode step)
};

// Runs the calls of `cs` (tokens per call; 1 = a decode step) through the CPU's and the CUDA
// attention on fresh random q, k, v (the CUDA output poisoned with NaN first), checks every call
// (prefills: ||err||/||ref|| <= prefill_norm_limit and max rel err <= prefill_max_limit; decode
// steps, the f32 decode kernel: max rel err <= 1e-5) and the written ring rows (exact). Returns
// the worst prefill ||err||/||ref||.
double check_attention_sequence(const Case& cs, std::mt19937& rng, double prefill_norm_limit,
                                double prefill_max_limit) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const auto& s = cs.s;
    const std::int64_t qd = s.n_heads * s.head_dim, kvd = s.n_kv_heads * s.head_dim, C = cs.C;
    Tensor<float> kc({C, kvd}), vc({C, kvd});
    DeviceBuffer<float> dkc(static_cast<std::size_t>(C * kvd), "k ring"), dvc(static_cast<std::size_t>(C * kvd), "v ring");
    std::int64_t p = 0;
    double worst = 0;
    for (const std::int64_t T : cs.calls) {
        Tensor<float> q({T, qd}), k({T, kvd}), v({T, kvd}), o_cpu({T, qd}), o_gpu({T, qd});
        for (auto* t : {&q, &k, &v})
            for (std::int64_t i = 0; i < t->size(); ++i) (*t)[i] = nd(rng) * 1.5f;
        std::vector<std::int64_t> pos(static_cast<std::size_t>(T));
        for (std::int64_t t = 0; t < T; ++t) pos[static_cast<std::size_t>(t)] = p + t;
        const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
        ops::attention_with_cache(Cpu<>{}, o_cpu.data(), q.data(), k.data(), v.data(), kc.data(), vc.data(), C,
                                  pos.data(), T, s, scale);
        DeviceBuffer<float> dq(static_cast<std::size_t>(T * qd), "q"), dk(static_cast<std::size_t>(T * kvd), "k"),
            dv(static_cast<std::size_t>(T * kvd), "v"), dout(static_cast<std::size_t>(T * qd), "out");
        DeviceBuffer<std::int64_t> dpos(static_cast<std::size_t>(T), "positions");
        dq.upload(q.data(), dq.size());
        dk.upload(k.data(), dk.size());
        dv.upload(v.data(), dv.size());
        dpos.upload(pos.data(), dpos.size());
        const std::vector<float> poison(static_cast<std::size_t>(T * qd), std::numeric_limits<float>::quiet_NaN());
        dout.upload(poison.data(), dout.size());
        ops::attention_with_cache(Cuda<>{}, dout.data(), dq.data(), dk.data(), dv.data(), dkc.data(), dvc.data(), C,
                                  dpos.data(), T, s, scale);
        cuda_api::synchronize();
        dout.download(o_gpu.data(), dout.size());
        const bool finite = std::all_of(o_gpu.data(), o_gpu.data() + o_gpu.size(), [](float x) { return std::isfinite(x); });
        const double err = test::norm_rel_err(o_gpu.data(), o_cpu.data(), o_cpu.size());
        const double emax = test::max_rel_err(o_gpu.data(), o_cpu.data(), o_cpu.size());
        const bool ok = T == 1 ? emax <= 1e-5 : err <= prefill_norm_limit && emax <= prefill_max_limit;
        BOOST_CHECK_MESSAGE(finite, "head_dim " << s.head_dim << ", T=" << T << ": unwritten or non-finite output");
        BOOST_CHECK_MESSAGE(ok, "head_dim " << s.head_dim << " heads " << s.n_heads << "/" << s.n_kv_heads << " window "
                                            << s.window_keys << " T=" << T << " at p0=" << p << ": ||err||/||ref|| "
                                            << err << ", max rel err " << emax);
        if (T > 1) worst = std::max(worst, err);
        p += T;
    }
    Tensor<float> kg({C, kvd});
    dkc.download(kg.data(), kg.size());
    const std::int64_t written = std::min(p, C);  // ring rows never written stay uninitialised on the device
    BOOST_CHECK_LE(test::max_rel_err(kg.data(), kc.data(), written * kvd), 0.0);  // the ring store is exact
    return worst;
}

}  // namespace

BOOST_TEST_GLOBAL_FIXTURE(F32PrefillAttention);

BOOST_AUTO_TEST_SUITE(cuda_prefill_attention)

// Each layout the kernel takes (head_dim 128 / 64 / 32, 1 to 8 query heads per kv head, with and
// without a window), prefills of many key tiles whose rows end inside a tile, a prefill that
// reads a wrapped ring, decode steps in between.
BOOST_AUTO_TEST_CASE(tensor_core_prefill_matches_the_cpu_within_bf16) {
    TensorCoreScope tc;
    BOOST_REQUIRE(cuda_api::prefill_attention() == cuda_api::PrefillAttention::tensor_cores);
    const std::vector<Case> cases = {
        {{32, 8, 128, 40}, 44, {30, 45, 1, 17, 1}},
        {{32, 8, 128, 200}, 256, {333, 150, 1, 70}},
        {{8, 8, 64, 0}, 600, {100, 1, 170, 5}},
        {{16, 2, 32, 64}, 64, {130, 9, 1, 66}},
    };
    std::mt19937 rng(21);
    double worst = 0;
    for (const Case& cs : cases) worst = std::max(worst, check_attention_sequence(cs, rng, 1e-2, 1.0));
    BOOST_TEST_MESSAGE("tensor-core prefill attention vs CPU f32: worst ||err||/||ref|| " << worst);
    BOOST_CHECK_GT(worst, 0.0);  // bf16 operands: not bit-identical, i.e. the tensor-core kernel ran
}

// The f32 kernels at Mistral-7B's head layout (head_dim 128, 32 query heads over 8 kv heads,
// which the tiny fixtures do not have): prefill chunks that read a wrapped ring, then decode
// tokens; f32 agreement with the CPU.
BOOST_AUTO_TEST_CASE(f32_prefill_at_mistral_head_layout_matches_the_cpu) {
    BOOST_REQUIRE(cuda_api::prefill_attention() == cuda_api::PrefillAttention::f32);
    std::mt19937 rng(7);
    const double worst = check_attention_sequence({{32, 8, 128, 40}, 44, {30, 45, 1, 1, 17, 1}}, rng, 1e-5, 1e-5);
    BOOST_TEST_MESSAGE("f32 prefill attention, head_dim 128, 32/8 heads, window 40: worst ||err||/||ref|| " << worst);
}

// Through the model: full_attn_hd (head_dim 32, the fixture the kernel covers) against
// transformers' f32 logits.
BOOST_AUTO_TEST_CASE(tensor_core_prefill_model_logits_near_transformers) {
    TensorCoreScope tc;
    const char* name = "full_attn_hd";
    MistralModel<Cuda<>> g = MistralModel<Cuda<>>::from_dir(test::fixture_dir(name));
    const auto ids = test::ids_of(test::golden_json(name), "ids");
    const Tensor<float> ref = io::read_npy<float>(test::fixture_dir(name) / "logits.npy");
    const Tensor<float> got = g.logits(ids);
    BOOST_REQUIRE(got.shape() == ref.shape());
    const double err = test::norm_rel_err(got.data(), ref.data(), ref.size());
    const std::int64_t V = ref.shape()[1], T = ref.shape()[0];
    std::int64_t same = 0;
    for (std::int64_t t = 0; t < T; ++t)
        same += std::max_element(got.data() + t * V, got.data() + (t + 1) * V) - (got.data() + t * V) ==
                std::max_element(ref.data() + t * V, ref.data() + (t + 1) * V) - (ref.data() + t * V);
    const double agree = static_cast<double>(same) / static_cast<double>(T);
    BOOST_TEST_MESSAGE(name << " with tensor-core prefill attention: ||err||/||ref|| " << err << ", top-1 agreement "
                            << agree << " (max rel " << test::max_rel_err(got.data(), ref.data(), ref.size()) << ")");
    BOOST_CHECK_LE(err, 1e-2);
    BOOST_CHECK_GE(agree, 0.95);
    BOOST_CHECK_GT(err, 0.0);
}

BOOST_AUTO_TEST_SUITE_END()
