#pragma once
/// \file dataset.hpp
/// \brief Training data: LimaRP YAML files and JSONL conversations, validated, turned into the
/// extended-Alpaca text with a length tag on every response header, tokenized with a loss mask,
/// cut to `sequence_len` at turn boundaries, split into train/eval with a seed, and visited in
/// a seeded order per epoch (`Sampler`).
///
/// **Link requirement:** this header parses YAML with yaml-cpp, so a program that includes it
/// must link yaml-cpp (CMake: `find_package(yaml-cpp REQUIRED)` and
/// `target_link_libraries(prog PRIVATE yaml-cpp)`; Debian: libyaml-cpp-dev). The other
/// train/ headers except train_config.hpp do not need it.
///
/// ## Input formats
/// A LimaRP YAML file holds one conversation; `<FIRST>` is the character (the model's side),
/// `<SECOND>` the user. Placeholders may appear in every text and are replaced by the names:
/// \verbatim
/// personas:
///   <FIRST>: <FIRST> is a cheerful elf ranger ...
///   <SECOND>: <SECOND> is a lost traveler.
/// names:
///   <FIRST>: Aria
///   <SECOND>: Bob
/// scenario: <SECOND> stumbles into <FIRST>'s camp at dusk.
/// conversation:
///   - name: <FIRST>
///     text: '*Aria looks up from the fire.* A visitor?'
///   - name: <SECOND>
///     text: Thanks. I think I'm lost...
/// \endverbatim
/// A JSONL file holds one conversation per line, a JSON object with the same fields (blank
/// lines are skipped; a UTF-8 BOM at the start is ignored):
/// \verbatim
/// {"personas": {"<FIRST>": "...", "<SECOND>": "..."}, "names": {"<FIRST>": "Aria", "<SECOND>": "Bob"},
///  "scenario": "...", "conversation": [{"name": "<FIRST>", "text": "..."}, {"name": "<SECOND>", "text": "..."}]}
/// \endverbatim
/// Rules (both formats; any violation is a FormatError naming the file, the line and the field,
/// e.g. `data/a.yaml:14: field 'conversation[3].text': the message is empty`):
/// `names` is a map with non-empty strings \<FIRST\> and \<SECOND\>; `personas` is a map whose
/// two entries are strings or null/absent (= no persona line); `scenario` must be present
/// (a string, or null = none); `conversation` is a non-empty list of maps with a string `name`
/// (\<FIRST\>, \<SECOND\>, or one of the two names literally) and a non-blank string `text`;
/// at least one message is the character's. Other keys are ignored (LimaRP files may carry
/// metadata). In YAML every scalar is text (`text: 42` is "42"); in JSON values must be strings.
///
/// ## Training text
/// The prompt of text/alpaca_prompt.hpp (AlpacaPrompt) with every turn in order and a length
/// tag on **each** response header, the tag of that response's own length (LengthBins):
/// \verbatim
///
/// ### Instruction:
/// Aria's Persona: ...
///
/// Bob's Persona: ...
///
/// Scenario: ...
///
/// Play the role of Aria. You must engage in a roleplaying chat with Bob below this line. Do not write dialogues and narration for Bob.
///
/// ### Response: (length = tiny)
/// Aria: *Aria looks up from the fire.* A visitor?
///
/// ### Input:
/// Bob: Thanks. I think I'm lost...
/// \endverbatim
/// There is no trailing newline and no final empty response header.
///
/// ## Tokens and loss mask
/// The text is cut into blocks: the instruction block, then per turn `"\n\n### Input:\nBob: text"`
/// or the response header `"\n\n### Response: (length = TAG)\nAria:"` and the body `" text"`.
/// The instruction block is encoded with BOS and the tokenizer's dummy prefix, every other block
/// without BOS and without dummy prefix, and the ids are concatenated. For SentencePiece
/// vocabularies such as Mistral's this equals encoding the whole text at once (blocks start
/// with a newline, a byte-fallback token no merge crosses, or with a space, where SentencePiece
/// starts a new piece); DatasetOptions::check_tokenization verifies it per example.
/// `Example::targets[t]` is 1 when token t is a loss target (predicted at position t-1):
/// with `train_on_inputs` (the default, as the seed) every token but the first (BOS); without,
/// only the response bodies (the tokens after `Aria:`), plus the EOS when DatasetOptions::add_eos
/// and the sequence ends on a response.
///
/// ## Truncation
/// An example holds at most `sequence_len` tokens. Trailing turns that do not fit are dropped
/// (never a part of one). When not even the first turn fits after the instruction block,
/// OversizeTurn decides: `Truncate` (default) keeps the first turn cut at the token budget,
/// `Skip` drops the example. Examples whose instruction block alone does not fit, and examples
/// left without any loss target, are skipped. Skipped examples are listed in DatasetStats.
///
/// ## Split and order
/// Examples are built in source order (files sorted by path, JSONL lines in order); a
/// permutation drawn from `std::mt19937_64(seed)` (Fisher-Yates, our own uniform draws, so
/// every platform gives the same order) puts `n_eval` of them in the eval set (the first ones
/// of the permutation) and the rest, in permutation order, in the train set. `n_eval` is
/// `ceil(val_set_size * n)` for `0 < val_set_size < 1` (as Hugging Face datasets'
/// train_test_split) or `val_set_size` itself for `val_set_size >= 1` (an integer).
/// Sampler visits the train set once per epoch in an order that depends only on (seed, epoch).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "limarp/core/error.hpp"
#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/tokenizer.hpp"
#include "limarp/train/detail/conversation_parse.hpp"
#include "limarp/train/detail/random.hpp"
#include "limarp/train/length_bins.hpp"

