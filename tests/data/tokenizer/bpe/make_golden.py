#!/usr/bin/env python3
"""Golden data for tests/tokenizer/test_bpe_tokenizer.cpp: a tiny GPT-2 byte-level BPE
tokenizer laid out like Phi-2's (microsoft/phi-2, susnato/phi-2: CodeGenTokenizer) and what
Hugging Face's SLOW tokenizers make of ~50 crafted strings.

transformers 5 no longer has the slow (pure Python) GPT2Tokenizer / CodeGenTokenizer, so
this script needs a transformers 4.x; it was run with 4.37.2 (the release that brought Phi
into transformers, TinyGPT-V's era), in a scratch venv, from the repository root:

    python3 -m venv /tmp/hf437 && /tmp/hf437/bin/pip install transformers==4.37.2
    /tmp/hf437/bin/python tests/data/tokenizer/bpe/make_golden.py

What it writes (tests/data/tokenizer/bpe/):
  tiny_codegen/      a Phi-2-like directory: vocab.json, merges.txt, tokenizer.json (merges as
                     "a b" strings), tokenizer_config.json (CodeGenTokenizer, add_bos_token
                     false, added_tokens_decoder as transformers >= 4.34 saves it),
                     special_tokens_map.json, added_tokens.json. <|endoftext|> is the last
                     id of the base vocabulary (bos = eos = unk), then runs of spaces / tabs
                     as non-special added tokens, like Phi-2's 50257.. ids.
  tiny_gpt2_legacy/  the same BPE model as an older-style directory WITHOUT vocab.json and
                     merges.txt: tokenizer.json (merges as ["a", "b"] pairs, added tokens with
                     lstrip / rstrip / single_word flags), a tokenizer_config.json without
                     added_tokens_decoder (GPT2Tokenizer, add_bos_token and add_prefix_space
                     true), special_tokens_map.json (pad, additional specials as a dict and
                     as a plain string), added_tokens.json. For the slow tokenizers (and the
                     C++ test's second mode) vocab.json + merges.txt of tiny_codegen are
                     copied next to it in a scratch directory.
  golden.json        per directory: ids, special ids, and for every string HF's tokenize(),
                     encode() with and without special tokens, and decode() of those ids with
                     and without skip_special_tokens (clean_up_tokenization_spaces=False);
                     plus decode() of id sequences that end in or contain partial UTF-8 byte
                     sequences (HF decodes bytes with errors="replace"). Then the clean-up:
                     each directory's clean_up_tokenization_spaces (tiny_codegen sets it true
                     like Phi-2, tiny_gpt2_legacy leaves it out: transformers 4.37 defaults it
                     to true) and `cleanup_cases`, decode() with the config's setting and with
                     clean_up_tokenization_spaces=True / False, of CLEANUP_STRINGS and of the
                     STRINGS whose decode the clean-up changes; and top-level `cleanup_config`:
                     tiny_codegen with the key set to true, false, null and left out.

Both slow classes (CodeGenTokenizer and GPT2Tokenizer) are run; the script stops if they
disagree anywhere (they only differ in flags that do not change the output here). The fast
tokenizer is run too, for information only (printed, not stored).

The same cases run with transformers 4.36.2 + tokenizers 0.15.0 + regex 2022.10.31 (TinyGPT-V's
environment.yml, which loads Phi-2 with AutoTokenizer(use_fast=False)) and with 4.46.3 give
exactly this golden.json. transformers <= 4.33 differs (before the added-tokens rework of
4.34 it stripped the whitespace on both sides of added tokens given as plain strings).
"""
import json
import os
import shutil
import sys
import tempfile

import tokenizers
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

if int(transformers.__version__.split(".")[0]) >= 5:
    sys.exit("needs transformers 4.x (slow GPT2Tokenizer/CodeGenTokenizer); see the docstring")

from transformers import CodeGenTokenizer, GPT2Tokenizer, PreTrainedTokenizerFast  # noqa: E402

transformers.logging.set_verbosity_error()

HERE = os.path.dirname(os.path.abspath(__file__))
EOT = "<|endoftext|>"
VOCAB_SIZE = 600  # base vocabulary, <|endoftext|> included (its last id)

