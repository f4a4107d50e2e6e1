#pragma once
// Opens a tokenizer from a tokenizer.model, a tokenizer.json or a folder holding one.
#include <filesystem>

#include "limarp/core/error.hpp"
#include "limarp/text/tokenizer.hpp"

namespace limarp::programs {

inline text::Tokenizer load_tokenizer(const std::filesystem::path& p) {
    if (std::filesystem::is_directory(p)) return text::Tokenizer::from_dir(p);
    if (!std::filesystem::exists(p)) throw IoError(p.string() + ": no such tokenizer file or folder");
    if (p.extension() == ".json") return text::Tokenizer::from_hf_json(p);
    return text::Tokenizer::from_sentencepiece(p);
}

}  // namespace limarp::programs
