// Task builders and the task JSONL format (tasks.hpp).
#include "lowbit/text/tasks.hpp"

#include <algorithm>
#include <cctype>
#include <random>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/base/draws.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/text/documents.hpp"

namespace lowbit {

namespace {

bool closing_mark(char c) { return c == '"' || c == '\'' || c == ')'; }

// Byte offsets just past each sentence of s: a '.', '!' or '?' (with closing quotes after it)
// followed by whitespace or the end, outside double quotes (a quoted speech of several sentences
// stays one: "Good night. I love you." is not split).
std::vector<size_t> sentence_ends(std::string_view s) {
  std::vector<size_t> ends;
  bool quoted = false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '"') quoted = !quoted;
    if (s[i] != '.' && s[i] != '!' && s[i] != '?') continue;
    size_t j = i + 1;
    bool closes_quote = false;
    while (j < s.size() && closing_mark(s[j])) closes_quote = closes_quote || s[j] == '"', ++j;
    if (j == s.size() || std::isspace(static_cast<unsigned char>(s[j]))) {
      if (closes_quote) quoted = false;
      else if (quoted) continue;
      ends.push_back(j);
      i = j - 1;
    }
  }
  return ends;
}

int count_words(std::string_view s) {
  int words = 0;
  bool in = false;
  for (unsigned char c : s) {
    const bool sp = std::isspace(c);
    if (!sp && !in) ++words;
    in = !sp;
  }
  return words;
}

struct split_story {
  size_t doc;
  std::string context, tail;
};

// Ending: the context is the story up to its last sentence (>= 2 sentences before it), the tail
// that sentence (3 to 40 words). False when the story does not split so.
bool split_ending(std::string_view story, split_story& out) {
  const auto ends = sentence_ends(story);
  if (ends.size() < 3 || ends.back() != story.size()) return false;
  const size_t cut = ends[ends.size() - 2];
  size_t start = cut;
  while (start < story.size() && std::isspace(static_cast<unsigned char>(story[start]))) ++start;
  out.context = story.substr(0, cut);
  out.tail = story.substr(start);
  const int w = count_words(out.tail);
  return w >= 3 && w <= 40 && out.tail.find('\n') == std::string::npos;
}

// Last word: the last whitespace-separated word, the punctuation after it dropped; it must be
// letters only (2 or more) so the target is a word, and the context at least 20 words.
bool split_lastword(std::string_view story, split_story& out) {
  size_t end = story.size();
  while (end > 0 && !std::isalpha(static_cast<unsigned char>(story[end - 1]))) {
    if (std::isspace(static_cast<unsigned char>(story[end - 1])) || std::isdigit(static_cast<unsigned char>(story[end - 1])))
      return false;  // a word must close the story, not a number or a dangling mark
    --end;
  }
  size_t start = end;
  while (start > 0 && std::isalpha(static_cast<unsigned char>(story[start - 1]))) --start;
  if (end - start < 2 || start == 0 || story[start - 1] != ' ') return false;
  out.context = story.substr(0, start - 1);
  out.tail = story.substr(start, end - start);
  return count_words(out.context) >= 20;
}

}  // namespace

task_kind parse_task_kind(const std::string& name) {
  if (name == "ending") return task_kind::ending;
  if (name == "lastword") return task_kind::lastword;
  throw error(fmt::format("task kind '{}': expected ending or lastword", name));
}

const char* task_kind_name(task_kind k) { return k == task_kind::ending ? "ending" : "lastword"; }