# ---------------------------------------------------------------- training corpus

CORPUS = [
    "Hello world! Hello, world. The world is wide and the words are many.",
    "I'm sure it's fine; they'll say we've done what you'd do, and I don't mind.",
    "She's here, he's there, we're everywhere. They've gone. You'll see. It'd work.",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 2024 3.14159 2.71828 -17 +5 1e-5 0x1F",
    "Prices: $12.50, 99%, 1,000,000 and 7/8 of 64-bit values; ranks 1st 2nd 3rd 4th.",
    "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: ",
    "###Human: <Img><ImageHere></Img> What is in the picture? ###Assistant: A cat on a mat.",
    "def square(x):\n    return x * x\n\n\nclass Point:\n    def __init__(self, x, y):\n"
    "        self.x = x\n        self.y = y\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n\telse:\n\t\tcontinue\n",
    "int main() {\n  std::vector<int> v{1, 2, 3};\n  return v.size() > 2 ? 0 : 1;\n}\n",
    "    indented four\n        indented eight\n\t\ttabbed twice\n  two  spaces  between\n",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m fa\u00e7ade co\u00f6perate "
    "\u00fcber Stra\u00dfe se\u00f1or",
    "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff0c\u8fd9\u662f\u4e00\u4e2a\u53e5\u5b50\u3002"
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\ud55c\uad6d\uc5b4 "
    "\ud14d\uc2a4\ud2b8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0393\u03b5\u03b9\u03ac "
    "\u03c3\u03bf\u03c5 \u03ba\u03cc\u03c3\u03bc\u03b5. \u0645\u0631\u062d\u0628\u0627 "
    "\u05e9\u05dc\u05d5\u05dd",
    "Emoji: \U0001F600 \U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 "
    "\U0001F1EB\U0001F1F7 \u2764\ufe0f \U0001F680\U0001F680",
    "Math: \u03b1 + \u03b2 = \u03b3, \u2211 x\u00b2 \u2264 \u221e, \u00bd \u2153 \u2460\u2461\u2462",
    "Quotes \u201clike these\u201d and \u2018these\u2019 \u2014 dashes \u2013 and \u2026 ellipses.",
    "The model looks at the image and answers the question about the image.",
    "A man is riding a horse on the beach. Two dogs are playing in the snow.",
    "The picture shows a red bus on a city street with people walking nearby.",
    "line one\nline two\r\nline three\n\n\nafter blank lines\n",
    "Mixed123abc456DEF 7up a1b2c3 v2.0.1 x86_64 utf-8 snake_case camelCase",
    "world map\nworld cup\nworld record\n(world) [world] {world}",
    # U+180E (Mongolian vowel separator): `regex` and PCRE2 disagree on whether it is \s;
    # merges over its bytes let the test strings show which side a tokenizer takes.
    "x \u180ey \u180ez a\u180e! \u180e\u180e?",
]
CORPUS = CORPUS * 3 + [" ".join(CORPUS)]

# ---------------------------------------------------------------- test strings

