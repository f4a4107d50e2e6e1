// limarp_make_chat_model SRC DST: writes the golden fixture SRC widened to the 32002-id
// Mistral-7B-OpenOrca vocabulary into DST (see ../wide_vocab.hpp), for the limarp-chat test.
#include <cstdio>
#include <exception>

#include "generate/wide_vocab.hpp"

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s FIXTURE_DIR OUT_DIR\n", argv[0]);
        return 2;
    }
    try {
        limarp::test::write_wide_vocab_model(argv[1], argv[2]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: error: %s\n", argv[0], e.what());
        return 1;
    }
    return 0;
}