namespace limarp::train {

/// A validated roleplay conversation (placeholders kept; they are replaced when formatting).
struct Conversation {
    std::string source;             ///< where it came from: "file" (YAML) or "file:line" (JSONL)
    text::RoleplaySetup setup;      ///< names (character = `<FIRST>`), personas, scenario
    std::vector<text::Turn> turns;  ///< messages in order (at least one is the character's)
};

/// Parses a LimaRP YAML document; `source` names it in errors and in Conversation::source.
/// \throws FormatError naming the source, the line and the field (see the file comment for the rules).
inline Conversation parse_limarp_yaml(std::string_view yaml_text, const std::string& source) {
    const auto raw = detail::parse_limarp_yaml_raw(yaml_text, source);
    auto [setup, turns] = detail::finish_conversation(raw);
    return Conversation{source, std::move(setup), std::move(turns)};
}

/// \cond
namespace detail {
inline std::string read_text_file(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw IoError("cannot open " + p.string());
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) throw IoError("cannot read " + p.string());
    return ss.str();
}
}  // namespace detail
/// \endcond

/// Reads and validates one LimaRP YAML file.
/// \throws IoError when it cannot be read; FormatError naming the file, line and field.
inline Conversation load_limarp_yaml(const std::filesystem::path& path) {
    return parse_limarp_yaml(detail::read_text_file(path), path.string());
}

/// Parses JSONL text (one conversation object per line; blank lines skipped); `source` names
/// it in errors (as `source:LINE`). \throws FormatError naming the line and the field.
inline std::vector<Conversation> parse_conversations_jsonl(std::string_view text, const std::string& source) {
    std::vector<Conversation> out;
    if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
    std::size_t line_no = 0, pos = 0;
    while (pos <= text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string_view::npos) end = text.size();
        std::string_view line = text.substr(pos, end - pos);
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (!detail::is_blank(line)) {
            const std::string where = source + ":" + std::to_string(line_no);
            const auto raw = detail::parse_conversation_json_raw(line, where);
            auto [setup, turns] = detail::finish_conversation(raw);
            out.push_back(Conversation{where, std::move(setup), std::move(turns)});
        }
        if (end == text.size()) break;
        pos = end + 1;
    }
    return out;
}

