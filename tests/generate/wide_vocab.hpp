#pragma once
// A golden fixture model (vocab 1000) widened to the Mistral-7B-OpenOrca vocabulary (32002),
// so that text encoded with the real Mistral tokenizer (plus <|im_end|>, <|im_start|>) can be
// fed to it: embedding and lm_head rows of ids < 1000 are the fixture's, the other rows are
// random with the same spread (deterministic). Everything else is copied unchanged.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/dtype.hpp"
#include "limarp/core/error.hpp"
#include "limarp/io/safetensors.hpp"

namespace limarp::test {

/// Writes `dst`/config.json and `dst`/model.safetensors: the model of `src` with `vocab` ids.
inline void write_wide_vocab_model(const std::filesystem::path& src, const std::filesystem::path& dst,
                                   std::int64_t vocab = 32002, std::uint64_t seed = 1234) {
    std::filesystem::create_directories(dst);
    nlohmann::json cfg;
    {
        std::ifstream f(src / "config.json");
        if (!f) throw IoError((src / "config.json").string() + ": cannot open");
        cfg = nlohmann::json::parse(f);
    }
    const std::int64_t old_vocab = cfg.at("vocab_size").get<std::int64_t>();
    cfg["vocab_size"] = vocab;
    {
        std::ofstream f(dst / "config.json");
        f << cfg.dump(2) << "\n";
        if (!f) throw IoError((dst / "config.json").string() + ": cannot write");
    }
    const io::SafeTensorsCheckpoint ck = io::SafeTensorsCheckpoint::open(src);
    io::SafeTensorsWriter w;
    std::mt19937_64 rng(seed);
    for (const std::string& name : ck.names()) {
        const io::TensorInfo& t = ck.get(name);
        const bool widen = (name == "model.embed_tokens.weight" || name == "lm_head.weight") && t.shape.size() == 2 &&
                           t.shape[0] == old_vocab;
        if (!widen) {
            w.add(name, t.dtype, t.shape, t.data, t.nbytes);
            continue;
        }
        if (t.dtype != DType::BF16 && t.dtype != DType::F32) throw FormatError(name + ": expected bf16 or f32");
        const std::int64_t d = t.shape[1];
        const std::size_t esz = dtype_size(t.dtype);
        std::vector<float> vals(static_cast<std::size_t>(old_vocab * d));
        for (std::size_t i = 0; i < vals.size(); ++i) vals[i] = load_as_f32(t.data, t.dtype, i);
        double ss = 0;
        for (float v : vals) ss += static_cast<double>(v) * v;
        std::normal_distribution<float> nd(0.0f, static_cast<float>(std::sqrt(ss / static_cast<double>(vals.size()))));
        std::vector<std::byte> out(static_cast<std::size_t>(vocab * d) * esz);
        std::memcpy(out.data(), t.data, t.nbytes);
        for (std::size_t i = vals.size(); i < static_cast<std::size_t>(vocab * d); ++i) {
            const float v = nd(rng);
            if (t.dtype == DType::BF16) {
                const std::uint16_t b = f32_to_bf16(v);
                std::memcpy(out.data() + i * 2, &b, 2);
            } else {
                std::memcpy(out.data() + i * 4, &v, 4);
            }
        }
        w.add(name, t.dtype, Shape{vocab, d}, out.data(), out.size());
    }
    w.write(dst / "model.safetensors");
}

}  // namespace limarp::test
