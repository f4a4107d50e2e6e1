#pragma once
/// \file tokenizer.hpp
/// \brief SentencePiece-BPE compatible tokenizer (Mistral / Llama style): loads a SentencePiece
/// `tokenizer.model`, a Hugging Face `tokenizer.json` (BPE) or a model folder, and encodes and
/// decodes with exact parity with libsentencepiece.
///
/// Encoding, SentencePiece model (the semantics of libsentencepiece, checked id for id against
/// Debian's 0.1.97 on generated mixed text and on model variants):
///  1. With EncodeOptions::parse_special the input is first split on special-token strings
///     (control pieces such as `<s>`, the unknown piece, added tokens such as `<|im_end|>`;
///     longest match first); each match becomes its id. Otherwise those strings are plain text.
///  2. Each remaining text segment is normalized as SentencePiece's identity normalizer does:
///     **invalid UTF-8**: every byte that does not start a valid UTF-8 character (stray
///     continuation bytes, truncated sequences, overlong forms, surrogates U+D800..U+DFFF,
///     code points above U+10FFFF, bytes F5..FF) is replaced by one U+FFFD, and tokenization
///     goes on (Mistral has a U+FFFD piece, so `"\xff"` encodes to `▁` `�`; decode() then gives
///     U+FFFD). With remove_extra_whitespaces leading, trailing and repeated spaces are
///     removed (Mistral: off); spaces become U+2581; a dummy U+2581 is prepended (DummyPrefix).
///  3. BPE: start from characters (user-defined pieces matched greedily, longest first, and
///     never merged), repeatedly merge the adjacent pair whose concatenation is the piece with
///     the highest score, leftmost first on ties. Pieces of type UNUSED are split back.
///  4. Characters left without a piece become byte pieces `<0xXX>` (byte_fallback) or `<unk>`
///     (consecutive unknowns then share one `<unk>`).
///
/// A Hugging Face tokenizer.json follows the HF BPE rules instead: a pair merges only when it is
/// in `merges` (lowest rank first, leftmost on ties), unknown characters become byte tokens (or
/// `<unk>`, fused) before merging, and a Metaspace pre-tokenizer adds no prefix to text that
/// already starts with a space. Added tokens are matched on the raw text; their lstrip, rstrip,
/// single_word and normalized flags are ignored. Decoding uses SentencePiece's rules for both.
///
/// Speed: the text is cut into words before BPE (a word = a run of U+2581 plus the text up to
/// the next U+2581) only when the loaded vocabulary proves this cannot change the result (no
/// producible piece contains U+2581 after another character; no user-defined or unused
/// pieces). Word results are cached per thread (see Tokenizer::release_thread_cache()).
///
/// Thread safety: encode() and decode() are const and may run concurrently on one Tokenizer;
/// add_special_token() and set_dummy_prefix() must not run concurrently with anything else.

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/text/detail/flat_map.hpp"
#include "limarp/text/detail/protobuf_reader.hpp"
#include "limarp/text/detail/utf8.hpp"

namespace limarp::text {

/// Kind of a vocabulary entry (SentencePiece's ModelProto.SentencePiece.Type).
enum class PieceType : std::uint8_t {
    Normal = 1,       ///< an ordinary piece, produced by BPE merges
    Unknown = 2,      ///< the unknown piece (`<unk>`)
    Control = 3,      ///< invisible control symbol (`<s>`, `</s>`) or added special token (`<|im_end|>`)
    UserDefined = 4,  ///< always kept as one piece when it occurs in the text
    Unused = 5,       ///< in the vocabulary but never emitted (split back into smaller pieces)
    Byte = 6,         ///< byte-fallback piece `<0xXX>`
};

/// Where a dummy U+2581 (a space) is prepended to the text before BPE.
enum class DummyPrefix : std::uint8_t {
    None,          ///< never (SentencePiece add_dummy_prefix=false)
    EverySegment,  ///< before every text segment, including text after a parsed special token (SentencePiece, HF
                   ///< legacy)
    FirstSegment,  ///< only before text that starts the input (HF `legacy: false`, Metaspace prepend_scheme "first")
};

/// Options of Tokenizer::encode.
struct EncodeOptions {
    bool add_bos = true;         ///< prepend bos_id() (when the model has one)
    bool add_eos = false;        ///< append eos_id() (when the model has one)
    bool parse_special = false;  ///< turn special-token strings in the text (`<s>`, `<|im_start|>`) into their ids;
                                 ///< false treats them as plain text (use for user input)
};

class StreamDecoder;

/// A SentencePiece-BPE tokenizer with exact parity with libsentencepiece (see the file comment
/// for the algorithm, the invalid UTF-8 rule and thread safety). Copyable; copies are independent.
///
/// \code
/// auto tok = limarp::text::Tokenizer::from_dir("Mistral-7B-OpenOrca");  // + <|im_end|>, <|im_start|>
/// std::vector<int> ids = tok.encode("Hello world");                   // {1, 22557, 1526}
/// std::string text = tok.decode(ids);                                  // "Hello world"
/// \endcode
class Tokenizer {
public:
    /// Loads a SentencePiece model file (`tokenizer.model`, a serialized ModelProto).
    /// \throws IoError when the file cannot be read; FormatError when it is not a valid
    /// ModelProto (message names the field); UnsupportedError when the model is not BPE, uses
    /// a non-empty precompiled_charsmap (only the identity normalization is implemented) or
    /// treat_whitespace_as_suffix.
    static Tokenizer from_sentencepiece(const std::filesystem::path& model_file);

    /// Loads a serialized SentencePiece ModelProto held in memory; `name` is used in error messages.
    /// \throws FormatError, UnsupportedError as from_sentencepiece().
    static Tokenizer from_sentencepiece_proto(std::string_view serialized, const std::string& name = "<memory>");

    /// Loads a Hugging Face `tokenizer.json` with a BPE model: vocab, merges (`"a b"` strings or
    /// `["a","b"]` pairs, priority = rank), byte_fallback, unk_token, fuse_unk; normalizer
    /// null / Prepend("▁") / Replace(" ", "▁") / a Sequence of those; pre_tokenizer null or
    /// Metaspace (prepend_scheme first/always/never, split); added_tokens (special ones are
    /// matched only with parse_special, the others always). `<s>`/`</s>` give bos/eos when present.
    /// \throws IoError, FormatError (names the JSON field), UnsupportedError (other model,
    /// normalizer or pre-tokenizer types, dropout, subword prefixes, ignore_merges).
    static Tokenizer from_hf_json(const std::filesystem::path& tokenizer_json);

    /// As from_hf_json() for JSON text held in memory; `name` is used in error messages.
    static Tokenizer from_hf_json_text(std::string_view json_text, const std::string& name = "<memory>");

    /// Loads a model folder: `tokenizer.model` if present, else `tokenizer.json`; then adds the
    /// tokens of `added_tokens.json` (as special tokens) and of `tokenizer_config.json`'s
    /// `added_tokens_decoder`, and takes bos/eos/unk/pad from `tokenizer_config.json`'s
    /// `bos_token`/`eos_token`/`unk_token`/`pad_token` when given (OpenOrca: eos = `<|im_end|>`).
    /// `"legacy": false` selects DummyPrefix::FirstSegment for a SentencePiece model.
    /// \throws IoError when neither tokenizer file exists; FormatError for bad JSON files.
    static Tokenizer from_dir(const std::filesystem::path& model_dir);

    /// Registers `text` as a special token with id `id`: decoded as nothing when skipping
    /// special tokens, matched in the input only with EncodeOptions::parse_special.
    /// A new id (>= vocab_size()) extends the vocabulary (ids in between become empty UNUSED
    /// placeholders); an existing id must already have the piece `text` (e.g. `<s>` = 1).
    /// \throws ArgumentError for an empty text, a negative id, or an existing id with another piece.
    void add_special_token(std::string text, int id);

    /// Encodes UTF-8 text into ids: [bos] + pieces + [eos] as chosen by `opt`. Each byte that
    /// does not start a valid UTF-8 character is read as U+FFFD (see the file comment).
    /// \throws ArgumentError for text over 1 GiB, or (HF tokenizers without unk_token
    /// nor byte_fallback) a character that has no token.
    std::vector<int> encode(std::string_view text, EncodeOptions opt = {}) const;

    /// Decodes ids into UTF-8 text as SentencePiece's DecodeIds does: U+2581 becomes a space,
    /// the dummy-prefix space of the first piece is dropped, runs of byte pieces are reassembled
    /// into UTF-8 (each byte of an invalid sequence becomes U+FFFD), `<unk>` becomes the model's
    /// unk surface (" ⁇ "). Control pieces and special tokens give nothing when `skip_special`,
    /// else their text.
    /// \throws ArgumentError for an id outside [0, vocab_size()).
    std::string decode(std::span<const int> ids, bool skip_special = true) const;