/// Reads and validates a JSONL file. \throws IoError, FormatError (file:line and field).
inline std::vector<Conversation> load_conversations_jsonl(const std::filesystem::path& path) {
    return parse_conversations_jsonl(detail::read_text_file(path), path.string());
}

/// One entry of a config's `datasets:` list (Axolotl's field names).
struct DatasetSource {
    std::string path;  ///< a file, or a folder searched recursively
    /// `limarp` (YAML files), `jsonl`, or empty / `auto`: by extension (`.yaml`/`.yml` are
    /// LimaRP YAML, `.jsonl` JSONL; in a folder, files with other extensions are ignored).
    std::string type;

    /// Equality.
    friend bool operator==(const DatasetSource&, const DatasetSource&) = default;
};

/// Loads and validates every conversation of `sources`, in order (folder contents sorted by path).
/// Every file is checked before anything is returned: all problems (up to 20 listed) are
/// reported together in one FormatError, one line per bad file with its line and field.
/// \throws IoError when a path does not exist or cannot be read; ArgumentError for an unknown
/// `type` or a file whose format cannot be told; FormatError for malformed data or a source
/// without any data file.
inline std::vector<Conversation> load_conversations(std::span<const DatasetSource> sources) {
    namespace fs = std::filesystem;
    enum class Kind { Yaml, Jsonl, None };
    auto kind_of_ext = [](const fs::path& p) {
        const std::string e = p.extension().string();
        if (e == ".yaml" || e == ".yml") return Kind::Yaml;
        if (e == ".jsonl") return Kind::Jsonl;
        return Kind::None;
    };
    std::vector<std::pair<fs::path, Kind>> files;
    for (const auto& src : sources) {
        Kind forced = Kind::None;
        if (src.type == "limarp" || src.type == "limarp_yaml" || src.type == "yaml") forced = Kind::Yaml;
        else if (src.type == "jsonl") forced = Kind::Jsonl;
        else if (!src.type.empty() && src.type != "auto")
            throw ArgumentError("datasets: path " + src.path + ": unknown type \"" + src.type +
                                "\" (expected limarp for LimaRP YAML files, jsonl, or auto)");
        const fs::path p(src.path);
        std::error_code ec;
        if (fs::is_directory(p, ec)) {
            std::vector<std::pair<fs::path, Kind>> found;
            for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
                if (!it->is_regular_file()) continue;
                const Kind k = kind_of_ext(it->path());
                if (k == Kind::None || (forced != Kind::None && k != forced)) continue;
                found.emplace_back(it->path(), k);
            }
            if (ec) throw IoError("cannot list " + p.string() + ": " + ec.message());
            if (found.empty())
                throw FormatError(p.string() + ": no " +
                                  std::string(forced == Kind::Jsonl ? ".jsonl" : forced == Kind::Yaml ? ".yaml/.yml"
                                                                                                      : ".yaml/.yml/.jsonl") +
                                  " files in this folder");
            std::sort(found.begin(), found.end());
            files.insert(files.end(), found.begin(), found.end());
        } else if (fs::exists(p, ec)) {
            const Kind k = forced != Kind::None ? forced : kind_of_ext(p);
            if (k == Kind::None)
                throw ArgumentError("datasets: cannot tell the format of " + p.string() +
                                    " from its extension; set type: limarp (YAML) or type: jsonl");
            files.emplace_back(p, k);
        } else {
            throw IoError("datasets: " + p.string() + " does not exist");
        }
    }
    std::vector<Conversation> out;
    std::vector<std::string> problems;
    for (const auto& [path, kind] : files) {
        try {
            if (kind == Kind::Yaml) {
                out.push_back(load_limarp_yaml(path));
            } else {
                auto v = load_conversations_jsonl(path);
                if (v.empty()) throw FormatError(path.string() + ": no conversation (the file is empty)");
                for (auto& c : v) out.push_back(std::move(c));
            }
        } catch (const FormatError& e) {
            problems.push_back(e.what());
        }
    }
    if (!problems.empty()) {
        std::string msg = "dataset: " + std::to_string(problems.size()) + " malformed file" +
                          (problems.size() == 1 ? "" : "s") + " (training does not start on a broken dataset):";
        for (std::size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  " + problems[i];
        if (problems.size() > 20) msg += "\n  ... and " + std::to_string(problems.size() - 20) + " more";
        throw FormatError(msg);
    }
    return out;
}