std::vector<task_item> build_task(const std::string& text, const task_build_options& opt) {
  if (opt.n < 0) throw error(fmt::format("task: --n {} is negative", opt.n));
  if (opt.kind == task_kind::ending && (opt.options < 2 || opt.options > 26))
    throw error(fmt::format("task: --options {}: an ending item needs 2 to 26 choices", opt.options));
  if (opt.max_chars <= 0) throw error(fmt::format("task: --max-chars {} must be positive", opt.max_chars));
  if (!(opt.text_fraction > 0 && opt.text_fraction <= 1))
    throw error(fmt::format("task: --fraction {} must be in (0, 1]", opt.text_fraction));
  // The documents that end before the cut (one that the cut falls inside is left out).
  const size_t cut = opt.text_fraction >= 1 ? text.size() : static_cast<size_t>(double(text.size()) * opt.text_fraction);
  std::vector<std::string_view> docs = document_views(text);
  while (!docs.empty() && size_t(docs.back().data() + docs.back().size() - text.data()) > cut) docs.pop_back();
  std::vector<split_story> eligible;
  for (size_t d = 0; d < docs.size(); ++d) {
    if (static_cast<int64_t>(docs[d].size()) > opt.max_chars) continue;
    split_story s{d, {}, {}};
    if (opt.kind == task_kind::ending ? split_ending(docs[d], s) : split_lastword(docs[d], s))
      eligible.push_back(std::move(s));
  }
  const int64_t want = opt.n > 0 ? opt.n : static_cast<int64_t>(eligible.size());
  if (static_cast<int64_t>(eligible.size()) < want || (opt.kind == task_kind::ending && eligible.size() < size_t(opt.options)))
    throw error(fmt::format("task: the text holds {} eligible stories for '{}' ({} documents in its first {:.0f}%, "
                            "at most {} characters each); {} were asked for", eligible.size(), task_kind_name(opt.kind),
                            docs.size(), 100 * opt.text_fraction, opt.max_chars, std::max<int64_t>(want, opt.options)));
  std::mt19937_64 rng(opt.seed);
  std::vector<size_t> order(eligible.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  shuffle_in_place(order, rng);
  std::vector<task_item> items;
  for (int64_t k = 0; k < want; ++k) {
    const split_story& s = eligible[order[k]];
    task_item it;
    it.kind = opt.kind;
    it.id = fmt::format("doc{}", s.doc);
    it.context = s.context;
    if (opt.kind == task_kind::lastword) {
      it.choices = {s.tail};
    } else {
      // Distractors: endings of other stories, each distinct from the true one and each other.
      std::set<std::string> used{s.tail};
      std::vector<std::string> distractors;
      for (int tries = 0; int(distractors.size()) < opt.options - 1; ++tries) {
        if (tries > 1000 * opt.options)
          throw error("task: too few distinct endings in the text for the distractors");
        const split_story& o = eligible[draw_below(rng, eligible.size())];
        if (used.insert(o.tail).second) distractors.push_back(o.tail);
      }
      it.gold = static_cast<int>(draw_below(rng, opt.options));
      for (int c = 0, d = 0; c < opt.options; ++c) it.choices.push_back(c == it.gold ? s.tail : distractors[d++]);
    }
    items.push_back(std::move(it));
  }
  return items;
}

std::string task_jsonl(const std::vector<task_item>& items) {
  std::string out;
  for (const task_item& it : items) {
    nlohmann::ordered_json j;
    j["kind"] = task_kind_name(it.kind);
    j["id"] = it.id;
    j["context"] = it.context;
    if (it.kind == task_kind::ending) {
      j["choices"] = it.choices;
      j["gold"] = it.gold;
    } else {
      j["target"] = it.choices.at(0);
    }
    out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    out += '\n';
  }
  return out;
}

std::vector<task_item> parse_task_jsonl(const std::string& text, const std::string& where) {
  std::vector<task_item> items;
  size_t start = 0;
  int64_t line_no = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (std::all_of(line.begin(), line.end(), [](unsigned char c) { return std::isspace(c); })) continue;
    auto bad = [&](const std::string& why) {
      return error(fmt::format("{}:{}: {}", where, line_no, why));
    };
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) throw bad("not valid JSON");
    if (!j.is_object()) throw bad("expected a JSON object");
    auto text_field = [&](const char* key) {
      if (!j.contains(key) || !j[key].is_string()) throw bad(fmt::format("\"{}\" must be a string", key));
      return j[key].get<std::string>();
    };
    task_item it;
    const std::string kind = text_field("kind");
    if (kind != "ending" && kind != "lastword")
      throw bad(fmt::format("\"kind\" is '{}'; expected ending or lastword", kind));
    it.kind = parse_task_kind(kind);
    it.id = j.contains("id") ? text_field("id") : fmt::format("line{}", line_no);
    it.context = text_field("context");
    if (it.kind == task_kind::ending) {
      if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2)
        throw bad("\"choices\" must be an array of at least 2 strings");
      for (const auto& c : j["choices"]) {
        if (!c.is_string() || c.get<std::string>().empty()) throw bad("every choice must be a non-empty string");
        it.choices.push_back(c.get<std::string>());
      }
      if (!j.contains("gold") || !j["gold"].is_number_integer()) throw bad("\"gold\" must be an integer");
      const int64_t g = j["gold"].get<int64_t>();
      if (g < 0 || g >= static_cast<int64_t>(it.choices.size()))
        throw bad(fmt::format("\"gold\" {} is not the index of one of the {} choices", g, it.choices.size()));
      it.gold = static_cast<int>(g);
    } else {
      const std::string target = text_field("target");
      if (target.empty()) throw bad("\"target\" is empty");
      it.choices = {target};
    }
    items.push_back(std::move(it));
  }
  if (items.empty()) throw error(fmt::format("{}: no task items", where));
  return items;
}

std::vector<task_item> read_task_file(const std::string& path) {
  return parse_task_jsonl(read_file(path, "task file"), path);
}

void write_task_file(const std::string& path, const std::vector<task_item>& items) {
  const std::string text = task_jsonl(items);
  atomic_file_writer w(path);
  w.write(text.data(), text.size());
  w.commit();
}

}  // namespace lowbit
