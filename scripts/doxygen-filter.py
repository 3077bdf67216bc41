#!/usr/bin/env python3
"""Doxygen INPUT_FILTER: reads the plain `//` comments of mproc's headers as
documentation, so the API reference comes from the comments as written (the
headers stay in the project's `//` style; no `///` markup to keep up).

    scripts/doxygen-filter.py include/mproc/pool.hpp   # the filtered text

At namespace, class, struct and enum scope (never inside a function body):
  - the first comment block of the file documents the file (\\file);
  - a block of `//` lines directly above a declaration documents it;
  - `decl;  // text` and `value,  // text` document that member (`///<`).
Other comments (above a blank line, `}`, a preprocessor line or an access
label, or in a body) stay plain. A comment line indented by 3 or more spaces
is a code sample, made a Markdown code block. Line numbers are kept, so
doxygen's warnings point at the header's own lines.
"""
import re
import sys

SCOPE_HEAD = re.compile(r"^\s*(template\s*<.*>\s*)?(namespace|class|struct|union|enum)\b|^\s*extern\s+\"C\"")
LINE_COMMENT = re.compile(r"^(\s*)//(?!/)(.*)$")
ACCESS = re.compile(r"^\s*(public|private|protected)\s*:")


def code_part(line):
    """The line without its // comment and with string/char literals blanked;
    returns (code, column of the comment or None)."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c in "\"'":
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if line[j] == "\\" else 1
            out.append(c + " " * (min(j, n) - i - 1) + c)
            i = j + 1
            continue
        if line.startswith("//", i):
            return "".join(out), i
        out.append(c)
        i += 1
    return "".join(out), None


def doc_line(indent, text):
    if re.match(r"^ {3,}\S", text):  # a sample: Markdown code block
        return f"{indent}///  {text}"
    return f"{indent}///{text}"


def filter_lines(lines):
    out = list(lines)
    stack = []  # one entry per open brace: True for a scope, False for a body
    statement = ""  # the code since the last ; { or }, to classify a brace
    first_block_done = False
    i, n = 0, len(lines)
    while i < n:
        in_body = not all(stack)
        m = LINE_COMMENT.match(lines[i])
        if m:
            j = i
            while j < n and LINE_COMMENT.match(lines[j]):
                j += 1
            if not in_body:
                nxt = lines[j] if j < n else ""
                file_doc = not first_block_done and i == 0
                declaration = nxt.strip() and not nxt.lstrip().startswith(("#", "}")) and not ACCESS.match(nxt)
                if file_doc or declaration:
                    for k in range(i, j):
                        km = LINE_COMMENT.match(lines[k])
                        out[k] = doc_line(km.group(1), km.group(2))
                    if file_doc:
                        out[i] += " \\file"
            first_block_done = True
            i = j
            continue
        if lines[i].strip():
            first_block_done = True
        if lines[i].lstrip().startswith("#") or ACCESS.match(lines[i]):
            statement = ""  # neither starts a declaration's head
            i += 1
            continue
        code, col = code_part(lines[i])
        if col is not None and not in_body and code.rstrip().endswith((";", ",")) and code.strip():
            out[i] = lines[i][:col] + "///<" + lines[i][col + 2:]
        for c in code:
            if c == "{":
                stack.append(bool(SCOPE_HEAD.match(statement)) and all(stack))
                statement = ""
            elif c == "}":
                if stack:
                    stack.pop()
                statement = ""
            elif c == ";":
                statement = ""
            else:
                statement += c
        statement += " "
        i += 1
    return out


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    sys.stdout.write("\n".join(filter_lines(lines)))


if __name__ == "__main__":
    main()