/// What to do when not even the first turn fits in `sequence_len` after the instruction block.
enum class OversizeTurn : std::uint8_t {
    Truncate,  ///< keep the first turn, cut at the token budget
    Skip,      ///< drop the example
};

/// `truncate` or `skip`.
constexpr std::string_view to_string(OversizeTurn o) noexcept { return o == OversizeTurn::Skip ? "skip" : "truncate"; }

/// Parses `truncate` or `skip`. \throws ArgumentError.
inline OversizeTurn parse_oversize_turn(std::string_view s) {
    if (s == "truncate") return OversizeTurn::Truncate;
    if (s == "skip") return OversizeTurn::Skip;
    throw ArgumentError("unknown oversize_turn \"" + std::string(s) + "\" (expected truncate or skip)");
}

/// How conversations become examples (defaults: the seed's recipe).
struct DatasetOptions {
    std::int64_t sequence_len = 9500;               ///< max tokens per example (BOS included)
    bool train_on_inputs = true;                    ///< loss on every token (true) or on responses only
    bool length_tags = true;                        ///< put `(length = TAG)` on every response header
    LengthBins length_bins;                         ///< length -> tag (words by default)
    OversizeTurn oversize_turn = OversizeTurn::Truncate;  ///< first turn longer than the budget
    bool add_eos = false;                           ///< append the tokenizer's EOS to every example
    double val_set_size = 0;                        ///< eval split: fraction (< 1) or count (>= 1)
    std::uint64_t seed = 42;                        ///< split and epoch-order seed
    bool shuffle = true;                            ///< shuffle the split and every epoch (false: source order)
    bool check_tokenization = false;                ///< verify block-wise ids == whole-text ids per example

    /// \throws ArgumentError naming the bad option.
    void validate() const {
        if (sequence_len < 2)
            throw ArgumentError("sequence_len must be at least 2, got " + std::to_string(sequence_len));
        if (!(val_set_size >= 0) || !std::isfinite(val_set_size))
            throw ArgumentError("val_set_size must be >= 0, got " + std::to_string(val_set_size));
        if (val_set_size >= 1 && val_set_size != std::floor(val_set_size))
            throw ArgumentError("val_set_size >= 1 is a number of examples and must be an integer, got " +
                                std::to_string(val_set_size));
        length_bins.validate();
    }
};

/// What a block of the training text is.
enum class SegmentKind : std::uint8_t {
    Instruction,     ///< `\n### Instruction:\n...` (personas, scenario, role-play sentence)
    Input,           ///< `\n\n### Input:\nBob: text` (a user turn)
    ResponseHeader,  ///< `\n\n### Response: (length = TAG)\nAria:`
    ResponseBody,    ///< ` text` (what the character says)
};

/// One block of the training text.
struct PromptSegment {
    SegmentKind kind = SegmentKind::Instruction;  ///< what it is
    std::size_t turn = 0;                         ///< index of its turn (0 for the instruction)
    std::string text;                             ///< its exact bytes
    std::optional<text::LengthTag> tag;           ///< the length tag (response blocks, when tags are on)
};

