"""No test, benchmark, example, tutorial or package file reads a path outside the repository.

A fresh clone has only the repository: a test that reads ``../shared/data`` or ``/work/...`` fails
there with ``FileNotFoundError`` (as two tests once did). The check reads each file:

- Python files are parsed: a path built from ``__file__`` (``.parents[N]``, ``.parent``,
  ``os.path.dirname``, then ``/ ".."`` or ``/ "name"`` steps) must not climb above the repository
  root; a string starting with ``../`` (or ``..``) must not be used as a path (``Path(...)``,
  ``open(...)``, ``os.path.join(...)`` or an operand of ``/``); no string names an absolute machine
  path (``/work/``, a home directory) or ``../shared``.
- Other files (YAML configs, the tutorial, TOML) must not contain such paths at all.

Data the tests need ships with the package (``bundled:wikitext2``, the bundled tasks) or is written
to ``tmp_path``. The checker is itself tested on the lines that broke and on lines that are fine.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("tests", "benchmarks", "examples", "layerif_core", "plugins")
SCANNED_FILES = ("docs/tutorial.md",)
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".md", ".cfg", ".ini", ".json", ".txt", ".sh"}
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", "runs", "_work", "build", "dist"}
# measurement outputs, not inputs: they are written by the benchmarks and never read as data
SKIPPED_FILES = {"benchmarks/results.json", "benchmarks/results.md"}
THIS_FILE = "tests/test_no_outside_paths.py"  # holds the bad lines as the checker's own test input

MACHINE_PATH = re.compile(r"(?:^|[\s\"'=(:])(/work(?:/|\b)|/home/\w|/Users/\w|/root/)|\.\./+shared|"
                          r"\.\.\\shared")
RELATIVE_CLIMB = re.compile(r"(?:^|[\s\"'=(:])\.\./")


def scanned_files() -> list[Path]:
    files = [ROOT / f for f in SCANNED_FILES if (ROOT / f).is_file()]
    for d in SCANNED_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            rel = path.relative_to(ROOT)
            if (path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIPPED_PARTS & set(rel.parts)
                    and not any(p.endswith(".egg-info") for p in rel.parts)
                    and rel.as_posix() not in SKIPPED_FILES and rel.as_posix() != THIS_FILE):
                files.append(path)
    return files


# ---- Python files --------------------------------------------------------------------------------

def _segments(node: ast.AST) -> list[str] | None:
    """The path segments of a string constant, or None when ``node`` is not one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [s for s in node.value.replace("\\", "/").split("/") if s not in ("", ".")]
    return None


def _climb(node: ast.AST) -> tuple[int, int] | None:
    """For a path built from ``__file__``: how many directories above the file's own directory it
    points (the file itself is -1), and the highest it reached on the way; None for other nodes."""
    if isinstance(node, ast.Name) and node.id == "__file__":
        return -1, -1
    if isinstance(node, ast.Call) and node.args:
        func = ast.unparse(node.func)
        if func in ("Path", "pathlib.Path", "os.path.abspath", "os.path.realpath"):
            return _climb(node.args[0])
        if func == "os.path.dirname":
            return _up(_climb(node.args[0]))
        if func == "os.path.join":
            return _steps(_climb(node.args[0]), node.args[1:])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr in ("resolve", "absolute"):
        return _climb(node.func.value)
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        return _up(_climb(node.value))
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents" and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)):
        inner = _climb(node.value.value)
        return None if inner is None else _up(inner, 1 + node.slice.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _steps(_climb(node.left), [node.right])
    return None


def _up(at: tuple[int, int] | None, n: int = 1) -> tuple[int, int] | None:
    return None if at is None else (at[0] + n, max(at[1], at[0] + n))


def _steps(at: tuple[int, int] | None, parts: list[ast.AST]) -> tuple[int, int] | None:
    """``at`` followed by path parts: '..' goes up one, a name (or an unknown value) down one."""
    for part in parts:
        if at is None:
            return None
        for segment in _segments(part) or ["<value>"]:
            at = _up(at) if segment == ".." else (at[0] - 1, at[1])
    return at


def _is_path_use(parent: ast.AST, node: ast.AST) -> bool:
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div):
        return True
    if isinstance(parent, ast.Call) and node in parent.args:
        func = ast.unparse(parent.func)
        return func.split(".")[-1] in ("Path", "open", "join", "PurePath") or func == "os.chdir"
    return False


