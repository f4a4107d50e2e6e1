// Tokenizer throughput (MB of UTF-8 input per second, single thread) on a few MB of generated
// mixed text (tests/text/mixed_text.hpp: prose, dialogue, code, CJK, emoji, rare scripts,
// numbers, whitespace runs), next to libsentencepiece on the same text when it was found at
// configure time (tests/text/CMakeLists.txt links it).
//
//   build/bin/bench_micro_tokenizer [--benchmark_filter=encode]
//   LIMARP_TOKENIZER_MODEL=path/to/tokenizer.model build/bin/bench_micro_tokenizer
//
// "cold" runs empty the per-thread word cache before every iteration (first-time text);
// "warm" runs keep it (text whose words were seen before).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "limarp/text/tokenizer.hpp"
#include "text/mixed_text.hpp"

#if LIMARP_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace {

std::string model_file() {
    if (const char* e = std::getenv("LIMARP_TOKENIZER_MODEL")) return e;
#ifdef LIMARP_CACHE_DIR
    return std::string(LIMARP_CACHE_DIR) + "/mistral-tokenizer.model";
#else
    return ".cache/mistral-tokenizer.model";
#endif
}

const std::string& text() {
    static const std::string t = limarp::test::make_mixed_text(2'000'000);
    return t;
}

const std::vector<std::string>& paragraphs() {
    static const std::vector<std::string> v = [] {
        std::vector<std::string> out;
        const std::string& t = text();
        std::size_t pos = 0;
        while (pos < t.size()) {
            std::size_t e = t.find("\n\n", pos);
            if (e == std::string::npos) e = t.size();
            out.push_back(t.substr(pos, e - pos));
            pos = e + 2;
        }
        return out;
    }();
    return v;
}

const limarp::text::Tokenizer* tokenizer() {
    static const limarp::text::Tokenizer* tok = [] {
        try {
            return new limarp::text::Tokenizer(limarp::text::Tokenizer::from_sentencepiece(model_file()));
        } catch (const std::exception& e) {
            std::cerr << "bench_micro_tokenizer: " << e.what()
                      << " (run scripts/setup.sh or set LIMARP_TOKENIZER_MODEL)\n";
            return static_cast<limarp::text::Tokenizer*>(nullptr);
        }
    }();
    return tok;
}

void encode_paragraphs(benchmark::State& state, bool cold) {
    const auto* tok = tokenizer();
    if (!tok) return state.SkipWithError("tokenizer model not found");
    std::size_t tokens = 0;
    for (auto _ : state) {
        if (cold) {
            state.PauseTiming();
            limarp::text::Tokenizer::release_thread_cache();
            state.ResumeTiming();
        }
        for (const auto& p : paragraphs()) tokens += tok->encode(p).size();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text().size()));
    state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void encode_whole(benchmark::State& state, bool cold) {
    const auto* tok = tokenizer();
    if (!tok) return state.SkipWithError("tokenizer model not found");
    for (auto _ : state) {
        if (cold) {
            state.PauseTiming();
            limarp::text::Tokenizer::release_thread_cache();
            state.ResumeTiming();
        }
        benchmark::DoNotOptimize(tok->encode(text()));
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text().size()));
}

void BM_limarp_encode_paragraphs_cold(benchmark::State& s) { encode_paragraphs(s, true); }
void BM_limarp_encode_paragraphs_warm(benchmark::State& s) { encode_paragraphs(s, false); }
void BM_limarp_encode_whole_cold(benchmark::State& s) { encode_whole(s, true); }
void BM_limarp_encode_whole_warm(benchmark::State& s) { encode_whole(s, false); }

void BM_limarp_decode(benchmark::State& state) {
    const auto* tok = tokenizer();
    if (!tok) return state.SkipWithError("tokenizer model not found");
    const std::vector<int> ids = tok->encode(text());
    for (auto _ : state) benchmark::DoNotOptimize(tok->decode(ids));
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text().size()));
}

void BM_limarp_load(benchmark::State& state) {
    if (!tokenizer()) return state.SkipWithError("tokenizer model not found");
    for (auto _ : state) benchmark::DoNotOptimize(limarp::text::Tokenizer::from_sentencepiece(model_file()));
}

BENCHMARK(BM_limarp_encode_paragraphs_cold)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_limarp_encode_paragraphs_warm)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_limarp_encode_whole_cold)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_limarp_encode_whole_warm)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_limarp_decode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_limarp_load)->Unit(benchmark::kMillisecond);

#if LIMARP_HAVE_SENTENCEPIECE
const sentencepiece::SentencePieceProcessor* reference() {
    static const sentencepiece::SentencePieceProcessor* sp = [] {
        auto* p = new sentencepiece::SentencePieceProcessor();
        if (!p->Load(model_file()).ok()) {
            delete p;
            return static_cast<const sentencepiece::SentencePieceProcessor*>(nullptr);
        }
        return static_cast<const sentencepiece::SentencePieceProcessor*>(p);
    }();
    return sp;
}

void BM_sentencepiece_encode_paragraphs(benchmark::State& state) {
    const auto* sp = reference();
    if (!sp) return state.SkipWithError("libsentencepiece cannot load the model");
    std::size_t tokens = 0;
    for (auto _ : state)
        for (const auto& p : paragraphs()) tokens += sp->EncodeAsIds(p).size() + 1;
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text().size()));
    state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void BM_sentencepiece_encode_whole(benchmark::State& state) {
    const auto* sp = reference();
    if (!sp) return state.SkipWithError("libsentencepiece cannot load the model");
    for (auto _ : state) benchmark::DoNotOptimize(sp->EncodeAsIds(text()));
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text().size()));
}

void BM_sentencepiece_decode(benchmark::State& state) {
    const auto* sp = reference();
    if (!sp) return state.SkipWithError("libsentencepiece cannot load the model");
    const std::vector<int> ids = sp->EncodeAsIds(text());
    for (auto _ : state) benchmark::DoNotOptimize(sp->DecodeIds(ids));
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text().size()));
}

void BM_sentencepiece_load(benchmark::State& state) {
    for (auto _ : state) {
        sentencepiece::SentencePieceProcessor p;
        benchmark::DoNotOptimize(p.Load(model_file()).ok());
    }
}

BENCHMARK(BM_sentencepiece_encode_paragraphs)->Unit(benchmark::kMillisecond)->Iterations(2);
BENCHMARK(BM_sentencepiece_encode_whole)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_sentencepiece_decode)->Unit(benchmark::kMillisecond)->Iterations(2);
BENCHMARK(BM_sentencepiece_load)->Unit(benchmark::kMillisecond);
#endif

}  // namespace

BENCHMARK_MAIN();