    /// The piece string of `id` (`▁Hello`, `<0x0A>`, `<s>`, `<|im_end|>`).
    /// \throws ArgumentError for an id outside [0, vocab_size()).
    std::string_view piece(int id) const;

    /// The type of `id`. \throws ArgumentError for an id outside [0, vocab_size()).
    PieceType piece_type(int id) const;

    /// The score of `id` (SentencePiece piece score; minus the merge rank for HF tokenizers, 0 for other tokens).
    /// \throws ArgumentError for an id outside [0, vocab_size()).
    float piece_score(int id) const;

    /// Whether `id` is a control piece or a special token (skipped by decode(ids, true)).
    bool is_special(int id) const {
        return id >= 0 && id < vocab_size() && pieces_[static_cast<std::size_t>(id)].type == PieceType::Control;
    }

    /// Number of ids (pieces plus added tokens): 32000 for Mistral, 32002 with OpenOrca's tokens.
    int vocab_size() const noexcept { return static_cast<int>(pieces_.size()); }
    /// Id of the beginning-of-sequence token, or -1.
    int bos_id() const noexcept { return bos_id_; }
    /// Id of the end-of-sequence token, or -1.
    int eos_id() const noexcept { return eos_id_; }
    /// Id of the unknown token, or -1.
    int unk_id() const noexcept { return unk_id_; }
    /// Id of the padding token, or -1.
    int pad_id() const noexcept { return pad_id_; }

    /// The id of the piece spelled exactly `piece` (control, byte and added tokens included), if any.
    std::optional<int> token_id(std::string_view piece) const;

    /// Whether byte-fallback pieces are used for characters without a piece.
    bool byte_fallback() const noexcept { return byte_fallback_; }
    /// The dummy-prefix rule in use.
    DummyPrefix dummy_prefix() const noexcept { return dummy_prefix_; }
    /// Changes the dummy-prefix rule (e.g. DummyPrefix::FirstSegment to mimic HF `legacy: false`).
    void set_dummy_prefix(DummyPrefix p) noexcept { dummy_prefix_ = p; }

    /// Frees the calling thread's encode scratch memory and word cache (up to a few MB per
    /// thread that called encode(); they are otherwise kept for the thread's lifetime so that
    /// repeated words are not merged again). Never needed for correctness.
    static void release_thread_cache() {
        Workspace& ws = thread_workspace();
        ws.cache.release();
        ws = Workspace{};
    }

private:
    friend class StreamDecoder;

    struct PieceInfo {
        std::string text;
        float score = 0.0f;
        PieceType type = PieceType::Normal;
    };
    struct Special {
        std::string text;
        int id = -1;
        bool always = false;  // matched even without parse_special (HF non-special added tokens)
    };
    struct MergeEntry {
        float score = 0.0f;
        int id = -1;
    };
    struct Sym {
        std::uint32_t begin = 0;
        std::uint32_t len = 0;
        int id = -1;
        int prev = -1;
        int next = -1;
        bool freeze = false;
        bool unk = false;
    };
    struct Cand {
        float score;
        int left;
        int right;
        std::uint32_t size;
        int id;
    };
    struct Workspace {
        std::string normalized;
        std::vector<Sym> syms;
        std::vector<Cand> heap;
        std::vector<int> word_ids;
        detail::WordCache cache;  // persists across calls on the same thread (see encode())
        std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
    };

    Tokenizer() = default;

    // Scratch buffers and the word cache live per thread and persist across calls: encode() stays
    // const and thread-safe, and repeated words are not merged again. A word's ids depend only on
    // the BPE tables, identified by uid_.
    static Workspace& thread_workspace() {
        static thread_local Workspace ws;
        return ws;
    }

    void check_id(int id) const {
        if (id < 0 || id >= vocab_size())
            throw ArgumentError("tokenizer: id " + std::to_string(id) + " is outside [0, " +
                                std::to_string(vocab_size()) + ")");
    }
    void finalize();
    std::string_view text_of(int id) const { return pieces_[static_cast<std::size_t>(id)].text; }
    int find_any(std::string_view p) const {
        return all_index_.find(p, [this](int i) { return text_of(i); });
    }
    int find_mergeable(std::string_view p) const {
        return merge_index_.find(p, [this](int i) { return text_of(i); });
    }
    bool index_any(std::string_view p, int id) {
        return all_index_.insert(p, id, [this](int i) { return text_of(i); });
    }
    void rebuild_special_index();
    int lookup_char(std::string_view ch) const {
        if (ch.size() == 1) return ascii_ids_[static_cast<unsigned char>(ch[0])];
        const int* v = char_ids_.find(detail::utf8_char_key(ch));
        return v ? *v : -1;
    }
    int match_user_defined(std::string_view s, int* id) const;
    void normalize(std::string_view in, bool add_prefix, std::string& out) const;
    void encode_segment(std::string_view text, bool at_start, Workspace& ws, std::vector<int>& out) const;
    void bpe_word(std::string_view w, Workspace& ws, std::vector<int>& out) const;
    void emit_unknown(std::string_view bytes, std::vector<int>& out) const;
    void resegment(std::string_view piece, Workspace& ws, std::vector<int>& out) const;
    void append_ids(std::span<const int> ids, bool& prev_unk, std::vector<int>& out) const;

    std::vector<PieceInfo> pieces_;
    detail::StringIdIndex all_index_;    // every piece -> id (reserved types win, as SentencePiece's PieceToId)
    detail::StringIdIndex merge_index_;  // pieces BPE may produce (NORMAL / USER_DEFINED / UNUSED) -> id
    std::vector<int> mergeable_ids_;     // the ids in merge_index_
    std::array<int, 256> ascii_ids_{};
    detail::U64FlatMap<int> char_ids_;       // multi-byte single-character pieces
    detail::U64FlatMap<MergeEntry> merges_;  // (left id, right id) -> merged piece
    std::array<int, 256> byte_ids_{};
    std::vector<std::pair<std::string, int>> user_defined_;  // longest first
    std::array<bool, 256> user_defined_first_{};
    std::vector<Special> specials_;
    std::vector<std::vector<std::size_t>> special_by_byte_;  // first byte -> indices into specials_, longest first
    bool has_always_specials_ = false;
    std::vector<std::pair<std::pair<std::string, std::string>, int>> hf_merge_list_;  // only while loading

    std::string source_;
    bool hf_ = false;  // HF tokenizer.json semantics: merges by pair rank, unknown chars fall back before merging
    bool byte_fallback_ = false;
    bool fuse_unk_ = false;
    bool has_user_defined_ = false;
    bool has_unused_ = false;
    bool unknown_can_merge_ = true;  // some producible piece contains a character that is not itself a piece
    bool finite_scores_ = true;      // every producible piece has a finite score
    std::uint64_t uid_ = 0;          // identifies the BPE tables (shared by copies); keys the per-thread word cache
    bool remove_extra_ws_ = false;
    bool escape_ws_ = true;
    bool prefix_unless_space_ = false;  // HF Metaspace: no prefix when the segment already starts with a space
    bool metaspace_split_ = false;      // HF Metaspace split=true: a word starts at every U+2581
    bool word_split_ = false;           // words are independent (proved from the vocabulary)
    DummyPrefix dummy_prefix_ = DummyPrefix::EverySegment;
    std::string unk_surface_ = " \xE2\x81\x87 ";
    int bos_id_ = -1;
    int eos_id_ = -1;
    int unk_id_ = -1;
    int pad_id_ = -1;
};

/// Incremental decoder: feed ids one at a time, get text as soon as it is complete. Never
/// returns part of a UTF-8 character (incomplete byte-fallback sequences are held back), drops
/// the dummy-prefix space of the first piece, and the concatenation of all push() results and
/// the final flush() equals Tokenizer::decode(all ids, skip_special).
/// Holds a reference to the tokenizer, which must outlive it.
class StreamDecoder {
public:
    /// A decoder for `tok`; `skip_special` as in Tokenizer::decode.
    explicit StreamDecoder(const Tokenizer& tok, bool skip_special = true) : tok_(&tok), skip_special_(skip_special) {}

    /// Feeds one id; returns the text completed by it (possibly empty).
    /// \throws ArgumentError for an id outside [0, vocab_size()).
    std::string push(int id) {
        std::string out;
        push_into(out, id);
        return out;
    }

    /// Ends the sequence: returns held-back bytes (an incomplete UTF-8 sequence gives one U+FFFD
    /// per byte) and resets the decoder for a new sequence.
    std::string flush() {
        std::string out;
        drain(out, true);
        reset();
        return out;
    }

    /// Forgets all state (held bytes and the start-of-text rule).
    void reset() noexcept {
        pending_.clear();
        emitted_ = false;
        bos_ws_seen_ = false;
        is_bos_ws_ = true;
    }

