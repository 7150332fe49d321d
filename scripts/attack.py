#!/usr/bin/env python3
"""The outside attack on lowbit, rerun: mutated model and tokenizer files, bad command lines and
the reproducers of every finding of issue 18, each run through the `lowbit` CLI as a user would.

Every run is classified by what the process did, not by what it printed:
  refused   exit 2 (or 1) with a message          -- what bad input must get
  accepted  exit 0                                -- fine for a mutation that only touched weights
  crash     killed by a signal (SIGSEGV, SIGABRT, ...)
  hang      still running after --timeout seconds (then killed)
  blow-up   peak RSS above --rss-mib (the clean runs need ~20-60 MiB)
  odd-exit  any other exit status (the README promises 0, 1 or 2)
A finding's reproducer additionally states what the right answer is (refused, bounded memory, no
file created, ...); one that gets a wrong success is counted as such.

  scripts/attack.py [--lowbit build/lowbit] [--data ../shared/data] [--mutants 300] [--seed 1]
                    [--out attack-out]   -> attack-out/attack.json, attack.md, reproducers/ of any failure
Docs: docs/robustness.md "The attack, rerun".
"""
import argparse
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ["refused", "accepted", "crash", "hang", "blow-up", "odd-exit"]


class Runner:
    def __init__(self, lowbit, timeout, rss_mib, work):
        self.lowbit, self.timeout, self.rss_mib, self.work = lowbit, timeout, rss_mib, work

    def run(self, args, cwd=None, env=None):
        """Runs lowbit ARGS; returns (kind, exit status or -signal, peak RSS MiB, stderr tail)."""
        limit = 4 << 30  # address space: a blow-up ends in bad_alloc here instead of the machine

        def pre():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            os.setsid()

        err = tempfile.TemporaryFile()
        p = subprocess.Popen([self.lowbit] + args, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                             cwd=cwd or self.work, env=env, preexec_fn=pre)
        deadline, hung = time.monotonic() + self.timeout, False
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                hung = True
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        p.returncode = 0  # reaped by wait4 above
        err.seek(0)
        tail = err.read()[-400:].decode("utf-8", "replace").strip()
        rss = usage.ru_maxrss / 1024
        if hung:
            return "hang", None, rss, tail
        if os.WIFSIGNALED(status):
            return "crash", -os.WTERMSIG(status), rss, tail
        code = os.WEXITSTATUS(status)
        if rss > self.rss_mib:
            return "blow-up", code, rss, tail
        if code == 0:
            return "accepted", 0, rss, tail
        if code in (1, 2):
            return "refused", code, rss, tail
        return "odd-exit", code, rss, tail


# ---------------------------------------------------------------------------------------------
# Mutations of a file's bytes. Headers are where a lie does damage, so half the edits land in the
# first 4 KiB; integer fields get the values that overflow, wrap or mean "nothing".
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               0x100000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 1 << 20, 1 << 40]


def mutate_bytes(data: bytes, rng: random.Random) -> (bytes, str):
    b = bytearray(data)
    op = rng.choice(["flip", "flip", "int", "int", "byte", "truncate", "extend", "splice"])
    head = min(len(b), 4096)

    def pos():
        return rng.randrange(head) if rng.random() < 0.5 or len(b) <= head else rng.randrange(len(b))

    if op == "flip":
        n = rng.choice([1, 1, 2, 4, 8])
        for _ in range(n):
            i = pos()
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"flip {n} bits"
    if op == "int":
        width = rng.choice([4, 8])
        i = pos() if len(b) > width else 0
        v = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
        b[i:i + width] = v.to_bytes(width, "little")
        return bytes(b[:len(data)] if len(b) > len(data) else b), f"u{8 * width} {v:#x} at {i}"
    if op == "byte":
        i = pos()
        b[i] = rng.choice([0, 0x20, 0x22, 0x7B, 0x7D, 0xFF, 0x80])
        return bytes(b), f"byte {b[i]:#x} at {i}"
    if op == "truncate":
        n = rng.randrange(len(b))
        return bytes(b[:n]), f"truncate to {n}"
    if op == "extend":
        return bytes(b) + rng.randbytes(rng.choice([1, 7, 4096])), "extend"
    i, j = sorted(rng.randrange(len(b)) for _ in range(2))
    k = rng.randrange(len(b))
    chunk = b[i:j][:512]
    b[k:k + len(chunk)] = chunk
    return bytes(b), f"splice {len(chunk)} bytes at {k}"