STRINGS = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    " \n ",
    "Hello world",
    " Hello world",
    "Hello world ",
    "  leading two",
    "trailing two  ",
    "a  b   c    d         e",
    "tabs\tand\t\ttabs\t\t\t!\t\t\t\t",
    "line one\nline two\r\nline three\n",
    "###Human: <Img><ImageHere></Img> describe ###Assistant: ",
    "###Human: <Img><ImageHere></Img> What is in the picture? ###Assistant: A cat.",
    "I'm sure it's fine, they'll say we've done what you'd do.",
    "DON'T SHOUT'S 'S 's's's can't won't y'all",
    "3.14159 + 2718 = 12345678901234567890",
    "Numbers: \u2460\u2461\u2462 \u0663\u0664\u0665 \u00bd \u2153 \u00b2",
    "Emoji: \U0001F600\U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 "
    "\U0001F1EB\U0001F1F7 \U0001F9EA",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m fa\u00e7ade",
    "e\u0301 decomposed vs \u00e9 composed",
    "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff0c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8"
    "\u3002\ud55c\uad6d\uc5b4",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0393\u03b5\u03b9\u03ac "
    "\u03c3\u03bf\u03c5",
    "def f(x):\n    return x**2  # square\n\tpass\n",
    "\x00\x01\x1b[31mred\x1b[0m\x7f",
    "\u0080\u0085\u00a0\u00ad\u00ff\ufffd\u200b\ufeff zero width",
    "non\u00a0breaking\u2003em\u3000ideographic\u2028sep\x1cfs\x1f",
    "\u180e mongolian\u180evowel separator",
    "a\u180e! \u180e\u180e? x\u180e\u180e y \u180e",  # U+180E: not \s for `regex`, \s for PCRE2
    "x \u180ey \u180e\u180ez",
    "eos inside <|endoftext|> text",
    EOT,
    EOT + EOT,
    " " + EOT + " spaced " + EOT + " ",
    "x" + EOT + "y",
    "<|endoftext",
    "added:  two,   three,        eight spaces",
    "\t\t\t\tfour tabs and \t\t two",
    "a<ImageHere>b",
    "a <ImageHere>  b",
    "<pad> padded <pad>",
    "<Img> x </Img>  y  </Img>z",
    "single <sw> word<sw>x <sw>",
    "world worldwide helloworld world",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "The model looks at the image and answers the question about the image. " * 3,
]

# Decoded with HF's clean_up_tokenization (" ." -> ".", " n't" -> "n't", ...): every
# pattern, back to back, doubled, at the ends, next to added and special tokens.
CLEANUP_STRINGS = [
    "It is a cat . Is it ? Yes ! Well , maybe .",
    "I do n't know . I 'm sure it 's fine , we 've seen they 're here .",
    "a ' b ' c '' d ' ' e",
    "x ' s and x 's and x 'S and x 'sss 'ss",
    "end .",
    " .",
    ".",
    " . . .. ...",
    "n't 'm 's 've 're",
    " n't n't  n't",
    "don 't do n 't do n'tt",
    "can ' t won ' t",
    "one  .  two   ,   three        !",
    "tab\t. new\n, line \n.",
    "<|endoftext|> . <|endoftext|> ' s",
    "x <|endoftext|>'s y<|endoftext|> ?",
    "caf\u00e9 . \u4e2d ! \U0001F600 ?",
    "'' ' '' ''' ' ' ' '",
    " 're 'red ' re 're'",
    "the ' ' ' the",
]

# Byte strings decoded through the byte-level pieces (one id per byte): partial and invalid
# UTF-8 that HF's bytes.decode("utf-8", errors="replace") turns into U+FFFD.
PARTIAL_BYTES = [
    b"\xe4\xb8",
    b"\xe4\xb8\xad\xe6",
    b"\xf0\x9f\x98",
    b"ok \xf0\x9f\x98 ok",
    b"\xff\xfe",
    b"\xc0\xaf",
    b"\xc2",
    b"\xed\xa0\x80",
    b"\xed\x9f\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf",
    b"\xe0\x80\xaf",
    b"\xe0\xa0\x80",
    b"\xf0\x80\x80\x80",
    b"\xf0\x90\x80",
    b"\x80abc\xbf",
    b"abc\xf0",
    b"\xf8\x88\x80\x80\x80",
    b"\xe2\x82\xac\xe2\x82",
]

# ---------------------------------------------------------------- building the directories


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def train():
    """A byte-level BPE of VOCAB_SIZE pieces with <|endoftext|> moved to the last id."""
    bpe = tokenizers.ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[EOT],
                            show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    vocab = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    ordered = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t != EOT]
    vocab = {t: i for i, t in enumerate(ordered)}
    vocab[EOT] = len(vocab)
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    assert all(c in vocab for c in bytes_to_unicode().values())
    return vocab, merges


