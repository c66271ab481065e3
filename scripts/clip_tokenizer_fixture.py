"""Expected CLIP token ids for tricky prompts: writes tests/fixtures/clip_tokenizer.json.

Reference: transformers 4.44.0 `CLIPTokenizer` (the slow one) without ftfy installed, as the
ZePo reference ran. Only needs `pip install transformers==4.44.0` (no torch). Run from the
repository root:  python scripts/clip_tokenizer_fixture.py
"""
import json
import importlib.util

import transformers
from transformers import CLIPTokenizer

assert importlib.util.find_spec("ftfy") is None, "uninstall ftfy: the reference ran without it"

PROMPTS = [
    "face",
    "",
    "a portrait of a woman, oil painting",
    "Hello, World!!! ... ?? (really) [yes] {no} -- ~~",
    "3.14159 and 2024 years, 1,000,000 people; 42nd street 7x7",
    "it's a dog's life, we'll see, I'd've gone, they're here, you've, I'm, don't, ISN'T",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m pi\u00f1ata",
    "Cafe\u0301 with a decomposed accent, e\u0301le\u0300ve",
    "\u65e5\u672c\u8a9e\u306e\u30dd\u30fc\u30c8\u30ec\u30fc\u30c8 \u4e2d\u6587\u8096\u50cf \ud55c\uad6d\uc5b4 \u521d\u97f3\u30df\u30af",
    "   extra    spaces \t tabs\nnewlines\r\n  trailing   ",
    "ALL CAPS and MiXeD CaSe Words",
    "emoji \U0001f600\U0001f3a8 portrait \u2764\ufe0f",
    "<|startoftext|>special<|endoftext|> tokens <|ENDOFTEXT|> in text",
    "control\x00chars\u200b zero\u200bwidth and\u00a0nbsp \ufffd \x07bell",
    "\u039f\u0394\u039f\u03a3 \u03a3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2 stra\u00dfe \u0130stanbul \u212aelvin",
    "word-with-hyphens and under_scores, e-mail@example.com #hashtag $100 50% a+b=c",
    "masterpiece, best quality, " * 12 + "a highly detailed portrait of an old man with a beard",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def main():
    tok = CLIPTokenizer.from_pretrained("weights/tiny-lcm/tokenizer")
    cases = []
    for text in PROMPTS:
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        cases.append({"text": text, "ids": ids})
    out = {
        "source": f"transformers {transformers.__version__} CLIPTokenizer (slow, no ftfy), "
        "padding='max_length', max_length=77, truncation=True; scripts/clip_tokenizer_fixture.py",
        "cases": cases,
    }
    with open("tests/fixtures/clip_tokenizer.json", "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
