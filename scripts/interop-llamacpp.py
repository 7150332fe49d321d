#!/usr/bin/env python3
"""Does llama.cpp read lowbit's GGUF exports the way lowbit does? Tokenizes documents with
llama.cpp's `llama-tokenize` and with `lowbit tokenize --model` on the same GGUF files and counts
the documents whose token ids differ. llama.cpp is not part of lowbit: build it yourself and give
the folder of its binaries.

  scripts/interop-llamacpp.py LLAMA_BIN_DIR [--lowbit build/lowbit] [--data ../shared/data] [--docs 200]

Files (written to a temp folder):
  sentencepiece  stories15M (llama2.c, Llama 2 tokenizer) -> `quantize --weights fp16` -> GGUF
  sp-no-prefix   the same GGUF with tokenizer.ggml.add_space_prefix set to false
  gpt2           `synth --arch gpt2 --vocab 50257` -> `quantize --tokenizer tokenizers/gpt2` -> GGUF
  bytes          `synth` (byte tokenizer) -> GGUF
Docs: docs/robustness.md "Interoperability with llama.cpp".
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path


def gguf_set_bool(path: Path, key: str, value: bool):
    """Sets a bool metadata value of a GGUF file in place (type 7, one byte after the type)."""
    data = bytearray(path.read_bytes())
    k = key.encode()
    i = data.find(struct.pack("<Q", len(k)) + k)
    if i < 0:
        sys.exit(f"{path}: no {key}")
    j = i + 8 + len(k)
    if struct.unpack("<I", data[j:j + 4])[0] != 7:
        sys.exit(f"{path}: {key} is not a bool")
    data[j + 4] = int(value)
    path.write_bytes(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("llama_bin")
    ap.add_argument("--lowbit", default="build/lowbit")
    ap.add_argument("--data", default=os.environ.get("LOWBIT_DATA_DIR", "../shared/data"))
    ap.add_argument("--docs", type=int, default=200)
    a = ap.parse_args()
    lowbit, data = str(Path(a.lowbit).resolve()), Path(a.data).resolve()
    tokenize_cpp = str(Path(a.llama_bin) / "llama-tokenize")
    work = Path(tempfile.mkdtemp(prefix="lowbit-interop-"))
    text = (data / "text/tinystories_val_sample.txt").read_text()
    docs = [d.strip() for d in text.split("\n\n") if 0 < len(d.strip()) < 1500][:a.docs]

    def lb(*args):
        subprocess.run([lowbit, *args], cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    story = data / "text/tinystories_val_sample.txt"
    lb("quantize", "--model", str(data / "llama2c/stories15M.bin"), "--tokenizer", str(data / "llama2c/tok32000.bin"),
       "--data", str(story), "--weights", "fp16", "--method", "rtn", "-o", "sp.gguf")
    (work / "sp-no-prefix.gguf").write_bytes((work / "sp.gguf").read_bytes())
    gguf_set_bool(work / "sp-no-prefix.gguf", "tokenizer.ggml.add_space_prefix", False)
    lb("synth", "--arch", "gpt2", "--dim", "32", "--layers", "1", "--heads", "2", "--vocab", "50257", "--ctx", "64",
       "-o", "g2.safetensors")
    lb("quantize", "--model", "g2.safetensors", "--tokenizer", str(data / "tokenizers/gpt2"), "--data", str(story),
       "--weights", "fp16", "--method", "rtn", "-o", "gpt2.gguf")
    lb("synth", "--dim", "32", "--layers", "1", "--heads", "2", "--ctx", "64", "-o", "bytes.gguf")

    rows = []
    for name in ["sp", "sp-no-prefix", "gpt2", "bytes"]:
        model = str(work / f"{name}.gguf")
        differ, first = 0, None
        for i, doc in enumerate(docs):
            f = work / "doc.txt"
            f.write_text(doc)
            cpp = subprocess.run([tokenize_cpp, "-m", model, "-f", str(f), "--ids", "--log-disable", "--no-bos",
                                  "--no-parse-special"], capture_output=True, text=True)
            if cpp.returncode != 0:
                sys.exit(f"llama-tokenize refused {name}.gguf: {cpp.stderr[-400:]}")
            ids_cpp = json.loads(cpp.stdout.strip().splitlines()[-1])
            own = subprocess.run([lowbit, "tokenize", "--model", model, "--json"], input=doc, capture_output=True,
                                 text=True, check=True)
            ids_own = json.loads(own.stdout)[0]["ids"]
            if ids_cpp != ids_own:
                differ += 1
                first = first if first is not None else i
        rows.append((name, len(docs), differ, first))
        print(f"{name}: {len(docs)} documents, {differ} tokenized differently"
              + (f" (first: document {first})" if differ else ""), flush=True)
    print("| GGUF export | documents | same ids in llama.cpp and lowbit |")
    print("|---|---|---|")
    for name, n, differ, _ in rows:
        print(f"| {name} | {n} | {n - differ}/{n} |")
    return 1 if any(r[2] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
