// Tests for limarp/text/tokenizer.hpp: exact parity with libsentencepiece (the reference) on
// >= 1 MB of generated mixed text, model variants (flags both ways, user-defined, unused and
// byte pieces), invalid UTF-8, special tokens, StreamDecoder, Hugging Face tokenizer.json.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/text/detail/protobuf_reader.hpp"
#include "limarp/text/tokenizer.hpp"
#include "text/mixed_text.hpp"

#if LIMARP_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace fs = std::filesystem;
using limarp::text::DummyPrefix;
using limarp::text::EncodeOptions;
using limarp::text::PieceType;
using limarp::text::StreamDecoder;
using limarp::text::Tokenizer;

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581

fs::path model_path() {
    const fs::path p = fs::path(LIMARP_CACHE_DIR) / "mistral-tokenizer.model";
    BOOST_REQUIRE_MESSAGE(fs::is_regular_file(p),
                          "missing " << p.string() << ": run scripts/setup.sh to fetch the test assets");
    return p;
}

std::string read_all(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

const std::string& model_bytes() {
    static const std::string bytes = read_all(model_path());
    return bytes;
}

const Tokenizer& mistral() {
    static const Tokenizer tok = Tokenizer::from_sentencepiece(model_path());
    return tok;
}

// Printable form of a string for failure messages.
std::string escaped(std::string_view s, std::size_t max = 300) {
    std::string o;
    for (std::size_t i = 0; i < s.size() && i < max; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '\n')
            o += "\\n";
        else if (c == '\t')
            o += "\\t";
        else if (c == '\\')
            o += "\\\\";
        else if (c < 0x20 || c == 0x7F) {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02X", c);
            o += b;
        } else
            o += static_cast<char>(c);
    }
    if (s.size() > max) o += "...";
    return o;
}

std::string ids_str(const std::vector<int>& v, std::size_t max = 80) {
    std::string o;
    for (std::size_t i = 0; i < v.size() && i < max; ++i) {
        if (i) o += ' ';
        o += std::to_string(v[i]);
    }
    if (v.size() > max) o += " ...";
    return o;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    std::size_t pos = 0;
    for (std::size_t p = s.find(from); p != std::string_view::npos; p = s.find(from, pos)) {
        out.append(s.substr(pos, p - pos));
        out.append(to);
        pos = p + from.size();
    }
    out.append(s.substr(pos));
    return out;
}

std::vector<std::string> split(const std::string& text, std::string_view sep) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (pos <= text.size()) {
        const std::size_t e = text.find(sep, pos);
        if (e == std::string::npos) {
            out.push_back(text.substr(pos));
            break;
        }
        out.push_back(text.substr(pos, e - pos));
        pos = e + sep.size();
    }
    return out;
}

const std::string& corpus() {  // >= 1 MB of mixed text
    static const std::string text = limarp::test::make_mixed_text(1'100'000);
    return text;
}

// Whitespace-heavy and edge-case strings added to every parity run.
const std::vector<std::string>& edge_cases() {
    static const std::vector<std::string> v = {"",
                                               " ",
                                               "  ",
                                               "   a",
                                               "a   ",
                                               "  a  b  ",
                                               "\t",
                                               " \t ",
                                               "\n",
                                               "\n\n ",
                                               "a\n b",
                                               "Hello world",
                                               " Hello",
                                               "Hello  world",
                                               "▁",
                                               "▁▁",
                                               " ▁ ",
                                               "▁Hello",
                                               "a▁b",
                                               "<s>",
                                               "</s>",
                                               "<unk>",
                                               "<s></s>",
                                               "<|im_start|>user\nHi<|im_end|>",
                                               "<0x41>",
                                               "\xef\xbf\xbd",
                                               "e\xcc\x81",
                                               "👩‍💻👍🏽",
                                               "日本語",
                                               std::string(1, '\0'),
                                               std::string("a\0b", 3),
                                               "\x7f",
                                               std::string(200, ' '),
                                               std::string(100, '\n'),
                                               std::string(50, 'a'),
                                               "1234567890123456789",
                                               "ℝ𝕖𝕒𝕝",
                                               "🤷🏽‍♀️",
                                               "foo bar",
                                               "ing the",
                                               "\t\t",
                                               "xyz▁abc",
                                               "Hello",
                                               "wor"};
    return v;
}

