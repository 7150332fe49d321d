// Evaluation tasks made from story text (docs/evaluation.md "Tasks"), one JSON object a line:
//   ending  : {"kind":"ending","id":"doc12","context":..., "choices":[4 endings],"gold":2}
//             the story without its last sentence; the true last sentence and endings taken from
//             other stories (multiple choice, scored by log-likelihood as lm-evaluation-harness).
//   lastword: {"kind":"lastword","id":"doc7","context":...,"target":"park"}
//             the story up to its last word; the word (punctuation after it dropped) must be
//             greedy-decoded exactly (LAMBADA, Paperno et al. 2016).
// Stories come from the first 40% of the text's bytes (a story cut there is dropped): calibration
// draws its windows from the second half of the TOKEN stream (docs/conventions.md §21), whose
// byte position moves with the tokenizer's bytes per token (on the shipped TinyStories sample
// with the Llama 2 tokenizer the stories of the first half of the bytes hold 51% of the tokens), so the margin
// keeps a model quantized with calibration from ever having seen a task's story. The builder is
// deterministic in its seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

enum class task_kind { ending, lastword };
task_kind parse_task_kind(const std::string& name);  // "ending" | "lastword"; throws otherwise
const char* task_kind_name(task_kind k);

struct task_item {
  task_kind kind = task_kind::ending;
  std::string id;                    // "doc<k>": the story's index among the text's documents
  std::string context;               // what the model reads
  std::vector<std::string> choices;  // ending: the options; lastword: one, the target word
  int gold = 0;                      // index of the true option (lastword: 0)
};

struct task_build_options {
  task_kind kind = task_kind::ending;
  uint64_t seed = 0;
  int64_t n = 0;            // items (0: every eligible story)
  int options = 4;          // ending: choices per item (the true one included)
  int64_t max_chars = 1000;  // stories longer than this are skipped (they would not fit a small context)
  double text_fraction = 0.4;  // the leading fraction of the text's bytes the stories come from (1: all)
};

// The items of a task built from `text` (documents separated by blank lines). Throws when the
// text holds fewer eligible stories than asked for.
std::vector<task_item> build_task(const std::string& text, const task_build_options& opt);

// One JSON object per line, keys in a fixed order (byte-identical for equal items).
std::string task_jsonl(const std::vector<task_item>& items);
// The inverse; `where` names the source in errors, which give the line number.
std::vector<task_item> parse_task_jsonl(const std::string& text, const std::string& where);
std::vector<task_item> read_task_file(const std::string& path);
void write_task_file(const std::string& path, const std::vector<task_item>& items);  // atomically

}  // namespace lowbit
