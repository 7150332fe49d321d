// Task files (text/tasks.hpp) and FormatSpread's prompt-format grammar (text/prompt_format.hpp).
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/text/documents.hpp"
#include "lowbit/text/prompt_format.hpp"
#include "lowbit/text/tasks.hpp"
#include "tests/data.hpp"

namespace {

using namespace lowbit;

const std::string kStories = lowbit_test::data_path("text/tinystories_val_sample.txt");

task_build_options opts(task_kind kind, uint64_t seed, int64_t n) {
  task_build_options o;
  o.kind = kind, o.seed = seed, o.n = n;
  return o;
}

TEST(TaskBuilder, SameSeedSameBytesOtherSeedOtherBytes) {
  ASSERT_TRUE(lowbit_test::have_data(kStories));
  const std::string text = read_file(kStories, "stories");
  for (task_kind kind : {task_kind::ending, task_kind::lastword}) {
    const std::string a = task_jsonl(build_task(text, opts(kind, 7, 50)));
    const std::string b = task_jsonl(build_task(text, opts(kind, 7, 50)));
    const std::string c = task_jsonl(build_task(text, opts(kind, 8, 50)));
    EXPECT_EQ(a, b) << task_kind_name(kind);
    EXPECT_NE(a, c) << task_kind_name(kind);
    EXPECT_EQ(std::count(a.begin(), a.end(), '\n'), 50);
  }
}

TEST(TaskBuilder, ItemsAreStoriesOfTheTextsLeadingPart) {
  ASSERT_TRUE(lowbit_test::have_data(kStories));
  const std::string text = read_file(kStories, "stories");
  const std::vector<std::string> docs = split_documents(text);
  const size_t cut = static_cast<size_t>(text.size() * 0.4);
  std::set<std::string> leading_docs;
  for (const std::string& d : split_documents(text.substr(0, cut))) leading_docs.insert(d);
  // Ending: the story is context + " " + true ending; the distractors are other stories' endings.
  const auto endings = build_task(text, opts(task_kind::ending, 3, 200));
  std::set<std::string> ids;
  for (const task_item& it : endings) {
    ASSERT_EQ(it.choices.size(), 4u);
    EXPECT_EQ(std::set<std::string>(it.choices.begin(), it.choices.end()).size(), 4u) << it.id;
    const size_t doc = std::stoul(it.id.substr(3));
    ASSERT_LT(doc, docs.size());
    EXPECT_EQ(docs[doc], it.context + " " + it.choices[it.gold]) << it.id;
    EXPECT_TRUE(leading_docs.count(docs[doc])) << it.id;
    EXPECT_LE(text.find(docs[doc]) + docs[doc].size(), cut) << it.id;
    ids.insert(it.id);
  }
  EXPECT_EQ(ids.size(), endings.size());  // no story twice
  std::vector<int> gold_count(4);
  for (const task_item& it : endings) ++gold_count[it.gold];
  for (int g : gold_count) EXPECT_GT(g, 25);  // answer positions spread over the four
  // Last word: the story is context + " " + word + punctuation.
  for (const task_item& it : build_task(text, opts(task_kind::lastword, 3, 200))) {
    const std::string& doc = docs[std::stoul(it.id.substr(3))];
    const std::string prefix = it.context + " " + it.choices[0];
    ASSERT_EQ(doc.compare(0, prefix.size(), prefix), 0) << it.id;
    for (char c : doc.substr(prefix.size())) EXPECT_FALSE(std::isalnum(static_cast<unsigned char>(c))) << it.id;
    for (char c : it.choices[0]) EXPECT_TRUE(std::isalpha(static_cast<unsigned char>(c))) << it.id;
  }
}

TEST(TaskBuilder, TooFewStoriesIsAClearError) {
  const std::string text = "One. Two. Three is here now.\n\nA story. It goes on. The end is near now.\n";
  try {
    build_task(text, opts(task_kind::ending, 0, 10));
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("eligible stories"), std::string::npos) << e.what();
  }
}

TEST(Documents, ViewsAreTheStrippedRunsOfNonBlankLines) {
  // Blank lines of spaces, CRs and tabs, a document without a final newline, leading blanks.
  const std::string text = "\n \t\n  first line\r\nsecond  \n\n \r\nthird\n \nfourth\nfifth";
  const std::vector<std::string> want = {"first line\r\nsecond", "third", "fourth\nfifth"};
  EXPECT_EQ(split_documents(text), want);
  const auto views = document_views(text);
  ASSERT_EQ(views.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(views[i], want[i]);
    EXPECT_EQ(size_t(views[i].data() - text.data()), text.find(want[i])) << i;  // a stretch of text itself
  }
  EXPECT_TRUE(document_views(" \n\n\t").empty());
}

