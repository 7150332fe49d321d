// FormatSpread's prompt-format grammar (prompt_format.hpp).
#include "lowbit/text/prompt_format.hpp"

#include <algorithm>
#include <cctype>
#include <random>
#include <set>

#include <fmt/format.h>

#include "lowbit/base/draws.hpp"
#include "lowbit/base/error.hpp"

namespace lowbit {

namespace {

const std::vector<std::string> roman_lower = {"i",  "ii",  "iii",  "iv", "v",  "vi",  "vii", "viii",
                                              "ix", "x",   "xi",   "xii", "xiii", "xiv", "xv"};

// The descriptors of a task's fields: the text, the listed options, the answer.
struct descriptors {
  std::string text, option, answer;
};

descriptors descriptors_of(task_kind kind) {
  return kind == task_kind::ending ? descriptors{"Story", "Option", "Ending"}
                                   : descriptors{"Story", "Option", "Next word"};
}

std::string apply_casing(int casing, const std::string& s) {
  std::string out = s;
  switch (casing) {
    case 0: return out;
    case 1: return title_case(s);
    case 2: for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c))); return out;
    case 3: for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c))); return out;
  }
  throw error(fmt::format("prompt format: casing {} out of range", casing));
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) s += static_cast<char>(cp);
  else if (cp < 0x800) s += static_cast<char>(0xC0 | (cp >> 6)), s += static_cast<char>(0x80 | (cp & 0x3F));
  else
    s += static_cast<char>(0xE0 | (cp >> 12)), s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
        s += static_cast<char>(0x80 | (cp & 0x3F));
  return s;
}

std::string number(int numbering, int i) {
  switch (numbering) {
    case 0: return std::to_string(i + 1);
    case 1: return std::string(1, static_cast<char>('A' + i));
    case 2: return std::string(1, static_cast<char>('a' + i));
    case 3: return utf8(0x2160 + i);  // Ⅰ, Ⅱ, ... (Roman numeral characters up to Ⅻ)
    case 4: return roman_lower.at(i);
    case 5: return apply_casing(2, roman_lower.at(i));
  }
  throw error(fmt::format("prompt format: numbering {} out of range", numbering));
}

std::string wrap(int wrapper, const std::string& x) {
  switch (wrapper) {
    case 0: return "(" + x + ")";
    case 1: return x + ".";
    case 2: return x + ")";
    case 3: return x + " )";
    case 4: return "[" + x + "]";
    case 5: return "<" + x + ">";
  }
  throw error(fmt::format("prompt format: item wrapper {} out of range", wrapper));
}

bool has_newline(const std::string& s) { return s.find('\n') != std::string::npos; }

// The strings a format renders with: two formats with equal keys render every item the same.
std::vector<std::string> render_key(const prompt_format& f, task_kind kind, int options) {
  const descriptors d = descriptors_of(kind);
  std::vector<std::string> key = {apply_casing(f.casing, d.text), apply_casing(f.casing, d.answer),
                                  format_separators()[f.separator], format_spaces()[f.space]};
  if (f.enumerate) {
    key.push_back(apply_casing(f.casing, d.option));
    key.push_back(format_text_option_separators()[f.text_option_sep]);
    key.push_back(format_spaces()[f.enum_space]);
    for (int i = 0; i < options; ++i) key.push_back(wrap(f.item_wrapper, number(f.numbering, i)));
  }
  return key;
}

}  // namespace

const std::vector<std::string>& format_separators() {
  static const std::vector<std::string> v = {"",   "::: ", ":: ", ": ", " \n\t", "\n    ", " : ", " - ",
                                             " ",  "\n ",  "\n\t", ":",  "::",    "- ",     "\t"};
  return v;
}

const std::vector<std::string>& format_spaces() {
  static const std::vector<std::string> v = {"",     " ",   "\n",   " \n", " -- ", "  ",  "; \n", " || ",
                                             " <sep> ", " -- ", ", ", " \n ", " , ", "\n ", ". ", " ,  "};
  return v;
}

const std::vector<std::string>& format_text_option_separators() {
  static const std::vector<std::string> v = {"", " ", "  ", "\t"};
  return v;
}

std::string title_case(const std::string& s) {
  std::string out = s;
  bool after_letter = false;
  for (char& c : out) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (std::isalpha(u)) {
      c = static_cast<char>(after_letter ? std::tolower(u) : std::toupper(u));
      after_letter = true;
    } else {
      after_letter = false;
    }
  }
  return out;
}

prompt_format original_format(bool enumerate) {
  prompt_format f;
  f.enumerate = enumerate;
  return f;
}

std::string format_violation(const prompt_format& f, int options) {
  auto in = [](int v, int n) { return v >= 0 && v < n; };
  if (!in(f.casing, format_casings) || !in(f.separator, int(format_separators().size())) ||
      !in(f.space, int(format_spaces().size())) || !in(f.item_wrapper, format_item_wrappers) ||
      !in(f.numbering, format_numberings) || !in(f.text_option_sep, int(format_text_option_separators().size())) ||
      !in(f.enum_space, int(format_spaces().size())))
    return "an index outside the grammar";
  const std::string& sep = format_separators()[f.separator];
  const std::string& space = format_spaces()[f.space];
  if (sep.empty()) return "empty separator";
  if (space.empty()) return "empty space between fields";
  if (has_newline(sep) && !has_newline(space)) return "newline in the separator but not in the space";
  if (f.enumerate) {
    if ((has_newline(sep) || has_newline(format_text_option_separators()[f.text_option_sep])) &&
        !has_newline(format_spaces()[f.enum_space]))
      return "newline in the enumeration's separators but not in its space";
    if (f.numbering == 3 && options > 12) return "Unicode Roman numerals stop at 12";
    if ((f.numbering == 4 || f.numbering == 5) && options > int(roman_lower.size())) return "too many options";
    if ((f.numbering == 1 || f.numbering == 2) && options > 26) return "too many options";
  }
  return "";
}

