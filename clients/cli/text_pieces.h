// Where deltaserve-cli cuts a long text into the pieces it sends to
// Sessions.Append. The server tokenizes each piece on its own, so a cut
// should fall where a byte-level BPE tokenizer (its pre-tokenizer regex)
// would put a token boundary anyway.
#ifndef DELTASERVE_CLIENTS_CLI_TEXT_PIECES_H_
#define DELTASERVE_CLIENTS_CLI_TEXT_PIECES_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace deltaserve {
namespace cli {

// Returns the length in [1, text.size()] of the piece to take from the start
// of `text`, the rest of the input: all of it when it is at most `max_bytes`
// long (max_bytes >= 1), otherwise at most `max_bytes`, cut, in order of
// preference:
//   1. just after the last newline that is followed by a character that is
//      not whitespace (so runs such as "\n\n", one token, stay whole);
//   2. just after the last newline;
//   3. just before the last space or tab that follows a character that is
//      not whitespace (" word" is one token, so the space goes with the word
//      after it);
//   4. just after the last whitespace;
//   5. at the last UTF-8 character boundary (past `max_bytes` only when the
//      first character alone is longer).
size_t TextPieceLength(absl::string_view text, size_t max_bytes);

}  // namespace cli
}  // namespace deltaserve

#endif  // DELTASERVE_CLIENTS_CLI_TEXT_PIECES_H_