/// A tokenized training example.
struct Example {
    std::vector<int> tokens;               ///< [T] ids, BOS first
    std::vector<std::uint8_t> targets;     ///< [T] 1 when token t is a loss target (predicted at t-1); targets[0] == 0
    std::string source;                    ///< the conversation's source ("file" or "file:line")
    std::size_t turns_kept = 0;            ///< turns in the example
    std::size_t turns_total = 0;           ///< turns in the conversation
    bool turn_cut = false;                 ///< the only kept turn was cut at the token budget
    std::array<std::int32_t, 10> tag_counts{};  ///< kept responses per length tag

    /// Number of tokens T.
    std::int64_t size() const noexcept { return static_cast<std::int64_t>(tokens.size()); }
    /// Number of loss targets.
    std::int64_t n_targets() const noexcept {
        std::int64_t n = 0;
        for (const auto m : targets) n += m;
        return n;
    }
    /// Hugging Face style labels: `tokens[t]` where targets[t], else `ignore` (-100); the model
    /// shifts them by one (position t-1 predicts labels[t]).
    std::vector<int> labels(int ignore = -100) const {
        std::vector<int> l(tokens.size());
        for (std::size_t t = 0; t < tokens.size(); ++t) l[t] = targets[t] ? tokens[t] : ignore;
        return l;
    }
};

/// Turns conversations into training text and examples (see the file comment).
class ExampleBuilder {
public:
    /// Keeps a copy of `tok` (and one without dummy prefix for the blocks after the first).
    /// \throws ArgumentError for invalid options.
    ExampleBuilder(const text::Tokenizer& tok, DatasetOptions opt) : tok_(tok), tok_plain_(tok), opt_(std::move(opt)) {
        opt_.validate();
        tok_plain_.set_dummy_prefix(text::DummyPrefix::None);
    }

    /// The options.
    const DatasetOptions& options() const noexcept { return opt_; }

    /// The blocks of the training text of `c`, in order (their concatenation is text()).
    std::vector<PromptSegment> segments(const Conversation& c) const {
        const text::AlpacaPrompt prompt(c.setup);
        std::vector<PromptSegment> out;
        out.push_back({SegmentKind::Instruction, 0, prompt.instruction(), std::nullopt});
        static constexpr std::string_view kResp = "### Response:";
        for (std::size_t i = 0; i < c.turns.size(); ++i) {
            const text::Turn& t = c.turns[i];
            std::string s = prompt.turn(t);
            if (t.speaker == text::Speaker::User) {
                out.push_back({SegmentKind::Input, i, "\n\n" + s, std::nullopt});
                continue;
            }
            // s = "### Response:\nAria: body"; header ends after "Aria:".
            const std::size_t header_len = kResp.size() + 1 + c.setup.char_name.size() + 1;
            std::string body = s.substr(header_len);  // " body"
            std::string header = "\n\n" + s.substr(0, header_len);
            std::optional<text::LengthTag> tag;
            if (opt_.length_tags) {
                const std::string_view measured = std::string_view(body).substr(body.empty() ? 0 : 1);
                tag = opt_.length_bins.tag_for_text(measured, &tok_);
                header.insert(2 + kResp.size(), " (length = " + std::string(text::to_string(*tag)) + ")");
            }
            out.push_back({SegmentKind::ResponseHeader, i, std::move(header), tag});
            out.push_back({SegmentKind::ResponseBody, i, std::move(body), tag});
        }
        return out;
    }

    /// The whole training text of `c` (every turn, tags on every response header).
    std::string text(const Conversation& c) const {
        std::string s;
        for (const auto& seg : segments(c)) s += seg.text;
        return s;
    }

