// FormatSpread's prompt-format grammar (Sclar et al. 2023, "Quantifying Language Models'
// Sensitivity to Spurious Features in Prompt Design"; docs/evaluation.md "FormatSpread").
// A task item is rendered as fields, each a descriptor, a separator and its text:
//   <Story><sep><context><space>[<enumeration><space>]<Ending><sep>   then the option as continuation
// with the enumeration (optional: the options listed in the prompt)
//   <Option><text-option sep><wrap(number(0))><sep><option 0><enum space><Option>...<sep><option k-1>
// The grammar's values (the paper's lists, in its order):
//   casing of descriptors : as-is, Title, UPPER, lower (Python's str.title/upper/lower)
//   separator (15)        : '' '::: ' ':: ' ': ' ' \n\t' '\n    ' ' : ' ' - ' ' ' '\n ' '\n\t' ':' '::' '- ' '\t'
//   space (16)            : '' ' ' '\n' ' \n' ' -- ' '  ' '; \n' ' || ' ' <sep> ' ' -- ' ', ' ' \n ' ' , ' '\n ' '. ' ' ,  '
//   item wrapper          : (x)  x.  x)  x )  [x]  <x>
//   numbering             : 1..  A..  a..  Unicode Roman numerals (U+2160..)  i..  I..
//   text-option separator : '' ' ' '  ' '\t'
// A format is valid under the paper's sanity checks:
//   1. the separator is not empty (a descriptor must not run into its text);
//   2. the space between fields is not empty (every field but the last carries text);
//   3. a separator with a newline needs a space with a newline (no "Story\n text Ending\n");
//   4. in the enumeration, a newline in the separator or the text-option separator needs one in
//      the enumeration's space;
//   5. Unicode Roman numerals go up to 12 options (U+216B).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/text/tasks.hpp"

namespace lowbit {

// Indices into the grammar's lists above.
struct prompt_format {
  int casing = 0, separator = 3, space = 2;                  // as-is, ': ', '\n'
  int item_wrapper = 1, numbering = 1, text_option_sep = 1;  // "A.", ' '
  int enum_space = 2;                                        // '\n'
  bool enumerate = false;  // list the options in the prompt
  bool operator==(const prompt_format&) const = default;
};

const std::vector<std::string>& format_separators();
const std::vector<std::string>& format_spaces();
const std::vector<std::string>& format_text_option_separators();
constexpr int format_casings = 4, format_item_wrappers = 6, format_numberings = 6;

// The task's original format: "Story: <context>\nEnding: <option>" (enumerate: the options listed
// as "Option A. <text>" one per line before "Ending: ").
prompt_format original_format(bool enumerate);

// Empty when f is valid for items of `options` choices; otherwise the first rule it breaks.
std::string format_violation(const prompt_format& f, int options);

// `count` distinct valid formats: the original first, then formats drawn uniformly among the
// valid assignments, deterministic in `seed`. Two assignments that render every item the same
// (the space list's duplicated ' -- ', a casing that leaves a descriptor unchanged) count once.
// Throws when fewer than `count` distinct valid formats exist. Without listed options the 960
// assignments are enumerated and a uniform sample of the distinct ones taken; with them (millions
// of assignments) each part is drawn uniformly and invalid or already-seen renderings rejected.
std::vector<prompt_format> sample_formats(int count, uint64_t seed, bool enumerate, task_kind kind, int options);

// An item under a format: the prompt and, per choice, the continuation scored after it.
struct rendered_item {
  std::string prompt;
  std::vector<std::string> continuations;
};
rendered_item render_item(const prompt_format& f, const task_item& item);
// The item as lm-evaluation-harness reads it: the context, then " " + each choice.
rendered_item render_plain(const task_item& item);

// The format's strings (descriptors cased, separators escaped in JSON) for reports.
nlohmann::json format_json(const prompt_format& f, task_kind kind);
// Python's str.title() on ASCII: a letter after a non-letter upper-cased, others lower-cased.
std::string title_case(const std::string& s);

}  // namespace lowbit
