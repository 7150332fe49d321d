// Text as evaluation and training read it: documents are runs of non-blank lines (a line of only
// whitespace is blank), each stripped and encoded with BOS, concatenated into one token stream
// (docs/evaluation.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/text/tokenizer.hpp"

namespace lowbit {

std::vector<std::string> split_documents(const std::string& text);
std::vector<int32_t> encode_documents(const tokenizer& tok, const std::string& text);

}  // namespace lowbit