    /// As push(), appending to `out`.
    void push_into(std::string& out, int id);

private:
    void drain(std::string& out, bool final);

    const Tokenizer* tok_;
    bool skip_special_;
    std::string pending_;
    bool emitted_ = false;
    bool bos_ws_seen_ = false;
    bool is_bos_ws_ = true;
};

// =====================================================================================
// Implementation
// =====================================================================================

namespace detail {

/// Reads a whole file into a string. \throws IoError naming the file.
inline std::string read_file_bytes(const std::filesystem::path& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw IoError(path.string() + ": cannot open file for reading (" + std::strerror(errno) + ")");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) throw IoError(path.string() + ": read error");
    return std::move(ss).str();
}

/// The byte value of a piece spelled `<0xXX>` (upper-case hex, as SentencePiece writes it), or -1.
inline int byte_piece_value(std::string_view p) {
    if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    const int h = hex(p[3]), l = hex(p[4]);
    return (h < 0 || l < 0) ? -1 : h * 16 + l;
}

inline bool mergeable(PieceType t) {
    return t == PieceType::Normal || t == PieceType::UserDefined || t == PieceType::Unused;
}

}  // namespace detail

// ---- loading: SentencePiece ---------------------------------------------------------

inline Tokenizer Tokenizer::from_sentencepiece(const std::filesystem::path& model_file) {
    const std::string data = detail::read_file_bytes(model_file);
    return from_sentencepiece_proto(data, model_file.string());
}

inline Tokenizer Tokenizer::from_sentencepiece_proto(std::string_view serialized, const std::string& name) {
    using detail::WireField;
    using detail::WireReader;
    using detail::WireType;
    Tokenizer t;
    t.source_ = name;

    std::int64_t model_type = 1;  // UNIGRAM is the proto default
    bool treat_ws_as_suffix = false;
    std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
    std::string norm_name, charsmap, denorm_charsmap;

    // NormalizerSpec defaults of the proto: add_dummy_prefix, remove_extra_whitespaces and
    // escape_whitespaces are all true unless the file says otherwise.
    bool add_dummy_prefix = true;
    t.remove_extra_ws_ = true;
    t.escape_ws_ = true;

    WireReader top(serialized, name + ": ModelProto");
    WireField f;
    while (top.next(f)) {
        if (f.number == 1) {  // pieces
            top.expect(f, WireType::LengthDelimited, "pieces");
            const std::string where = name + ": pieces[" + std::to_string(t.pieces_.size()) + "]";
            WireReader r(f.bytes, where);
            PieceInfo p;
            bool has_piece = false;
            WireField g;
            while (r.next(g)) {
                if (g.number == 1) {
                    r.expect(g, WireType::LengthDelimited, "piece");
                    p.text = std::string(g.bytes);
                    has_piece = true;
                } else if (g.number == 2) {
                    r.expect(g, WireType::Fixed32, "score");
                    p.score = g.as_float();
                } else if (g.number == 3) {
                    r.expect(g, WireType::Varint, "type");
                    if (g.varint < 1 || g.varint > 6)
                        throw FormatError(where + ".type: unknown piece type " + std::to_string(g.varint) +
                                          " (expected 1..6)");
                    p.type = static_cast<PieceType>(g.varint);
                }
            }
            if (!has_piece || p.text.empty()) throw FormatError(where + ".piece: piece must not be empty");
            if (p.text.find('\0') != std::string::npos)
                throw FormatError(where + ".piece: piece must not contain a NUL character");
            t.pieces_.push_back(std::move(p));
        } else if (f.number == 2) {  // trainer_spec
            top.expect(f, WireType::LengthDelimited, "trainer_spec");
            WireReader r(f.bytes, name + ": trainer_spec");
            WireField g;
            while (r.next(g)) {
                switch (g.number) {
                    case 3:
                        r.expect(g, WireType::Varint, "model_type");
                        model_type = static_cast<std::int64_t>(g.varint);
                        break;
                    case 24:
                        r.expect(g, WireType::Varint, "treat_whitespace_as_suffix");
                        treat_ws_as_suffix = g.varint != 0;
                        break;
                    case 35:
                        r.expect(g, WireType::Varint, "byte_fallback");
                        t.byte_fallback_ = g.varint != 0;
                        break;
                    case 44:
                        r.expect(g, WireType::LengthDelimited, "unk_surface");
                        t.unk_surface_ = std::string(g.bytes);
                        break;
                    case 45:
                        r.expect(g, WireType::LengthDelimited, "unk_piece");
                        if (!g.bytes.empty()) unk_piece = std::string(g.bytes);
                        break;
                    case 46:
                        r.expect(g, WireType::LengthDelimited, "bos_piece");
                        if (!g.bytes.empty()) bos_piece = std::string(g.bytes);
                        break;
                    case 47:
                        r.expect(g, WireType::LengthDelimited, "eos_piece");
                        if (!g.bytes.empty()) eos_piece = std::string(g.bytes);
                        break;
                    case 48:
                        r.expect(g, WireType::LengthDelimited, "pad_piece");
                        if (!g.bytes.empty()) pad_piece = std::string(g.bytes);
                        break;
                    default: break;
                }
            }
        } else if (f.number == 3 || f.number == 5) {  // normalizer_spec, denormalizer_spec
            const bool denorm = f.number == 5;
            const std::string spec = denorm ? "denormalizer_spec" : "normalizer_spec";
            top.expect(f, WireType::LengthDelimited, spec);
            WireReader r(f.bytes, name + ": " + spec);
            WireField g;
            while (r.next(g)) {
                if (denorm) {
                    if (g.number == 2) {
                        r.expect(g, WireType::LengthDelimited, "precompiled_charsmap");
                        denorm_charsmap = std::string(g.bytes);
                    }
                    continue;
                }
                switch (g.number) {
                    case 1:
                        r.expect(g, WireType::LengthDelimited, "name");
                        norm_name = std::string(g.bytes);
                        break;
                    case 2:
                        r.expect(g, WireType::LengthDelimited, "precompiled_charsmap");
                        charsmap = std::string(g.bytes);
                        break;
                    case 3:
                        r.expect(g, WireType::Varint, "add_dummy_prefix");
                        add_dummy_prefix = g.varint != 0;
                        break;
                    case 4:
                        r.expect(g, WireType::Varint, "remove_extra_whitespaces");
                        t.remove_extra_ws_ = g.varint != 0;
                        break;
                    case 5:
                        r.expect(g, WireType::Varint, "escape_whitespaces");
                        t.escape_ws_ = g.varint != 0;
                        break;
                    default: break;
                }
            }
        }
    }
    if (t.pieces_.empty()) throw FormatError(name + ": pieces: the model has no pieces");
    if (model_type != 2) {
        static const char* names[] = {"?", "UNIGRAM", "BPE", "WORD", "CHAR"};
        const std::string mt = (model_type >= 1 && model_type <= 4) ? names[model_type] : std::to_string(model_type);
        throw UnsupportedError(name + ": trainer_spec.model_type is " + mt + "; only BPE is supported");
    }
    if (treat_ws_as_suffix)
        throw UnsupportedError(name + ": trainer_spec.treat_whitespace_as_suffix=true is not supported");
    if (!charsmap.empty())
        throw UnsupportedError(name + ": normalizer_spec.precompiled_charsmap is not empty (normalization rule '" +
                               norm_name + "'); only the identity normalization is supported");
    if (!denorm_charsmap.empty())
        throw UnsupportedError(
            name + ": denormalizer_spec.precompiled_charsmap is not empty; denormalization is not supported");

    t.dummy_prefix_ = add_dummy_prefix ? DummyPrefix::EverySegment : DummyPrefix::None;

    // Validation as SentencePiece's ModelInterface::InitializePieces.
    std::array<bool, 256> byte_found{};
    int n_unk = 0;
    for (std::size_t i = 0; i < t.pieces_.size(); ++i) {
        const auto& p = t.pieces_[i];
        if (p.type == PieceType::Unknown) ++n_unk;
        if (p.type == PieceType::Byte) {
            const int b = detail::byte_piece_value(p.text);
            if (!t.byte_fallback_)
                throw FormatError(name + ": pieces[" + std::to_string(i) + "]: byte piece " + p.text +
                                  " found although trainer_spec.byte_fallback is false");
            if (b < 0)
                throw FormatError(name + ": pieces[" + std::to_string(i) + "]: invalid byte piece '" + p.text +
                                  "' (expected <0xXX>)");
            byte_found[static_cast<std::size_t>(b)] = true;
        }
    }
    if (n_unk != 1)
        throw FormatError(name + ": pieces: expected exactly one UNKNOWN piece, found " + std::to_string(n_unk));
    if (t.byte_fallback_ && std::find(byte_found.begin(), byte_found.end(), false) != byte_found.end())
        throw FormatError(
            name +
            ": pieces: trainer_spec.byte_fallback is true but the 256 byte pieces <0x00>..<0xFF> are not all present");

    t.finalize();

    auto control_or_none = [&](const std::string& p, PieceType want) {
        const int id = t.find_any(p);
        if (id < 0) return -1;
        return t.pieces_[static_cast<std::size_t>(id)].type == want ? id : -1;
    };
    t.unk_id_ = control_or_none(unk_piece, PieceType::Unknown);
    t.bos_id_ = control_or_none(bos_piece, PieceType::Control);
    t.eos_id_ = control_or_none(eos_piece, PieceType::Control);
    t.pad_id_ = control_or_none(pad_piece, PieceType::Control);
    if (t.unk_id_ < 0)
        throw FormatError(name + ": trainer_spec.unk_piece '" + unk_piece + "' is not the UNKNOWN piece");

    // Control and unknown pieces are special tokens for parse_special.
    for (std::size_t i = 0; i < t.pieces_.size(); ++i) {
        const auto& p = t.pieces_[i];
        if (p.type == PieceType::Control || p.type == PieceType::Unknown)
            t.specials_.push_back({p.text, static_cast<int>(i), false});
    }
    t.rebuild_special_index();
    return t;
}