    /// Tokenizes `c` into an example, or nullopt when it is skipped (the reason goes to `why`).
    /// \throws UnsupportedError when check_tokenization is on and the block-wise ids differ from
    ///         the whole-text ids (a tokenizer whose merges cross block boundaries).
    std::optional<Example> build(const Conversation& c, std::string* why = nullptr) const {
        auto skip = [&](std::string reason) -> std::optional<Example> {
            if (why) *why = std::move(reason);
            return std::nullopt;
        };
        const auto segs = segments(c);
        std::vector<std::vector<int>> ids(segs.size());
        text::EncodeOptions first;
        first.add_bos = true;
        text::EncodeOptions rest;
        rest.add_bos = false;
        for (std::size_t i = 0; i < segs.size(); ++i)
            ids[i] = i == 0 ? tok_.encode(segs[i].text, first) : tok_plain_.encode(segs[i].text, rest);

        const bool eos = opt_.add_eos && tok_.eos_id() >= 0;
        const std::int64_t budget = opt_.sequence_len;
        std::int64_t used = static_cast<std::int64_t>(ids[0].size()) + (eos ? 1 : 0);
        if (used > budget)
            return skip("the instruction block alone is " + std::to_string(ids[0].size()) +
                        " tokens, more than sequence_len " + std::to_string(budget));
        // Turn lengths (a turn = 1 or 2 segments).
        const std::size_t n_turns = c.turns.size();
        std::vector<std::int64_t> turn_len(n_turns, 0);
        for (std::size_t s = 1; s < segs.size(); ++s) turn_len[segs[s].turn] += static_cast<std::int64_t>(ids[s].size());
        std::size_t kept = 0;
        while (kept < n_turns && used + turn_len[kept] <= budget) used += turn_len[kept++];
        bool cut = false;
        if (kept == 0) {
            if (opt_.oversize_turn == OversizeTurn::Skip)
                return skip("the first turn needs " + std::to_string(turn_len[0]) + " tokens after the instruction block, " +
                            "more than sequence_len " + std::to_string(budget) + " allows (oversize_turn: skip)");
            kept = 1;
            cut = true;
        }
        Example ex;
        ex.source = c.source;
        ex.turns_total = n_turns;
        ex.turns_kept = kept;
        ex.turn_cut = cut;
        const std::int64_t room = budget - (eos ? 1 : 0);
        bool last_is_response = false;
        for (std::size_t s = 0; s < segs.size(); ++s) {
            if (s > 0 && segs[s].turn >= kept) break;
            const bool target = opt_.train_on_inputs || segs[s].kind == SegmentKind::ResponseBody;
            for (const int id : ids[s]) {
                if (static_cast<std::int64_t>(ex.tokens.size()) >= room) break;
                ex.tokens.push_back(id);
                ex.targets.push_back(target ? 1 : 0);
            }
            if (s > 0) last_is_response = segs[s].kind != SegmentKind::Input;
            if (segs[s].kind == SegmentKind::ResponseHeader && segs[s].tag)
                ++ex.tag_counts[static_cast<std::size_t>(*segs[s].tag)];
        }
        if (eos) {
            ex.tokens.push_back(tok_.eos_id());
            ex.targets.push_back(opt_.train_on_inputs || last_is_response ? 1 : 0);
        }
        if (!ex.targets.empty()) ex.targets[0] = 0;
        if (ex.n_targets() == 0)
            return skip("no loss target left (train_on_inputs is false and no response fits in sequence_len " +
                        std::to_string(budget) + ")");
        if (opt_.check_tokenization && !cut) {
            std::string kept_text;
            for (std::size_t s = 0; s < segs.size(); ++s)
                if (s == 0 || segs[s].turn < kept) kept_text += segs[s].text;
            auto whole = tok_.encode(kept_text, first);
            if (eos) whole.push_back(tok_.eos_id());
            if (whole != ex.tokens)
                throw UnsupportedError(c.source + ": this tokenizer merges across the blocks of the training text "
                                                  "(block-wise ids differ from the whole-text ids); the loss mask "
                                                  "cannot be placed exactly");
        }
        return ex;
    }

private:
    text::Tokenizer tok_;
    text::Tokenizer tok_plain_;
    DatasetOptions opt_;
};

/// An example that was left out, and why.
struct SkippedExample {
    std::string source;  ///< its conversation's source
    std::string reason;  ///< why it was skipped
};

