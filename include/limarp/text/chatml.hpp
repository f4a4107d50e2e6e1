#pragma once
/// \file chatml.hpp
/// \brief ChatML, the prompt format of the Mistral-7B-OpenOrca base model, for comparing the
/// base with the LimaRP adapter on the same roleplay:
/// \verbatim
/// <|im_start|>system
/// {system}<|im_end|>
/// <|im_start|>user
/// {user text}<|im_end|>
/// <|im_start|>assistant
/// \endverbatim
/// (as OpenOrca's `chat_template` renders it with `add_generation_prompt`).

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/tokenizer.hpp"

namespace limarp::text {

/// One ChatML message.
struct ChatMessage {
    std::string role;     ///< `system`, `user` or `assistant`
    std::string content;  ///< the text

    /// Equality (for tests).
    friend bool operator==(const ChatMessage&, const ChatMessage&) = default;
};

/// Formats roleplays and plain message lists as ChatML.
class ChatMlPrompt {
public:
    /// A formatter for roleplays with the default names and no personas.
    ChatMlPrompt() = default;
    /// A formatter for the roleplay `setup`.
    explicit ChatMlPrompt(RoleplaySetup setup) : s_(std::move(setup)) {}

    /// The setup.
    const RoleplaySetup& setup() const noexcept { return s_; }

    /// `<|im_start|>role\ncontent<|im_end|>\n` for each message, then `<|im_start|>assistant\n`
    /// when `add_generation_prompt`.
    static std::string format_messages(std::span<const ChatMessage> messages, bool add_generation_prompt = true) {
        std::string out;
        for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
        if (add_generation_prompt) out += "<|im_start|>assistant\n";
        return out;
    }

    /// The roleplay as messages: a system message holding the LimaRP instruction text (personas,
    /// scenario, role-play sentence, without the `### Instruction:` header), then one `user` or
    /// `assistant` message per turn (placeholders substituted, whitespace trimmed). A length tag
    /// has no ChatML equivalent and is not used.
    std::vector<ChatMessage> messages(std::span<const Turn> turns) const {
        std::vector<ChatMessage> out;
        std::string sys = AlpacaPrompt(s_).instruction();
        constexpr std::string_view head = "\n### Instruction:\n";
        if (sys.starts_with(head)) sys.erase(0, head.size());
        out.push_back({"system", std::move(sys)});
        for (const Turn& t : turns) {
            const std::string body = substitute_placeholders(t.text, s_.char_name, s_.user_name);
            out.push_back({t.speaker == Speaker::User ? "user" : "assistant", std::string(detail::trim_ws(body))});
        }
        return out;
    }

    /// The roleplay prompt: format_messages(messages(turns), true).
    std::string format(std::span<const Turn> turns) const { return format_messages(messages(turns), true); }

    /// Token ids of format(turns) as Hugging Face tokenizes a rendered chat template: BOS (when
    /// `add_bos`), special-token text parsed as special tokens (`tok` must know `<|im_start|>`
    /// and `<|im_end|>`, as OpenOrca's tokenizer does). Like Hugging Face, special-token text
    /// inside a message is parsed too. \throws ArgumentError when `tok` lacks the ChatML tokens.
    std::vector<int> encode(const Tokenizer& tok, std::span<const Turn> turns, bool add_bos = true) const {
        require_chatml_tokens(tok);
        return tok.encode(format(turns), {.add_bos = add_bos, .add_eos = false, .parse_special = true});
    }

    /// As AlpacaPrompt::fit(): drops the oldest turns (never the system message, never the last
    /// turn) until the prompt has at most `budget` tokens. \throws ArgumentError as AlpacaPrompt::fit().
    FittedPrompt fit(std::span<const Turn> turns, std::int64_t budget, const TokenCounter& count) const {
        return detail::fit_turns(
            turns.size(), budget, count, [&](std::size_t k) { return format(turns.subspan(k)); },
            "ChatML prompt fitting");
    }

    /// The ChatML stop strings: `<|im_end|>`, `<|im_start|>`.
    static std::vector<std::string> stop_strings() { return {"<|im_end|>", "<|im_start|>"}; }

    /// Checks that `tok` has `<|im_start|>` and `<|im_end|>` as tokens. \throws ArgumentError.
    static void require_chatml_tokens(const Tokenizer& tok) {
        for (const char* t : {"<|im_start|>", "<|im_end|>"})
            if (!tok.token_id(t))
                throw ArgumentError(std::string("ChatML: the tokenizer has no token ") + t +
                                    " (use Mistral-7B-OpenOrca's tokenizer, or add it with add_special_token)");
    }

private:
    RoleplaySetup s_;
};

}  // namespace limarp::text