// Invalid UTF-8 inputs with the text each must be treated as (one U+FFFD per invalid byte).
const std::vector<std::pair<std::string, std::string>>& invalid_cases() {
    static const std::vector<std::pair<std::string, std::string>> v = {
        {"a\xff"
         "b",
         "a\xef\xbf\xbd"
         "b"},
        {"\x80", "\xef\xbf\xbd"},
        {"\xC3(", "\xef\xbf\xbd("},
        {"\xE2\x82", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xE2\x82"
         "A",
         "\xef\xbf\xbd\xef\xbf\xbd"
         "A"},
        {"\xF0\x9F\x98"
         "x",
         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
         "x"},
        {"\xC0\xAF", "\xef\xbf\xbd\xef\xbf\xbd"},                                  // overlong '/'
        {"\xE0\x80\xAF", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},                  // overlong
        {"\xED\xA0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},                  // surrogate U+D800
        {"\xF4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  // > U+10FFFF
        {"\xF5\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xFE\xFF hi", "\xef\xbf\xbd\xef\xbf\xbd hi"},
        {"ok \xE2\x96", "ok \xef\xbf\xbd\xef\xbf\xbd"},  // truncated U+2581
        {"\xC2\xA0\xC2", "\xC2\xA0\xef\xbf\xbd"},
        {"\xF0\x9F\x91\x8D\xF0\x9F", "\xF0\x9F\x91\x8D\xef\xbf\xbd\xef\xbf\xbd"},
    };
    return v;
}

std::vector<std::string> random_byte_strings(std::size_t n, std::uint64_t seed) {
    limarp::test::SplitMix64 r(seed);
    std::vector<std::string> out;
    static const std::string pool = "ab \n\t\x80\xBF\xC0\xC1\xC2\xC3\xDF\xE0\xE2\xED\xEF\xF0\xF4\xF5\xFF\x96\x81\xA0";
    for (std::size_t i = 0; i < n; ++i) {
        std::string s;
        const std::size_t len = r.below(24);
        for (std::size_t k = 0; k < len; ++k)
            s += r.chance(60) ? pool[r.below(pool.size())] : static_cast<char>(r.below(256));
        out.push_back(std::move(s));
    }
    return out;
}

// ---- a minimal protobuf writer for model variants -------------------------------------

void put_varint(std::string& o, std::uint64_t v) {
    while (v >= 0x80) {
        o += static_cast<char>((v & 0x7F) | 0x80);
        v >>= 7;
    }
    o += static_cast<char>(v);
}
void put_key(std::string& o, std::uint32_t field, int wire) {
    put_varint(o, (static_cast<std::uint64_t>(field) << 3) | static_cast<unsigned>(wire));
}
void put_len(std::string& o, std::uint32_t field, std::string_view b) {
    put_key(o, field, 2);
    put_varint(o, b.size());
    o += b;
}
void put_field(std::string& o, const limarp::text::detail::WireField& f) {
    using limarp::text::detail::WireType;
    switch (f.type) {
        case WireType::Varint:
            put_key(o, f.number, 0);
            put_varint(o, f.varint);
            break;
        case WireType::Fixed64:
            put_key(o, f.number, 1);
            for (int i = 0; i < 8; ++i) o += static_cast<char>(f.varint >> (8 * i));
            break;
        case WireType::Fixed32:
            put_key(o, f.number, 5);
            for (int i = 0; i < 4; ++i) o += static_cast<char>(f.varint >> (8 * i));
            break;
        case WireType::LengthDelimited: put_len(o, f.number, f.bytes); break;
    }
}

struct PieceEdit {
    std::string piece;
    float score = 0.0f;
    int type = 1;
};

struct ModelEdit {
    std::function<void(int id, PieceEdit&)> edit_piece = {};  // may change a piece's fields
    std::vector<PieceEdit> append = {};                       // new pieces after the last one
    std::map<std::uint32_t, std::uint64_t> trainer_varints = {};
    std::map<std::uint32_t, std::uint64_t> normalizer_varints = {};
    std::optional<std::string> charsmap = {};
};

std::string edit_model(const std::string& original, const ModelEdit& e) {
    using limarp::text::detail::WireField;
    using limarp::text::detail::WireReader;
    std::string pieces, rest;
    WireReader top(original, "edit");
    WireField f;
    int id = 0;
    auto write_piece = [&](const PieceEdit& p) {
        std::string m;
        put_len(m, 1, p.piece);
        put_key(m, 2, 5);
        std::uint32_t bits;
        std::memcpy(&bits, &p.score, 4);
        for (int i = 0; i < 4; ++i) m += static_cast<char>(bits >> (8 * i));
        put_key(m, 3, 0);
        put_varint(m, static_cast<std::uint64_t>(p.type));
        put_len(pieces, 1, m);
    };
    auto rewrite = [&](std::string_view msg, const std::map<std::uint32_t, std::uint64_t>& over, bool normalizer) {
        std::string m;
        WireReader r(msg, "edit");
        WireField g;
        while (r.next(g)) {
            if (over.count(g.number)) continue;
            if (normalizer && g.number == 2 && e.charsmap) continue;
            put_field(m, g);
        }
        for (const auto& [k, v] : over) {
            put_key(m, k, 0);
            put_varint(m, v);
        }
        if (normalizer && e.charsmap) put_len(m, 2, *e.charsmap);
        return m;
    };
    while (top.next(f)) {
        if (f.number == 1) {
            PieceEdit p;
            WireReader r(f.bytes, "piece");
            WireField g;
            while (r.next(g)) {
                if (g.number == 1) p.piece = std::string(g.bytes);
                if (g.number == 2) p.score = g.as_float();
                if (g.number == 3) p.type = static_cast<int>(g.varint);
            }
            if (e.edit_piece) e.edit_piece(id, p);
            write_piece(p);
            ++id;
        } else if (f.number == 2) {
            put_len(rest, 2, rewrite(f.bytes, e.trainer_varints, false));
        } else if (f.number == 3) {
            put_len(rest, 3, rewrite(f.bytes, e.normalizer_varints, true));
        } else {
            put_field(rest, f);
        }
    }
    for (const auto& p : e.append) write_piece(p);
    return pieces + rest;
}

// A temporary folder removed at the end of the test.
struct TempDir {
    fs::path path;
    TempDir() {
        static int n = 0;
        path =
            fs::temp_directory_path() / ("limarp_test_text_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    void write(const std::string& name, std::string_view content) const {
        std::ofstream f(path / name, std::ios::binary);
        f << content;
    }
};

#if LIMARP_HAVE_SENTENCEPIECE
using Processor = sentencepiece::SentencePieceProcessor;

const Processor& reference() {
    static const std::unique_ptr<Processor> sp = [] {
        auto p = std::make_unique<Processor>();
        const auto st = p->Load(model_path().string());
        BOOST_REQUIRE_MESSAGE(st.ok(), "libsentencepiece cannot load the model: " << st.ToString());
        return p;
    }();
    return *sp;
}

std::unique_ptr<Processor> reference_from_proto(const std::string& proto) {
    auto p = std::make_unique<Processor>();
    const auto st = p->LoadFromSerializedProto(proto);
    BOOST_REQUIRE_MESSAGE(st.ok(), "libsentencepiece rejects the edited model: " << st.ToString());
    return p;
}

// Reference ids as encode() produces them: EncodeAsIds plus bos (as libsentencepiece users do).
std::vector<int> ref_ids(const Processor& sp, std::string_view text, bool bos = true) {
    std::vector<int> ids = sp.EncodeAsIds(text);
    if (bos && sp.bos_id() >= 0) ids.insert(ids.begin(), sp.bos_id());
    return ids;
}

// Compares encode() with libsentencepiece on every text; returns the number of mismatches and
// reports the first few. `bytes` accumulates the bytes compared.
std::size_t compare_encode(const Tokenizer& tok, const Processor& sp, const std::vector<std::string>& texts,
                           std::size_t& bytes, const std::string& what, bool report = true) {
    std::size_t bad = 0;
    for (const auto& t : texts) {
        const auto got = tok.encode(t);
        const auto want = ref_ids(sp, t);
        bytes += t.size();
        if (got != want) {
            if (++bad <= 3 && report)
                BOOST_ERROR(what << ": encode mismatch for \"" << escaped(t) << "\"\n  want: " << ids_str(want)
                                 << "\n  got:  " << ids_str(got));
        }
    }
    return bad;
}

std::size_t compare_decode(const Tokenizer& tok, const Processor& sp, const std::vector<int>& ids,
                           const std::string& what) {
    const std::string got = tok.decode(ids);
    const std::string want = sp.DecodeIds(ids);
    if (got == want) return 0;
    BOOST_ERROR(what << ": decode mismatch for ids " << ids_str(ids) << "\n  want: \"" << escaped(want)
                     << "\"\n  got:  \"" << escaped(got) << "\"");
    return 1;
}
#endif

void require_sentencepiece() {
#if !LIMARP_HAVE_SENTENCEPIECE
    BOOST_FAIL(
        "libsentencepiece (the reference) was not found at configure time: install libsentencepiece-dev "
        "(scripts/setup.sh)");
#endif
}

}  // namespace

BOOST_AUTO_TEST_SUITE(tokenizer)

BOOST_AUTO_TEST_CASE(loads_mistral_model) {
    const Tokenizer& tok = mistral();
    BOOST_TEST(tok.vocab_size() == 32000);
    BOOST_TEST(tok.unk_id() == 0);
    BOOST_TEST(tok.bos_id() == 1);
    BOOST_TEST(tok.eos_id() == 2);
    BOOST_TEST(tok.pad_id() == -1);
    BOOST_TEST(tok.byte_fallback());
    BOOST_TEST((tok.dummy_prefix() == DummyPrefix::EverySegment));
    BOOST_TEST(tok.piece(0) == "<unk>");
    BOOST_TEST(tok.piece(1) == "<s>");
    BOOST_TEST(tok.piece(3) == "<0x00>");
    BOOST_TEST(tok.piece(13) == "<0x0A>");
    BOOST_TEST((tok.piece_type(0) == PieceType::Unknown));
    BOOST_TEST((tok.piece_type(2) == PieceType::Control));
    BOOST_TEST((tok.piece_type(200) == PieceType::Byte));
    BOOST_TEST((tok.piece_type(22557) == PieceType::Normal));
    BOOST_TEST(tok.is_special(1));
    BOOST_TEST(!tok.is_special(0));
    BOOST_TEST(tok.token_id("\xE2\x96\x81Hello").value_or(-1) == 22557);
    BOOST_TEST(tok.token_id("<0x0A>").value_or(-1) == 13);
    BOOST_TEST(!tok.token_id("no such piece").has_value());
    BOOST_TEST(tok.piece_score(261) == -2.0f);
    BOOST_CHECK_THROW(tok.piece(32000), limarp::ArgumentError);
    BOOST_CHECK_THROW(tok.piece(-1), limarp::ArgumentError);
}

BOOST_AUTO_TEST_CASE(known_ids) {
    const Tokenizer& tok = mistral();
    BOOST_TEST(tok.encode("Hello world") == (std::vector<int>{1, 22557, 1526}), boost::test_tools::per_element());
    BOOST_TEST(tok.encode(" hello") == (std::vector<int>{1, 28705, 6312, 28709}), boost::test_tools::per_element());
    BOOST_TEST(tok.encode("\t\tx\n\ny", {.add_bos = false}) == (std::vector<int>{28705, 12, 12, 28744, 13, 13, 28724}),
               boost::test_tools::per_element());
    BOOST_TEST(tok.encode("", {.add_bos = true, .add_eos = true}) == (std::vector<int>{1, 2}),
               boost::test_tools::per_element());
    BOOST_TEST(tok.encode("").size() == 1u);
    BOOST_TEST(tok.decode(std::vector<int>{1, 22557, 1526, 2}) == "Hello world");
    BOOST_TEST(tok.decode(std::vector<int>{1, 22557, 1526, 2}, false) == "<s> Hello world</s>");
    BOOST_TEST(tok.decode(std::vector<int>{28705, 28705, 21558}) == " hello");  // only the first dummy space is dropped
    BOOST_TEST(tok.decode(std::vector<int>{0}) == " \xE2\x81\x87 ");            // <unk> surface
    BOOST_CHECK_THROW(tok.decode(std::vector<int>{5, 32000}), limarp::ArgumentError);
}

BOOST_AUTO_TEST_CASE(parity_with_sentencepiece_on_mixed_text) {
    require_sentencepiece();
#if LIMARP_HAVE_SENTENCEPIECE
    const Tokenizer& tok = mistral();
    const Processor& sp = reference();
    const std::string& text = corpus();
    BOOST_REQUIRE_GE(text.size(), 1'000'000u);

    // 1. Chunks of 1..16 lines.
    const auto lines = split(text, "\n");
    std::vector<std::string> chunks;
    limarp::test::SplitMix64 r(7);
    for (std::size_t i = 0; i < lines.size();) {
        const std::size_t n = 1 + r.below(16);
        std::string c;
        for (std::size_t k = 0; k < n && i < lines.size(); ++k, ++i) c += (k ? "\n" : "") + lines[i];
        chunks.push_back(std::move(c));
    }
    std::size_t bytes_chunks = 0, bytes_paras = 0, bytes_whole = 0, bytes_edge = 0;
    std::size_t bad = compare_encode(tok, sp, chunks, bytes_chunks, "line chunks");
    // 2. Paragraphs.
    const auto paras = split(text, "\n\n");
    bad += compare_encode(tok, sp, paras, bytes_paras, "paragraphs");
    // 3. The whole text in one call (word splitting and the word cache at scale).
    bad += compare_encode(tok, sp, {text}, bytes_whole, "whole text");
    // 4. Edge cases.
    bad += compare_encode(tok, sp, edge_cases(), bytes_edge, "edge cases");
    BOOST_TEST_MESSAGE("parity: " << bytes_chunks << " bytes in " << chunks.size() << " line chunks, " << bytes_paras
                                  << " bytes in " << paras.size() << " paragraphs, " << bytes_whole
                                  << " bytes as one text; mismatches: " << bad);
    BOOST_TEST(bad == 0u);

    // Negative control: the comparison does catch a tokenizer that differs.
    Tokenizer no_prefix = tok;
    no_prefix.set_dummy_prefix(DummyPrefix::None);
    std::size_t ignored = 0;
    BOOST_TEST(compare_encode(no_prefix, sp, edge_cases(), ignored, "control", false) > 10u);
#endif
}

BOOST_AUTO_TEST_CASE(decode_parity_and_round_trip) {
    require_sentencepiece();
#if LIMARP_HAVE_SENTENCEPIECE
    const Tokenizer& tok = mistral();
    const Processor& sp = reference();
    std::size_t bad = 0, round_trip_bad = 0, n = 0;
    auto texts = split(corpus(), "\n\n");
    texts.insert(texts.end(), edge_cases().begin(), edge_cases().end());
    for (const auto& t : texts) {
        const auto ids = tok.encode(t);
        bad += compare_decode(tok, sp, ids, "paragraph");
        // U+2581 in the input reads back as a space (as with libsentencepiece).
        const std::string want = replace_all(t, kSpace, " ");
        if (tok.decode(ids) != want && ++round_trip_bad <= 3)
            BOOST_ERROR("round trip: \"" << escaped(t) << "\" decodes to \"" << escaped(tok.decode(ids)) << "\"");
        ++n;
    }
    const auto all = tok.encode(corpus());
    BOOST_TEST(tok.decode(all) == replace_all(corpus(), kSpace, " "));
    bad += compare_decode(tok, sp, all, "whole text");
    BOOST_TEST_MESSAGE("decode: " << n << " texts, mismatches vs DecodeIds " << bad << ", round-trip failures "
                                  << round_trip_bad);
    BOOST_TEST(bad == 0u);
    BOOST_TEST(round_trip_bad == 0u);
#endif
}

BOOST_AUTO_TEST_CASE(invalid_utf8_becomes_replacement_characters) {
    require_sentencepiece();
    const Tokenizer& tok = mistral();
    for (const auto& [bad, replaced] : invalid_cases()) {
        BOOST_TEST_CONTEXT("input \"" << escaped(bad) << "\"") {
            BOOST_TEST(tok.encode(bad) == tok.encode(replaced), boost::test_tools::per_element());
            BOOST_TEST(tok.decode(tok.encode(bad)) == replaced);
        }
    }
    // U+FFFD is a piece of the Mistral vocabulary (29137).
    BOOST_TEST(tok.encode("\xff", {.add_bos = false}) == (std::vector<int>{28705, 29137}),
               boost::test_tools::per_element());
#if LIMARP_HAVE_SENTENCEPIECE
    const Processor& sp = reference();
    std::vector<std::string> texts;
    for (const auto& c : invalid_cases()) texts.push_back(c.first);
    const auto random = random_byte_strings(3000, 99);
    texts.insert(texts.end(), random.begin(), random.end());
    std::size_t bytes = 0;
    const std::size_t bad = compare_encode(tok, sp, texts, bytes, "invalid UTF-8");
    BOOST_TEST_MESSAGE("invalid UTF-8: " << texts.size() << " strings, " << bytes << " bytes, mismatches " << bad);
    BOOST_TEST(bad == 0u);
#endif
}

BOOST_AUTO_TEST_CASE(model_variants_match_sentencepiece) {
    require_sentencepiece();
#if LIMARP_HAVE_SENTENCEPIECE
    const std::string& base = model_bytes();
    const Tokenizer& mis = mistral();
    const std::string sp1(kSpace);
    const std::vector<std::string> unused_pieces = {
        sp1 + "the", "ing", sp1 + "t", "er", sp1 + "a", "on", sp1 + sp1, sp1 + sp1 + sp1 + sp1, "at", "en"};
    std::set<int> unused_ids;
    for (const auto& p : unused_pieces) unused_ids.insert(*mis.token_id(p));
    limarp::test::SplitMix64 r(5);
    for (int i = 0; i < 300; ++i) unused_ids.insert(259 + static_cast<int>(r.below(31000)));

    auto user_defined = [] {
        std::vector<PieceEdit> v;
        for (const char* s : {"<|im_end|>", "<|im_start|>", "foo bar",
                              "xyz\xE2\x96\x81"
                              "abc",
                              "\xF0\x9F\xA4\xB7\xF0\x9F\x8F\xBD\xE2\x80\x8D\xE2\x99\x80\xEF\xB8\x8F", "\t\t", "ing the",
                              "\xE2\x96\x81\xE2\x96\x81\xE2\x96\x81\xE2\x96\x81\xE2\x96\x81\xE2\x96\x81\xE2\x96\x81\xE2"
                              "\x96\x81\xE2\x96\x81x"})
            v.push_back({s, 0.0f, 4});
        return v;
    };
    auto make_unused = [unused_ids](int id, PieceEdit& p) {
        if (unused_ids.count(id) && p.type == 1) p.type = 5;
    };
    auto no_bytes = [](int, PieceEdit& p) {
        if (p.type == 6) p.type = 3;
    };

    struct Variant {
        std::string name;
        ModelEdit edit;
    };
    std::vector<Variant> variants;
    variants.push_back({"remove_extra_whitespaces=true", {.normalizer_varints = {{4, 1}}}});
    variants.push_back({"add_dummy_prefix=false", {.normalizer_varints = {{3, 0}}}});
    variants.push_back({"escape_whitespaces=false", {.normalizer_varints = {{5, 0}}}});
    variants.push_back({"user-defined pieces", {.append = user_defined()}});
    variants.push_back({"unused pieces", {.edit_piece = make_unused}});
    variants.push_back({"byte_fallback=false", {.edit_piece = no_bytes, .trainer_varints = {{35, 0}}}});
    variants.push_back(
        {"all at once", {.edit_piece = make_unused, .append = user_defined(), .normalizer_varints = {{3, 0}, {4, 1}}}});

    // ~200 KB of paragraphs plus edge cases and invalid UTF-8.
    std::vector<std::string> texts;
    std::size_t total = 0;
    for (const auto& p : split(corpus(), "\n\n")) {
        if (total > 200'000) break;
        texts.push_back(p);
        total += p.size();
    }
    texts.insert(texts.end(), edge_cases().begin(), edge_cases().end());
    for (const auto& c : invalid_cases()) texts.push_back(c.first);
    const auto random = random_byte_strings(300, 11);
    texts.insert(texts.end(), random.begin(), random.end());

    for (const auto& v : variants) {
        BOOST_TEST_CONTEXT("variant " << v.name) {
            const std::string proto = edit_model(base, v.edit);
            const auto sp = reference_from_proto(proto);
            const Tokenizer tok = Tokenizer::from_sentencepiece_proto(proto, v.name);
            std::size_t bytes = 0;
            std::size_t bad = compare_encode(tok, *sp, texts, bytes, v.name);
            bad += compare_encode(tok, *sp, {texts.front() + "\n\n" + texts[1] + "   " + texts[2]}, bytes, v.name);
            std::size_t dbad = 0;
            for (std::size_t i = 0; i < texts.size(); i += 7)
                dbad += compare_decode(tok, *sp, tok.encode(texts[i]), v.name);
            BOOST_TEST_MESSAGE("variant " << v.name << ": " << bytes << " bytes, encode mismatches " << bad
                                          << ", decode mismatches " << dbad);
            BOOST_TEST(bad == 0u);
            BOOST_TEST(dbad == 0u);
            // Negative control: the variant really changes the segmentation of some texts.
            std::size_t changed = 0;
            for (const auto& t : texts) changed += tok.encode(t) != mis.encode(t);
            BOOST_TEST(changed > 0u);
        }
    }
#endif
}

BOOST_AUTO_TEST_CASE(special_tokens_parse_on_and_off) {
    require_sentencepiece();
#if LIMARP_HAVE_SENTENCEPIECE
    const Processor& sp = reference();
    TempDir dir;
    fs::copy_file(model_path(), dir.path / "tokenizer.model");
    dir.write("added_tokens.json", R"({"<|im_end|>": 32000, "<|im_start|>": 32001})");
    dir.write("tokenizer_config.json", R"({
      "add_bos_token": true, "add_eos_token": false,
      "added_tokens_decoder": {
        "0": {"content": "<unk>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
        "1": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
        "2": {"content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
        "32000": {"content": "<|im_end|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
        "32001": {"content": "<|im_start|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}
      },
      "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>", "pad_token": null,
      "clean_up_tokenization_spaces": false, "legacy": true, "model_max_length": 1000000000000000019884624838656,
      "tokenizer_class": "LlamaTokenizer"})");
    const Tokenizer tok = Tokenizer::from_dir(dir.path);
    BOOST_TEST(tok.vocab_size() == 32002);
    BOOST_TEST(tok.piece(32000) == "<|im_end|>");
    BOOST_TEST(tok.piece(32001) == "<|im_start|>");
    BOOST_TEST(tok.token_id("<|im_start|>").value_or(-1) == 32001);
    BOOST_TEST(tok.eos_id() == 32000);  // OpenOrca's tokenizer_config.json
    BOOST_TEST(tok.bos_id() == 1);
    BOOST_TEST(tok.is_special(32000));

    auto cat = [](std::vector<int> a, const std::vector<int>& b) {
        a.insert(a.end(), b.begin(), b.end());
        return a;
    };
    const std::string chat = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";
    // parse_special = false: the strings are plain text, exactly as libsentencepiece.
    BOOST_TEST(tok.encode(chat) == ref_ids(sp, chat), boost::test_tools::per_element());
    // parse_special = true: special ids; every text segment gets the dummy prefix (HF legacy, llama.cpp).
    std::vector<int> want = {1, 32001};
    want = cat(want, sp.EncodeAsIds("user\nHi there"));
    want.push_back(32000);
    want = cat(want, sp.EncodeAsIds("\n"));
    want.push_back(32001);
    want = cat(want, sp.EncodeAsIds("assistant\n"));
    BOOST_TEST(tok.encode(chat, {.parse_special = true}) == want, boost::test_tools::per_element());
    BOOST_TEST(
        tok.encode("<s>hi</s>", {.add_bos = false, .parse_special = true}) == cat(cat({1}, sp.EncodeAsIds("hi")), {2}),
        boost::test_tools::per_element());
    BOOST_TEST(tok.encode("<unk>", {.add_bos = false, .parse_special = true}) == (std::vector<int>{0}),
               boost::test_tools::per_element());
    BOOST_TEST(tok.encode("x", {.add_bos = true, .add_eos = true}).back() == 32000);
    // Longest match first, and partial strings stay text.
    BOOST_TEST(tok.encode("<|im_end", {.parse_special = true}) == ref_ids(sp, "<|im_end"),
               boost::test_tools::per_element());

    // Decoding: specials skipped or shown.
    const auto ids = tok.encode(chat, {.parse_special = true});
    BOOST_TEST(tok.decode(ids) == "user\nHi there \n assistant\n");
    BOOST_TEST(tok.decode(ids, false) == "<s><|im_start|> user\nHi there<|im_end|> \n<|im_start|> assistant\n");

    // The plain SentencePiece model knows its control pieces as special tokens.
    BOOST_TEST(mistral().encode("<s>", {.add_bos = false, .parse_special = true}) == (std::vector<int>{1}),
               boost::test_tools::per_element());
    BOOST_TEST(mistral().encode("<|im_end|>", {.parse_special = true}) == ref_ids(sp, "<|im_end|>"),
               boost::test_tools::per_element());

    // "legacy": false -> dummy prefix only at the start of the input.
    {
        TempDir d2;
        fs::copy_file(model_path(), d2.path / "tokenizer.model");
        d2.write("added_tokens.json", R"({"<|im_end|>": 32000, "<|im_start|>": 32001})");
        d2.write("tokenizer_config.json", R"({"legacy": false})");
        const Tokenizer t2 = Tokenizer::from_dir(d2.path);
        BOOST_TEST((t2.dummy_prefix() == DummyPrefix::FirstSegment));
        BOOST_TEST(t2.eos_id() == 2);
        const auto sp_noprefix = reference_from_proto(edit_model(model_bytes(), {.normalizer_varints = {{3, 0}}}));
        std::vector<int> w2 = cat(cat({1}, sp.EncodeAsIds("Hi")), {32000});
        w2 = cat(w2, sp_noprefix->EncodeAsIds("\nthere"));
        BOOST_TEST(t2.encode("Hi<|im_end|>\nthere", {.parse_special = true}) == w2, boost::test_tools::per_element());
        std::vector<int> w3 = cat({1, 32001}, sp_noprefix->EncodeAsIds("user"));
        BOOST_TEST(t2.encode("<|im_start|>user", {.parse_special = true}) == w3, boost::test_tools::per_element());
    }

    // add_special_token.
    Tokenizer t3 = mistral();
    t3.add_special_token("<|im_end|>", 32000);
    t3.add_special_token("[EXTRA]", 32005);
    BOOST_TEST(t3.vocab_size() == 32006);
    BOOST_TEST(t3.piece(32003) == "");
    BOOST_TEST(t3.encode("a[EXTRA]", {.add_bos = false, .parse_special = true}).back() == 32005);
    BOOST_TEST(t3.encode("a[EXTRA]", {.add_bos = false}) == ref_ids(sp, "a[EXTRA]", false),
               boost::test_tools::per_element());
    t3.add_special_token("<s>", 1);  // the existing piece: fine
    BOOST_CHECK_THROW(t3.add_special_token("<x>", 5), limarp::ArgumentError);
    BOOST_CHECK_THROW(t3.add_special_token("", 40000), limarp::ArgumentError);
    BOOST_CHECK_THROW(t3.add_special_token("<y>", -1), limarp::ArgumentError);
    BOOST_TEST(mistral().vocab_size() == 32000);  // the copy is independent
#endif
}

BOOST_AUTO_TEST_CASE(stream_decoder_equals_decode) {
    require_sentencepiece();
#if LIMARP_HAVE_SENTENCEPIECE
    const Tokenizer& tok = mistral();
    const Processor& sp = reference();
    limarp::test::SplitMix64 r(1234);
    const auto byte_id = [&](unsigned char b) { return 3 + static_cast<int>(b); };
    std::size_t bad = 0, sequences = 0;
    for (int iter = 0; iter < 3000; ++iter) {
        std::vector<int> ids;
        const std::size_t len = 1 + r.below(40);
        while (ids.size() < len) {
            switch (r.below(8)) {
                case 0: ids.push_back(static_cast<int>(r.below(32000))); break;        // anything
                case 1: ids.push_back(259 + static_cast<int>(r.below(31741))); break;  // normal pieces
                case 2: {  // a valid multi-byte character as byte pieces
                    std::string ch;
                    limarp::test::append_utf8(ch, r.chance(50) ? 0x80 + static_cast<std::uint32_t>(r.below(0x700))
                                                               : 0x10000 + static_cast<std::uint32_t>(r.below(0xFFFF)));
                    for (char c : ch) ids.push_back(byte_id(static_cast<unsigned char>(c)));
                    break;
                }
                case 3:
                    ids.push_back(byte_id(static_cast<unsigned char>(0x80 + r.below(0x80))));
                    break;                                                                         // stray high byte
                case 4: ids.push_back(byte_id(static_cast<unsigned char>(r.below(0x80)))); break;  // ASCII byte
                case 5: ids.push_back(static_cast<int>(r.below(3))); break;                        // unk, bos, eos
                case 6: ids.push_back(28705); break;                                               // "▁"
                default: ids.push_back(259 + static_cast<int>(r.below(10))); break;  // "▁▁"-like pieces
            }
        }
        ids.resize(len);
        for (bool skip : {true, false}) {
            StreamDecoder d(tok, skip);
            std::string streamed;
            bool chunks_valid = true;
            for (int id : ids) {
                const std::string part = d.push(id);
                chunks_valid &= limarp::text::detail::utf8_is_valid(part);
                streamed += part;
            }
            const std::string tail = d.flush();
            chunks_valid &= limarp::text::detail::utf8_is_valid(tail);
            streamed += tail;
            const std::string whole = tok.decode(ids, skip);
            const bool ok = streamed == whole && chunks_valid && (!skip || whole == sp.DecodeIds(ids));
            if (!ok && ++bad <= 3)
                BOOST_ERROR("stream decode (skip_special=" << skip << ") of " << ids_str(ids) << "\n  decode: \""
                                                           << escaped(whole) << "\"\n  stream: \"" << escaped(streamed)
                                                           << "\"\n  sp:     \"" << escaped(sp.DecodeIds(ids))
                                                           << "\" chunks valid " << chunks_valid);
            ++sequences;
        }
    }
    // Encoded paragraphs stream back to the text.
    for (const auto& p : split(corpus().substr(0, 100'000), "\n\n")) {
        StreamDecoder d(tok);
        std::string s;
        for (int id : tok.encode(p)) s += d.push(id);
        s += d.flush();
        if (s != replace_all(p, kSpace, " ") && ++bad <= 3)
            BOOST_ERROR("stream round trip of \"" << escaped(p) << "\"");
    }
    // The decoder is reusable after flush().
    StreamDecoder d(tok);
    BOOST_TEST(d.push(3 + 0xE2) == "");
    BOOST_TEST(d.push(3 + 0x82) == "");
    BOOST_TEST(d.push(3 + 0xAC) == "\xE2\x82\xAC");
    BOOST_TEST(d.push(3 + 0xE2) == "");
    BOOST_TEST(d.flush() == "\xEF\xBF\xBD");
    BOOST_TEST(d.push(22557) == "Hello");  // start-of-text rule again after flush
    BOOST_CHECK_THROW(d.push(-3), limarp::ArgumentError);
    BOOST_TEST_MESSAGE("stream decoder: " << sequences << " random sequences, mismatches " << bad);
    BOOST_TEST(bad == 0u);
#endif
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_json_built_from_the_model) {
    require_sentencepiece();
#if LIMARP_HAVE_SENTENCEPIECE
    // A tokenizer.json as transformers' converter writes it for Mistral: vocab = the pieces,
    // merges from every split of a piece into two pieces, ordered by piece score.
    const Tokenizer& mis = mistral();
    nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
    std::map<std::string, int> ids;
    for (int i = 0; i < mis.vocab_size(); ++i) {
        vocab[std::string(mis.piece(i))] = i;
        ids[std::string(mis.piece(i))] = i;
    }
    struct M {
        std::string l, r;
        float score;
        std::size_t ll, rl;
    };
    auto nchars = [](std::string_view s) {
        std::size_t n = 0;
        for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
        return n;
    };
    std::vector<M> merges;
    for (int i = 0; i < mis.vocab_size(); ++i) {
        const std::string p(mis.piece(i));
        std::vector<M> local;
        for (std::size_t k = 1; k < p.size(); ++k) {
            if ((static_cast<unsigned char>(p[k]) & 0xC0) == 0x80) continue;
            const std::string l = p.substr(0, k), rr = p.substr(k);
            if (ids.count(l) && ids.count(rr)) local.push_back({l, rr, mis.piece_score(i), nchars(l), nchars(rr)});
        }
        std::sort(local.begin(), local.end(), [&](const M& a, const M& b) {
            return std::pair(ids[a.l], ids[a.r]) < std::pair(ids[b.l], ids[b.r]);
        });
        merges.insert(merges.end(), local.begin(), local.end());
    }
    std::stable_sort(merges.begin(), merges.end(), [](const M& a, const M& b) {
        return std::tuple(a.score, a.ll, a.rl) > std::tuple(b.score, b.ll, b.rl);
    });
    nlohmann::ordered_json jm = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < merges.size(); ++i) {
        if (i % 2)
            jm.push_back(merges[i].l + " " + merges[i].r);  // both merge formats
        else
            jm.push_back(nlohmann::ordered_json::array({merges[i].l, merges[i].r}));
    }
    nlohmann::ordered_json j = {
        {"version", "1.0"},
        {"added_tokens",
         {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
          {{"id", 1}, {"content", "<s>"}, {"special", true}},
          {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
        {"normalizer",
         {{"type", "Sequence"},
          {"normalizers",
           {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
            {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
        {"pre_tokenizer", nullptr},
        {"model",
         {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", "<unk>"},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", true},
          {"byte_fallback", true},
          {"vocab", vocab},
          {"merges", jm}}}};
    TempDir dir;
    dir.write("tokenizer.json", j.dump());
    const Tokenizer hf = Tokenizer::from_hf_json(dir.path / "tokenizer.json");
    BOOST_TEST(hf.vocab_size() == 32000);
    BOOST_TEST(hf.bos_id() == 1);
    BOOST_TEST(hf.eos_id() == 2);
    BOOST_TEST(hf.unk_id() == 0);
    BOOST_TEST(Tokenizer::from_dir(dir.path).vocab_size() == 32000);

    const Processor& sp = reference();
    std::vector<std::string> texts;
    std::size_t total = 0;
    for (const auto& p : split(corpus(), "\n\n")) {
        if (total > 300'000) break;
        texts.push_back(p);
        total += p.size();
    }
    texts.insert(texts.end(), edge_cases().begin(), edge_cases().end());
    std::size_t bytes = 0;
    const std::size_t bad = compare_encode(hf, sp, texts, bytes, "tokenizer.json");
    std::size_t dbad = 0;
    for (std::size_t i = 0; i < texts.size(); i += 5)
        dbad += compare_decode(hf, sp, hf.encode(texts[i]), "tokenizer.json");
    BOOST_TEST_MESSAGE("tokenizer.json from the model: " << merges.size() << " merges, " << bytes
                                                         << " bytes, mismatches " << bad);
    BOOST_TEST(bad == 0u);
    BOOST_TEST(dbad == 0u);
#endif
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_json_hand_made) {
    // Ranks: 0 "▁ a", 1 "a b", 2 "▁a b", 3 "b c"; merges written in both formats.
    const std::string json = R"({
      "added_tokens": [
        {"id": 0, "content": "<unk>", "special": true},
        {"id": 1, "content": "<s>", "special": true},
        {"id": 2, "content": "</s>", "special": true},
        {"id": 15, "content": "<|im_end|>", "special": true},
        {"id": 16, "content": "[name]", "special": false}
      ],
      "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
      "pre_tokenizer": null,
      "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
        "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "b": 5, "c": 6, "▁a": 7, "ab": 8, "▁ab": 9, "bc": 10,
                  "<0x0A>": 11, "<0xC3>": 12, "<0xA9>": 13, "d": 14},
        "merges": ["▁ a", ["a", "b"], "▁a b", ["b", "c"]]}
    })";
    const Tokenizer t = Tokenizer::from_hf_json_text(json, "hand-made tokenizer.json");
    BOOST_TEST(t.vocab_size() == 17);
    BOOST_TEST(t.bos_id() == 1);
    BOOST_TEST(t.byte_fallback());
    // "ab abc" -> ▁ab ▁ab c ; "bc" alone -> ▁ bc (no merge "▁ b")
    BOOST_TEST(t.encode("ab abc") == (std::vector<int>{1, 9, 9, 6}), boost::test_tools::per_element());
    BOOST_TEST(t.encode("bc", {.add_bos = false}) == (std::vector<int>{3, 10}), boost::test_tools::per_element());
    // rank order beats position: "abc" -> (▁,a) r0 first, then (▁a,b) r2 before (b,c) r3
    BOOST_TEST(t.encode("abc", {.add_bos = false}) == (std::vector<int>{9, 6}), boost::test_tools::per_element());
    // byte fallback (é = C3 A9, \n = 0A), unknown chars without byte pieces -> one fused <unk>
    BOOST_TEST(t.encode("\xC3\xA9\n", {.add_bos = false}) == (std::vector<int>{3, 12, 13, 11}),
               boost::test_tools::per_element());
    BOOST_TEST(t.encode("xyz", {.add_bos = false}) == (std::vector<int>{3, 0}), boost::test_tools::per_element());
    BOOST_TEST(t.encode("dxyzd", {.add_bos = false}) == (std::vector<int>{3, 14, 0, 14}),
               boost::test_tools::per_element());
    // special added token only with parse_special; non-special always
    BOOST_TEST(t.encode("a<|im_end|>", {.add_bos = false, .parse_special = true}) == (std::vector<int>{7, 15}),
               boost::test_tools::per_element());
    BOOST_TEST(t.encode("a<|im_end|>", {.add_bos = false}).size() > 2u);
    BOOST_TEST(t.encode("a[name]b", {.add_bos = false}) == (std::vector<int>{7, 16, 3, 5}),
               boost::test_tools::per_element());
    // decoding
    BOOST_TEST(t.decode(std::vector<int>{1, 9, 9, 6, 2}) == "ab abc");
    BOOST_TEST(t.decode(std::vector<int>{3, 12, 13, 11}) == "\xC3\xA9\n");
    BOOST_TEST(t.decode(std::vector<int>{7, 15}, false) == "a<|im_end|>");
    BOOST_TEST(t.decode(std::vector<int>{0}) == "<unk>");

    // Metaspace pre-tokenizer instead of the normalizer.
    auto with_pre = [&](const std::string& pre) {
        auto j = nlohmann::json::parse(json);
        j["normalizer"] = nullptr;
        j["pre_tokenizer"] = nlohmann::json::parse(pre);
        return Tokenizer::from_hf_json_text(j.dump(), "metaspace tokenizer.json");
    };
    {
        const Tokenizer m =
            with_pre(R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false})");
        BOOST_TEST((m.dummy_prefix() == DummyPrefix::FirstSegment));
        BOOST_TEST(m.encode("ab abc", {.add_bos = false}) == (std::vector<int>{9, 9, 6}),
                   boost::test_tools::per_element());
        // Metaspace adds no prefix when the text already starts with a space
        BOOST_TEST(m.encode(" ab", {.add_bos = false}) == (std::vector<int>{9}), boost::test_tools::per_element());
        // "first": no prefix after a special token
        BOOST_TEST(m.encode("<|im_end|>ab", {.add_bos = false, .parse_special = true}) == (std::vector<int>{15, 8}),
                   boost::test_tools::per_element());
        BOOST_TEST(m.decode(std::vector<int>{9, 9, 6}) == "ab abc");
    }
    {
        const Tokenizer m =
            with_pre(R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true})");
        BOOST_TEST(m.encode("<|im_end|>ab", {.add_bos = false, .parse_special = true}) == (std::vector<int>{15, 9}),
                   boost::test_tools::per_element());
        // split=true: every ▁ starts a word, so "▁▁a" is ▁ + ▁a
        BOOST_TEST(m.encode("  a", {.add_bos = false}) == (std::vector<int>{3, 7}), boost::test_tools::per_element());
    }
    {
        const Tokenizer m = with_pre(R"({"type": "Metaspace", "replacement": "▁", "add_prefix_space": false})");
        BOOST_TEST((m.dummy_prefix() == DummyPrefix::None));
        BOOST_TEST(m.encode("ab", {.add_bos = false}) == (std::vector<int>{8}), boost::test_tools::per_element());
    }

    // Errors name the field.
    auto mutate = [&](const std::function<void(nlohmann::json&)>& f) {
        auto j = nlohmann::json::parse(json);
        f(j);
        return j.dump();
    };
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text(mutate([](auto& j) { j["model"]["type"] = "WordPiece"; })),
                      limarp::UnsupportedError);
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text(mutate([](auto& j) {
                          j["normalizer"] = {{"type", "NFKC"}};
                      })),
                      limarp::UnsupportedError);
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text(mutate([](auto& j) {
                          j["pre_tokenizer"] = {{"type", "ByteLevel"}};
                      })),
                      limarp::UnsupportedError);
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text(mutate([](auto& j) { j["model"]["dropout"] = 0.1; })),
                      limarp::UnsupportedError);
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text(mutate([](auto& j) { j["model"]["merges"].push_back("a zz"); })),
                      limarp::FormatError);
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text(mutate([](auto& j) { j["model"]["merges"].push_back("abc"); })),
                      limarp::FormatError);
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text(mutate([](auto& j) { j["model"]["vocab"]["zz"] = 4; })),
                      limarp::FormatError);
    BOOST_CHECK_THROW(Tokenizer::from_hf_json_text("{not json"), limarp::FormatError);
    try {
        Tokenizer::from_hf_json_text(mutate([](auto& j) { j["model"]["merges"].push_back("a zz"); }), "x.json");
    } catch (const limarp::FormatError& e) {
        BOOST_TEST(std::string(e.what()).find("x.json: model.merges[4]") != std::string::npos, e.what());
    }
}

BOOST_AUTO_TEST_CASE(errors_name_the_file_and_field) {
    const std::string& base = model_bytes();
    BOOST_CHECK_THROW(Tokenizer::from_sentencepiece("/nonexistent/tokenizer.model"), limarp::IoError);
    BOOST_CHECK_THROW(Tokenizer::from_dir("/nonexistent"), limarp::IoError);
    BOOST_CHECK_THROW(Tokenizer::from_sentencepiece_proto("\xff\xff\xff", "garbage"), limarp::FormatError);
    BOOST_CHECK_THROW(Tokenizer::from_sentencepiece_proto(base.substr(0, base.size() / 2), "truncated"),
                      limarp::FormatError);
    BOOST_CHECK_THROW(Tokenizer::from_sentencepiece_proto("", "empty"), limarp::FormatError);
    try {
        Tokenizer::from_sentencepiece_proto(edit_model(base, {.trainer_varints = {{3, 1}}}), "unigram.model");
        BOOST_ERROR("a UNIGRAM model must be rejected");
    } catch (const limarp::UnsupportedError& e) {
        BOOST_TEST(std::string(e.what()).find("unigram.model: trainer_spec.model_type is UNIGRAM") != std::string::npos,
                   e.what());
    }
    try {
        Tokenizer::from_sentencepiece_proto(edit_model(base, {.charsmap = std::string("\x04\x00\x00\x00"
                                                                                      "abcdxyz",
                                                                                      11)}),
                                            "nfkc.model");
        BOOST_ERROR("a precompiled_charsmap must be rejected");
    } catch (const limarp::UnsupportedError& e) {
        BOOST_TEST(std::string(e.what()).find("nfkc.model: normalizer_spec.precompiled_charsmap") != std::string::npos,
                   e.what());
    }
    // byte pieces without byte_fallback; duplicate pieces
    BOOST_CHECK_THROW(Tokenizer::from_sentencepiece_proto(edit_model(base, {.trainer_varints = {{35, 0}}}), "x"),
                      limarp::FormatError);
    BOOST_CHECK_THROW(
        Tokenizer::from_sentencepiece_proto(edit_model(base, {.append = {{"\xE2\x96\x81the", 0.0f, 1}}}), "x"),
        limarp::FormatError);
    // tokenizer_config.json naming an unknown eos token
    TempDir dir;
    fs::copy_file(model_path(), dir.path / "tokenizer.model");
    dir.write("tokenizer_config.json", R"({"eos_token": "<|nope|>"})");
    BOOST_CHECK_THROW(Tokenizer::from_dir(dir.path), limarp::FormatError);
    dir.write("tokenizer_config.json", R"({"eos_token": )");
    BOOST_CHECK_THROW(Tokenizer::from_dir(dir.path), limarp::FormatError);
}

#if LIMARP_HAVE_TOKENIZE_CLI
BOOST_AUTO_TEST_CASE(limarp_tokenize_cli) {
    const std::string bin = std::string(LIMARP_BIN_DIR) + "/limarp-tokenize";
    BOOST_REQUIRE_MESSAGE(fs::is_regular_file(bin), "missing " << bin << ": build the target limarp-tokenize");
    TempDir dir;
    auto run = [&](const std::string& args, int& rc) {
        const fs::path out = dir.path / "out.txt", err = dir.path / "err.txt";
        const std::string cmd = bin + " " + args + " > " + out.string() + " 2> " + err.string();
        rc = std::system(cmd.c_str());
        return std::pair(read_all(out), read_all(err));
    };
    int rc = 0;
    const std::string model = model_path().string();
    auto [out, err] = run("--tokenizer " + model + " --text 'Hello world'", rc);
    BOOST_TEST(rc == 0);
    BOOST_TEST(out == "1 22557 1526\n");
    std::tie(out, err) = run("--tokenizer " + model + " --no-bos --text 'Hello world'", rc);
    BOOST_TEST(out == "22557 1526\n");
    dir.write("in.txt", "Hello world");
    std::tie(out, err) = run("--tokenizer " + model + " --file " + (dir.path / "in.txt").string(), rc);
    BOOST_TEST(out == "1 22557 1526\n");
    std::tie(out, err) = run("--tokenizer " + model + " --decode '1,22557, 1526'", rc);
    BOOST_TEST(rc == 0);
    BOOST_TEST(out == "Hello world\n");
    std::tie(out, err) = run("--tokenizer " + model + " --decode '1 x'", rc);
    BOOST_TEST(rc != 0);
    BOOST_TEST(std::count(err.begin(), err.end(), '\n') == 1);
    std::tie(out, err) = run("--tokenizer /nonexistent.model --text hi", rc);
    BOOST_TEST(rc != 0);
    BOOST_TEST(std::count(err.begin(), err.end(), '\n') == 1);
    std::tie(out, err) = run("--help", rc);
    BOOST_TEST(rc == 0);
    BOOST_TEST(out.find("--tokenizer") != std::string::npos);
}
#endif

BOOST_AUTO_TEST_SUITE_END()