/// Counts of a built dataset.
struct DatasetStats {
    std::size_t conversations = 0;          ///< conversations given
    std::size_t train = 0;                  ///< train examples
    std::size_t eval = 0;                   ///< eval examples
    std::size_t dropped_turns = 0;          ///< examples that lost trailing turns to sequence_len
    std::size_t cut_turns = 0;              ///< examples whose only turn was cut (OversizeTurn::Truncate)
    std::vector<SkippedExample> skipped;    ///< examples left out
    std::int64_t tokens = 0;                ///< tokens over all examples
    std::int64_t target_tokens = 0;         ///< loss targets over all examples
    std::int64_t max_tokens = 0;            ///< longest example
    std::array<std::int64_t, 10> tag_counts{};  ///< responses per length tag (kept turns)

    /// A few human-readable lines (counts, tag histogram, skipped examples).
    std::string summary() const {
        std::string s = std::to_string(conversations) + " conversations -> " + std::to_string(train) + " train + " +
                        std::to_string(eval) + " eval examples, " + std::to_string(tokens) + " tokens (" +
                        std::to_string(target_tokens) + " loss targets, longest " + std::to_string(max_tokens) + ")";
        if (dropped_turns) s += "\n  " + std::to_string(dropped_turns) + " examples lost trailing turns to sequence_len";
        if (cut_turns) s += "\n  " + std::to_string(cut_turns) + " examples had their only turn cut to sequence_len";
        s += "\n  length tags:";
        for (std::size_t i = 0; i < tag_counts.size(); ++i)
            s += " " + std::string(text::to_string(text::kLengthTags[i])) + "=" + std::to_string(tag_counts[i]);
        for (const auto& k : skipped) s += "\n  skipped " + k.source + ": " + k.reason;
        return s;
    }
};

/// The number of eval examples for `val_set_size` out of `n` (see the file comment).
/// \throws ArgumentError when it leaves no train example.
inline std::size_t eval_count(double val_set_size, std::size_t n) {
    std::size_t k = 0;
    if (val_set_size >= 1) k = static_cast<std::size_t>(val_set_size);
    else if (val_set_size > 0) k = static_cast<std::size_t>(std::ceil(val_set_size * static_cast<double>(n)));
    if (k >= n && n > 0)
        throw ArgumentError("val_set_size " + std::to_string(val_set_size) + " takes " + std::to_string(k) + " of " +
                            std::to_string(n) + " examples, leaving none to train on");
    return k;
}

/// Tokenized, split training data.
class Dataset {
public:
    /// Builds examples from validated conversations (see the file comment for every rule).
    /// \throws ArgumentError for invalid options, when no example is left, or when the eval
    ///         split would take every example.
    static Dataset build(std::span<const Conversation> conversations, const text::Tokenizer& tok,
                         const DatasetOptions& opt) {
        const ExampleBuilder builder(tok, opt);
        Dataset d;
        d.opt_ = opt;
        d.stats_.conversations = conversations.size();
        std::vector<Example> all;
        all.reserve(conversations.size());
        for (const auto& c : conversations) {
            std::string why;
            auto ex = builder.build(c, &why);
            if (!ex) {
                d.stats_.skipped.push_back({c.source, why});
                continue;
            }
            all.push_back(std::move(*ex));
        }
        if (all.empty())
            throw ArgumentError("dataset: no usable example among " + std::to_string(conversations.size()) +
                                " conversations" + (d.stats_.skipped.empty() ? "" : " (first skipped: " +
                                                    d.stats_.skipped.front().source + ": " + d.stats_.skipped.front().reason + ")"));
        const std::size_t n_eval = eval_count(opt.val_set_size, all.size());
        const auto perm = detail::permutation(all.size(), detail::derive_seed(opt.seed, kSplitStream), opt.shuffle);
        for (std::size_t i = 0; i < perm.size(); ++i) (i < n_eval ? d.eval_ : d.train_).push_back(std::move(all[perm[i]]));
        for (const auto* set : {&d.train_, &d.eval_}) {
            for (const auto& e : *set) {
                d.stats_.tokens += e.size();
                d.stats_.target_tokens += e.n_targets();
                d.stats_.max_tokens = std::max(d.stats_.max_tokens, e.size());
                if (e.turns_kept < e.turns_total && !e.turn_cut) ++d.stats_.dropped_turns;
                if (e.turn_cut) ++d.stats_.cut_turns;
                for (std::size_t k = 0; k < 10; ++k) d.stats_.tag_counts[k] += e.tag_counts[k];
            }
        }
        d.stats_.train = d.train_.size();
        d.stats_.eval = d.eval_.size();
        return d;
    }

