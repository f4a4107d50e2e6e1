// limarp-tokenize: text -> ids and ids -> text with a SentencePiece-BPE tokenizer (Mistral).
//
//   limarp-tokenize --tokenizer tokenizer.model --text "Hello world"      # 1 22557 1526
//   limarp-tokenize --tokenizer model_dir/ --no-bos --file prompt.txt
//   limarp-tokenize --tokenizer tokenizer.json --decode "1 22557 1526"    # Hello world
//
// --tokenizer takes a tokenizer.model, a tokenizer.json or a model folder (tokenizer files plus
// added_tokens.json / tokenizer_config.json). Ids are printed on one line, separated by single
// spaces; decoded text is printed followed by a newline. Any error prints one line to stderr
// and exits with status 1.
#include <CLI/CLI.hpp>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "limarp/core/error.hpp"
#include "limarp/text/tokenizer.hpp"

namespace {

int fail(std::string msg) {
    for (char& c : msg)
        if (c == '\n' || c == '\r') c = ' ';
    std::cerr << "limarp-tokenize: error: " << msg << "\n";
    return 1;
}

limarp::text::Tokenizer load(const std::filesystem::path& p) {
    namespace fs = std::filesystem;
    using limarp::text::Tokenizer;
    if (fs::is_directory(p)) return Tokenizer::from_dir(p);
    if (p.extension() == ".json") return Tokenizer::from_hf_json(p);
    return Tokenizer::from_sentencepiece(p);
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw limarp::IoError(path + ": cannot open file for reading (" + std::strerror(errno) + ")");
    std::ostringstream ss;
    ss << f.rdbuf();
    return std::move(ss).str();
}

// Parses "1 2,3, 4" into ids; throws limarp::ArgumentError naming the bad token.
std::vector<int> parse_ids(std::string_view s) {
    std::vector<int> ids;
    std::size_t i = 0;
    while (i < s.size()) {
        if (s[i] == ' ' || s[i] == ',' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
            ++i;
            continue;
        }
        std::size_t e = i;
        while (e < s.size() && s[e] != ' ' && s[e] != ',' && s[e] != '\t' && s[e] != '\n' && s[e] != '\r') ++e;
        const std::string_view tok = s.substr(i, e - i);
        int v = 0;
        const auto [ptr, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
        if (ec != std::errc() || ptr != tok.data() + tok.size())
            throw limarp::ArgumentError("--decode: '" + std::string(tok) + "' is not a token id");
        ids.push_back(v);
        i = e;
    }
    return ids;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"limarp-tokenize: encode text to token ids, or decode ids to text (SentencePiece-BPE, Mistral)"};
    std::string tokenizer_path, text, file, decode;
    bool no_bos = false, eos = false, parse_special = false, show_special = false;
    app.add_option("--tokenizer", tokenizer_path, "tokenizer.model, tokenizer.json or a model folder")->required();
    auto* o_text = app.add_option("--text", text, "text to encode");
    auto* o_file = app.add_option("--file", file, "file whose bytes to encode");
    auto* o_decode = app.add_option("--decode", decode, "ids to decode, separated by spaces or commas");
    o_text->excludes(o_file)->excludes(o_decode);
    o_file->excludes(o_decode);
    app.add_flag("--no-bos", no_bos, "do not prepend the BOS id");
    app.add_flag("--eos", eos, "append the EOS id");
    app.add_flag("--parse-special", parse_special,
                 "turn special-token strings in the text (<s>, <|im_end|>) into their ids");
    app.add_flag("--show-special", show_special, "with --decode: print special tokens instead of skipping them");
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::cout << app.help();
        return 0;
    } catch (const CLI::ParseError& e) {
        return fail(std::string(e.what()) + " (see --help)");
    }
    const int modes = (o_text->count() > 0) + (o_file->count() > 0) + (o_decode->count() > 0);
    if (modes != 1) return fail("give exactly one of --text, --file or --decode (see --help)");

    try {
        const limarp::text::Tokenizer tok = load(tokenizer_path);
        if (o_decode->count()) {
            const std::vector<int> ids = parse_ids(decode);
            std::cout << tok.decode(ids, !show_special) << "\n";
            return 0;
        }
        std::string input = text;
        if (o_file->count()) input = read_file(file);
        const std::vector<int> ids =
            tok.encode(input, {.add_bos = !no_bos, .add_eos = eos, .parse_special = parse_special});
        std::string line;
        for (std::size_t i = 0; i < ids.size(); ++i) {
            if (i) line += ' ';
            line += std::to_string(ids[i]);
        }
        std::cout << line << "\n";
        return 0;
    } catch (const std::exception& e) {
        return fail(e.what());
    }
}
