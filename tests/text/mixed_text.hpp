#pragma once
// Deterministic generator of mixed text for tokenizer tests and benchmarks: English prose,
// roleplay-style dialogue, C++/Python code (indentation, tabs), CJK, emoji (ZWJ sequences,
// skin tones, flags, keycaps), combining marks, rare scripts, numbers, runs of spaces and
// newlines, control characters, literal special-token strings, random code points.
// Self-contained (own PRNG, no <random> distributions) so the text is identical everywhere.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace limarp::test {

/// splitmix64: a tiny deterministic PRNG.
class SplitMix64 {
public:
    explicit SplitMix64(std::uint64_t seed) : s_(seed) {}
    std::uint64_t next() {
        std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    /// Uniform-ish integer in [0, n).
    std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(next() % n); }
    bool chance(int percent) { return below(100) < static_cast<std::size_t>(percent); }
    template <class T> const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }

private:
    std::uint64_t s_;
};

/// Appends the UTF-8 encoding of code point `cp` (assumed valid) to `out`.
inline void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

namespace mixed_text_detail {

inline const std::vector<std::string>& words() {
    static const std::vector<std::string> w = {"the",        "of",           "and",
                                               "to",         "in",           "a",
                                               "is",         "that",         "for",
                                               "it",         "as",           "was",
                                               "with",       "be",           "by",
                                               "on",         "not",          "he",
                                               "she",        "they",         "this",
                                               "are",        "or",           "his",
                                               "her",        "from",         "at",
                                               "which",      "but",          "have",
                                               "an",         "had",          "were",
                                               "their",      "been",         "would",
                                               "there",      "what",         "about",
                                               "when",       "into",         "could",
                                               "time",       "people",       "roleplay",
                                               "character",  "persona",      "scenario",
                                               "tokenizer",  "whispered",    "smiled",
                                               "glanced",    "softly",       "suddenly",
                                               "adventure",  "forest",       "castle",
                                               "dragon",     "coffee",       "library",
                                               "midnight",   "unbelievable", "internationalization",
                                               "don't",      "can't",        "I'm",
                                               "you're",     "it's",         "o'clock",
                                               "well-known", "e-mail",       "naïve",
                                               "café",       "résumé",       "façade",
                                               "coöperate",  "Zürich",       "São",
                                               "Paulo",      "Ångström",     "jalapeño",
                                               "Straße",     "Œuvre",        "fiancée",
                                               "ÉCOLE",      "über",         "Mistral",
                                               "LoRA",       "GPU",          "CUDA",
                                               "JSON",       "HTTP/2",       "McDonald's",
                                               "iPhone",     "COVID-19",     "x86_64",
                                               "UTF-8",      "snake_case",   "camelCase",
                                               "PascalCase", "Hello",        "World",
                                               "Alice",      "Bob",          "Character",
                                               "User",       "Mr.",          "Dr.",
                                               "etc.",       "i.e.",         "U.S.A."};
    return w;
}

inline const std::vector<std::string>& code_lines() {
    static const std::vector<std::string> c = {
        "#include <vector>",
        "template <class T, std::size_t N = 16>",
        "struct Point { float x = 0.0f, y = 0.0f; };",
        "for (int i = 0; i < n; ++i) {",
        "    sum += a[i] * b[i];  // dot product",
        "}",
        "if (x != nullptr && x->next) return *x;",
        "auto lambda = [&](const auto& v) -> bool { return v.size() > 3; };",
        "std::cout << \"Hello, \\\"world\\\"\\n\" << std::endl;",
        "/* block comment with *stars* and // slashes */",
        "namespace limarp::text { class Tokenizer; }",
        "static_assert(sizeof(void*) == 8, \"64-bit only\");",
        "def tokenize(text: str) -> list[int]:",
        "    \"\"\"Docstring with 'quotes' and \\t escapes.\"\"\"",
        "    return [ord(c) for c in text if c.isalnum()]",
        "class Model(nn.Module):",
        "    def forward(self, x):  # type: ignore",
        "        return self.proj(F.silu(self.w1(x)) * self.w3(x))",
        "print(f\"{value:>10.3f} | {name!r}\")",
        "x = {'a': 1, \"b\": [2, 3], 'c': (4, 5)}",
        "lambda x: x**2 + 3*x - 1",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "$ git commit -m \"fix: off-by-one in window\" && make -j8",
        "<div class=\"msg\"><p>Hi &amp; bye</p></div>",
        "{\"role\": \"user\", \"content\": \"<|im_start|>hi<|im_end|>\"}",
        "fn main() { let v: Vec<u8> = vec![0xFF; 32]; println!(\"{:?}\", v); }",
        "0x7fffffff | 0b1010'1010 >> 3 << 2 ^ ~mask",
        "a += b; a -= c; a *= d; a /= e; a %= f; a &&= g; a ||= h;",
        "#define LIMARP_CHECK(x) do { if (!(x)) throw Error(#x); } while (0)",
    };
    return c;
}

inline const std::vector<std::string>& emoji() {
    static const std::vector<std::string> e = {"😀",
                                               "😂",
                                               "🥲",
                                               "❤️",
                                               "👍",
                                               "👍🏻",
                                               "👍🏽",
                                               "👍🏿",
                                               "👩‍💻",
                                               "👨‍👩‍👧‍👦",
                                               "🏳️‍🌈",
                                               "🧑🏾‍🚀",
                                               "🤷🏽‍♀️",
                                               "🇯🇵",
                                               "🇺🇸",
                                               "🇩🇪",
                                               "1️⃣",
                                               "#️⃣",
                                               "✨",
                                               "🔥",
                                               "🎉",
                                               "🐉",
                                               "☕",
                                               "⚡",
                                               "🫠",
                                               "🪐",
                                               "👁️‍🗨️",
                                               "🧔🏻‍♂️",
                                               "💁‍♂️",
                                               "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
                                               "©️",
                                               "™",
                                               "↔️",
                                               "✔",
                                               "❌",
                                               "🈯",
                                               "🆗"};
    return e;
}

inline const std::vector<std::string>& cjk_phrases() {
    static const std::vector<std::string> c = {"你好，世界！",
                                               "我们今天去公园散步吧。",
                                               "机器学习模型的分词器",
                                               "東京は日本の首都です。",
                                               "ひらがなとカタカナ",
                                               "ラーメンを食べたい！",
                                               "안녕하세요, 반갑습니다.",
                                               "한국어 텍스트 토큰화",
                                               "繁體中文與简体中文",
                                               "「引用」と『二重引用』",
                                               "全角スペース\u3000あり",
                                               "ｈａｌｆ／ｆｕｌｌ　ｗｉｄｔｈ",
                                               "１２３４５６",
                                               "𠮷野家",
                                               "𩸽の塩焼き"};
    return c;
}

inline const std::vector<std::string>& rare_scripts() {
    static const std::vector<std::string> r = {"Ελληνικά κείμενα",
                                               "Русский текст, ёлка!",
                                               "עִבְרִית",
                                               "العربية: مرحبا بالعالم",
                                               "हिन्दी भाषा",
                                               "தமிழ்",
                                               "ภาษาไทย",
                                               "ქართული",
                                               "Հայերեն",
                                               "ᏣᎳᎩ",
                                               "ግዕዝ",
                                               "བོད་ཡིག",
                                               "ᠮᠣᠩᠭᠣᠯ",
                                               "ᚠᚢᚦᚨᚱᚲ",
                                               "𐌲𐌿𐍄𐌹𐍃𐌺",
                                               "𒀭𒂗𒆠",
                                               "𝐀𝐁𝐂 𝕏𝕐ℤ 𝒶𝒷𝒸",
                                               "ʕ•ᴥ•ʔ",
                                               "(╯°□°）╯︵ ┻━┻",
                                               "ℝ³ ∀x∈ℕ: x² ≥ 0 ∑∫∂√∞≈≠",
                                               "¯\\_(ツ)_/¯",
                                               "Z̴̧̛a̷̡l̶g̵o̸ ̷t̴e̵x̶t̷",
                                               "e\xcc\x81 a\xcc\x88\xcc\xa3 n\xcc\x83 o\xcc\x8a\xcc\x8b",
                                               "ﬁﬂ ﬀ ß ẞ ŉ ǅ",
                                               "Ⅻ ⅷ ① ⑳ ㊙",
                                               "\xef\xbf\xbd replacement",
                                               "zero\xe2\x80\x8bwidth",
                                               "nb\xc2\xa0sp",
                                               "bom\xef\xbb\xbfhere",
                                               "pua\xee\x80\x80",
                                               "lower\xe2\x96\x81"
                                               "one\xe2\x96\x81"
                                               "eighth",
                                               "\xe2\x96\x81\xe2\x96\x81leading",
                                               "rtl\xe2\x80\x8f mark",
                                               "soft\xc2\xadhyphen"};
    return r;
}

inline const std::vector<std::string>& specials() {
    static const std::vector<std::string> s = {"<s>",
                                               "</s>",
                                               "<unk>",
                                               "<pad>",
                                               "<|im_end|>",
                                               "<|im_start|>",
                                               "<|im_start|>user\n",
                                               "[INST]",
                                               "[/INST]",
                                               "<0x41>",
                                               "<0x0A>",
                                               "<<SYS>>",
                                               "<",
                                               "<|",
                                               "|>",
                                               "</",
                                               "<s",
                                               "s>",
                                               "<|im_end",
                                               "▁",
                                               "### Instruction:",
                                               "### Response: (length = medium)",
                                               "### Input:\nUser:"};
    return s;
}

inline void sentence(SplitMix64& r, std::string& out) {
    const std::size_t n = 3 + r.below(14);
    for (std::size_t i = 0; i < n; ++i) {
        std::string w = r.pick(words());
        if (i == 0 && !w.empty() && w[0] >= 'a' && w[0] <= 'z') w[0] = static_cast<char>(w[0] - 'a' + 'A');
        if (r.chance(3)) {
            for (auto& ch : w)
                if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
        }
        if (i) out += r.chance(4) ? (r.chance(50) ? ", " : " - ") : " ";
        if (r.chance(4)) out += r.chance(50) ? "\"" : "*";
        out += w;
        if (r.chance(4)) out += r.chance(50) ? "\"" : "*";
    }
    static const std::vector<std::string> ends = {".", ".", ".", "!", "?", "...", "?!", ":", ";", " —", "…"};
    out += r.pick(ends);
}

inline void number(SplitMix64& r, std::string& out) {
    switch (r.below(7)) {
        case 0: out += std::to_string(r.below(100)); break;
        case 1: out += std::to_string(r.next()); break;
        case 2: out += std::to_string(r.below(1000)) + "." + std::to_string(r.below(100000)); break;
        case 3: out += std::to_string(1 + r.below(999)) + "," + std::to_string(100 + r.below(900)) + ",000"; break;
        case 4:
            out += "20" + std::to_string(10 + r.below(15)) + "-0" + std::to_string(1 + r.below(9)) + "-1" +
                   std::to_string(r.below(10));
            break;
        case 5: out += "-" + std::to_string(r.below(1000)) + "e-" + std::to_string(r.below(40)); break;
        default: out += "3.14159265358979323846264338327950288419716939937510"; break;
    }
}

inline void random_codepoints(SplitMix64& r, std::string& out, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t cp;
        switch (r.below(6)) {
            case 0: cp = 0x20 + static_cast<std::uint32_t>(r.below(0x5F)); break;           // ASCII printable
            case 1: cp = 0xA0 + static_cast<std::uint32_t>(r.below(0x2000 - 0xA0)); break;  // Latin..General punct
            case 2: cp = 0x4E00 + static_cast<std::uint32_t>(r.below(0x5200)); break;       // CJK ideographs
            case 3: cp = 0xAC00 + static_cast<std::uint32_t>(r.below(0x2BA4)); break;       // Hangul
            case 4: cp = 0x10000 + static_cast<std::uint32_t>(r.below(0x100000)); break;    // supplementary planes
            default: cp = 0x2000 + static_cast<std::uint32_t>(r.below(0xD800 - 0x2000)); break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        append_utf8(out, cp);
    }
}

}  // namespace mixed_text_detail