def python_findings(source: str, rel: str) -> list[str]:
    """Lines of ``source`` (the file ``rel`` of the repository) that read outside the repository."""
    root_level = len(Path(rel).parts) - 1  # the repository root, counted from the file's directory
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MACHINE_PATH.search(node.value):
                found[node.lineno] = f"names a path outside the repository: {node.value[:60]!r}"
            elif (node.value == ".." or node.value.startswith("../")) and node in parents and \
                    _is_path_use(parents[node], node) and _climb(parents[node]) is None:
                found[node.lineno] = f"a relative path climbing out of the working directory: {node.value!r}"
        outer = parents.get(node)  # judge the outermost __file__ expression only
        if isinstance(node, (ast.BinOp, ast.Subscript, ast.Attribute, ast.Call)) and not (
                outer is not None and _climb(outer) is not None):
            at = _climb(node)
            highest = None if at is None else at[1]
            if highest is not None and highest > root_level:
                found[node.lineno] = (f"climbs {highest - root_level} level(s) above the repository root: "
                                      f"{ast.unparse(node)}")
    return [f"{rel}:{line}: {why}" for line, why in sorted(found.items())]


def text_findings(text: str, rel: str) -> list[str]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if MACHINE_PATH.search(line) or RELATIVE_CLIMB.search(line):
            out.append(f"{rel}:{i}: names a path outside the repository: {line.strip()[:80]!r}")
    return out


def findings(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text(encoding="utf-8")
    return python_findings(text, rel) if path.suffix == ".py" else text_findings(text, rel)


# ---- the checks ----------------------------------------------------------------------------------

def test_no_file_reads_outside_the_repository():
    files = scanned_files()
    assert len(files) > 100 and ROOT / "docs/tutorial.md" in files
    assert [f for path in files for f in findings(path)] == []


BROKEN = {  # the lines that once failed on a fresh clone, at their own paths
    "tests/plugins/test_eval_perplexity.py":
        'WIKITEXT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wikitext-2" / '
        '"test.txt"',
    "tests/plugins/test_prune_smollm2.py":
        'WIKI = Path(__file__).resolve().parents[1] / ".." / ".." / "shared" / "data" / "wikitext-2"',
    "benchmarks/bench_evaluation.py":
        'DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2" / "test.txt"',
    "benchmarks/bench_prune.py":
        'WIKI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2"',
}


@pytest.mark.parametrize("rel", sorted(BROKEN))
def test_the_lines_that_broke_are_caught(rel):
    [finding] = python_findings(BROKEN[rel], rel)
    assert finding.startswith(f"{rel}:1: climbs 1 level(s) above the repository root")


@pytest.mark.parametrize(("rel", "line"), [
    ("tests/unit/t.py", 'DATA = Path(__file__).parent.parent.parent.parent / "data"'),
    ("tests/unit/t.py", 'DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "x")'),
    ("tests/unit/t.py", 'text = Path("../data/valid.txt").read_text()'),
    ("tests/unit/t.py", 'text = open("/work/shared/data/wikitext-2/test.txt").read()'),
    ("benchmarks/b.py", 'CACHE = "/home/alice/.cache/models"'),
    ("benchmarks/b.py", 'src = Path.cwd() / "../shared/data"'),
])
def test_other_ways_out_are_caught(rel, line):
    assert len(python_findings(line, rel)) == 1


@pytest.mark.parametrize(("rel", "line"), [
    ("tests/integration/t.py", "ROOT = Path(__file__).resolve().parents[2]"),
    ("tests/integration/t.py", 'EX = Path(__file__).resolve().parents[2] / "examples" / "q.yaml"'),
    ("tests/t.py", 'EX = Path(__file__).parent.parent / "docs" / ".." / "README.md"'),
    ("tests/unit/t.py", 'cfg = make(name="../../x")  # a string that is not a path: rejected by the code'),
    ("layerif_core/models.py", 'CACHE = Path("~/.cache/layerif").expanduser()'),
])
def test_paths_inside_the_repository_pass(rel, line):
    assert python_findings(line, rel) == []


def test_text_files_are_checked_line_by_line():
    yaml = "train:\n  source: bundled:wikitext2\nvalidation:\n  source: ../shared/data/x.txt\n"
    assert text_findings(yaml, "examples/x.yaml") == [
        "examples/x.yaml:4: names a path outside the repository: 'source: ../shared/data/x.txt'"]
    assert text_findings("layerif run /work/main/examples/q.yaml\n", "docs/tutorial.md") != []
    assert text_findings("layerif run examples/quickstart.yaml\n", "docs/tutorial.md") == []
