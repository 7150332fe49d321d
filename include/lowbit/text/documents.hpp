// Text as evaluation and training read it: documents are runs of non-blank lines (a line of only
// whitespace is blank), each stripped and encoded with BOS, concatenated into one token stream
// (docs/evaluation.md).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/text/tokenizer.hpp"

namespace lowbit {

std::vector<std::string> split_documents(const std::string& text);
// The same documents as views into text (a document's lines are consecutive in the text, so each
// stripped document is one stretch of it): where a document lies, e.g. before a cut.
std::vector<std::string_view> document_views(const std::string& text);
// Every document encoded with BOS, concatenated. With max_tokens > 0 the encoding stops after the
// document that reaches max_tokens ids: the first max_tokens ids are the same as the whole
// stream's (documents are encoded independently), without encoding a whole file for a short eval.
std::vector<int32_t> encode_documents(const tokenizer& tok, const std::string& text, int64_t max_tokens = 0);

}  // namespace lowbit
