// bench_make_gguf: writes a random Mistral-7B-shaped model as a GGUF v3 file (architecture "llama",
// Q8_0 matrices) for llama.cpp, the CPU peer of bench_model_cpu (benchmarks/cpu_peer_llama_cpp.sh).
//
//   bench_make_gguf --out FILE.gguf [--layers N (32)] [--tokenizer PATH (mistral-tokenizer.model)]
//                   [--vocab 32000|32002 (32002)] [--embd q8_0|f16|bf16 (q8_0)] [--output q8_0|f16|bf16 (q8_0)]
//                   [--d-model D] [--d-ff F]
//
// The weights are bench_model_cpu's, value for value: random_weights.hpp's random_weight() under
// the Hugging Face names (bf16 ~ U(-a, a), a = sqrt(3 / fan_in); norms 1), the matrices quantized
// by limarp's Q8_0 quantizer (what `bench_model_cpu --quant q8_0` runs on; its blocks are ggml's).
// q_proj and k_proj rows are permuted as convert_hf_to_gguf.py does (HF's rotate-half RoPE to
// ggml's interleaved pairs), so the file is the same model, not only the same shapes.
// The vocabulary is the real Mistral tokenizer.model's (tokens, scores, types; bos 1, eos 2,
// unk 0), with --vocab 32002 plus OpenOrca's `<|im_end|>` = 32000 and `<|im_start|>` = 32001
// (control tokens), the vocabulary bench_model_cpu uses. Defaults are what llama-quantize's Q8_0
// gives (token_embd and output Q8_0 too); bench_model_cpu keeps the embeddings and the lm_head
// bf16, so `--output bf16` matches its lm_head bytes (llama.cpp's bf16 product is slower on AVX2).
// The file is streamed tensor by tensor (memory: about one bf16 matrix plus its Q8_0 copy).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "random_weights.hpp"

#include "limarp/quant/q8_0.hpp"
#include "limarp/text/tokenizer.hpp"