def mutate_json(text: str, rng: random.Random) -> (str, str):
    """An edit of one value of a JSON document (config.json, a safetensors header)."""
    doc = json.loads(text)
    paths = []

    def walk(x, path):
        paths.append(path)
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, path + [k])
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, path + [i])

    walk(doc, [])
    path = rng.choice(paths[1:] or paths)
    value = rng.choice([0, -1, 1.5, True, None, "x", 4294967328, 2 ** 63, -(2 ** 63), 1e308, [], {}, "NaN",
                        float("nan"), float("inf")])
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if path:
        if rng.random() < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
            return json.dumps(doc), f"delete {path}"
        parent[path[-1]] = value
    return json.dumps(doc, allow_nan=True), f"{path} = {value!r}"


def mutate_safetensors(data: bytes, rng: random.Random) -> (bytes, str):
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + n].decode()
    if rng.random() < 0.5:
        return mutate_bytes(data, rng)
    new, what = mutate_json(header, rng)
    if rng.random() < 0.1:  # a second tensor of the same name: the JSON parser keeps one
        doc = json.loads(header)
        name = rng.choice([k for k in doc if k != "__metadata__"])
        new = new[:-1] + f', "{name}": ' + json.dumps(doc[name]) + "}"
        what = f"duplicate {name}"
    raw = new.encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:], what