// ---- loading: Hugging Face tokenizer.json -------------------------------------------

inline Tokenizer Tokenizer::from_hf_json(const std::filesystem::path& tokenizer_json) {
    const std::string data = detail::read_file_bytes(tokenizer_json);
    return from_hf_json_text(data, tokenizer_json.string());
}

inline Tokenizer Tokenizer::from_hf_json_text(std::string_view json_text, const std::string& name) {
    using nlohmann::json;
    json j;
    try {
        j = json::parse(json_text);
    } catch (const json::exception& e) {
        throw FormatError(name + ": not valid JSON (" + e.what() + ")");
    }
    auto fail = [&](const std::string& field, const std::string& what) -> void {
        throw FormatError(name + ": " + field + ": " + what);
    };
    auto unsupported = [&](const std::string& field, const std::string& what) -> void {
        throw UnsupportedError(name + ": " + field + ": " + what);
    };
    if (!j.is_object()) fail("(top level)", "expected a JSON object");
    if (!j.contains("model") || !j["model"].is_object()) fail("model", "missing or not an object");
    const json& m = j["model"];
    const std::string type = m.value("type", std::string("BPE"));
    if (type != "BPE") unsupported("model.type", "'" + type + "'; only BPE is supported");
    if (m.contains("dropout") && !m["dropout"].is_null() &&
        !(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0))
        unsupported("model.dropout", "BPE dropout is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (m.contains(k) && !m[k].is_null() && !(m[k].is_string() && m[k].get<std::string>().empty()))
            unsupported(std::string("model.") + k, "subword prefixes/suffixes are not supported");
    if (m.contains("ignore_merges") && m["ignore_merges"].is_boolean() && m["ignore_merges"].get<bool>())
        unsupported("model.ignore_merges", "true is not supported");

    Tokenizer t;
    t.source_ = name;
    t.hf_ = true;
    t.remove_extra_ws_ = false;
    t.byte_fallback_ = m.contains("byte_fallback") && m["byte_fallback"].is_boolean() && m["byte_fallback"].get<bool>();
    t.fuse_unk_ = m.contains("fuse_unk") && m["fuse_unk"].is_boolean() && m["fuse_unk"].get<bool>();
    std::string unk_token;
    if (m.contains("unk_token") && m["unk_token"].is_string()) unk_token = m["unk_token"].get<std::string>();

    // vocab
    if (!m.contains("vocab") || !m["vocab"].is_object()) fail("model.vocab", "missing or not an object");
    auto put_piece = [&](const std::string& text, int id, const std::string& field) {
        if (id < 0) fail(field, "negative id " + std::to_string(id));
        if (id > 10'000'000) fail(field, "id " + std::to_string(id) + " is implausibly large");
        if (static_cast<std::size_t>(id) >= t.pieces_.size())
            t.pieces_.resize(static_cast<std::size_t>(id) + 1, PieceInfo{"", 0.0f, PieceType::Unused});
        auto& p = t.pieces_[static_cast<std::size_t>(id)];
        if (!p.text.empty() && p.text != text)
            fail(field, "id " + std::to_string(id) + " is used by both '" + p.text + "' and '" + text + "'");
        p.text = text;
        p.type = PieceType::Normal;
    };
    for (const auto& [tok, idj] : m["vocab"].items()) {
        if (!idj.is_number_integer()) fail("model.vocab[\"" + tok + "\"]", "id is not an integer");
        if (tok.empty()) fail("model.vocab", "empty token");
        put_piece(tok, idj.get<int>(), "model.vocab[\"" + tok + "\"]");
    }
    // types
    for (auto& p : t.pieces_) {
        if (p.text.empty()) continue;
        if (t.byte_fallback_ && detail::byte_piece_value(p.text) >= 0) p.type = PieceType::Byte;
        if (!unk_token.empty() && p.text == unk_token) p.type = PieceType::Unknown;
    }
    // merges
    if (m.contains("merges")) {
        if (!m["merges"].is_array()) fail("model.merges", "not an array");
        const auto& ms = m["merges"];
        t.hf_merge_list_.reserve(ms.size());
        for (std::size_t r = 0; r < ms.size(); ++r) {
            const std::string field = "model.merges[" + std::to_string(r) + "]";
            std::string a, b;
            if (ms[r].is_string()) {
                const std::string s = ms[r].get<std::string>();
                const auto sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    fail(field, "'" + s + "' is not two tokens separated by one space");
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else if (ms[r].is_array() && ms[r].size() == 2 && ms[r][0].is_string() && ms[r][1].is_string()) {
                a = ms[r][0].get<std::string>();
                b = ms[r][1].get<std::string>();
            } else {
                fail(field, "expected \"a b\" or [\"a\", \"b\"]");
            }
            t.hf_merge_list_.push_back({{std::move(a), std::move(b)}, static_cast<int>(r)});
        }
    }

    // normalizer
    bool prepend = false, replace = false;
    auto parse_normalizer = [&](const json& n, const std::string& field) {
        const std::string nt = n.value("type", std::string());
        if (nt == "Prepend") {
            if (n.value("prepend", std::string()) != std::string(detail::kSpaceSymbol))
                unsupported(field + ".prepend", "only \"\u2581\" is supported");
            prepend = true;
        } else if (nt == "Replace") {
            const bool ok = n.contains("pattern") && n["pattern"].is_object() &&
                            n["pattern"].value("String", std::string("\x01")) == " " &&
                            n.value("content", std::string()) == std::string(detail::kSpaceSymbol);
            if (!ok) unsupported(field, "only Replace(\" \", \"\u2581\") is supported");
            replace = true;
        } else {
            unsupported(field + ".type",
                        "normalizer '" + nt + "' is not supported (supported: Prepend, Replace, Sequence)");
        }
    };
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
        const json& n = j["normalizer"];
        if (n.value("type", std::string()) == "Sequence") {
            if (!n.contains("normalizers") || !n["normalizers"].is_array())
                fail("normalizer.normalizers", "missing or not an array");
            for (std::size_t i = 0; i < n["normalizers"].size(); ++i)
                parse_normalizer(n["normalizers"][i], "normalizer.normalizers[" + std::to_string(i) + "]");
        } else {
            parse_normalizer(n, "normalizer");
        }
    }
    // pre-tokenizer
    bool metaspace = false;
    std::string scheme = "always";
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
        const json* p = &j["pre_tokenizer"];
        std::string field = "pre_tokenizer";
        if (p->value("type", std::string()) == "Sequence" && p->contains("pretokenizers") &&
            (*p)["pretokenizers"].is_array() && (*p)["pretokenizers"].size() == 1) {
            p = &(*p)["pretokenizers"][0];
            field = "pre_tokenizer.pretokenizers[0]";
        }
        const std::string pt = p->value("type", std::string());
        if (pt != "Metaspace")
            unsupported(field + ".type", "pre-tokenizer '" + pt + "' is not supported (supported: Metaspace)");
        if (p->value("replacement", std::string(detail::kSpaceSymbol)) != std::string(detail::kSpaceSymbol))
            unsupported(field + ".replacement", "only \"\u2581\" is supported");
        metaspace = true;
        if (p->contains("prepend_scheme") && (*p)["prepend_scheme"].is_string()) {
            scheme = (*p)["prepend_scheme"].get<std::string>();
            if (scheme != "always" && scheme != "first" && scheme != "never")
                fail(field + ".prepend_scheme", "unknown value '" + scheme + "'");
        } else if (p->contains("add_prefix_space") && (*p)["add_prefix_space"].is_boolean()) {
            scheme = (*p)["add_prefix_space"].get<bool>() ? "always" : "never";
        }
        t.metaspace_split_ = p->contains("split") ? (*p)["split"].is_boolean() && (*p)["split"].get<bool>() : true;
    }
    if (prepend && metaspace && scheme != "never")
        unsupported("normalizer", "both a Prepend normalizer and a prefixing Metaspace pre-tokenizer");
    t.escape_ws_ = replace || metaspace;
    if (prepend) {
        t.dummy_prefix_ = DummyPrefix::EverySegment;
    } else if (metaspace && scheme != "never") {
        t.dummy_prefix_ = scheme == "first" ? DummyPrefix::FirstSegment : DummyPrefix::EverySegment;
        t.prefix_unless_space_ = true;
    } else {
        t.dummy_prefix_ = DummyPrefix::None;
    }

    // added tokens
    std::vector<Special> added;
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
        if (!j["added_tokens"].is_array()) fail("added_tokens", "not an array");
        for (std::size_t i = 0; i < j["added_tokens"].size(); ++i) {
            const json& a = j["added_tokens"][i];
            const std::string field = "added_tokens[" + std::to_string(i) + "]";
            if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
                !a["content"].is_string())
                fail(field, "expected an object with integer 'id' and string 'content'");
            const int id = a["id"].get<int>();
            const std::string content = a["content"].get<std::string>();
            if (content.empty()) fail(field + ".content", "empty");
            const bool special = a.value("special", false);
            if (id < 0) fail(field + ".id", "negative");
            if (static_cast<std::size_t>(id) < t.pieces_.size() &&
                !t.pieces_[static_cast<std::size_t>(id)].text.empty()) {
                if (t.pieces_[static_cast<std::size_t>(id)].text != content)
                    fail(field, "id " + std::to_string(id) + " is '" + t.pieces_[static_cast<std::size_t>(id)].text +
                                    "' in model.vocab, not '" + content + "'");
                auto& pt2 = t.pieces_[static_cast<std::size_t>(id)].type;
                if (special && pt2 == PieceType::Normal) pt2 = PieceType::Control;
            } else {
                put_piece(content, id, field);
                t.pieces_[static_cast<std::size_t>(id)].type = special ? PieceType::Control : PieceType::UserDefined;
            }
            added.push_back({content, id, !special});
        }
    }

    t.finalize();
    t.specials_ = std::move(added);
    t.rebuild_special_index();
    if (!unk_token.empty()) {
        t.unk_id_ = t.find_any(unk_token);
        if (t.unk_id_ < 0) fail("model.unk_token", "'" + unk_token + "' is not in model.vocab");
        t.unk_surface_ = unk_token;
    }
    if (auto b = t.token_id("<s>")) t.bos_id_ = *b;
    if (auto e = t.token_id("</s>")) t.eos_id_ = *e;
    if (auto p = t.token_id("<pad>")) t.pad_id_ = *p;
    return t;
}