def fast_tokenizer(vocab, merges, added, add_prefix_space, pair_merges):
    """tokenizer.json as `tokenizers` writes it, merges as strings or (newer) pairs."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, flags in added:
        if flags.get("special"):
            tok.add_special_tokens([AddedToken(content, **flags)])
        else:
            tok.add_tokens([AddedToken(content, **flags)])
    data = json.loads(tok.to_str())
    want = [f"{a} {b}" for a, b in merges] if not pair_merges else [[a, b] for a, b in merges]
    data["model"]["merges"] = want
    return data


def added_entry(content, tok_id, flags):
    return {"content": content, "lstrip": flags.get("lstrip", False),
            "normalized": flags.get("normalized", not flags.get("special", False)),
            "rstrip": flags.get("rstrip", False), "single_word": flags.get("single_word", False),
            "special": flags.get("special", False)}


def write_json(path, value, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(value, f, ensure_ascii=False, indent=2)
        f.write("\n")


def write_phi2_like(path, vocab, merges):
    """tiny_codegen: the file set of microsoft/phi-2."""
    os.makedirs(path, exist_ok=True)
    write_json(os.path.join(path, "vocab.json"), vocab, compact=True)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    added = [(EOT, {"special": True, "normalized": False})]
    # Phi-2: runs of spaces and tabs, longest first, plain added tokens.
    runs = [" " * 8, " " * 4, " " * 3, " " * 2, "\t" * 4, "\t" * 2]
    added += [(r, {"special": False, "normalized": True}) for r in runs]
    data = fast_tokenizer(vocab, merges, added, add_prefix_space=False, pair_merges=False)
    write_json(os.path.join(path, "tokenizer.json"), data)
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[c]): added_entry(c, ids[c], fl) for c, fl in added},
        "bos_token": EOT,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOT,
        "model_max_length": 2048,
        "return_token_type_ids": False,
        "tokenizer_class": "CodeGenTokenizer",
        "unk_token": EOT,
    }
    write_json(os.path.join(path, "tokenizer_config.json"), config)
    write_json(os.path.join(path, "special_tokens_map.json"),
               {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT})
    write_json(os.path.join(path, "added_tokens.json"), {c: ids[c] for c, _ in added if ids[c] >= len(vocab)})


def write_legacy(path, vocab, merges):
    """tiny_gpt2_legacy: pre-4.34 configs, flags only in tokenizer.json, no vocab.json/merges.txt."""
    os.makedirs(path, exist_ok=True)
    if "world" not in vocab:
        sys.exit("the trained vocabulary lacks 'world' (the added-token-in-vocab case)")
    added = [
        (EOT, {"special": True, "normalized": False}),
        ("<pad>", {"special": True, "normalized": False}),
        ("<ImageHere>", {"special": True, "normalized": False, "lstrip": True, "rstrip": True}),
        ("<Img>", {"special": True, "normalized": False}),
        ("</Img>", {"special": False, "normalized": True, "lstrip": True}),
        ("  ", {"special": False, "normalized": True}),
        ("\t\t", {"special": False, "normalized": True, "rstrip": True}),
        ("<sw>", {"special": False, "normalized": True, "single_word": True}),
        ("world", {"special": False, "normalized": True}),  # already a base-vocabulary piece
    ]
    data = fast_tokenizer(vocab, merges, added, add_prefix_space=True, pair_merges=True)
    write_json(os.path.join(path, "tokenizer.json"), data, compact=True)
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    eot = {"__type": "AddedToken", "content": EOT, "lstrip": False, "normalized": True, "rstrip": False,
           "single_word": False}
    write_json(os.path.join(path, "tokenizer_config.json"), {
        "add_bos_token": True,
        "add_prefix_space": True,
        "bos_token": eot, "eos_token": eot, "unk_token": eot,
        "errors": "replace",
        "model_max_length": 1024,
        "pad_token": None,
        "tokenizer_class": "GPT2Tokenizer",
    })
    write_json(os.path.join(path, "special_tokens_map.json"), {
        "additional_special_tokens": [
            {"content": "<ImageHere>", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False},
            "<Img>",
        ],
        "bos_token": EOT, "eos_token": EOT, "pad_token": "<pad>", "unk_token": EOT,
    })
    write_json(os.path.join(path, "added_tokens.json"),
               {c: ids[c] for c, _ in added if ids[c] >= len(vocab)})


# ---------------------------------------------------------------- running HF


def run_cases(tok, byte_ids):
    cases = []
    for text in STRINGS:
        ids = tok.encode(text, add_special_tokens=False)
        ids_special = tok.encode(text, add_special_tokens=True)
        cases.append({
            "text": text,
            "tokens": tok.tokenize(text),
            "ids": ids,
            "ids_with_special": ids_special,
            "decode": tok.decode(ids_special, clean_up_tokenization_spaces=False),
            "decode_skip": tok.decode(ids_special, skip_special_tokens=True, clean_up_tokenization_spaces=False),
        })
    decodes = []
    seqs = [[byte_ids[b] for b in bs] for bs in PARTIAL_BYTES]
    # Mixed with specials and added tokens: the byte runs are decoded separately around the
    # added (non-special) tokens, the special tokens go through the byte map.
    added_ids = sorted(i for i in tok.added_tokens_decoder if i >= tok.vocab_size)
    eos = tok.eos_token_id
    seqs.append([byte_ids[0xe4], eos, byte_ids[0xb8], byte_ids[0xad]])
    seqs.append([byte_ids[0xe4], byte_ids[0xb8]] + added_ids[:1] + [byte_ids[0xad], eos, eos])
    seqs.append(added_ids + [eos] + added_ids[::-1])
    seqs.append([eos, eos])
    seqs.append([])
    seqs.append(tok.encode("Hello world  and  tabs\t\t!", add_special_tokens=False) + added_ids[-2:])
    for seq in seqs:
        decodes.append({
            "ids": seq,
            "decode": tok.decode(seq, clean_up_tokenization_spaces=False),
            "decode_skip": tok.decode(seq, skip_special_tokens=True, clean_up_tokenization_spaces=False),
        })
    return cases, decodes


def describe(tok):
    probe_ids = sorted(set([0, 1, 2, 100, 187, 188, 255, 256, 257, 300, tok.vocab_size - 2, tok.vocab_size - 1]
                           + list(tok.added_tokens_decoder)))
    return {
        "vocab_size": tok.vocab_size,
        "len": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "unk_id": tok.unk_token_id,
        "pad_id": tok.pad_token_id,
        "add_bos_token": tok.add_bos_token,
        "add_prefix_space": tok.add_prefix_space,
        "all_special_ids": tok.all_special_ids,
        "added_tokens": {str(i): t.content for i, t in sorted(tok.added_tokens_decoder.items())},
        "pieces": [{"id": i, "piece": tok.convert_ids_to_tokens(i)} for i in probe_ids],
        "piece_ids": [{"piece": p, "id": tok.convert_tokens_to_ids(p)}
                      for p in ["Hello", "\u0120world", "\u0120", "  ", "<|endoftext|>", "no such piece"]],
        "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
        "cleanup_cases": cleanup_cases(tok),
    }


def cleanup_cases(tok):
    """decode() with the config's clean-up (None), and with it forced on and off."""
    cases = []
    for text in CLEANUP_STRINGS + STRINGS:
        ids = tok.encode(text, add_special_tokens=True)
        raw = tok.decode(ids, clean_up_tokenization_spaces=False)
        clean = tok.decode(ids, clean_up_tokenization_spaces=True)
        if text not in CLEANUP_STRINGS and clean == raw:
            continue
        cases.append({
            "text": text,
            "ids": ids,
            "decode_default": tok.decode(ids),
            "decode_skip_default": tok.decode(ids, skip_special_tokens=True),
            "decode_clean": clean,
            "decode_raw": raw,
        })
    return cases


