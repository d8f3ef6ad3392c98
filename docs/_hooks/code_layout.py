"""The manual's table of modules, made from the code itself at build time so
it cannot drift: one row per source file of the installed package (Python
modules by the first sentence of their docstring, C and CUDA sources by that
of their opening comment). MkDocs runs it as a hook on docs/layout.md, where
``<!-- modules -->`` stands; ``python3 docs/_hooks/code_layout.py`` prints it."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The folders that make up the package fxnn (pyproject.toml's package-dir), in the
#: order of the dependencies, bottom up, then the benchmarks and maintenance scripts.
FOLDERS = ("kernels", "files", "models", "data", "training", "fxnn", "analysis", "bench", "tools")
SOURCES = (".py", ".c", ".h", ".cu")
MARKER = "<!-- modules -->"


def first_sentence(text):
    """The first sentence of a docstring or comment, its markup as Markdown."""
    para = " ".join(text.strip().split("\n\n")[0].split())
    para = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", para).replace("``", "`")
    match = re.match(r"(.+?)\.(\s+[A-Z(`]|$)", para)
    return match.group(1) if match else para


def description(path):
    """What a source file says it holds, or "" when it says nothing."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if path.endswith(".py"):
        return first_sentence(ast.get_docstring(ast.parse(source)) or "")
    comment = re.match(r"\s*(/\*(.*?)\*/|((//[^\n]*\n)+))", source, re.S)
    if not comment:
        return ""
    text = comment.group(2) if comment.group(2) is not None else comment.group(3)
    return first_sentence(re.sub(r"^\s*(\*|//) ?", "", text, flags=re.M))


def source_files(root=ROOT):
    """Every source file of FOLDERS, relative to the root, in table order."""
    found = []
    for folder in FOLDERS:
        for here, dirs, files in os.walk(os.path.join(root, folder)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")) and d not in ("image", "results"))
            for name in sorted(files):
                path = os.path.join(here, name)
                if name.endswith(SOURCES) and not (name == "__init__.py" and not description(path)):
                    found.append(os.path.relpath(path, root))
    return found


def table(root=ROOT):
    rows = ["| file | what it holds |", "|---|---|"]
    for rel in source_files(root):
        text = description(os.path.join(root, rel)) or "(says nothing: give it a docstring)"
        rows.append(f"| `{rel}` | {text.replace('|', '/')} |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, **kwargs):
    """MkDocs hook: the table in place of MARKER."""
    return markdown.replace(MARKER, table()) if MARKER in markdown else markdown


if __name__ == "__main__":
    print(table())