// ---- loading: model folder ----------------------------------------------------------

inline Tokenizer Tokenizer::from_dir(const std::filesystem::path& model_dir) {
    namespace fs = std::filesystem;
    using nlohmann::json;
    const fs::path spm = model_dir / "tokenizer.model", hfj = model_dir / "tokenizer.json";
    Tokenizer t = [&] {
        if (fs::is_regular_file(spm)) return from_sentencepiece(spm);
        if (fs::is_regular_file(hfj)) return from_hf_json(hfj);
        throw IoError(model_dir.string() + ": neither tokenizer.model nor tokenizer.json found");
    }();
    auto load_json = [](const fs::path& p) {
        try {
            return json::parse(detail::read_file_bytes(p));
        } catch (const json::exception& e) {
            throw FormatError(p.string() + ": not valid JSON (" + e.what() + ")");
        }
    };
    struct Added {
        std::string text;
        bool special;
        std::string file;
    };
    std::map<int, Added> added;
    const fs::path added_file = model_dir / "added_tokens.json";
    if (fs::is_regular_file(added_file)) {
        const json a = load_json(added_file);
        if (!a.is_object()) throw FormatError(added_file.string() + ": expected an object {\"token\": id}");
        for (const auto& [tok, idj] : a.items()) {
            if (!idj.is_number_integer())
                throw FormatError(added_file.string() + ": [\"" + tok + "\"]: id is not an integer");
            added[idj.get<int>()] = {tok, true, added_file.string()};
        }
    }
    const fs::path cfg_file = model_dir / "tokenizer_config.json";
    json cfg;
    if (fs::is_regular_file(cfg_file)) {
        cfg = load_json(cfg_file);
        if (!cfg.is_object()) throw FormatError(cfg_file.string() + ": expected a JSON object");
        if (cfg.contains("added_tokens_decoder") && cfg["added_tokens_decoder"].is_object()) {
            for (const auto& [key, v] : cfg["added_tokens_decoder"].items()) {
                const std::string field = cfg_file.string() + ": added_tokens_decoder[\"" + key + "\"]";
                int id = -1;
                try {
                    std::size_t used = 0;
                    id = std::stoi(key, &used);
                    if (used != key.size()) id = -1;
                } catch (const std::exception&) {
                    id = -1;
                }
                if (id < 0) throw FormatError(field + ": key is not a token id");
                if (!v.is_object() || !v.contains("content") || !v["content"].is_string())
                    throw FormatError(field + ": missing string 'content'");
                added[id] = {v["content"].get<std::string>(), v.value("special", true), cfg_file.string()};
            }
        }
    }
    for (const auto& [id, a] : added) {
        if (a.text.empty()) throw FormatError(a.file + ": added token " + std::to_string(id) + " has empty content");
        if (id < t.vocab_size() && !t.pieces_[static_cast<std::size_t>(id)].text.empty() &&
            t.pieces_[static_cast<std::size_t>(id)].text != a.text &&
            t.pieces_[static_cast<std::size_t>(id)].type != PieceType::Unused)
            throw FormatError(a.file + ": added token '" + a.text + "' has id " + std::to_string(id) +
                              ", which is the piece '" + t.pieces_[static_cast<std::size_t>(id)].text + "'");
        if (a.special) {
            t.add_special_token(a.text, id);
        } else {
            // Non-special added token: matched in every input, decoded as text.
            if (id >= t.vocab_size())
                t.pieces_.resize(static_cast<std::size_t>(id) + 1, PieceInfo{"", 0.0f, PieceType::Unused});
            auto& p = t.pieces_[static_cast<std::size_t>(id)];
            if (p.text.empty() || p.type == PieceType::Unused) p = PieceInfo{a.text, 0.0f, PieceType::UserDefined};
            t.index_any(a.text, id);
            t.specials_.push_back({a.text, id, true});
            t.rebuild_special_index();
        }
    }
    if (!cfg.is_null()) {
        auto token_of = [&](const char* key) -> std::optional<std::string> {
            if (!cfg.contains(key)) return std::nullopt;
            const json& v = cfg[key];
            if (v.is_string()) return v.get<std::string>();
            if (v.is_object() && v.contains("content") && v["content"].is_string())
                return v["content"].get<std::string>();
            return std::nullopt;
        };
        auto set = [&](const char* key, int& target) {
            if (auto s = token_of(key)) {
                auto id = t.token_id(*s);
                if (!id)
                    throw FormatError(cfg_file.string() + ": " + key + " '" + *s + "' is not a token of the tokenizer");
                target = *id;
            }
        };
        set("bos_token", t.bos_id_);
        set("eos_token", t.eos_id_);
        set("unk_token", t.unk_id_);
        set("pad_token", t.pad_id_);
        if (!t.hf_ && cfg.contains("legacy") && cfg["legacy"].is_boolean() && !cfg["legacy"].get<bool>() &&
            t.dummy_prefix_ != DummyPrefix::None)
            t.dummy_prefix_ = DummyPrefix::FirstSegment;
    }
    return t;
}

inline void Tokenizer::add_special_token(std::string text, int id) {
    if (text.empty()) throw ArgumentError("add_special_token: empty text");
    if (id < 0) throw ArgumentError("add_special_token: negative id " + std::to_string(id) + " for '" + text + "'");
    if (id < vocab_size()) {
        auto& p = pieces_[static_cast<std::size_t>(id)];
        if (p.text.empty()) {
            p = PieceInfo{text, 0.0f, PieceType::Control};  // a placeholder slot
        } else if (p.text != text) {
            throw ArgumentError("add_special_token: id " + std::to_string(id) + " is the piece '" + p.text +
                                "', not '" + text + "'");
        }
    } else {
        pieces_.resize(static_cast<std::size_t>(id), PieceInfo{"", 0.0f, PieceType::Unused});
        pieces_.push_back(PieceInfo{text, 0.0f, PieceType::Control});
    }
    index_any(text, id);
    for (auto& s : specials_)
        if (s.text == text) {
            s.id = id;
            s.always = false;
            rebuild_special_index();
            return;
        }
    specials_.push_back({std::move(text), id, false});
    rebuild_special_index();
}

