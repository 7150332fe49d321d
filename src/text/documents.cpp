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

// Documents are runs of non-blank lines; a line of only whitespace is blank. A document is the
// stretch of text from its first line's start to its last line's end, stripped.
std::vector<std::string_view> document_views(const std::string& text) {
  std::vector<std::string_view> docs;
  size_t start = 0, doc_start = std::string::npos;
  auto flush = [&](size_t end) {
    if (doc_start == std::string::npos) return;
    const std::string_view s = strip(std::string_view(text).substr(doc_start, end - doc_start));
    if (!s.empty()) docs.push_back(s);
    doc_start = std::string::npos;
  };
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (blank(std::string_view(text.data() + start, end - start))) flush(start);
    else if (doc_start == std::string::npos) doc_start = start;
    start = end + 1;
  }
  flush(text.size());
  return docs;
}

std::vector<std::string> split_documents(const std::string& text) {
  const std::vector<std::string_view> views = document_views(text);
  return std::vector<std::string>(views.begin(), views.end());
}

std::vector<int32_t> encode_documents(const tokenizer& tok, const std::string& text, int64_t max_tokens) {
  std::vector<int32_t> ids;
  for (const std::string_view d : document_views(text)) {  // views: no copy of each document
    if (max_tokens > 0 && int64_t(ids.size()) >= max_tokens) break;
    const auto part = tok.encode(d, true, false);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

}  // namespace lowbit
