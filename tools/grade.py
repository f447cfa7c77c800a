"""Grade an exercise notebook: run the chapter's unit tests on the learner's own code.

    python tools/grade.py exercises/04_matching.ipynb     # or: make grade NB=exercises/04_matching.ipynb
    python tools/grade.py notebooks/04_matching.py        # the chapter itself, the solution: all pass

1. The notebook's `#| export` cells (only those: the definitions, no pictures) run offline
   (FCOS_OFFLINE=1), in one fresh namespace per module that `#| default_exp` / `#| export <module>`
   names, in notebook order.
2. After each cell, every function and class it defined takes the place of fcos_lib's: the
   attribute fcos_lib.<module>.<name>, and the same object wherever another fcos_lib module
   imported it. So a later cell's `from fcos_lib.<module> import ...` gets the learner's version,
   and so do the tests. Everything is put back afterwards.
3. The chapter's test files (TESTS below) run with pytest, in this process, once per exercise
   (a function the chapter marks with `### BEGIN SOLUTION`, tools/exercises.py): the learner's
   version of that exercise, fcos_lib's for the chapter's other exercises, so that a mistake is
   charged to the function that makes it. The exercise is wrapped to record which tests call it.
4. One row per exercise: pass when every test that calls it passes; FAIL with the first failing
   test and its error; "not written yet" while the stub is still there. A failing test that does
   not call the exercise is listed apart ("no exercise": a given helper the learner changed, say).
   Exit status 0 when every exercise and every test passes.
5. A test that runs longer than `--seconds` (60) is stopped and fails with "stopped after 60 s":
   an endless loop in a learner's code ends the grading of that exercise, not the grader.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import functools
import importlib
import signal
import sys
import threading
import types
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import exercises  # noqa: E402  (tools/exercises.py: the marked functions)
import export  # noqa: E402  (tools/export.py: which cells go to which module)
from fcos_lib.env import offline_only  # noqa: E402

# The unit tests of each chapter with exercises, by chapter number.
TESTS = {
    "01": ["tests/test_backbone.py"],
    "03": ["tests/test_locations.py"],
    "04": ["tests/test_matching.py"],
    "05": ["tests/test_deltas.py"],
    "06": ["tests/test_centerness.py", "tests/test_targets.py"],
    "07": ["tests/test_losses.py", "tests/test_model.py"],
    "08": ["tests/test_nms.py", "tests/test_inference.py"],
}


class GradeError(RuntimeError):
    """The notebook cannot be graded (unknown chapter, a cell that does not run)."""


TEST_SECONDS = 60.0  # each test of a chapter takes seconds with the solution; far longer is an endless loop


class TestTimedOut(BaseException):
    """A test ran past its time limit (raised inside it by an alarm).

    A BaseException, like KeyboardInterrupt, so that an `except Exception:` in the learner's code
    does not swallow it; pytest still records the test as failed."""


def chapter_of(notebook: Path) -> Path:
    """The chapter script notebooks/NN_*.py behind a notebook named NN_..."""
    number = notebook.name[:2]
    found = sorted((ROOT / "notebooks").glob(f"{number}_*.py"))
    if not found or number not in TESTS:
        raise GradeError(f"{notebook.name}: the name must start with the number of a chapter with exercises "
                         f"({', '.join(sorted(TESTS))}), e.g. exercises/04_matching.ipynb")
    return found[0]


def _fcos_modules() -> list[types.ModuleType]:
    return [m for name, m in list(sys.modules.items())
            if (name == "fcos_lib" or name.startswith("fcos_lib.")) and isinstance(m, types.ModuleType)]


def _replace_everywhere(mapping: dict[int, tuple[object, object]], namespaces=()) -> None:
    """In every loaded fcos_lib module (and the given namespaces), rebind each name bound to an
    `old` object of mapping {id(old): (old, new)} to its `new` one."""
    for namespace in [vars(module) for module in _fcos_modules()] + list(namespaces):
        for name, value in list(namespace.items()):
            if id(value) in mapping and mapping[id(value)][0] is value:
                namespace[name] = mapping[id(value)][1]


class Installed:
    """The learner's definitions in place of fcos_lib's; undo() puts fcos_lib back."""

    def __init__(self):
        self.originals: dict[int, tuple[object, object]] = {}  # id(new) -> (new, original)
        self.added: list[tuple[str, str]] = []  # (module, name) fcos_lib did not have
        self.namespaces: dict[str, dict] = {}  # module -> the namespace its cells ran in

    def replace(self, module: str, name: str, new) -> None:
        real = importlib.import_module(f"fcos_lib.{module}")
        old = getattr(real, name, None)
        if old is None:
            self.added.append((module, name))
            setattr(real, name, new)
            return
        original = self.originals.get(id(old), (None, old))[1]  # a wrapper replaces a learner's function
        _replace_everywhere({id(old): (old, new)}, self.namespaces.values())
        setattr(real, name, new)
        self.originals[id(new)] = (new, original)

    def undo(self) -> None:
        _replace_everywhere(self.originals)
        for module, name in self.added:
            delattr(importlib.import_module(f"fcos_lib.{module}"), name)
        self.originals.clear()
        self.added.clear()


def _defined_names(source: str) -> list[str]:
    """Top-level functions and classes of a cell (constants stay fcos_lib's: equal values anyway)."""
    return [node.name for node in ast.parse(source).body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def install(notebook: Path) -> Installed:
    """Run the notebook's exported cells and install their functions and classes in fcos_lib."""
    installed = Installed()
    try:
        for i, (module, source) in enumerate(export.export_cells(notebook)):
            namespace = installed.namespaces.setdefault(
                module, {"__name__": f"fcos_lib.{module}", "__builtins__": builtins})
            try:
                exec(compile(source, f"<{notebook.name}, exported cell {i + 1} ({module})>", "exec"), namespace)
                names = _defined_names(source)
            except Exception as err:
                raise GradeError(f"{notebook.name}: exported cell {i + 1} (fcos_lib.{module}) does not run: "
                                 f"{type(err).__name__}: {err}") from err
            for name in names:
                installed.replace(module, name, namespace[name])
    except BaseException:
        installed.undo()
        raise
    return installed


class Recorder:
    """A pytest plugin: which exercises each test calls, and each test's outcome."""

    def __init__(self, test_files: list[str], seconds: float = TEST_SECONDS):
        self.seconds = seconds
        self.files = [Path(f).name for f in test_files]
        self.current = None
        self.calls: dict[str, set] = defaultdict(set)  # test -> exercises it called
        self.outcome: dict[str, str] = {}  # test -> passed / failed / skipped
        self.reason: dict[str, str] = {}  # failed test -> one line

    def wrap(self, name: str, function):
        @functools.wraps(function)
        def recorded(*args, **kwargs):
            if self.current is not None:
                self.calls[self.current].add(name)
            return function(*args, **kwargs)
        return recorded

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        # The test files in the order TESTS lists them (the chapter's own first), not by size.
        items.sort(key=lambda item: self.files.index(item.path.name) if item.path.name in self.files else 0)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        """Stop a test after `seconds` (SIGALRM: Unix, main thread; elsewhere no limit).

        The alarm repeats every second until the test ends, because an exception raised by a signal
        handler can be lost: one that lands in a finalizer (a `__del__` during garbage collection) is
        only printed as "Exception ignored in ...". Under `make test` a one-shot alarm fired (its timer
        read 0) and the endless loop, which allocates, ran on past 13 GB."""
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            yield
            return
        running = True

        def expire(signum, frame):
            if running:
                raise TestTimedOut(f"stopped after {self.seconds:g} s: an endless loop, or work that grows too fast")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds, 1.0)  # then every second until cancelled
        try:
            yield
        finally:
            running = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid

    def pytest_runtest_logfinish(self, nodeid, location):
        self.current = None

    def pytest_collectreport(self, report):  # a test file that cannot even be imported
        self.pytest_runtest_logreport(report)

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.outcome[report.nodeid] = "failed"
            crash = getattr(report.longrepr, "reprcrash", None)
            line = crash.message if crash is not None else str(report.longrepr).strip().splitlines()[-1]
            line = " ".join(line.replace("Use -v to get more diff", "").split())
            self.reason.setdefault(report.nodeid, line[:160])
        elif report.skipped:
            self.outcome.setdefault(report.nodeid, "skipped")
        elif getattr(report, "when", None) == "call":
            self.outcome.setdefault(report.nodeid, "passed")


def _find(installed: Installed, name: str):
    """(module, the learner's function or class behind exercise `name`)."""
    owner = name.rpartition(".")[0] or name
    for module, namespace in installed.namespaces.items():
        defined = namespace.get(owner)
        if getattr(defined, "__module__", None) == f"fcos_lib.{module}":  # not imported from elsewhere
            return module, defined
    raise GradeError(f"the notebook's exported cells define no {owner} (exercise {name} of the chapter)")


def use_solution(installed: Installed, name: str) -> None:
    """Put fcos_lib's own version of exercise `name` back, for a run that grades another one."""
    module, defined = _find(installed, name)
    original = installed.originals[id(defined)][1]
    method = name.rpartition(".")[2]
    if "." in name:
        setattr(defined, method, vars(original)[method])
    else:
        installed.replace(module, name, original)


def record_calls(installed: Installed, recorder: Recorder, name: str) -> None:
    """Record every call of exercise `name`: on its class (a method), or wherever its function is
    bound: the learner's namespaces (calls between the learner's own functions) and fcos_lib (calls
    from the tests and from other modules)."""
    module, defined = _find(installed, name)
    method = name.rpartition(".")[2]
    if "." in name:
        setattr(defined, method, recorder.wrap(name, vars(defined)[method]))
    else:
        installed.replace(module, name, recorder.wrap(name, defined))


@contextlib.contextmanager
def _fresh_test_modules(test_files: list[str]):
    """Let pytest import the test files anew (their `from fcos_lib... import` then binds the learner's
    code), and give the caller's modules back afterwards (grading inside a pytest run)."""
    names = [Path(f).stem for f in test_files] + ["conftest"]
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def run_tests(notebook: Path, name: str, others: list[str], test_files: list[str],
              stop_at_first_failure: bool, verbose: bool, seconds: float = TEST_SECONDS) -> Recorder:
    """One pytest run: the learner's code, except the other exercises, which are fcos_lib's."""
    recorder = Recorder(test_files, seconds)
    args = [*test_files, "-p", "no:cacheprovider", "-o", "addopts=", f"--rootdir={ROOT}"]
    args += ["-q", "--tb=short"] if verbose else ["-p", "no:terminal"]
    if stop_at_first_failure:
        args.append("--maxfail=1")
    if verbose:
        print(f"\n--- {name} (the other exercises: the solution) ---", flush=True)
    with offline_only():  # FCOS_OFFLINE=1 while grading: nothing may ever download
        installed = install(notebook)
        try:
            for other in others:
                use_solution(installed, other)
            record_calls(installed, recorder, name)
            with _fresh_test_modules(test_files):
                pytest.main(args, plugins=[recorder])
        finally:
            installed.undo()
    return recorder


def grade(notebook: Path | str, only: list[str] | None = None, stop_at_first_failure: bool = False,
          verbose: bool = False, seconds: float = TEST_SECONDS) -> dict:
    """Grade one notebook: one test run per exercise, with the solution for the other exercises.

    Returns {"exercises": {name: (status, detail)}, "other_failures": [(test, reason)], "passed": bool},
    status "pass", "FAIL", "not written yet" or "not tested" (no test that ran called it). `only`
    grades some exercises; stop_at_first_failure ends each run at its first failing test;
    `seconds` is the time limit of one test.
    """
    notebook = Path(notebook)
    chapter = chapter_of(notebook)
    names = exercises.exercise_names(chapter)
    test_files = [str(ROOT / f) for f in TESTS[notebook.name[:2]]]
    text = notebook.read_text()
    results, other_failures = {}, {}
    for name in only or names:
        recorder = run_tests(notebook, name, [n for n in names if n != name], test_files,
                             stop_at_first_failure, verbose, seconds)
        tests = [t for t, called in recorder.calls.items() if name in called and t in recorder.outcome]
        failed = [t for t in tests if recorder.outcome[t] == "failed"]
        if exercises.STUB_MESSAGE.format(name=name) in text:
            results[name] = ("not written yet", f"{len(tests)} tests call it")
        elif failed:
            first = failed[0]
            results[name] = ("FAIL", f"{len(tests) - len(failed)} of {len(tests)} tests pass; "
                                     f"{first.split('::')[-1]}: {recorder.reason.get(first, '')}")
        elif tests:
            results[name] = ("pass", f"{len(tests)} of {len(tests)} tests pass")
        else:
            results[name] = ("not tested", "no test that ran calls it")
        for test, outcome in recorder.outcome.items():  # failures no exercise of this run explains
            if outcome == "failed" and name not in recorder.calls.get(test, ()):
                other_failures.setdefault(test.split("::")[-1], recorder.reason.get(test, ""))
    passed = all(status == "pass" for status, _ in results.values()) and not other_failures
    return {"exercises": results, "other_failures": list(other_failures.items()), "passed": passed}


def report(notebook: Path, result: dict) -> str:
    width = max(len(name) for name in result["exercises"]) + 2
    lines = [f"Grading {notebook} with {', '.join(TESTS[Path(notebook).name[:2]])}",
             "(each exercise on its own: your function, the solution for the chapter's other exercises)", ""]
    for name, (status, detail) in result["exercises"].items():
        lines.append(f"  {name:{width}s}{status:17s}{detail}")
    for test, reason in result["other_failures"]:
        lines.append(f"  {'(no exercise)':{width}s}{'FAIL':17s}{test}: {reason}")
    done = sum(status == "pass" for status, _ in result["exercises"].values())
    lines += ["", f"{done} of {len(result['exercises'])} exercises pass."
              + ("" if result["passed"] else " The check cell after each exercise says more; "
                 "--verbose shows every failing test.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path, help="exercises/NN_name.ipynb (or a chapter's .py / .ipynb)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's report of each failing test")
    parser.add_argument("--seconds", type=float, default=TEST_SECONDS,
                        help=f"stop a test that runs longer, as failed (default: {TEST_SECONDS:g})")
    args = parser.parse_args(argv)
    try:
        result = grade(args.notebook, verbose=args.verbose, seconds=args.seconds)
    except (GradeError, OSError) as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    print(report(args.notebook, result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