// ---- derived tables -----------------------------------------------------------------

inline void Tokenizer::finalize() {
    static std::atomic<std::uint64_t> next_uid{1};
    uid_ = next_uid.fetch_add(1, std::memory_order_relaxed);
    all_index_.clear();
    merge_index_.clear();
    mergeable_ids_.clear();
    const auto text = [this](int i) { return text_of(i); };
    // Reserved types first so that all_index_ resolves duplicates as SentencePiece's PieceToId.
    // As SentencePiece, a piece may appear once among the reserved and once among the others.
    for (int pass = 0; pass < 2; ++pass)
        for (std::size_t i = 0; i < pieces_.size(); ++i) {
            const auto& p = pieces_[i];
            if (p.text.empty()) continue;
            const int id = static_cast<int>(i);
            const bool reserved = !detail::mergeable(p.type);
            if ((pass == 0) != reserved) continue;
            // In HF every vocab entry except added tokens (bytes and unk included) is a BPE symbol.
            const bool bpe_symbol =
                hf_ ? (p.type != PieceType::Control && p.type != PieceType::UserDefined) : !reserved;
            const auto duplicate = [&] {
                if (!hf_)
                    throw FormatError(source_ + ": pieces[" + std::to_string(i) + "]: '" + p.text +
                                      "' is already defined");
            };
            if (!all_index_.insert(p.text, id, text) && reserved) duplicate();
            if (bpe_symbol) {
                if (merge_index_.insert(p.text, id, text))
                    mergeable_ids_.push_back(id);
                else
                    duplicate();
            }
        }

    ascii_ids_.fill(-1);
    char_ids_ = {};
    byte_ids_.fill(-1);
    user_defined_.clear();
    user_defined_first_.fill(false);
    has_unused_ = false;
    for (const int id : mergeable_ids_) {
        const std::string_view text = text_of(id);
        const int len = detail::utf8_valid_char_length(text);
        if (len == static_cast<int>(text.size())) {
            if (len == 1)
                ascii_ids_[static_cast<unsigned char>(text[0])] = id;
            else
                char_ids_.insert_or_assign(detail::utf8_char_key(text), id);
        }
        const auto type = pieces_[static_cast<std::size_t>(id)].type;
        if (!hf_ && type == PieceType::UserDefined) {
            user_defined_.emplace_back(std::string(text), id);
            user_defined_first_[static_cast<unsigned char>(text[0])] = true;
        }
        if (!hf_ && type == PieceType::Unused) has_unused_ = true;
    }
    std::sort(user_defined_.begin(), user_defined_.end(), [](const auto& a, const auto& b) {
        return a.first.size() != b.first.size() ? a.first.size() > b.first.size() : a.first < b.first;
    });
    has_user_defined_ = !user_defined_.empty();
    finite_scores_ = std::all_of(mergeable_ids_.begin(), mergeable_ids_.end(),
                                 [&](int id) { return std::isfinite(pieces_[static_cast<std::size_t>(id)].score); });
    unknown_can_merge_ = false;
    for (const int id : mergeable_ids_) {
        std::string_view rest = text_of(id);
        while (!rest.empty() && !unknown_can_merge_) {
            const int len = detail::utf8_valid_char_length(rest);
            if (len == 0 || lookup_char(rest.substr(0, static_cast<std::size_t>(len))) < 0) unknown_can_merge_ = true;
            rest.remove_prefix(len == 0 ? 1 : static_cast<std::size_t>(len));
        }
        if (unknown_can_merge_) break;
    }
    for (std::size_t i = 0; i < pieces_.size(); ++i)
        if (pieces_[i].type == PieceType::Byte) {
            const int b = detail::byte_piece_value(pieces_[i].text);
            if (b >= 0 && byte_ids_[static_cast<std::size_t>(b)] < 0)
                byte_ids_[static_cast<std::size_t>(b)] = static_cast<int>(i);
        }

    // Pair table: (left id, right id) -> merged piece.
    merges_ = {};
    auto key = [](int a, int b) {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
    };
    if (!hf_) {
        // SentencePiece merges any adjacent pair whose concatenation is a piece.
        for (const int id : mergeable_ids_) {
            const std::string_view t = text_of(id);
            for (std::size_t k = 1; k < t.size(); ++k) {
                if ((static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) continue;  // symbols are whole characters
                const int l = find_mergeable(t.substr(0, k));
                if (l < 0) continue;
                const int r = find_mergeable(t.substr(k));
                if (r < 0) continue;
                merges_.insert_or_assign(key(l, r), MergeEntry{pieces_[static_cast<std::size_t>(id)].score, id});
            }
        }
    } else {
        for (const auto& [ab, rank] : hf_merge_list_) {
            const std::string field = source_ + ": model.merges[" + std::to_string(rank) + "]";
            const int a = find_mergeable(ab.first), b = find_mergeable(ab.second),
                      c = find_mergeable(ab.first + ab.second);
            if (a < 0) throw FormatError(field + ": token '" + ab.first + "' is not in model.vocab");
            if (b < 0) throw FormatError(field + ": token '" + ab.second + "' is not in model.vocab");
            if (c < 0) throw FormatError(field + ": merged token '" + ab.first + ab.second + "' is not in model.vocab");
            merges_.insert_or_assign(key(a, b), MergeEntry{-static_cast<float>(rank), c});
        }
        // A merged token's score is minus the rank of the first merge producing it.
        for (auto it = hf_merge_list_.rbegin(); it != hf_merge_list_.rend(); ++it)
            pieces_[static_cast<std::size_t>(find_mergeable(it->first.first + it->first.second))].score =
                -static_cast<float>(it->second);
        hf_merge_list_.clear();
        hf_merge_list_.shrink_to_fit();
    }

    // Words are independent when no producible piece spans "<non-space char><space symbol>".
    const std::string_view space = escape_ws_ ? detail::kSpaceSymbol : std::string_view(" ");
    bool spans = false;
    for (const int id : mergeable_ids_) {
        const std::string_view text = text_of(id);
        for (std::size_t pos = text.find(space, 1); pos != std::string::npos; pos = text.find(space, pos + 1)) {
            if (pos >= space.size() && text.substr(pos - space.size(), space.size()) == space) continue;
            spans = true;
            break;
        }
        if (spans) break;
    }
    word_split_ = !spans && !has_user_defined_ && !has_unused_;
}

inline void Tokenizer::rebuild_special_index() {
    special_by_byte_.assign(256, {});
    has_always_specials_ = false;
    for (std::size_t i = 0; i < specials_.size(); ++i) {
        if (specials_[i].text.empty()) continue;
        special_by_byte_[static_cast<unsigned char>(specials_[i].text[0])].push_back(i);
        has_always_specials_ |= specials_[i].always;
    }
    for (auto& v : special_by_byte_)
        std::sort(v.begin(), v.end(),
                  [&](std::size_t a, std::size_t b) { return specials_[a].text.size() > specials_[b].text.size(); });
}

inline std::optional<int> Tokenizer::token_id(std::string_view piece) const {
    const int id = find_any(piece);
    if (id < 0) return std::nullopt;
    return id;
}

inline std::string_view Tokenizer::piece(int id) const {
    check_id(id);
    return pieces_[static_cast<std::size_t>(id)].text;
}

inline PieceType Tokenizer::piece_type(int id) const {
    check_id(id);
    return pieces_[static_cast<std::size_t>(id)].type;
}

inline float Tokenizer::piece_score(int id) const {
    check_id(id);
    return pieces_[static_cast<std::size_t>(id)].score;
}

// ---- encoding -----------------------------------------------------------------------

inline int Tokenizer::match_user_defined(std::string_view s, int* id) const {
    if (s.empty() || !user_defined_first_[static_cast<unsigned char>(s[0])]) return 0;
    for (const auto& [text, pid] : user_defined_)
        if (s.starts_with(text)) {
            *id = pid;
            return static_cast<int>(text.size());
        }
    return 0;
}

inline void Tokenizer::normalize(std::string_view in, bool add_prefix, std::string& out) const {
    out.clear();
    if (in.empty()) return;
    const std::string_view space = escape_ws_ ? detail::kSpaceSymbol : std::string_view(" ");
    out.reserve(in.size() + in.size() / 2 + 8);
    // One "prefix" of the input as SentencePiece's Normalizer::NormalizePrefix (identity rule):
    // a user-defined piece, else one valid UTF-8 character, else one invalid byte -> U+FFFD.
    auto next_prefix = [&](std::string_view s, std::size_t& consumed) -> std::string_view {
        int ud = 0;
        if (has_user_defined_) {
            int id = -1;
            ud = match_user_defined(s, &id);
        }
        if (ud > 0) {
            consumed = static_cast<std::size_t>(ud);
            return s.substr(0, consumed);
        }
        const int len = detail::utf8_valid_char_length(s);
        if (len == 0) {
            consumed = 1;
            return detail::kReplacementChar;
        }
        consumed = static_cast<std::size_t>(len);
        return s.substr(0, consumed);
    };
    if (remove_extra_ws_) {
        while (!in.empty()) {
            std::size_t c = 0;
            if (next_prefix(in, c) != " ") break;
            in.remove_prefix(c);
        }
        if (in.empty()) return;
    }
    if (add_prefix) out += space;

    if (!remove_extra_ws_ && !has_user_defined_) {
        // Fast path: identity normalization, spaces escaped.
        const char* p = in.data();
        const char* const e = p + in.size();
        while (p < e) {
            const char* q = p;
            while (q < e && static_cast<unsigned char>(*q) < 0x80 && *q != ' ') ++q;
            out.append(p, static_cast<std::size_t>(q - p));
            p = q;
            if (p == e) break;
            if (*p == ' ') {
                out += space;
                ++p;
                continue;
            }
            const int len = detail::utf8_valid_char_length(std::string_view(p, static_cast<std::size_t>(e - p)));
            if (len == 0) {
                out += detail::kReplacementChar;
                ++p;
            } else {
                out.append(p, static_cast<std::size_t>(len));
                p += len;
            }
        }
        return;
    }

    bool is_prev_space = remove_extra_ws_;
    while (!in.empty()) {
        std::size_t consumed = 0;
        std::string_view sp = next_prefix(in, consumed);
        while (is_prev_space && !sp.empty() && sp.front() == ' ') sp.remove_prefix(1);
        if (!sp.empty()) {
            for (char c : sp) {
                if (escape_ws_ && c == ' ')
                    out += detail::kSpaceSymbol;
                else
                    out += c;
            }
            is_prev_space = sp.back() == ' ';
        }
        in.remove_prefix(consumed);
        if (!remove_extra_ws_) is_prev_space = false;
    }
    if (remove_extra_ws_)
        while (std::string_view(out).ends_with(space)) out.resize(out.size() - space.size());
}

inline void Tokenizer::emit_unknown(std::string_view bytes, std::vector<int>& out) const {
    if (byte_fallback_) {
        for (char c : bytes) out.push_back(byte_ids_[static_cast<unsigned char>(c)]);
    } else {
        out.push_back(unk_id_);
    }
}

inline void Tokenizer::resegment(std::string_view piece, Workspace& ws, std::vector<int>& out) const {
    // SentencePiece: PieceToId(piece); an UNUSED piece is replaced by the two symbols it was built from.
    const int id = find_any(piece);
    if (id < 0 || pieces_[static_cast<std::size_t>(id)].type == PieceType::Unknown) {
        emit_unknown(piece, out);
        return;
    }
    auto rv =
        pieces_[static_cast<std::size_t>(id)].type == PieceType::Unused ? ws.rev_merge.find(piece) : ws.rev_merge.end();
    if (rv == ws.rev_merge.end()) {
        out.push_back(id);
        return;
    }
    const auto halves = rv->second;
    resegment(halves.first, ws, out);
    resegment(halves.second, ws, out);
}

inline void Tokenizer::bpe_word(std::string_view w, Workspace& ws, std::vector<int>& out) const {
    auto& syms = ws.syms;
    syms.clear();
    // 1. Initial symbols: characters (user-defined pieces frozen), HF: unknown chars fall back now.
    std::size_t i = 0;
    const std::size_t n = w.size();
    while (i < n) {
        Sym s;
        s.begin = static_cast<std::uint32_t>(i);
        const auto c = static_cast<unsigned char>(w[i]);
        int ud_id = -1;
        const int ud = has_user_defined_ ? match_user_defined(w.substr(i), &ud_id) : 0;
        if (ud > 0) {
            s.len = static_cast<std::uint32_t>(ud);
            s.id = ud_id;
            s.freeze = true;
        } else if (c < 0x80) {
            s.len = 1;
            s.id = ascii_ids_[c];
        } else {
            s.len = static_cast<std::uint32_t>(
                std::min<std::size_t>(static_cast<std::size_t>(detail::utf8_lead_length(c)), n - i));
            s.id = lookup_char(w.substr(i, s.len));
        }
        if (hf_ && s.id < 0) {
            bool bytes_ok = byte_fallback_;
            if (bytes_ok)
                for (std::uint32_t k = 0; k < s.len; ++k)
                    bytes_ok &= byte_ids_[static_cast<unsigned char>(w[i + k])] >= 0;
            if (bytes_ok) {
                for (std::uint32_t k = 0; k < s.len; ++k) {
                    Sym b;
                    b.begin = static_cast<std::uint32_t>(i + k);
                    b.len = 1;
                    b.id = byte_ids_[static_cast<unsigned char>(w[i + k])];
                    syms.push_back(b);
                }
                i += s.len;
                continue;
            }
            if (unk_id_ < 0)
                throw ArgumentError(source_ +
                                    ": the text contains a character with no token, and the tokenizer has neither "
                                    "byte_fallback nor unk_token");
            if (fuse_unk_ && !syms.empty() && syms.back().unk) {
                syms.back().len += s.len;
                i += s.len;
                continue;
            }
            s.id = unk_id_;
            s.unk = true;
        }
        syms.push_back(s);
        i += s.len;
    }
    const int m = static_cast<int>(syms.size());
    for (int k = 0; k < m; ++k) {
        syms[static_cast<std::size_t>(k)].prev = k - 1;
        syms[static_cast<std::size_t>(k)].next = k + 1 < m ? k + 1 : -1;
    }

    // 2. Merges: best score first, leftmost on ties (SentencePiece bpe_model.cc; HF: lowest rank first).
    // The merged piece of the adjacent symbols l, r, or -1.
    auto pair_of = [&](const Sym& L, const Sym& R, float& score) -> int {
        if (L.freeze || R.freeze) return -1;
        if (L.id >= 0 && R.id >= 0) {
            const MergeEntry* e = merges_.find((static_cast<std::uint64_t>(static_cast<std::uint32_t>(L.id)) << 32) |
                                               static_cast<std::uint32_t>(R.id));
            if (!e) return -1;
            score = e->score;
            return e->id;
        }
        if (hf_ || !unknown_can_merge_) return -1;
        const int id = find_mergeable(w.substr(L.begin, L.len + R.len));
        if (id >= 0) score = pieces_[static_cast<std::size_t>(id)].score;
        return id;
    };
    constexpr int kLinearMax = 16;
    if (m > 1 && m <= kLinearMax && !has_unused_ && finite_scores_) {
        // Short words: the current adjacent pairs in an array, best one found by a scan. Picks
        // exactly the pair the priority queue below would (max score, leftmost on ties).
        // Pairs that cannot merge get the score -inf (piece scores are finite).
        constexpr float kNone = -std::numeric_limits<float>::infinity();
        float ps[kLinearMax];
        int pid[kLinearMax];
        auto set_pair = [&](std::size_t k) {
            float sc = kNone;
            pid[k] = pair_of(syms[k], syms[k + 1], sc);
            ps[k] = pid[k] >= 0 ? sc : kNone;
        };
        std::size_t cnt = static_cast<std::size_t>(m);
        for (std::size_t k = 0; k + 1 < cnt; ++k) set_pair(k);
        for (;;) {
            std::size_t best = 0;
            float bs = ps[0];
            for (std::size_t k = 1; k + 1 < cnt; ++k)
                if (ps[k] > bs) {
                    best = k;
                    bs = ps[k];
                }
            if (bs == kNone) break;
            Sym& L = syms[best];
            L.len += syms[best + 1].len;
            L.id = pid[best];
            L.unk = false;
            for (std::size_t k = best + 1; k + 1 < cnt; ++k) syms[k] = syms[k + 1];
            for (std::size_t k = best; k + 2 < cnt; ++k) {
                ps[k] = ps[k + 1];
                pid[k] = pid[k + 1];
            }
            --cnt;
            if (cnt == 1) break;
            if (best + 1 < cnt) set_pair(best);
            if (best > 0) set_pair(best - 1);
        }
        for (std::size_t k = 0; k < cnt; ++k) {
            const Sym& s = syms[k];
            if (hf_)
                out.push_back(s.id);
            else if (s.id < 0)
                emit_unknown(w.substr(s.begin, s.len), out);
            else
                out.push_back(s.id);
        }
        return;
    }
    if (m > 1) {
        auto& heap = ws.heap;
        heap.clear();
        const auto less = [](const Cand& a, const Cand& b) {
            return a.score < b.score || (a.score == b.score && a.left > b.left);
        };
        auto maybe_add = [&](int l, int r) {
            const Sym& L = syms[static_cast<std::size_t>(l)];
            const Sym& R = syms[static_cast<std::size_t>(r)];
            float score = 0.0f;
            const int id = pair_of(L, R, score);
            if (id < 0) return;
            heap.push_back(Cand{score, l, r, L.len + R.len, id});
            std::push_heap(heap.begin(), heap.end(), less);
            if (has_unused_ && pieces_[static_cast<std::size_t>(id)].type == PieceType::Unused)
                ws.rev_merge[w.substr(L.begin, L.len + R.len)] = {w.substr(L.begin, L.len), w.substr(R.begin, R.len)};
        };
        for (int k = 1; k < m; ++k) maybe_add(k - 1, k);
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), less);
            const Cand top = heap.back();
            heap.pop_back();
            Sym& L = syms[static_cast<std::size_t>(top.left)];
            Sym& R = syms[static_cast<std::size_t>(top.right)];
            if (L.len == 0 || R.len == 0 || L.len + R.len != top.size) continue;  // stale
            L.len += R.len;
            L.id = top.id;
            L.unk = false;
            L.next = R.next;
            if (R.next >= 0) syms[static_cast<std::size_t>(R.next)].prev = top.left;
            R.len = 0;
            if (L.prev >= 0) maybe_add(L.prev, top.left);
            if (L.next >= 0) maybe_add(top.left, L.next);
        }
    }

    // 3. Output.
    for (int k = 0; k != -1 && m > 0; k = syms[static_cast<std::size_t>(k)].next) {
        const Sym& s = syms[static_cast<std::size_t>(k)];
        if (hf_) {
            out.push_back(s.id);
        } else if (s.id < 0) {
            emit_unknown(w.substr(s.begin, s.len), out);
        } else if (has_unused_ && pieces_[static_cast<std::size_t>(s.id)].type == PieceType::Unused) {
            resegment(w.substr(s.begin, s.len), ws, out);
        } else {
            out.push_back(s.id);
        }
    }
}