namespace {

using namespace limarp;

// ggml / GGUF enums (gguf.h, ggml.h)
enum : std::uint32_t { kU8 = 0, kI32 = 5, kU32 = 4, kF32 = 6, kBool = 7, kStr = 8, kArr = 9 };
enum : std::uint32_t { kTypeF32 = 0, kTypeF16 = 1, kTypeQ8_0 = 8, kTypeBF16 = 30 };
constexpr std::uint64_t kAlign = 32;

std::uint32_t ggml_type(const std::string& s) {
    if (s == "q8_0") return kTypeQ8_0;
    if (s == "f16") return kTypeF16;
    if (s == "bf16") return kTypeBF16;
    throw std::runtime_error("unknown tensor type " + s + " (q8_0, f16, bf16)");
}

std::uint64_t type_bytes(std::uint32_t t, std::uint64_t n) {
    switch (t) {
        case kTypeF32: return 4 * n;
        case kTypeF16:
        case kTypeBF16: return 2 * n;
        default: return n / 32 * 34;
    }
}

class Writer {
public:
    explicit Writer(const std::string& path) : f_(std::fopen(path.c_str(), "wb")), path_(path) {
        if (!f_) throw std::runtime_error("cannot open " + path + " for writing");
        std::setvbuf(f_, nullptr, _IOFBF, 1 << 22);
    }
    ~Writer() {
        if (f_) std::fclose(f_);
    }
    void bytes(const void* p, std::size_t n) {
        if (n && std::fwrite(p, 1, n, f_) != n) throw std::runtime_error("write error on " + path_);
        pos_ += n;
    }
    template <class T>
    void pod(T v) { bytes(&v, sizeof v); }
    void str(const std::string& s) { pod<std::uint64_t>(s.size()), bytes(s.data(), s.size()); }
    void pad() {
        static const char zeros[kAlign] = {};
        bytes(zeros, (kAlign - pos_ % kAlign) % kAlign);
    }
    void close() {
        if (std::fclose(f_) != 0) throw std::runtime_error("close error on " + path_);
        f_ = nullptr;
    }
    std::uint64_t pos() const { return pos_; }

private:
    std::FILE* f_;
    std::string path_;
    std::uint64_t pos_ = 0;
};

struct TensorPlan {
    std::string gguf_name, hf_name;  // hf_name: random_weight()'s name (the seed)
    std::vector<std::int64_t> ne;    // ggml order: ne[0] = innermost (n_in)
    std::uint32_t type;
    bool permute_heads = false;  // q/k: HF rotate-half rows -> interleaved
    std::int64_t n_head = 0;
    std::uint64_t offset = 0;
    std::uint64_t nbytes() const {
        std::uint64_t n = 1;
        for (auto e : ne) n *= static_cast<std::uint64_t>(e);
        return type_bytes(type, n);
    }
};

// convert_hf_to_gguf.py's permute(): rows [n_head, 2, hd/2] -> [n_head, hd/2, 2]
std::int64_t permuted_source_row(std::int64_t r, std::int64_t n_rows, std::int64_t n_head) {
    const std::int64_t hd = n_rows / n_head, h = r / hd, j = r % hd;
    return h * hd + (j % 2) * (hd / 2) + j / 2;
}

std::vector<std::uint8_t> encode(const TensorPlan& t) {
    const Shape shape = t.ne.size() == 1 ? Shape{t.ne[0]} : Shape{t.ne[1], t.ne[0]};
    Weight w = bench::random_weight(t.hf_name, shape);
    const std::int64_t n_in = t.ne[0], n_out = t.ne.size() == 1 ? 1 : t.ne[1];
    std::vector<std::uint8_t> out(t.nbytes());
    const std::uint64_t rb = t.nbytes() / static_cast<std::uint64_t>(n_out);
    if (t.type == kTypeQ8_0) {
        const auto q = QuantizedWeight<Q8_0>::quantize(w);
        for (std::int64_t r = 0; r < n_out; ++r) {
            const std::int64_t src = t.permute_heads ? permuted_source_row(r, n_out, t.n_head) : r;
            std::memcpy(out.data() + r * rb, q.row(src), rb);
        }
        return out;
    }
    for (std::int64_t r = 0; r < n_out; ++r) {
        const std::int64_t src = t.permute_heads ? permuted_source_row(r, n_out, t.n_head) : r;
        for (std::int64_t i = 0; i < n_in; ++i) {
            const std::size_t k = static_cast<std::size_t>(src * n_in + i);
            std::uint8_t* p = out.data() + (r * n_in + i) * static_cast<std::int64_t>(t.type == kTypeF32 ? 4 : 2);
            const float v = load_as_f32(w.data, w.dtype, k);
            if (t.type == kTypeF32) std::memcpy(p, &v, 4);
            else {
                const std::uint16_t b = t.type == kTypeF16 ? f32_to_f16(v) : f32_to_bf16(v);  // bf16: exact
                std::memcpy(p, &b, 2);
            }
        }
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) try {
    std::string out, tok_path, embd = "q8_0", output = "q8_0";
    std::int64_t layers = 32, vocab = 32002, d = 4096, ff = 14336;
    const char* cache = std::getenv("LIMARP_CACHE");
    tok_path = std::string(cache ? cache : ".cache") + "/mistral-tokenizer.model";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--out") out = v;
        else if (k == "--layers") layers = std::atoll(v.c_str());
        else if (k == "--tokenizer") tok_path = v;
        else if (k == "--vocab") vocab = std::atoll(v.c_str());
        else if (k == "--embd") embd = v;
        else if (k == "--output") output = v;
        else if (k == "--d-model") d = std::atoll(v.c_str());
        else if (k == "--d-ff") ff = std::atoll(v.c_str());
        else {
            std::fprintf(stderr, "bench_make_gguf: unknown option %s\n", k.c_str());
            return 1;
        }
    }
    if (out.empty() || argc % 2 == 0) {
        std::fprintf(stderr, "usage: bench_make_gguf --out FILE.gguf [--layers N] [--tokenizer PATH]"
                             " [--vocab 32000|32002] [--embd q8_0|f16|bf16] [--output q8_0|f16|bf16]"
                             " [--d-model D] [--d-ff F]\n");
        return 1;
    }
    if (vocab != 32000 && vocab != 32002) throw std::runtime_error("--vocab must be 32000 or 32002");
    const std::int64_t n_head = 32, n_kv = 8, hd = d / n_head;

    // vocabulary
    auto tok = text::Tokenizer::from_sentencepiece(tok_path);
    if (tok.vocab_size() != 32000) throw std::runtime_error(tok_path + ": expected Mistral's 32000 pieces");
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<std::int32_t> types;
    for (int id = 0; id < tok.vocab_size(); ++id) {
        tokens.emplace_back(tok.piece(id));
        scores.push_back(tok.piece_score(id));
        types.push_back(static_cast<std::int32_t>(tok.piece_type(id)));
    }
    if (vocab == 32002)
        for (const char* s : {"<|im_end|>", "<|im_start|>"})  // control tokens (type 3)
            tokens.emplace_back(s), scores.push_back(0.f), types.push_back(3);

    // tensors, in llama.cpp's order
    std::vector<TensorPlan> ts;
    ts.push_back({"token_embd.weight", "model.embed_tokens.weight", {d, vocab}, ggml_type(embd)});
    for (std::int64_t l = 0; l < layers; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".", h = "model.layers." + std::to_string(l) + ".";
        ts.push_back({b + "attn_norm.weight", h + "input_layernorm.weight", {d}, kTypeF32});
        ts.push_back({b + "attn_q.weight", h + "self_attn.q_proj.weight", {d, d}, kTypeQ8_0, true, n_head});
        ts.push_back({b + "attn_k.weight", h + "self_attn.k_proj.weight", {d, n_kv * hd}, kTypeQ8_0, true, n_kv});
        ts.push_back({b + "attn_v.weight", h + "self_attn.v_proj.weight", {d, n_kv * hd}, kTypeQ8_0});
        ts.push_back({b + "attn_output.weight", h + "self_attn.o_proj.weight", {d, d}, kTypeQ8_0});
        ts.push_back({b + "ffn_norm.weight", h + "post_attention_layernorm.weight", {d}, kTypeF32});
        ts.push_back({b + "ffn_gate.weight", h + "mlp.gate_proj.weight", {d, ff}, kTypeQ8_0});
        ts.push_back({b + "ffn_up.weight", h + "mlp.up_proj.weight", {d, ff}, kTypeQ8_0});
        ts.push_back({b + "ffn_down.weight", h + "mlp.down_proj.weight", {ff, d}, kTypeQ8_0});
    }
    ts.push_back({"output_norm.weight", "model.norm.weight", {d}, kTypeF32});
    ts.push_back({"output.weight", "lm_head.weight", {d, vocab}, ggml_type(output)});
    std::uint64_t off = 0;
    for (auto& t : ts) t.offset = off, off += (t.nbytes() + kAlign - 1) / kAlign * kAlign;

    Writer w(out + ".tmp");
    w.bytes("GGUF", 4);
    w.pod<std::uint32_t>(3);
    w.pod<std::uint64_t>(ts.size());
    std::uint64_t n_kv_pairs = 0;
    std::vector<std::function<void()>> kvs;
    auto kv_u32 = [&](const std::string& k, std::uint32_t v) {
        kvs.push_back([&w, k, v] { w.str(k), w.pod(kU32), w.pod(v); });
    };
    auto kv_f32 = [&](const std::string& k, float v) {
        kvs.push_back([&w, k, v] { w.str(k), w.pod(kF32), w.pod(v); });
    };
    auto kv_str = [&](const std::string& k, const std::string& v) {
        kvs.push_back([&w, k, v] { w.str(k), w.pod(kStr), w.str(v); });
    };
    auto kv_bool = [&](const std::string& k, bool v) {
        kvs.push_back([&w, k, v] { w.str(k), w.pod(kBool), w.pod<std::uint8_t>(v); });
    };
    kv_str("general.architecture", "llama");
    kv_str("general.name", "limarp random Mistral-7B-shaped Q8_0 (" + std::to_string(layers) + " layers)");
    kv_u32("general.alignment", static_cast<std::uint32_t>(kAlign));
    kv_u32("general.file_type", 7);  // LLAMA_FTYPE_MOSTLY_Q8_0
    kv_u32("general.quantization_version", 2);
    kv_u32("llama.context_length", 32768);
    kv_u32("llama.embedding_length", static_cast<std::uint32_t>(d));
    kv_u32("llama.block_count", static_cast<std::uint32_t>(layers));
    kv_u32("llama.feed_forward_length", static_cast<std::uint32_t>(ff));
    kv_u32("llama.attention.head_count", static_cast<std::uint32_t>(n_head));
    kv_u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(n_kv));
    kv_u32("llama.rope.dimension_count", static_cast<std::uint32_t>(hd));
    kv_f32("llama.rope.freq_base", 10000.0f);
    kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_u32("llama.vocab_size", static_cast<std::uint32_t>(vocab));
    kv_str("tokenizer.ggml.model", "llama");
    kvs.push_back([&] {
        w.str("tokenizer.ggml.tokens"), w.pod(kArr), w.pod(kStr), w.pod<std::uint64_t>(tokens.size());
        for (const auto& s : tokens) w.str(s);
    });
    kvs.push_back([&] {
        w.str("tokenizer.ggml.scores"), w.pod(kArr), w.pod(kF32), w.pod<std::uint64_t>(scores.size());
        w.bytes(scores.data(), scores.size() * 4);
    });
    kvs.push_back([&] {
        w.str("tokenizer.ggml.token_type"), w.pod(kArr), w.pod(kI32), w.pod<std::uint64_t>(types.size());
        w.bytes(types.data(), types.size() * 4);
    });
    kv_u32("tokenizer.ggml.bos_token_id", 1);
    kv_u32("tokenizer.ggml.eos_token_id", 2);
    kv_u32("tokenizer.ggml.unknown_token_id", 0);
    kv_bool("tokenizer.ggml.add_bos_token", true);
    kv_bool("tokenizer.ggml.add_eos_token", false);
    n_kv_pairs = kvs.size();
    w.pod<std::uint64_t>(n_kv_pairs);
    for (auto& f : kvs) f();
    for (const auto& t : ts) {
        w.str(t.gguf_name);
        w.pod<std::uint32_t>(static_cast<std::uint32_t>(t.ne.size()));
        for (auto e : t.ne) w.pod<std::uint64_t>(static_cast<std::uint64_t>(e));
        w.pod<std::uint32_t>(t.type);
        w.pod<std::uint64_t>(t.offset);
    }
    w.pad();
    const std::uint64_t data_start = w.pos();
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < ts.size(); ++i) {
        const auto& t = ts[i];
        if (w.pos() - data_start != t.offset) throw std::logic_error("offset mismatch at " + t.gguf_name);
        const auto bytes = encode(t);
        w.bytes(bytes.data(), bytes.size());
        w.pad();
        if (t.gguf_name.ends_with("ffn_down.weight") || i + 1 == ts.size())
            std::fprintf(stderr, "bench_make_gguf: %s written (%.2f of %.2f GB, %.0f s)\n", t.gguf_name.c_str(),
                         static_cast<double>(w.pos()) / 1e9, static_cast<double>(data_start + off) / 1e9,
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    w.close();
    std::filesystem::rename(out + ".tmp", out);
    std::printf("%s: GGUF v3, %zu tensors, %lld layers, vocab %lld, %.2f GB\n", out.c_str(), ts.size(),
                static_cast<long long>(layers), static_cast<long long>(vocab),
                static_cast<double>(std::filesystem::file_size(out)) / 1e9);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_make_gguf: %s\n", e.what());
    return 1;
}