def cleanup_config(phi2_dir):
    """tiny_codegen with clean_up_tokenization_spaces true, false, null and absent."""
    with open(os.path.join(phi2_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    rows = []
    text = CLEANUP_STRINGS[1]
    for value in (True, False, None, "absent"):
        with tempfile.TemporaryDirectory() as tmp:
            for f in os.listdir(phi2_dir):
                shutil.copy(os.path.join(phi2_dir, f), tmp)
            c = dict(config)
            if value == "absent":
                del c["clean_up_tokenization_spaces"]
            else:
                c["clean_up_tokenization_spaces"] = value
            write_json(os.path.join(tmp, "tokenizer_config.json"), c)
            got = []
            for cls in (CodeGenTokenizer, GPT2Tokenizer):
                tok = cls.from_pretrained(tmp)
                ids = tok.encode(text)
                got.append({"config_value": value, "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
                            "text": text, "ids": ids, "decode_default": tok.decode(ids)})
            if got[0] != got[1]:
                sys.exit("the slow classes disagree on the clean-up")
            rows.append(got[0])
    return rows


def run_variant(name, hf_dir, vocab):
    byte_ids = {b: vocab[c] for b, c in bytes_to_unicode().items()}
    results = {}
    for cls in (CodeGenTokenizer, GPT2Tokenizer):
        tok = cls.from_pretrained(hf_dir)
        cases, decodes = run_cases(tok, byte_ids)
        results[cls.__name__] = {**describe(tok), "cases": cases, "decode_cases": decodes}
    a, b = results["CodeGenTokenizer"], results["GPT2Tokenizer"]
    if a != b:
        for key in a:
            if a[key] != b[key]:
                print(f"{name}: CodeGenTokenizer and GPT2Tokenizer differ in {key}")
        sys.exit("the slow classes disagree: store both")
    # Information only: how the fast tokenizer (tokenizer.json) compares.
    with open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8") as f:
        data = json.load(f)
    # tokenizers < 0.20 reads merges only as "a b" strings.
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)))
    differ = [c["text"] for c in a["cases"] if fast.encode(c["text"], add_special_tokens=False) != c["ids"]]
    print(f"{name}: fast tokenizer.json differs from slow on {len(differ)} of {len(a['cases'])} strings:"
          f" {[t[:30] for t in differ]}")
    return {"classes": ["CodeGenTokenizer", "GPT2Tokenizer"], **a}