inline void Tokenizer::append_ids(std::span<const int> ids, bool& prev_unk, std::vector<int>& out) const {
    if (hf_ || byte_fallback_) {
        out.insert(out.end(), ids.begin(), ids.end());
        return;
    }
    // SentencePiece merges a run of unknown pieces into one <unk>.
    for (int id : ids) {
        const bool unk = id == unk_id_;
        if (!(unk && prev_unk)) out.push_back(id);
        prev_unk = unk;
    }
}

inline void Tokenizer::encode_segment(std::string_view text, bool at_start, Workspace& ws,
                                      std::vector<int>& out) const {
    bool add_prefix =
        dummy_prefix_ == DummyPrefix::EverySegment || (dummy_prefix_ == DummyPrefix::FirstSegment && at_start);
    if (prefix_unless_space_ && !text.empty() && text.front() == ' ') add_prefix = false;
    normalize(text, add_prefix, ws.normalized);
    const std::string_view norm = ws.normalized;
    if (norm.empty()) return;
    ws.rev_merge.clear();
    bool prev_unk = false;
    if (!word_split_ && !metaspace_split_) {
        ws.word_ids.clear();
        bpe_word(norm, ws, ws.word_ids);
        append_ids(ws.word_ids, prev_unk, out);
        return;
    }
    const std::string_view space = escape_ws_ ? detail::kSpaceSymbol : std::string_view(" ");
    std::size_t pos = 0;
    while (pos < norm.size()) {
        // A word: a run of space symbols (one with Metaspace split), then everything up to the next space symbol.
        std::size_t e = pos;
        if (metaspace_split_) {
            if (norm.substr(e).starts_with(space)) e += space.size();
        } else {
            while (norm.substr(e).starts_with(space)) e += space.size();
        }
        const std::size_t nx = norm.find(space, e);
        e = nx == std::string_view::npos ? norm.size() : nx;
        const std::string_view word = norm.substr(pos, e - pos);
        pos = e;
        ws.word_ids.clear();
        if (word.size() <= detail::WordCache::kMaxWordBytes) {
            const std::uint64_t h = detail::hash_bytes(word);
            if (auto hit = ws.cache.find(uid_, word, h)) {
                append_ids(*hit, prev_unk, out);
                continue;
            }
            bpe_word(word, ws, ws.word_ids);
            ws.cache.insert(uid_, word, h, ws.word_ids);
        } else {
            bpe_word(word, ws, ws.word_ids);
        }
        append_ids(ws.word_ids, prev_unk, out);
    }
}

