"""Every third-party module the code imports is pinned in the requirements file that installs it.

Runtime code (lm_research/, configs/, launch/) must run after `pip install -r requirements.txt`
alone: that is the README's first command on a user's fresh machine. An import guarded by
`try: ... except ImportError` is optional and may come from requirements-test.txt instead, as
may the imports of the developer scripts in bench/ and tests/.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNTIME_FOLDERS = ("lm_research", "configs", "launch")
DEV_FOLDERS = ("bench", "tests")
# The project's own packages, and test or bench modules that import one another.
FIRST_PARTY = ({"lm_research", "configs", "launch", "bench", "tests"}
               | {p.stem for folder in DEV_FOLDERS for p in (ROOT / folder).glob("*.py")})


def _normalise(name: str) -> str:
  """A distribution name as pip compares them (PEP 503)."""
  return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements_text: str) -> dict[str, str]:
  """{normalised distribution: version} of the `name==version` lines of a requirements file."""
  pins = {}
  for line in requirements_text.splitlines():
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-r"):
      continue
    name, sep, version = line.partition("==")
    assert sep, f"requirement {line!r} is not pinned with =="
    pins[_normalise(re.sub(r"\[.*\]", "", name).strip())] = version.strip()
  return pins


def _guarded_lines(tree: ast.AST) -> set[int]:
  """Line numbers of imports inside a `try` whose handlers catch ImportError."""
  lines = set()
  for node in ast.walk(tree):
    if not isinstance(node, ast.Try):
      continue
    caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    if any(name in text for text in caught for name in ("ImportError", "ModuleNotFoundError")):
      for inner in node.body:
        lines.update(n.lineno for n in ast.walk(inner)
                     if isinstance(n, (ast.Import, ast.ImportFrom)))
  return lines


def third_party_imports(folders) -> dict[str, list[tuple[str, bool]]]:
  """{top-level module: [(file:line, guarded)]} for every non-stdlib, non-project import."""
  found: dict[str, list[tuple[str, bool]]] = {}
  for folder in folders:
    for path in sorted((ROOT / folder).rglob("*.py")):
      tree = ast.parse(path.read_text(encoding="utf-8"))
      guarded = _guarded_lines(tree)
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
          names = [node.module]
        else:
          continue
        for name in names:
          top = name.split(".")[0]
          if top in sys.stdlib_module_names or top in FIRST_PARTY:
            continue
          where = f"{path.relative_to(ROOT)}:{node.lineno}"
          found.setdefault(top, []).append((where, node.lineno in guarded))
  return found


@functools.cache
def _providers() -> dict[str, list[str]]:
  """{top-level module: installed distributions providing it} (a scan of site-packages)."""
  return importlib.metadata.packages_distributions()


def _distributions(module: str) -> list[str]:
  """The installed distributions that provide ``module`` (its own name if none is installed)."""
  return [_normalise(d) for d in _providers().get(module, [module])]


def missing_requirements(runtime_pins: dict[str, str], test_pins: dict[str, str]) -> list[str]:
  """One line per import that the requirements files would not install."""
  problems = []
  for module, places in sorted(third_party_imports(RUNTIME_FOLDERS).items()):
    dists = _distributions(module)
    if any(d in runtime_pins for d in dists):
      continue
    required = [where for where, guarded in places if not guarded]
    if required:
      problems.append(f"{module} ({', '.join(dists)}) is imported by {required[0]} but is not "
                      "in requirements.txt")
    elif not any(d in test_pins for d in dists):
      problems.append(f"optional {module} ({places[0][0]}) is in neither requirements file")
  for module, places in sorted(third_party_imports(DEV_FOLDERS).items()):
    dists = _distributions(module)
    if not any(d in runtime_pins or d in test_pins for d in dists):
      problems.append(f"{module} ({', '.join(dists)}) is imported by {places[0][0]} but is in "
                      "neither requirements file")
  return problems


def _pins() -> tuple[dict[str, str], dict[str, str]]:
  runtime = pinned((ROOT / "requirements.txt").read_text())
  test = pinned((ROOT / "requirements-test.txt").read_text())
  return runtime, test


def test_every_import_is_pinned_where_it_is_installed():
  runtime, test = _pins()
  assert missing_requirements(runtime, test) == []


def test_a_runtime_import_missing_from_requirements_txt_is_caught():
  """The case that broke the quickstart: tokenizers came only through transformers."""
  runtime, test = _pins()
  del runtime["tokenizers"]
  test.setdefault("tokenizers", "0")  # in the test extras alone is still not enough
  problems = missing_requirements(runtime, test)
  assert len(problems) == 1 and problems[0].startswith("tokenizers (tokenizers) is imported by "
                                                       "lm_research/"), problems


def test_installed_versions_match_the_pins():
  """The environment the tests run in is the one the requirements files describe."""
  runtime, test = _pins()
  wrong = []
  for name, version in {**runtime, **test}.items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      wrong.append(f"{name} not installed")
      continue
    if installed.split("+")[0] != version:
      wrong.append(f"{name} {installed} != {version}")
  assert wrong == []


def test_guarded_imports_are_recognised():
  tree = ast.parse("try:\n  import jieba\nexcept ImportError:\n  jieba = None\nimport numpy\n")
  assert _guarded_lines(tree) == {2}
