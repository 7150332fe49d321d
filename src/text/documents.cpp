#include "lowbit/text/documents.hpp"

#include <algorithm>
#include <cctype>
#include <string_view>

namespace lowbit {

namespace {

bool blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](unsigned char ch) { return std::isspace(ch); });
}

std::string_view strip(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

}  // namespace

// Documents are runs of non-blank lines; a line of only whitespace counts as blank.
std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  std::string current;
  size_t start = 0;
  auto flush = [&] {
    const std::string_view s = strip(current);
    if (!s.empty()) docs.emplace_back(s);
    current.clear();
  };
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + start, end - start);
    if (blank(line)) flush();
    else current.append(line).push_back('\n');
    start = end + 1;
  }
  flush();
  return docs;
}

std::vector<int32_t> encode_documents(const tokenizer& tok, const std::string& text, int64_t max_tokens) {
  std::vector<int32_t> ids;
  for (const std::string& d : split_documents(text)) {
    if (max_tokens > 0 && int64_t(ids.size()) >= max_tokens) break;
    const auto part = tok.encode(d, true, false);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

}  // namespace lowbit
