// The BPE merge loop both tokenizers run (private to src/engine): adjacent symbols are merged,
// best pair first and leftmost among equals, until no pair merges. A priority queue over a linked
// list of symbols makes it O(n log n); a queued pair is dropped when either side has changed.
#pragma once

#include <cstdint>
#include <queue>
#include <vector>

namespace lowbit::detail {

// pair(a, b, &priority, &result) -> true when symbols a, b merge into `result` with `priority`
// (higher merges first). sym is rewritten to the merged symbols, in order.
template <typename Priority, typename PairFn>
void merge_pairs(std::vector<int32_t>& sym, PairFn pair) {
  const int n = static_cast<int>(sym.size());
  if (n < 2) return;
  struct candidate {
    Priority priority;
    int left, right;
    int32_t left_sym, right_sym, result;
  };
  auto worse = [](const candidate& x, const candidate& y) {
    if (x.priority != y.priority) return x.priority < y.priority;
    return x.left > y.left;
  };
  std::priority_queue<candidate, std::vector<candidate>, decltype(worse)> queue(worse);
  std::vector<int> next(n), prev(n);
  std::vector<char> alive(n, 1);
  for (int i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  auto consider = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    Priority p;
    int32_t result;
    if (pair(sym[l], sym[r], &p, &result)) queue.push({p, l, r, sym[l], sym[r], result});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);
  while (!queue.empty()) {
    const candidate c = queue.top();
    queue.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || sym[c.left] != c.left_sym ||
        sym[c.right] != c.right_sym)
      continue;  // stale: one side merged since this pair was queued
    sym[c.left] = c.result;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }
  int w = 0;
  for (int i = 0; i < n; ++i)
    if (alive[i]) sym[w++] = sym[i];
  sym.resize(w);
}

}  // namespace lowbit::detail