    /// load_conversations() then build(): training never starts on a broken dataset.
    /// \throws as load_conversations() and build().
    static Dataset load(std::span<const DatasetSource> sources, const text::Tokenizer& tok, const DatasetOptions& opt) {
        opt.validate();
        const auto convs = load_conversations(sources);
        return build(convs, tok, opt);
    }

    /// The train examples (in split order; visit them with a Sampler).
    const std::vector<Example>& train() const noexcept { return train_; }
    /// The eval examples.
    const std::vector<Example>& eval() const noexcept { return eval_; }
    /// Counts.
    const DatasetStats& stats() const noexcept { return stats_; }
    /// The options it was built with.
    const DatasetOptions& options() const noexcept { return opt_; }

private:
    static constexpr std::uint64_t kSplitStream = 0x5350'4C49'5400ull;  // "SPLIT"
    DatasetOptions opt_;
    std::vector<Example> train_, eval_;
    DatasetStats stats_;
};

/// Visits `n` examples epoch after epoch, each epoch in an order that depends only on
/// (seed, epoch) (a Fisher-Yates permutation from `std::mt19937_64`), so a run resumed at
/// (epoch, position) continues with exactly the same examples.
class Sampler {
public:
    /// A sampler over indices 0..n-1 starting at epoch 0, position 0.
    /// \throws ArgumentError when n is 0.
    Sampler(std::size_t n, std::uint64_t seed, bool shuffle = true) : n_(n), seed_(seed), shuffle_(shuffle) {
        if (n == 0) throw ArgumentError("Sampler: no examples to sample from");
        order_ = order(0);
    }

    /// The visiting order of epoch `epoch` (a permutation of 0..n-1).
    std::vector<std::size_t> order(std::uint64_t epoch) const {
        return detail::permutation(n_, detail::derive_seed(seed_, epoch), shuffle_);
    }

    /// The next example index; moves to the next epoch after the last one.
    std::size_t next() {
        if (position_ >= n_) seek(epoch_ + 1, 0);
        return order_[position_++];
    }

    /// The current epoch (0-based).
    std::uint64_t epoch() const noexcept { return epoch_; }
    /// Examples already taken in the current epoch.
    std::uint64_t position() const noexcept { return position_; }
    /// True when the current epoch has been fully visited.
    bool epoch_done() const noexcept { return position_ >= n_; }
    /// Number of examples per epoch.
    std::size_t size() const noexcept { return n_; }

    /// Moves to (epoch, position), e.g. from a checkpoint. \throws ArgumentError when position > n.
    void seek(std::uint64_t epoch, std::uint64_t position) {
        if (position > n_)
            throw ArgumentError("Sampler: position " + std::to_string(position) + " is past the " + std::to_string(n_) +
                                " examples of an epoch");
        if (epoch != epoch_ || order_.empty()) order_ = order(epoch);
        epoch_ = epoch;
        position_ = position;
    }

private:
    std::size_t n_;
    std::uint64_t seed_;
    bool shuffle_;
    std::uint64_t epoch_ = 0;
    std::uint64_t position_ = 0;
    std::vector<std::size_t> order_;
};

}  // namespace limarp::train