TEST(TaskBuilder, TheStoryTheCutFallsInsideIsLeftOut) {
  // Five last-word stories of 24 words; stories 0-2 end before the cut, the cut falls inside
  // story 3 (or just past its last letter, before its full stop), story 4 lies after it.
  std::string text;
  std::vector<size_t> ends;  // one past each story's last character
  for (int d = 0; d < 5; ++d) {
    std::string story = "Once";
    for (int w = 0; w < 22; ++w) story += " word";
    story += " ending.";
    text += story;
    ends.push_back(text.size());
    text += "\n\n";
  }
  for (const size_t cut : {ends[3] - 10, ends[3] - 1, ends[3]}) {
    task_build_options o = opts(task_kind::lastword, 0, 0);  // n = 0: every eligible story
    o.text_fraction = double(cut) / double(text.size());
    ASSERT_EQ(size_t(double(text.size()) * o.text_fraction), cut);
    std::set<std::string> ids;
    for (const task_item& it : build_task(text, o)) ids.insert(it.id);
    const std::set<std::string> want = cut == ends[3] ? std::set<std::string>{"doc0", "doc1", "doc2", "doc3"}
                                                     : std::set<std::string>{"doc0", "doc1", "doc2"};
    EXPECT_EQ(ids, want) << "cut " << cut;
  }
}

TEST(TaskFile, RoundTripsAndMalformedLinesNameTheirNumber) {
  std::vector<task_item> items(2);
  items[0].kind = task_kind::ending, items[0].id = "doc1", items[0].context = "A \"quoted\"\nstory.";
  items[0].choices = {"one", "two", "three"}, items[0].gold = 2;
  items[1].kind = task_kind::lastword, items[1].id = "doc2", items[1].context = "The cat sat on the";
  items[1].choices = {"mat"};
  const std::string text = task_jsonl(items);
  const auto back = parse_task_jsonl(text, "t.jsonl");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].context, items[0].context);
  EXPECT_EQ(back[0].choices, items[0].choices);
  EXPECT_EQ(back[0].gold, 2);
  EXPECT_EQ(back[1].choices, items[1].choices);
  EXPECT_EQ(task_jsonl(back), text);

  const std::string good = text.substr(0, text.find('\n') + 1);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {good + "\n{not json\n", "t.jsonl:3: not valid JSON"},
      {good + "[1, 2]\n", "t.jsonl:2: expected a JSON object"},
      {good + R"({"kind":"ending","context":"x","choices":["a","b"],"gold":2})" "\n", "t.jsonl:2: \"gold\" 2"},
      {good + R"({"kind":"ending","context":"x","choices":["a","b"]})" "\n", "t.jsonl:2: \"gold\" must be"},
      {good + R"({"kind":"ending","context":"x","choices":["a"],"gold":0})" "\n", "t.jsonl:2: \"choices\""},
      {good + R"({"kind":"quiz","context":"x"})" "\n", "t.jsonl:2: \"kind\" is 'quiz'"},
      {good + R"({"kind":"lastword","context":7,"target":"a"})" "\n", "t.jsonl:2: \"context\" must be a string"},
      {good + R"({"kind":"lastword","context":"x"})" "\n", "t.jsonl:2: \"target\" must be a string"},
      {"\n\n", "t.jsonl: no task items"},
  };
  for (const auto& [t, want] : bad) {
    try {
      parse_task_jsonl(t, "t.jsonl");
      ADD_FAILURE() << "accepted: " << t;
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what() << "\nwanted: " << want;
    }
  }
}

// ---- the prompt-format grammar -------------------------------------------------------------------

TEST(PromptFormat, GrammarListsAreThePapers) {
  // Sclar et al. 2023's lists: 15 separators, 16 spaces (' -- ' twice), 4 text-option separators.
  EXPECT_EQ(format_separators().size(), 15u);
  EXPECT_EQ(format_spaces().size(), 16u);
  EXPECT_EQ(std::set<std::string>(format_spaces().begin(), format_spaces().end()).size(), 15u);
  EXPECT_EQ(format_text_option_separators().size(), 4u);
  EXPECT_EQ(title_case("next word"), "Next Word");
  EXPECT_EQ(title_case("nEXT-word x2y"), "Next-Word X2Y");
}

