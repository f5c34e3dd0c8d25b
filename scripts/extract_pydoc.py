#!/usr/bin/env python3
"""Turn Debian's python3.11-doc HTML into the plain-text corpus of
../shared/reference/tuned/README.md: the text inside <div role="main"> of the
faq, howto, library, reference, tutorial, using and whatsnew pages, in byte
order of their paths; no <pre>, <script>, <style> or header links; one
paragraph per line; documents separated by a form-feed line."""
import html.parser
import os
import re
import sys

SECTIONS = ("faq", "howto", "library", "reference", "tutorial", "using", "whatsnew")
BLOCK = {
    "p", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "div", "td", "th", "tr",
    "table", "ul", "ol", "dl", "br", "hr", "section", "blockquote", "caption", "figure",
    "figcaption", "thead", "tbody", "tfoot", "pre", "article", "aside", "header", "footer",
    "nav", "details", "summary", "form", "fieldset", "address", "main",
}
SKIP = {"pre", "script", "style"}
VOID = {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "embed", "source", "track", "param"}


class Main(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # tags open inside main; entry: (tag, is_main, skip)
        self.in_main = 0
        self.skip = 0
        self.paras = []
        self.cur = []

    def flush(self):
        text = re.sub(r"\s+", " ", "".join(self.cur)).strip()
        if text:
            self.paras.append(text)
        self.cur = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in VOID:
            if self.in_main and not self.skip and tag in BLOCK:
                self.flush()
            return
        is_main = tag == "div" and a.get("role") == "main"
        skip = tag in SKIP or (tag == "a" and "headerlink" in (a.get("class") or "").split())
        self.stack.append((tag, is_main, skip))
        if is_main:
            self.in_main += 1
        if self.in_main and not self.skip and tag in BLOCK:
            self.flush()
        if skip:
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        # Pop to the matching tag (tolerates unclosed inner tags).
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for t, is_main, skip in reversed(self.stack[i:]):
                    if skip:
                        self.skip -= 1
                    if self.in_main and not self.skip and t in BLOCK:
                        self.flush()
                    if is_main:
                        self.in_main -= 1
                del self.stack[i:]
                return

    def handle_data(self, data):
        if self.in_main and not self.skip:
            self.cur.append(data)


def main():
    root, out = sys.argv[1], sys.argv[2]
    files = []
    for sec in SECTIONS:
        for d, _, names in os.walk(os.path.join(root, sec)):
            for n in names:
                if n.endswith(".html"):
                    files.append(os.path.relpath(os.path.join(d, n), root))
    files.sort(key=lambda p: p.encode())
    docs = []
    for rel in files:
        p = Main()
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            p.feed(f.read())
        p.close()
        p.flush()
        docs.append("\n".join(p.paras))
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write("\n\f\n".join(docs) + "\n")
    print(f"{len(files)} files", file=sys.stderr)


main()