def write_golden(path, golden):
    """Indented JSON with one line per case, to keep the file small and diffable."""
    rows = {}

    def collapse(node):
        if isinstance(node, dict):
            return {k: collapse(v) for k, v in node.items()}
        if isinstance(node, list) and node and isinstance(node[0], dict):
            key = f"@@rows{len(rows)}@@"
            rows[key] = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in node) + "\n]"
            return key
        return node

    text = json.dumps(collapse(golden), ensure_ascii=False, indent=1)
    for key, value in rows.items():
        text = text.replace(f'"{key}"', value)
    assert json.loads(text) == golden
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def main():
    vocab, merges = train()
    phi2_dir = os.path.join(HERE, "tiny_codegen")
    legacy_dir = os.path.join(HERE, "tiny_gpt2_legacy")
    for d in (phi2_dir, legacy_dir):
        shutil.rmtree(d, ignore_errors=True)
    write_phi2_like(phi2_dir, vocab, merges)
    write_legacy(legacy_dir, vocab, merges)

    golden = {
        "generator": {
            "script": "tests/data/tokenizer/bpe/make_golden.py",
            "python": sys.version.split()[0],
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "regex": __import__("regex").__version__,
            "cleanup": "cleanup_cases and cleanup_config: decode with clean_up_tokenization_spaces "
                       "None (the config's value), True and False",
            "reference": "slow CodeGenTokenizer and GPT2Tokenizer (identical results), "
                         "decode with clean_up_tokenization_spaces=False",
        },
        "cleanup_config": cleanup_config(phi2_dir),
        "variants": {},
    }
    golden["variants"]["tiny_codegen"] = {"dir": "tiny_codegen",
                                          **run_variant("tiny_codegen", phi2_dir, vocab)}
    with tempfile.TemporaryDirectory() as tmp:
        for f in os.listdir(legacy_dir):
            shutil.copy(os.path.join(legacy_dir, f), tmp)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(phi2_dir, f), tmp)
        golden["variants"]["tiny_gpt2_legacy"] = {
            "dir": "tiny_gpt2_legacy", "vocab_and_merges_from": "tiny_codegen",
            **run_variant("tiny_gpt2_legacy", tmp, vocab)}
    write_golden(os.path.join(HERE, "golden.json"), golden)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(HERE) for f in fs)
    print(f"wrote {HERE} ({total} bytes)")


if __name__ == "__main__":
    main()
