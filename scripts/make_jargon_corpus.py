#!/usr/bin/env python3
"""Regenerates crates/gradguard-lab/data/jargon/jargon.txt.gz, the lm task's text.

Source: the Jargon File 4.4.7 (public domain), as Debian ships it in the package `dict-jargon`
(dictd format: `/usr/share/dictd/jargon.dict.dz`, gzip-compatible). Usage:

    apt-get download dict-jargon            # any 4.4.7 build of the package
    dpkg-deb -x dict-jargon_*.deb pkg
    python3 scripts/make_jargon_corpus.py pkg/usr/share/dictd/jargon.dict.dz \
        crates/gradguard-lab/data/jargon/jargon.txt.gz

What it keeps: the running prose of every entry, in file order. Each paragraph is joined into one
line; headwords, pronunciation and part-of-speech lines are dropped; `{cross-reference}` braces
are removed; typographic quotes, dashes and ellipses become their ASCII forms and any other
non-ASCII character is dropped, so the alphabet is printable ASCII plus the newline. The output is
cut at the last paragraph that fits MAX_BYTES and gzip-compressed with a fixed mtime, so the same
input gives the same bytes.
"""
import gzip
import re
import sys

MAX_BYTES = 400_000
ASCII = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": " - ",
         "\u2013": "-", "\u2026": "...", "\u00a0": " "}


def paragraphs(text):
    """Yields the prose paragraphs of the dict file (indented blocks of four spaces)."""
    block = []
    for line in text.splitlines():
        if line.startswith("    ") and line.strip():
            block.append(line.strip())
        else:
            if block:
                yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def clean(p):
    for k, v in ASCII.items():
        p = p.replace(k, v)
    p = p.replace("{", "").replace("}", "")
    p = "".join(c for c in p if 32 <= ord(c) < 127)
    return re.sub(r" +", " ", p).strip()


def main(src, dst):
    with gzip.open(src, "rt", encoding="utf-8") as f:
        text = f.read()
    out, size = [], 0
    for p in paragraphs(text):
        p = clean(p)
        # Skip the file's own front matter lines and one-word fragments.
        if len(p.split()) < 4 or p.startswith("00-database"):
            continue
        if size + len(p) + 1 > MAX_BYTES:
            break
        out.append(p)
        size += len(p) + 1
    data = ("\n".join(out) + "\n").encode("ascii")
    with open(dst, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as g:
            g.write(data)
    print(f"{len(out)} paragraphs, {len(data)} bytes -> {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