std::vector<prompt_format> sample_formats(int count, uint64_t seed, bool enumerate, task_kind kind, int options) {
  if (count < 1) throw error(fmt::format("spread: --formats {} must be at least 1", count));
  const prompt_format original = original_format(enumerate);
  std::set<std::vector<std::string>> seen = {render_key(original, kind, options)};
  std::vector<prompt_format> out = {original};
  std::mt19937_64 rng(seed);
  auto below = [&](uint64_t n) { return draw_below(rng, n); };
  const int n_sep = int(format_separators().size()), n_space = int(format_spaces().size());
  const int n_tos = int(format_text_option_separators().size());
  if (!enumerate) {
    // Every valid assignment, one per distinct rendering, in a fixed order; then the first
    // count - 1 of a seeded uniform permutation (a partial Fisher-Yates shuffle).
    std::vector<prompt_format> valid;
    prompt_format f = original;
    for (f.casing = 0; f.casing < format_casings; ++f.casing)
      for (f.separator = 0; f.separator < n_sep; ++f.separator)
        for (f.space = 0; f.space < n_space; ++f.space)
          if (format_violation(f, options).empty() && seen.insert(render_key(f, kind, options)).second)
            valid.push_back(f);
    if (static_cast<size_t>(count) > valid.size() + 1)
      throw error(fmt::format("spread: --formats {}: the grammar has {} distinct valid formats for this task",
                              count, valid.size() + 1));
    for (int k = 0; k + 1 < count; ++k) {
      std::swap(valid[k], valid[k + below(valid.size() - k)]);
      out.push_back(valid[k]);
    }
    return out;
  }
  // With the options listed the grammar has millions of assignments: draw each part uniformly,
  // keep valid formats that render differently from those already kept.
  for (int64_t tries = 0; static_cast<int>(out.size()) < count; ++tries) {
    if (tries > 1000 * int64_t(count)) throw error(fmt::format("spread: --formats {}: too few distinct valid formats", count));
    prompt_format f = original;
    f.casing = int(below(format_casings)), f.separator = int(below(n_sep)), f.space = int(below(n_space));
    f.item_wrapper = int(below(format_item_wrappers)), f.numbering = int(below(format_numberings));
    f.text_option_sep = int(below(n_tos)), f.enum_space = int(below(n_space));
    if (format_violation(f, options).empty() && seen.insert(render_key(f, kind, options)).second) out.push_back(f);
  }
  return out;
}

rendered_item render_plain(const task_item& item) {
  rendered_item r;
  r.prompt = item.context;
  for (const std::string& c : item.choices) r.continuations.push_back(" " + c);
  return r;
}

rendered_item render_item(const prompt_format& f, const task_item& item) {
  const int options = static_cast<int>(item.choices.size());
  const std::string why = format_violation(f, options);
  if (!why.empty()) throw error(fmt::format("prompt format: invalid ({})", why));
  const descriptors d = descriptors_of(item.kind);
  const std::string& sep = format_separators()[f.separator];
  const std::string& space = format_spaces()[f.space];
  rendered_item r;
  r.prompt = apply_casing(f.casing, d.text) + sep + item.context + space;
  if (f.enumerate && item.kind == task_kind::ending) {
    const std::string option = apply_casing(f.casing, d.option);
    for (int i = 0; i < options; ++i) {
      if (i > 0) r.prompt += format_spaces()[f.enum_space];
      r.prompt += option + format_text_option_separators()[f.text_option_sep] +
                  wrap(f.item_wrapper, number(f.numbering, i)) + sep + item.choices[i];
    }
    r.prompt += space;
  }
  r.prompt += apply_casing(f.casing, d.answer) + sep;
  r.continuations = item.choices;
  return r;
}

nlohmann::json format_json(const prompt_format& f, task_kind kind) {
  const descriptors d = descriptors_of(kind);
  nlohmann::json j = {{"text_descriptor", apply_casing(f.casing, d.text)},
                      {"answer_descriptor", apply_casing(f.casing, d.answer)},
                      {"separator", format_separators().at(f.separator)},
                      {"space", format_spaces().at(f.space)},
                      {"indices", {f.casing, f.separator, f.space, f.item_wrapper, f.numbering, f.text_option_sep, f.enum_space}}};
  if (f.enumerate) {
    j["option_descriptor"] = apply_casing(f.casing, d.option);
    j["text_option_separator"] = format_text_option_separators().at(f.text_option_sep);
    j["enumeration_space"] = format_spaces().at(f.enum_space);
    j["first_item"] = wrap(f.item_wrapper, number(f.numbering, 0));
  }
  return j;
}

}  // namespace lowbit
