// Model-level tests for limarp/model/*: logits and greedy continuations against the
// Hugging Face golden fixtures, chunked/token-by-token equivalence, the rolling cache.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "common/fixtures.hpp"
#include "limarp/io/npy.hpp"
#include "limarp/model/mistral_model.hpp"

using namespace limarp;
using Model = MistralModel<Cpu<>>;

namespace {
const char* kFixtures[] = {"swa_long", "gqa4_old", "full_attn_hd"};

Model load(const std::string& name, void (*edit)(MistralConfig&) = nullptr) {
    return Model::from_dir(test::fixture_dir(name), [edit](MistralConfig& c, LoadContext&) {
        if (edit) edit(c);
    });
}

double logits_error(Model& m, const std::string& name) {
    const auto j = test::golden_json(name);
    const auto ids = test::ids_of(j, "ids");
    const Tensor<float> ref = io::read_npy<float>(test::fixture_dir(name) / "logits.npy");
    const Tensor<float> got = m.logits(ids);
    BOOST_REQUIRE(ref.shape() == got.shape());
    return test::max_rel_err(got.data(), ref.data(), ref.size());
}

std::vector<std::int32_t> greedy(Model& m, const std::vector<std::int32_t>& prompt, std::size_t n_new) {
    KvCache cache = m.make_cache();
    std::vector<float> logits(static_cast<std::size_t>(m.config().vocab));
    std::vector<std::int32_t> out;
    std::vector<std::int32_t> next = prompt;
    for (std::size_t i = 0; i < n_new; ++i) {
        m.forward(logits.data(), next, cache, LogitsRows::Last);
        const auto best = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        out.push_back(best);
        next = {best};
    }
    return out;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(mistral_model)

BOOST_AUTO_TEST_CASE(config_layouts) {
    const auto a = io::read_mistral_config(test::fixture_dir("swa_long"));   // rope_parameters layout
    const auto b = io::read_mistral_config(test::fixture_dir("gqa4_old"));   // top-level rope_theta layout
    const auto c = io::read_mistral_config(test::fixture_dir("full_attn_hd"));
    BOOST_CHECK_EQUAL(a.window.value(), 16);
    BOOST_CHECK_EQUAL(b.n_heads / b.n_kv_heads, 4);
    BOOST_CHECK_EQUAL(b.rope_theta, 10000.0);
    BOOST_CHECK(!c.window.has_value());
    BOOST_CHECK_EQUAL(c.head_dim, 32);
    BOOST_CHECK_EQUAL(c.rope_theta, 1e6);
}

BOOST_AUTO_TEST_CASE(logits_match_transformers) {
    for (const char* name : kFixtures) {
        Model m = load(name);
        const double err = logits_error(m, name);
        BOOST_TEST_MESSAGE(name << ": logits max rel err vs transformers = " << err);
        BOOST_CHECK_MESSAGE(err <= 1e-4, name << ": max rel err " << err << " > 1e-4");
    }
}

BOOST_AUTO_TEST_CASE(greedy_continuations_match_transformers) {
    for (const char* name : kFixtures) {
        Model m = load(name);
        const auto j = test::golden_json(name);
        const auto want = test::ids_of(j, "greedy_new");
        const auto got = greedy(m, test::ids_of(j, "greedy_prompt"), want.size());
        BOOST_CHECK_MESSAGE(got == want, name << ": greedy continuation differs from transformers");
        if (m.config().window) BOOST_CHECK_GE(want.size() + j.at("greedy_prompt").size(), 3 * *m.config().window);
    }
}

BOOST_AUTO_TEST_CASE(chunked_and_token_by_token_agree) {
    for (const char* name : kFixtures) {
        Model m = load(name);
        const auto ids = test::ids_of(test::golden_json(name), "ids");
        const std::int64_t T = static_cast<std::int64_t>(ids.size()), V = m.config().vocab;
        BOOST_TEST(m.chunk_size() == 256);           // the host backends' default
        const Tensor<float> whole = m.logits(ids);  // one prefill (chunk 256 > T)
        for (std::int64_t chunk : {1, 3, 7, 16, 17}) {
            m.set_chunk_size(chunk);
            const Tensor<float> c = m.logits(ids);
            const double err = test::max_rel_err(c.data(), whole.data(), whole.size());
            BOOST_CHECK_MESSAGE(err <= 1e-5, name << " chunk " << chunk << ": rel err " << err);
        }
        m.set_chunk_size(256);
        // token by token through the rolling cache, calls of uneven length
        KvCache cache = m.make_cache();
        Tensor<float> step({T, V});
        std::int64_t t = 0, len = 1;
        while (t < T) {
            const std::int64_t n = std::min(len, T - t);
            m.forward(step.data() + t * V, std::span(ids).subspan(t, n), cache, LogitsRows::All);
            t += n;
            len = len % 5 + 1;
        }
        BOOST_CHECK_LE(test::max_rel_err(step.data(), whole.data(), whole.size()), 1e-5);
        if (m.config().window) BOOST_CHECK_LE(cache.capacity(), *m.config().window);  // O(window) memory
    }
}

// A bf16 key/value cache (Model::set_cache_dtype): half the bytes; token by token its logits
// stay within bf16 rounding of the f32 run (and differ from it: the ring really is bf16), with
// the same top-1 on >= 90% of the rows; a type other than f32/bf16 is refused.
BOOST_AUTO_TEST_CASE(bf16_cache_halves_memory_and_tracks_f32) {
    for (const char* name : kFixtures) {
        Model m = load(name);
        const auto ids = test::ids_of(test::golden_json(name), "ids");
        const std::int64_t T = static_cast<std::int64_t>(ids.size()), V = m.config().vocab;
        const Tensor<float> whole = m.logits(ids);
        const std::size_t f32_bytes = m.make_cache().bytes();
        BOOST_CHECK_THROW(m.set_cache_dtype(DType::F16), ArgumentError);
        BOOST_CHECK(m.cache_dtype() == DType::F32);
        m.set_cache_dtype(DType::BF16);
        KvCache cache = m.make_cache();
        BOOST_CHECK(cache.dtype() == DType::BF16);
        BOOST_CHECK_EQUAL(2 * cache.bytes(), f32_bytes);
        Tensor<float> step({T, V});
        for (std::int64_t t = 0; t < T; t += 2)
            m.forward(step.data() + t * V, std::span(ids).subspan(t, std::min<std::int64_t>(2, T - t)), cache,
                      LogitsRows::All);
        const double err = test::max_rel_err(step.data(), whole.data(), whole.size());
        BOOST_TEST_MESSAGE(name << ": bf16 cache, logits max rel err vs the f32 cache = " << err);
        BOOST_CHECK_MESSAGE(err > 0 && err <= 2e-2, name << ": bf16 cache rel err " << err);
        // top-1 of every row (random tiny models have near ties, so not all of them)
        std::int64_t same = 0;
        for (std::int64_t t = 0; t < T; ++t) {
            const float* a = step.data() + t * V;
            const float* b = whole.data() + t * V;
            same += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
        }
        BOOST_CHECK_MESSAGE(10 * same >= 9 * T, name << ": top-1 agrees on " << same << " of " << T << " rows");
    }
}

// The layers' per-call working buffers are shared by all layers of all models on a thread
// (SharedScratch): two models of different shapes, stepped in turn on a fresh thread (its buffers
// start empty and grow between the two models' calls as the chunks lengthen), each give the
// logits of its own uninterrupted run.
BOOST_AUTO_TEST_CASE(models_stepped_in_turn_share_working_buffers_safely) {
    Model m1 = load("swa_long"), m2 = load("full_attn_hd");
    BOOST_REQUIRE(m1.config().d_model != m2.config().d_model || m1.config().d_ff != m2.config().d_ff);
    const auto ids1 = test::ids_of(test::golden_json("swa_long"), "ids");
    const auto ids2 = test::ids_of(test::golden_json("full_attn_hd"), "ids");
    const Tensor<float> whole1 = m1.logits(ids1), whole2 = m2.logits(ids2);  // this thread's buffers
    const std::int64_t V1 = m1.config().vocab, V2 = m2.config().vocab;
    Tensor<float> s1({static_cast<std::int64_t>(ids1.size()), V1}), s2({static_cast<std::int64_t>(ids2.size()), V2});
    bool shared = false, distinct = false;
    std::exception_ptr failed;
    std::thread([&] {
        try {
            SharedScratch<Cpu<>, float> a(ScratchSlot::mlp_hidden), b(ScratchSlot::mlp_hidden), c(ScratchSlot::mlp_up);
            float* pa = a.ensure(4);
            float* pb = b.ensure(2);  // no larger: the same memory
            shared = pa == pb;        // one buffer per slot
            distinct = c.ensure(4) != pa;
            SharedScratch<Cpu<>, float>::release_all();  // empty again: the models below grow them
            KvCache c1 = m1.make_cache(), c2 = m2.make_cache();
            std::size_t t1 = 0, t2 = 0, len = 1;
            while (t1 < ids1.size() || t2 < ids2.size()) {
                if (t1 < ids1.size()) {
                    const std::size_t n = std::min(len, ids1.size() - t1);
                    m1.forward(s1.data() + t1 * V1, std::span(ids1).subspan(t1, n), c1, LogitsRows::All);
                    t1 += n;
                }
                if (t2 < ids2.size()) {
                    const std::size_t n = std::min(len + 2, ids2.size() - t2);
                    m2.forward(s2.data() + t2 * V2, std::span(ids2).subspan(t2, n), c2, LogitsRows::All);
                    t2 += n;
                }
                ++len;  // longer chunks: the shared buffers grow (and move) between the models' calls
            }
        } catch (...) {
            failed = std::current_exception();
        }
    }).join();
    if (failed) std::rethrow_exception(failed);
    BOOST_TEST(shared);
    BOOST_TEST(distinct);
    BOOST_CHECK_LE(test::max_rel_err(s1.data(), whole1.data(), whole1.size()), 1e-5);
    BOOST_CHECK_LE(test::max_rel_err(s2.data(), whole2.data(), whole2.size()), 1e-5);
}

// The tests above must be able to fail: a wrong mask (the W+1 window convention) or a
// wrong rotary base makes the logits miss the reference by far more than the tolerance.
BOOST_AUTO_TEST_CASE(negative_controls_wrong_mask_or_rope_fail) {
    Model wrong_mask =
        load("swa_long", [](MistralConfig& c) { c.window_convention = WindowConvention::MistralInference; });
    const double e_mask = logits_error(wrong_mask, "swa_long");
    Model wrong_rope = load("swa_long", [](MistralConfig& c) { c.rope_theta *= 2; });
    const double e_rope = logits_error(wrong_rope, "swa_long");
    Model no_window = load("gqa4_old", [](MistralConfig& c) { c.window.reset(); });
    const double e_full = logits_error(no_window, "gqa4_old");
    BOOST_TEST_MESSAGE("wrong mask err " << e_mask << ", wrong rope err " << e_rope << ", no window err " << e_full);
    BOOST_CHECK_GT(e_mask, 1e-3);
    BOOST_CHECK_GT(e_rope, 1e-3);
    BOOST_CHECK_GT(e_full, 1e-3);
}

BOOST_AUTO_TEST_CASE(cache_reuse_and_rewind) {
    Model m = load("swa_long");
    const auto ids = test::ids_of(test::golden_json("swa_long"), "ids");
    const std::int64_t V = m.config().vocab;
    const Tensor<float> whole = m.logits(ids);
    // A cache with slack can rewind past a wrap; reuse the common prefix of a new prompt.
    KvCache cache = m.make_cache(/*rewind_slack=*/8);
    std::vector<float> last(static_cast<std::size_t>(V));
    m.forward(last.data(), std::span(ids).first(40), cache, LogitsRows::Last);
    BOOST_CHECK(!cache.can_rewind_to(20));  // overwritten
    BOOST_CHECK(cache.can_rewind_to(33));
    const std::int64_t keep = cache.reusable_prefix(ids);
    BOOST_CHECK_EQUAL(keep, 40);
    std::vector<std::int32_t> edited(ids.begin(), ids.begin() + 45);
    edited[36] = 7;
    const std::int64_t k2 = cache.reusable_prefix(edited);
    BOOST_CHECK_EQUAL(k2, 36);
    cache.rewind(k2);
    m.forward(last.data(), std::span(ids).subspan(36, 12), cache, LogitsRows::Last);
    BOOST_CHECK_LE(test::max_rel_err(last.data(), whole.row(47), V), 1e-5);
    BOOST_CHECK_THROW(cache.rewind(10), ArgumentError);
    std::vector<std::int32_t> bad = {1, 5, static_cast<std::int32_t>(V)};
    const auto before = cache.n_past();
    BOOST_CHECK_THROW(m.forward(last.data(), bad, cache, LogitsRows::Last), ArgumentError);
    BOOST_CHECK_EQUAL(cache.n_past(), before);
}

BOOST_AUTO_TEST_CASE(missing_or_misshaped_weights_are_named) {
    const auto cfg = io::read_mistral_config(test::fixture_dir("swa_long"));
    auto ckpt = std::make_shared<io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(test::fixture_dir("swa_long")));
    MistralConfig wrong = cfg;
    wrong.d_ff += 1;
    try {
        Model m(wrong, LoadContext(ckpt));
        BOOST_FAIL("expected ShapeError");
    } catch (const ShapeError& e) {
        BOOST_CHECK(std::string(e.what()).find("mlp.gate_proj.weight") != std::string::npos);
    }
    MistralConfig more = cfg;
    more.n_layers += 1;
    try {
        Model m(more, LoadContext(ckpt));
        BOOST_FAIL("expected FormatError");
    } catch (const FormatError& e) {
        BOOST_CHECK(std::string(e.what()).find("model.layers.2.") != std::string::npos);
    }
}

BOOST_AUTO_TEST_SUITE_END()
