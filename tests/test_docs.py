"""The README and the manual (docs/, built by MkDocs): every relative link and
anchor resolves, every page is in mkdocs.yml's nav, the README stays short,
its Quick start commands are the ones CI and these tests run, and the manual's
example run prints what the manual shows. (`mkdocs build --strict`, which
.ci/run does, checks the links again; these tests need no MkDocs.)"""
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(f for f in os.listdir(DOCS) if f.endswith(".md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def prose(text):
    """The text without fenced code blocks and code spans, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text):
    """Each heading's anchor as MkDocs (Python-Markdown's toc) and GitHub make it."""
    found = set()
    for title in re.findall(r"^#{1,6} (.+?)\s*$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M):
        plain = title.replace("`", "")
        found.add(re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", plain).strip().lower()))
        found.add(re.sub(r"[^\w\s-]", "", plain.strip().lower()).replace(" ", "-"))
    return found


def broken_links(path):
    broken = []
    for target in LINK.findall(prose(read(path))):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            broken.append(f"{target}: no such file")
        elif anchor and dest.endswith(".md") and anchor not in anchors(read(dest)):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("page", ["README.md"] + [os.path.join("docs", p) for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(os.path.join(ROOT, page)) == []


def test_the_link_checker_catches_a_broken_file_and_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Real heading\n")
    (tmp_path / "a.md").write_text("[ok](b.md#real-heading) [x](c.md) [y](b.md#nope) `[z](code.md)`\n"
                                   "```\n[w](fenced.md)\n```\n[self](#nowhere)\n")
    assert broken_links(str(tmp_path / "a.md")) == ["c.md: no such file", "b.md#nope: no such heading",
                                                    "#nowhere: no such heading"]


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = re.findall(r"^\s*- [^:\n]+: (\S+\.md)\s*$", read(os.path.join(ROOT, "mkdocs.yml")), re.M)
    assert sorted(nav) == PAGES


def test_the_readme_stays_short():
    assert len(read(os.path.join(ROOT, "README.md")).splitlines()) < 250


def test_every_manual_page_the_code_names_exists():
    named = set()
    for folder in ("fxnn", "models", "kernels", "data", "training", "analysis", "files", "bench", "tools"):
        for here, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".c", ".h", ".cu")):
                    named |= {(os.path.relpath(os.path.join(here, name), ROOT), page)
                              for page in re.findall(r"docs/([\w-]+\.md)", read(os.path.join(here, name)))}
    assert [(where, page) for where, page in sorted(named) if page not in PAGES] == []


def quick_start():
    """The commands of the README's Quick start, one per line of its bash block."""
    section = read(os.path.join(ROOT, "README.md")).split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_what_ci_runs_and_its_runs_parse():
    from fxnn.cli import build_parser

    commands = quick_start()
    ci = read(os.path.join(ROOT, ".ci", "run"))
    install, runs, tests = commands[0], commands[1:-1], commands[-1]
    assert install.startswith("python3 -m pip install -e ") and install.split("install ", 1)[1] in ci
    assert tests == "python3 -m pytest" and re.search(rf"^(\w+=\S+ )*{tests}$", ci, re.M)
    assert "[cluster]" in install or ",cluster]" in install  # fxnn-sweep needs Dask
    assert runs and all(r.startswith("python3 fxnn.py ") for r in runs)
    for run in runs:
        build_parser().parse_args(shlex.split(run)[2:])  # exits (SystemExit) on a flag fxnn does not know
    short = build_parser().parse_args(shlex.split(runs[0])[2:])
    assert short.num_records * short.iters_per_record <= 100  # the short run first


#: The commands whose lines in code blocks are checked, and the module whose build_parser parses them.
PARSERS = {"python3 fxnn.py": "fxnn.cli", "python3 -m fxnn": "fxnn.cli"}
PARSERS.update({f"fxnn-{n}": f"fxnn.analysis.{m}" for n, m in
                (("plot", "plot"), ("csv", "to_csv"), ("summary", "summary"), ("sweep", "sweep"), ("tune", "tune"))})
PARSERS.update({f"python3 -m fxnn.analysis.{m}": f"fxnn.analysis.{m}"
                for m in ("plot", "to_csv", "summary", "sweep", "tune")})


def shown_commands(text):
    """The fxnn command lines in a page's code blocks (fenced or indented), continuations joined."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    unfenced = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    blocks += ["\n".join(line[4:] for line in block.splitlines())
               for block in re.findall(r"(?:^    .*\S.*\n)+", unfenced, re.M)]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line.strip().removeprefix("$ ")).split(" > ")[0].split("; ")[0]
            words = line.split()
            if not any(" ".join(words[:n]) in PARSERS for n in (3, 2, 1)):
                continue  # output, or another program (which may have unbalanced quotes)
            words = shlex.split(line)
            for n in (3, 2, 1):
                if " ".join(words[:n]) in PARSERS:
                    commands.append((PARSERS[" ".join(words[:n])], words[n:]))
                    break
    return commands


@pytest.mark.parametrize("page", ["README.md"] + [os.path.join("docs", p) for p in PAGES])
def test_every_fxnn_command_shown_parses(page, tmp_path, monkeypatch):
    import importlib
    monkeypatch.chdir(tmp_path)  # where the own-data examples' files exist, empty
    for module, args in shown_commands(read(os.path.join(ROOT, page))):
        args = [re.sub(r"\$\w+", "1", a) for a in args]  # a shell loop's variable
        for a in args:
            if a.endswith(".npz"):
                open(a, "wb").close()
        own, fxnn_flags = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
        try:  # a sweep passes the flags after -- to each run, which adds its own -m, -o and --seed
            importlib.import_module(module).build_parser().parse_args(own)
            importlib.import_module("fxnn.cli").build_parser().parse_args(fxnn_flags)
        except SystemExit:
            pytest.fail(f"{page}: {module} refuses {shlex.join(args)}")


def test_the_command_finder_reads_fenced_and_indented_blocks():
    text = "x\n```bash\nfxnn-plot a.mat -o c.png   # curves\n$ python3 fxnn.py -nrec 3 > out.txt; cat out.txt\n```\n" \
           "\n    fxnn-sweep -m fxnn \\\n        --seeds 1 2\n"
    assert shown_commands(text) == [("fxnn.analysis.plot", ["a.mat", "-o", "c.png"]), ("fxnn.cli", ["-nrec", "3"]),
                                    ("fxnn.analysis.sweep", ["-m", "fxnn", "--seeds", "1", "2"])]


def test_the_layout_page_lists_every_module_by_what_its_docstring_says():
    sys.path.insert(0, os.path.join(DOCS, "_hooks"))
    try:
        import code_layout
    finally:
        sys.path.pop(0)
    assert code_layout.MARKER in read(os.path.join(DOCS, "layout.md"))
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.*) \|$", code_layout.table(), re.M))
    for folder in ("models", "kernels", "training", "analysis", "data", "files"):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith((".py", ".c")) and name != "__init__.py":
                assert f"{folder}/{name}" in rows, name
    assert rows["kernels/fixed_kernels.py"] == ("The five fixed 3x3 kernels of fxnn, defined once, "
                                                "and the 5M channel layout")
    assert rows["kernels/fixed_cpu.c"] == "The fixed stage and its adjoint on the CPU, one pass over memory each"
    silent = [path for path, text in rows.items() if text.startswith("(says nothing")]
    assert silent == [], "modules without a docstring"


def test_the_readmes_python_runs():
    pytest.importorskip("torch")
    blocks = re.findall(r"```python\n(.*?)```", read(os.path.join(ROOT, "README.md")), re.S)
    assert blocks
    for code in blocks:
        namespace = {}
        exec(compile(code, "README.md", "exec"), namespace)
        if "y" in namespace:  # the FixedConv2d example, as nn.Conv2d(M, N, 3, stride, padding=1) would give
            assert tuple(namespace["y"].shape) == (8, 128, 16, 16)
        if "model" in namespace:
            assert type(namespace["model"][0]).__name__ == "FixedConv2d"


def example_run():
    """The manual's example run: its command and the lines it shows."""
    text = read(os.path.join(DOCS, "running.md"))
    (block,) = re.findall(r"```\n\$ (python3 fxnn.py [^\n>]*?) > out.txt; cat out.txt\n(.*?)```", text, re.S)
    return block[0], block[1].splitlines()


def masked(line):
    """The line with its numbers (and the padding before them) left out."""
    return re.sub(r"\s*\d[\d.,]*", " N", line)


@pytest.mark.slow
def test_the_manuals_example_run_prints_exactly_the_lines_it_shows(tmp_path):
    command, shown = example_run()
    assert command.replace(" --seed 1", "") in quick_start()  # the README's short run, seeded
    env = dict(os.environ, FXNN_MNIST_MIRRORS="http://127.0.0.1:9/")  # offline: no server there
    for name in ("FXNN_DATA", "FXNN_DOWNLOAD_DETAIL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "fxnn.py")] + shlex.split(command)[2:],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert [masked(line) for line in done.stdout.splitlines()] == [masked(line) for line in shown]
