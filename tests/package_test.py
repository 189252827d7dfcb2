"""The package's shape: what setup.py ships, and imports without a cycle."""

import ast
import os
import runpy
import subprocess
import sys

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "video_dit"


def _modules() -> dict[str, str]:
  """Every module of the package: dotted name -> path."""
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(
            folder, f)
  return out


def _shipped_packages() -> list[str]:
  """The ``packages`` setup.py passes to setuptools.setup (read by running setup.py)."""
  seen = {}
  real = setuptools.setup
  setuptools.setup = lambda **kw: seen.update(kw)
  cwd = os.getcwd()
  try:
    os.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
  finally:
    setuptools.setup = real
    os.chdir(cwd)
  return list(seen["packages"])


def test_every_folder_with_python_files_is_a_shipped_package():
  folders = {os.path.relpath(os.path.dirname(p), ROOT).replace(os.sep, ".")
             for p in _modules().values()}
  shipped = set(_shipped_packages())
  missing = sorted(folders - shipped)
  assert not missing, (f"{missing} hold Python files but a non-editable install (pip install ., "
                       "a wheel) would leave them out: add an __init__.py")
  for folder in folders:
    assert os.path.exists(os.path.join(ROOT, folder.replace(".", os.sep), "__init__.py")), folder


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
  """The package modules that ``name`` imports anywhere in its file (lazy imports too)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolved against this module's package
        pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        for _ in range(node.level - 1):
          pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}".rstrip(".")
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    else:
      continue
    out.update(t for t in targets if t in modules and t != name)
  return out


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(n):
    state[n] = "open"
    stack.append(n)
    for m in sorted(graph[n]):
      if state.get(m) == "open":
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = "done"
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_the_import_graph_has_no_cycle():
  modules = _modules()
  graph = {name: _imports(name, path, modules) for name, path in modules.items()}
  assert graph["video_dit.sampling"] and graph["video_dit.train"]  # the walk sees imports
  cycle = _find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_in_either_order():
  # Every module imported in a fresh process, in ascending and in descending order.
  names = sorted(_modules())
  code = ("import importlib, sys\n"
          "for n in sys.argv[1:]:\n"
          "  importlib.import_module(n)\n")
  for order in (names, names[::-1]):
    r = subprocess.run([sys.executable, "-c", code, *order], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