inline std::vector<int> Tokenizer::encode(std::string_view text, EncodeOptions opt) const {
    if (text.size() > (std::size_t{1} << 30))  // normalized text (<= 3x) must fit 32-bit offsets
        throw ArgumentError("encode: text of " + std::to_string(text.size()) + " bytes; at most 1 GiB is supported");
    std::vector<int> out;
    out.reserve(text.size() / 3 + 4);
    if (opt.add_bos && bos_id_ >= 0) out.push_back(bos_id_);
    Workspace& ws = thread_workspace();
    const bool scan = opt.parse_special || has_always_specials_;
    std::size_t seg_begin = 0;
    if (scan) {
        std::size_t i = 0;
        while (i < text.size()) {
            const auto& cands = special_by_byte_[static_cast<unsigned char>(text[i])];
            const Special* hit = nullptr;
            for (std::size_t ci : cands) {
                const Special& s = specials_[ci];
                if ((opt.parse_special || s.always) && text.substr(i).starts_with(s.text)) {
                    hit = &s;
                    break;
                }
            }
            if (!hit) {
                ++i;
                continue;
            }
            if (i > seg_begin) encode_segment(text.substr(seg_begin, i - seg_begin), seg_begin == 0, ws, out);
            out.push_back(hit->id);
            i += hit->text.size();
            seg_begin = i;
        }
    }
    if (seg_begin < text.size()) encode_segment(text.substr(seg_begin), seg_begin == 0, ws, out);
    if (opt.add_eos && eos_id_ >= 0) out.push_back(eos_id_);
    return out;
}

// ---- decoding -----------------------------------------------------------------------

inline void StreamDecoder::drain(std::string& out, bool final) {
    std::size_t i = 0;
    const std::size_t before = out.size();
    while (i < pending_.size()) {
        const auto b = static_cast<unsigned char>(pending_[i]);
        const auto need = static_cast<std::size_t>(detail::utf8_needed_length(b));
        if (pending_.size() - i < need && !final) break;  // wait for the rest of the character
        const int len = detail::utf8_valid_char_length(std::string_view(pending_).substr(i));
        if (len == 0) {
            out += detail::kReplacementChar;
            ++i;
        } else {
            out.append(pending_, i, static_cast<std::size_t>(len));
            i += static_cast<std::size_t>(len);
        }
    }
    pending_.erase(0, i);
    if (out.size() > before) emitted_ = true;
}

inline void StreamDecoder::push_into(std::string& out, int id) {
    tok_->check_id(id);
    const auto& p = tok_->pieces_[static_cast<std::size_t>(id)];
    if (p.type == PieceType::Byte) {
        const int b = detail::byte_piece_value(p.text);
        pending_ += static_cast<char>(b);
        drain(out, false);
        return;
    }
    drain(out, true);
    if (bos_ws_seen_ || emitted_) is_bos_ws_ = false;
    const std::size_t before = out.size();
    bool seen = false;
    if (p.type == PieceType::Control) {
        if (!skip_special_) out += p.text;
    } else if (p.type == PieceType::Unknown) {
        out += tok_->unk_surface_;
    } else {
        std::string_view s = p.text;
        if (is_bos_ws_ && (tok_->dummy_prefix_ != DummyPrefix::None || tok_->remove_extra_ws_)) {
            if (s.starts_with(detail::kSpaceSymbol)) {
                s.remove_prefix(detail::kSpaceSymbol.size());
                seen = true;
            }
            if (tok_->remove_extra_ws_) seen = false;
        }
        for (std::size_t pos = 0; pos < s.size();) {
            const std::size_t nx = s.find(detail::kSpaceSymbol, pos);
            if (nx == std::string_view::npos) {
                out.append(s.substr(pos));
                break;
            }
            out.append(s.substr(pos, nx - pos));
            out += ' ';
            pos = nx + detail::kSpaceSymbol.size();
        }
    }
    bos_ws_seen_ = seen;
    if (out.size() > before) emitted_ = true;
}

inline std::string Tokenizer::decode(std::span<const int> ids, bool skip_special) const {
    std::string out;
    out.reserve(ids.size() * 4);
    StreamDecoder d(*this, skip_special);
    for (int id : ids) d.push_into(out, id);
    out += d.flush();
    return out;
}

}  // namespace limarp::text