TEST(PromptFormat, OriginalRendersAsTheTaskReads) {
  task_item it;
  it.kind = task_kind::ending, it.context = "Tom ran.", it.choices = {"He fell.", "She sang."}, it.gold = 0;
  const rendered_item r = render_item(original_format(false), it);
  EXPECT_EQ(r.prompt, "Story: Tom ran.\nEnding: ");
  EXPECT_EQ(r.continuations, it.choices);
  const rendered_item e = render_item(original_format(true), it);
  EXPECT_EQ(e.prompt, "Story: Tom ran.\nOption A.: He fell.\nOption B.: She sang.\nEnding: ");
  const rendered_item p = render_plain(it);
  EXPECT_EQ(p.prompt, "Tom ran.");
  EXPECT_EQ(p.continuations, (std::vector<std::string>{" He fell.", " She sang."}));
  prompt_format f = original_format(true);
  f.casing = 2, f.separator = 7, f.space = 7, f.item_wrapper = 4, f.numbering = 3, f.text_option_sep = 0, f.enum_space = 10;
  EXPECT_EQ(render_item(f, it).prompt,
            "STORY - Tom ran. || OPTION[\u2160] - He fell., OPTION[\u2161] - She sang. || ENDING - ");
}

// The rules a sampled format must satisfy, checked on its rendering (not on its indices).
void expect_valid_rendering(const prompt_format& f, const task_item& it) {
  const rendered_item r = render_item(f, it);
  const std::string& sep = format_separators()[f.separator];
  const std::string& space = format_spaces()[f.space];
  EXPECT_FALSE(sep.empty());
  EXPECT_FALSE(space.empty());
  // "Story<sep>" opens the prompt, "<sep>" closes it, the context follows the first separator.
  EXPECT_EQ(r.prompt.find(it.context), r.prompt.find(sep) + sep.size());
  EXPECT_EQ(r.prompt.compare(r.prompt.size() - sep.size(), sep.size(), sep), 0);
  if (sep.find('\n') != std::string::npos) {
    EXPECT_NE(space.find('\n'), std::string::npos);
  }
  if (f.enumerate && (sep.find('\n') != std::string::npos ||
                      format_text_option_separators()[f.text_option_sep].find('\n') != std::string::npos)) {
    EXPECT_NE(format_spaces()[f.enum_space].find('\n'), std::string::npos);
  }
  for (const std::string& c : it.choices) {
    if (f.enumerate) {
      EXPECT_NE(r.prompt.find(c), std::string::npos);
    }
  }
}

TEST(PromptFormat, SamplingIsValidDistinctAndDeterministic) {
  task_item it;
  it.kind = task_kind::ending, it.context = "Tom ran.", it.choices = {"He fell.", "She sang.", "It hid."};
  for (bool enumerate : {false, true}) {
    const auto a = sample_formats(60, 11, enumerate, task_kind::ending, 3);
    const auto b = sample_formats(60, 11, enumerate, task_kind::ending, 3);
    const auto c = sample_formats(60, 12, enumerate, task_kind::ending, 3);
    ASSERT_EQ(a.size(), 60u);
    EXPECT_TRUE(a == b);
    EXPECT_FALSE(a == c);
    EXPECT_TRUE(a[0] == original_format(enumerate));
    std::set<std::string> prompts;
    for (const prompt_format& f : a) {
      EXPECT_EQ(format_violation(f, 3), "");
      expect_valid_rendering(f, it);
      prompts.insert(render_item(f, it).prompt);
    }
    EXPECT_EQ(prompts.size(), a.size()) << "formats that render alike";
  }
  // Without listed options: 14 non-empty separators x 14 distinct non-empty spaces, less the
  // newline rule (the 4 separators with a newline need one of the 5 spaces with one), times 3
  // casings (as-is and Title leave "Story"/"Ending" alike): 3 x (10 x 14 + 4 x 5) = 480.
  EXPECT_NO_THROW(sample_formats(480, 1, false, task_kind::ending, 4));
  EXPECT_THROW(sample_formats(481, 1, false, task_kind::ending, 4), error);
  // Invalid assignments are named.
  prompt_format f = original_format(false);
  f.separator = 0;
  EXPECT_EQ(format_violation(f, 4), "empty separator");
  f = original_format(false), f.space = 0;
  EXPECT_EQ(format_violation(f, 4), "empty space between fields");
  f = original_format(false), f.separator = 5, f.space = 1;
  EXPECT_EQ(format_violation(f, 4), "newline in the separator but not in the space");
  f = original_format(true), f.numbering = 3;
  EXPECT_EQ(format_violation(f, 12), "");
  EXPECT_EQ(format_violation(f, 13), "Unicode Roman numerals stop at 12");
}

}  // namespace