/// Deterministic mixed text of at least `min_bytes` bytes (valid UTF-8), made of paragraphs
/// separated by blank lines. The same seed gives the same text on every platform.
inline std::string make_mixed_text(std::size_t min_bytes, std::uint64_t seed = 20240229) {
    using namespace mixed_text_detail;
    SplitMix64 r(seed);
    std::string out;
    out.reserve(min_bytes + 4096);
    while (out.size() < min_bytes) {
        const std::size_t kind = r.below(100);
        if (kind < 38) {  // prose paragraph
            const std::size_t n = 1 + r.below(6);
            for (std::size_t i = 0; i < n; ++i) {
                if (i) out += r.chance(90) ? " " : "  ";
                sentence(r, out);
                if (r.chance(15)) {
                    out += " ";
                    number(r, out);
                }
                if (r.chance(10)) {
                    out += " ";
                    out += r.pick(emoji());
                }
                if (r.chance(5)) {
                    out += " ";
                    out += r.pick(specials());
                    out += " ";
                }
            }
        } else if (kind < 50) {  // dialogue, LimaRP prompt style
            out += r.chance(50) ? "### Input:\nUser: " : "### Response:\nCharacter: ";
            sentence(r, out);
            out += " *";
            sentence(r, out);
            out += "* ";
            if (r.chance(30)) out += r.pick(emoji());
        } else if (kind < 64) {  // code block
            const std::size_t n = 2 + r.below(12);
            const bool tabs = r.chance(30);
            for (std::size_t i = 0; i < n; ++i) {
                const std::size_t depth = r.below(4);
                for (std::size_t d = 0; d < depth; ++d) out += tabs ? "\t" : (r.chance(80) ? "    " : "  ");
                out += r.pick(code_lines());
                if (r.chance(10)) out += "   ";  // trailing spaces
                if (r.chance(10)) out += "\r";
                out += "\n";
            }
        } else if (kind < 72) {  // CJK
            const std::size_t n = 1 + r.below(5);
            for (std::size_t i = 0; i < n; ++i) {
                out += r.pick(cjk_phrases());
                if (r.chance(30)) random_codepoints(r, out, 1 + r.below(8));
            }
        } else if (kind < 79) {  // emoji soup
            const std::size_t n = 1 + r.below(10);
            for (std::size_t i = 0; i < n; ++i) {
                out += r.pick(emoji());
                if (r.chance(40)) out += " ";
            }
        } else if (kind < 86) {  // rare scripts, combining marks
            const std::size_t n = 1 + r.below(4);
            for (std::size_t i = 0; i < n; ++i) {
                if (i) out += " ";
                out += r.pick(rare_scripts());
            }
        } else if (kind < 90) {  // numbers
            const std::size_t n = 1 + r.below(8);
            for (std::size_t i = 0; i < n; ++i) {
                if (i) out += r.chance(50) ? " " : ", ";
                number(r, out);
            }
        } else if (kind < 94) {  // whitespace runs and control characters
            const std::size_t n = 1 + r.below(6);
            for (std::size_t i = 0; i < n; ++i) {
                switch (r.below(6)) {
                    case 0: out += std::string(1 + r.below(40), ' '); break;
                    case 1: out += std::string(1 + r.below(5), '\n'); break;
                    case 2: out += std::string(1 + r.below(6), '\t'); break;
                    case 3: out += static_cast<char>(1 + r.below(31)); break;
                    case 4: out += "\r\n \x7f\x0b\x0c"; break;
                    default: out += std::string(1, '\0') + "nul"; break;
                }
                out += r.pick(words());
            }
        } else if (kind < 97) {  // special-token strings as plain text
            const std::size_t n = 1 + r.below(5);
            for (std::size_t i = 0; i < n; ++i) {
                out += r.pick(specials());
                if (r.chance(50)) {
                    out += r.pick(words());
                }
                if (r.chance(50)) out += " ";
            }
        } else {  // random code points
            random_codepoints(r, out, 1 + r.below(60));
        }
        // paragraph separator
        out += r.chance(85) ? "\n\n" : (r.chance(50) ? "\n" : "\n\n\n");
    }
    return out;
}

}  // namespace limarp::test