def strip_lowbit_config(path: Path):
    """Drops the copy of config.json lowbit writes into a safetensors header's metadata."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    h = json.loads(data[8:8 + n])
    h.get("__metadata__", {}).pop("lowbit.config", None)
    raw = json.dumps(h).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


# ---------------------------------------------------------------------------------------------
def prepare(r: Runner, data_dir: Path, work: Path):
    """The clean inputs every mutant starts from, each with the command that reads it."""
    text = (data_dir / "text/tinystories_val_sample.txt").read_text()[:6000]
    (work / "text.txt").write_text(text)
    seeds = {}

    def need(kind, args):
        k = r.run(args)
        if k[0] != "accepted":
            sys.exit(f"attack: preparing: lowbit {' '.join(args)}: {k}")

    shutil.copy(data_dir / "llama2c/stories260K.bin", work / "s260k.bin")
    shutil.copy(data_dir / "llama2c/tok512.bin", work / "tok512.bin")
    shutil.copy(data_dir / "gguf/llama-2-tiny-random.gguf", work / "tiny.gguf")
    for d in ["synth", "gpt2", "packed"]:
        (work / d).mkdir()
    need("synth", ["synth", "--dim", "64", "--layers", "2", "--heads", "4", "--vocab", "300", "--ctx", "128",
                   "-o", "synth/model.safetensors"])
    need("synth", ["synth", "--arch", "gpt2", "--dim", "64", "--layers", "2", "--heads", "4", "--vocab", "300",
                   "--ctx", "128", "-o", "gpt2/model.safetensors"])
    need("quantize", ["quantize", "--model", "s260k.bin", "--tokenizer", "tok512.bin", "--data", "text.txt",
                      "--weights", "q4_k", "--method", "rtn", "-o", "packed/model.safetensors"])
    need("quantize", ["quantize", "--model", "s260k.bin", "--tokenizer", "tok512.bin", "--data", "text.txt",
                      "--weights", "q4_0", "--method", "rtn", "-o", "q40.gguf"])
    # as a Hugging Face checkpoint: config.json is then the only description of the model
    for d in ["synth", "gpt2"]:
        strip_lowbit_config(work / d / "model.safetensors")
    ev = ["eval", "--data", "text.txt", "--max-tokens", "48", "--ctx", "32"]
    seeds["llama2c model"] = ("s260k.bin", "bytes", ev + ["--model", "{}", "--tokenizer", "tok512.bin"])
    seeds["llama2c tokenizer"] = ("tok512.bin", "bytes", ev + ["--model", "s260k.bin", "--tokenizer", "{}"])
    seeds["GGUF (llama.cpp's)"] = ("tiny.gguf", "bytes", ev + ["--model", "{}"])
    seeds["GGUF (lowbit q4_0 export)"] = ("q40.gguf", "bytes", ev + ["--model", "{}"])
    seeds["safetensors (float)"] = ("synth/model.safetensors", "safetensors", ev + ["--model", "{}"])
    seeds["config.json (Llama)"] = ("synth/config.json", "json", ev + ["--model", "{dir}/model.safetensors"])
    seeds["config.json (GPT-2)"] = ("gpt2/config.json", "json", ev + ["--model", "{dir}/model.safetensors"])
    seeds["safetensors (packed q4_k)"] = ("packed/model.safetensors", "safetensors",
                                         ev + ["--model", "{}", "--tokenizer", "tok512.bin"])
    return seeds


def campaign(r: Runner, seeds, n, rng, work: Path, repro: Path, results):
    for name, (path, how, args) in seeds.items():
        src = work / path
        clean = src.read_bytes()
        counts = dict.fromkeys(KINDS, 0)
        t0 = time.monotonic()
        for i in range(n):
            case = work / f"m-{i}"
            case.mkdir()
            # the mutant keeps its file name (config.json must sit beside its model)
            for f in (src.parent.iterdir() if src.parent != work else [src]):
                shutil.copy(f, case / f.name)
            if how == "bytes":
                data, what = mutate_bytes(clean, rng)
            elif how == "safetensors":
                data, what = mutate_safetensors(clean, rng)
            else:
                t, what = mutate_json(clean.decode(), rng)
                data = t.encode()
            (case / src.name).write_bytes(data)
            argv = [a.replace("{}", str(case / src.name)).replace("{dir}", str(case)) for a in args]
            kind, code, rss, tail = r.run(argv)
            counts[kind] += 1
            if kind == "accepted" and how != "bytes":  # edits of named fields: to read over by hand
                results["accepted_edits"].setdefault(name, []).append(what)
            if kind not in ("refused", "accepted"):
                keep = repro / f"{name.split()[0]}-{i}"
                shutil.copytree(case, keep)
                results["failures"].append({"input": name, "mutation": what, "kind": kind, "exit": code,
                                            "rss_mib": round(rss, 1), "args": argv, "kept": str(keep),
                                            "stderr": tail})
            shutil.rmtree(case)
        results["files"].append({"input": name, "mutants": n, **counts, "seconds": round(time.monotonic() - t0, 1)})
        print(f"  {name}: {n} mutants, " + ", ".join(f"{k} {counts[k]}" for k in KINDS), flush=True)


def bad_command_lines():
    """Command lines no user can mean: each must be refused (exit 2), never crash or succeed."""
    ev = ["eval", "--model", "s260k.bin", "--tokenizer", "tok512.bin", "--data", "text.txt"]
    lines = []
    for flag in ["--ctx", "--max-tokens", "--limit"]:
        for v in ["0" if flag != "--limit" else "-1", "-1", "nan", "1e400", "abc", "", "99999999999999999999"]:
            lines.append(ev + [flag, v])
    for fmt in ["int0", "int99", "e9m9", "e0m0", "mxfp99", "int4/g0", "int4/g-1", "int4/gx", "nf4~sr~sr",
                "pow0.5(" * 15000 + "int4" + ")" * 15000, "e4m3/g32/g32", "int4@", "/", "~", "x" * 5000]:
        lines.append(ev + ["--weights", fmt])
        lines.append(["info", fmt])
    gen = ["generate", "--model", "s260k.bin", "--tokenizer", "tok512.bin", "--prompt", "Once"]
    for flag, v in [("--temperature", "nan"), ("--temperature", "-1"), ("--max-tokens", "-1"), ("--top-p", "2"),
                    ("--top-p", "nan"), ("--seed", "-1")]:
        lines.append(gen + [flag, v])
    tr = ["train", "--data", "text.txt", "--steps", "2", "-o", "tr-bad"]
    for flag, v in [("--warmup", "nan"), ("--warmup", "1.5"), ("--lr", "-1"), ("--lr", "inf"), ("--dim", "0"),
                    ("--heads", "3"), ("--ctx", "0"), ("--batch", "0"), ("--steps", "0"), ("--clip", "nan"),
                    ("--plan", "sun2025:int99"), ("--plan", "nonsense"), ("--dim", "4294967328")]:
        lines.append(tr + [flag, v])
    for v in ["0", "-1", "100000", "nan"]:
        lines.append(["bench", "int8/c", "--threads", v, "--mib", "1", "--reps", "1"])
        lines.append(["bench", "int8/c", "--mib", v, "--reps", "1"])
    lines.append(["explore", "--config", "sweep.json", "-j", "0", "--db", "x.db", "-o", "ex"])
    lines.append(["explore", "--config", "sweep.json", "-j", "-5", "--db", "x.db", "-o", "ex"])
    lines += [["eval"], ["eval", "--model"], ["nonsense"], ["eval", "--model", "s260k.bin", "--data", "."],
              ["eval", "--model", ".", "--data", "text.txt"], ["eval", "--model", "/nonexistent", "--data", "text.txt"],
              ev + ["--bogus"], ev + ["--kv", "int4", "--attn", "zz"], ["quantize", "--model", "s260k.bin",
              "--data", "text.txt", "--weights", "int4/g32", "--method", "nope", "-o", "q.gguf"],
              ["cast", "int4", "nan", "inf", "1e39"], ["synth", "--dim", "-1", "-o", "s.safetensors"],
              ["synth", "--vocab", "3", "-o", "s.safetensors"], ["task", "make", "--data", "/nonexistent", "-o", "t.jsonl"]]
    # `cast` of NaN/Inf follows the format's policy: it is a valid line, so keep it out of the "must refuse" set
    return [l for l in lines if l[0] != "cast"]


def findings(r: Runner, work: Path):
    """Issue 18's findings, each reproduced as it was reported; (name, ok, what happened)."""
    out = []

    def check(name, ok, detail):
        out.append({"finding": name, "held": bool(ok), "detail": detail})
        print(f"  {'held' if ok else 'FAILED'}: {name}: {detail}", flush=True)

    # one argument may hold 128 KiB: 15,000 levels on the command line, 20,000 from files
    k = r.run(["info", "pow0.5(" * 15000 + "int4" + ")" * 15000])
    check("1 spec nested 15,000 deep on the command line", k[0] == "refused", f"{k[0]}, exit {k[1]}")
    spec = "pow0.5(" * 20000 + "int4" + ")" * 20000
    (work / "deep-sweep.json").write_text(json.dumps({"models": [str(work / "s260k.bin")], "formats": [spec]}))
    k = r.run(["explore", "--config", "deep-sweep.json", "--db", "deep.db", "-o", "deep", "--no-plot"])
    check("1 spec nested 20,000 deep in a sweep config", k[0] == "refused", f"{k[0]}, exit {k[1]}")
    (work / "deep-rules.json").write_text(json.dumps({"rules": [{"pattern": "*", "format": spec}]}))
    k = r.run(["eval", "--model", "s260k.bin", "--tokenizer", "tok512.bin", "--data", "text.txt", "--rules",
               "deep-rules.json"])
    check("1 spec nested 20,000 deep in rules.json", k[0] == "refused", f"{k[0]}, exit {k[1]}")
    (work / "sweep.json").write_text(json.dumps({"models": [str(work / "s260k.bin")], "formats": ["int8/c"],
                                                 "eval": {"ctx": 32, "max_tokens": 32}}))
    (work / "PWNED").unlink(missing_ok=True)
    k = r.run(["explore", "--config", "sweep.json", "--db", "inj.db", "-o", "out';touch PWNED;'"])
    check("2 shell injection through explore -o", not (work / "PWNED").exists(), f"{k[0]}, PWNED absent")
    k = r.run(["explore", "--config", "sweep.json", "--db", "fork.db", "-o", "fork", "-j", "2000", "--no-plot"])
    check("3 explore -j 2000 on a one-run sweep", k[0] in ("accepted", "refused") and k[2] < r.rss_mib,
          f"{k[0]}, peak RSS {k[2]:.0f} MiB")
    k = r.run(["bench", "int8/c", "--threads", "100000", "--mib", "1", "--reps", "1"])
    check("3 bench --threads 100000", k[0] == "refused", f"{k[0]}, exit {k[1]}")
    # 4: a GGUF whose llama.context_length says 2^20; eval of 64 tokens must not size for it
    g = bytearray((work / "q40.gguf").read_bytes())
    key = b"llama.context_length"
    i = g.find(key)
    if i < 0:
        check("4 memory from a declared 1M context", False, "no llama.context_length in the export")
    else:
        j = i + len(key)
        vtype = struct.unpack("<I", g[j:j + 4])[0]
        width = {4: 4, 5: 4, 10: 8, 11: 8}[vtype]
        g[j + 4:j + 4 + width] = (1 << 20).to_bytes(width, "little")
        (work / "ctx1m.gguf").write_bytes(g)
        k = r.run(["eval", "--model", "ctx1m.gguf", "--data", "text.txt", "--max-tokens", "64"])
        check("4 eval --max-tokens 64, model declaring 2^20 context", k[0] == "accepted" and k[2] < 100,
              f"{k[0]}, peak RSS {k[2]:.1f} MiB")
    # 5: a flipped bit in a training checkpoint, and an edited step, must not be resumed from
    tr = ["train", "--data", "text.txt", "--steps", "6", "--checkpoint-every", "3", "--eval-every", "3",
          "--val-batches", "1", "--dim", "32", "--layers", "1", "--heads", "2", "--ctx", "32", "--batch", "2"]
    k = r.run(tr + ["-o", "tr1"])
    tr = [a if a != "6" else "9" for a in tr]
    ck = work / "tr1/checkpoint.safetensors"
    if k[0] != "accepted" or not ck.exists():
        check("5 corrupted training checkpoint", False, f"could not train: {k}")
    else:
        b = bytearray(ck.read_bytes())
        b[-17] ^= 0x10
        ck.write_bytes(b)
        k = r.run(tr + ["-o", "tr1", "--resume"])
        check("5 a flipped bit in checkpoint.safetensors data, then --resume", k[0] == "refused", f"{k[0]}: {k[3][-120:]}")
    # 6: validation gaps
    cfg = json.loads((work / "synth/config.json").read_text())
    for key_, val, label in [("rope_theta", float("nan"), "RoPE base NaN"), ("rope_theta", 0, "RoPE base 0"),
                             ("rope_theta", -10000.0, "RoPE base negative"),
                             ("hidden_size", 4294967328, "hidden_size 2^32+32"), ("hidden_size", 1.5, "hidden_size 1.5"),
                             ("hidden_size", True, "hidden_size true"), ("hidden_act", "relu6", "unknown hidden_act"),
                             ("partial_rotary_factor", 0.5, "partial rotary on Llama")]:
        d = work / f"cfg-{label.replace(' ', '_')}"
        d.mkdir()
        shutil.copy(work / "synth/model.safetensors", d)
        c = dict(cfg)
        c[key_] = val
        (d / "config.json").write_text(json.dumps(c, allow_nan=True))
        k = r.run(["eval", "--model", str(d / "model.safetensors"), "--data", "text.txt", "--max-tokens", "32"])
        check(f"6 config.json {label}", k[0] == "refused", f"{k[0]}: {k[3][-100:]}")
    st = (work / "synth/model.safetensors").read_bytes()
    n = struct.unpack("<Q", st[:8])[0]
    h = json.loads(st[8:8 + n])
    names = [x for x in h if x != "__metadata__"]
    for label, edit in [("overlapping tensor data", lambda h: h[names[1]].__setitem__("data_offsets",
                                                                                        h[names[0]]["data_offsets"])),
                        ("duplicate tensor name", None)]:
        d = work / f"st-{label.replace(' ', '_')}"
        d.mkdir()
        shutil.copy(work / "synth/config.json", d)
        hh = json.loads(json.dumps(h))
        if edit:
            edit(hh)
            raw = json.dumps(hh).encode()
        else:
            raw = (json.dumps(hh)[:-1] + f', "{names[0]}": ' + json.dumps(hh[names[0]]) + "}").encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + st[8 + n:])
        k = r.run(["eval", "--model", str(d / "model.safetensors"), "--data", "text.txt", "--max-tokens", "32"])
        check(f"6 safetensors {label}", k[0] == "refused", f"{k[0]}: {k[3][-100:]}")
    tok = (work / "tok512.bin").read_bytes()
    (work / "tok-cut.bin").write_bytes(tok[:len(tok) // 2])
    k = r.run(["eval", "--model", "s260k.bin", "--tokenizer", "tok-cut.bin", "--data", "text.txt", "--max-tokens", "32"])
    check("6 truncated llama2.c tokenizer", k[0] == "refused", f"{k[0]}")
    # 7: housekeeping
    k = r.run(["eval", "--model", "s260k.bin", "--data", "text.txt", "--bogus-flag"])
    check("7 a CLI11 parse error exits 2", k[1] == 2, f"exit {k[1]}")
    (work / "synth2").mkdir()
    k1 = r.run(["synth", "--dim", "32", "--layers", "1", "--heads", "2", "-o", "synth2/m.safetensors"])
    k2 = r.run(["synth", "--dim", "64", "--layers", "1", "--heads", "2", "-o", "synth2/m.safetensors"])
    check("7 synth -o onto an existing model without --force", k1[0] == "accepted" and k2[0] == "refused", f"{k2[0]}")
    os.mkfifo(work / "fifo.bin")
    k = r.run(["eval", "--model", "fifo.bin", "--data", "text.txt"])
    check("7 a FIFO as the model", k[0] == "refused", f"{k[0]}")
    import sqlite3
    con = sqlite3.connect(work / "foreign.db")
    con.execute("create table t(x)")
    con.commit()
    con.close()
    k = r.run(["eval", "--model", "s260k.bin", "--tokenizer", "tok512.bin", "--data", "text.txt", "--max-tokens", "32",
               "--db", "foreign.db"])
    mode = sqlite3.connect(work / "foreign.db").execute("pragma journal_mode").fetchone()[0]
    check("7 --db naming a foreign SQLite file", k[0] == "refused" and mode == "delete", f"{k[0]}, journal {mode}")
    k = r.run(["report", "--db", "absent.db", "-o", "rep"])
    check("7 report of a missing database creates nothing", not (work / "absent.db").exists(), f"{k[0]}")
    # 8: interop
    k = r.run(["quantize", "--model", "gpt2/model.safetensors", "--data", "text.txt", "--weights", "fp16",
               "--method", "rtn", "-o", "g16.gguf"])
    check("8 quantize a GPT-2 model --weights fp16 to GGUF", k[0] == "accepted", f"{k[0]}: {k[3][-100:]}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lowbit", default="build/lowbit")
    ap.add_argument("--data", default=os.environ.get("LOWBIT_DATA_DIR", "../shared/data"))
    ap.add_argument("--mutants", type=int, default=300, help="mutants per input kind")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--rss-mib", type=float, default=512)
    ap.add_argument("--out", default="attack-out")
    ap.add_argument("--only", default="", help="mutate only the inputs whose name contains this")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    repro = out / "reproducers"
    shutil.rmtree(repro, ignore_errors=True)
    repro.mkdir()
    work = Path(tempfile.mkdtemp(prefix="lowbit-attack-"))
    r = Runner(str(Path(a.lowbit).resolve()), a.timeout, a.rss_mib, str(work))
    rng = random.Random(a.seed)
    results = {"seed": a.seed, "mutants_per_input": a.mutants, "files": [], "command_lines": {}, "findings": [],
               "failures": [], "accepted_edits": {}}
    t0 = time.monotonic()
    try:
        seeds = prepare(r, Path(a.data).resolve(), work)
        print("findings of issue 18, reproduced:", flush=True)
        results["findings"] = findings(r, work)
        print(f"mutated files ({a.mutants} per input):", flush=True)
        campaign(r, {k: v for k, v in seeds.items() if a.only in k}, a.mutants, rng, work, repro, results)
        lines = bad_command_lines()
        counts = dict.fromkeys(KINDS + ["wrong success"], 0)
        for argv in lines:
            kind, code, rss, tail = r.run(argv)
            if kind == "accepted":
                kind = "wrong success"
            counts[kind] += 1
            if kind != "refused":
                results["failures"].append({"input": "command line", "kind": kind, "exit": code, "args": argv[:12],
                                            "stderr": tail})
        results["command_lines"] = {"lines": len(lines), **counts}
        print(f"bad command lines: {len(lines)}, " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - t0, 1)
    tmp = out / "attack.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.rename(out / "attack.json")
    md = ["| input | tried | refused | accepted | crash | hang | blow-up | odd exit |", "|---|---|---|---|---|---|---|---|"]
    for f in results["files"]:
        md.append(f"| {f['input']} | {f['mutants']} | " + " | ".join(str(f[k]) for k in KINDS) + " |")
    c = results["command_lines"]
    md.append(f"| bad command lines | {c['lines']} | {c['refused']} | {c['wrong success']} (wrong success) | "
              f"{c['crash']} | {c['hang']} | {c['blow-up']} | {c['odd-exit']} |")
    held = sum(f["held"] for f in results["findings"])
    md.append("")
    md.append(f"Findings of issue 18 reproduced: {held}/{len(results['findings'])} held.")
    for f in results["findings"]:
        if not f["held"]:
            md.append(f"- FAILED {f['finding']}: {f['detail']}")
    (out / "attack.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    bad = [f for f in results["failures"]] + [f for f in results["findings"] if not f["held"]]
    print(f"attack: {results['seconds']} s, {len(bad)} failures (details in {out}/attack.json)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
