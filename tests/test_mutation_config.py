"""The mutation-testing command (benchmarks/mutation.sh) names modules and test files that exist, and its tool is
an extra of its own that CI does not install."""
from __future__ import annotations

import re

from tests.conftest import REPO

SCRIPT = (REPO / "benchmarks" / "mutation.sh").read_text()


def test_every_module_and_test_file_the_script_names_exists():
    cases = dict(re.findall(r"^\s+([\w/]+\.py)\) echo \"([^\"]+)\"", SCRIPT, flags=re.M))
    assert set(cases) == {"mt_dnn/perturbation.py", "mt_dnn/losses.py", "mt_dnn/model.py", "mt_dnn/step.py",
                          "data_utils/batching.py", "data_utils/features.py", "data_utils/metrics.py",
                          "data_utils/submission.py", "data_utils/robustness.py",
                          "experiments/rapt/robustness_report.py", "experiments/rapt/stats.py",
                          "experiments/rapt/results.py", "experiments/rapt/recipe.py", "data_utils/glue.py",
                          "data_utils/task_def.py"}
    for module, tests in cases.items():
        assert (REPO / module).is_file(), module
        for test in tests.split():
            assert (REPO / test).is_file(), (module, test)


def test_mutmut_is_its_own_extra_and_not_installed_by_ci():
    setup = (REPO / "setup.py").read_text()
    assert re.search(r'"mutation": \["mutmut[^"]*"\]', setup)
    assert "mutmut" not in re.search(r'"dev": \[[^\]]*\]', setup).group(0)
    assert "mutation" not in (REPO / ".ci" / "run").read_text()


def test_the_testing_page_lists_each_module_with_the_tests_the_script_runs():
    cases = dict(re.findall(r"^\s+([\w/]+\.py)\) echo \"([^\"]+)\"", SCRIPT, flags=re.M))
    page = (REPO / "docs" / "testing.md").read_text()
    rows = dict(re.findall(r"^\| `([\w/]+\.py)` \| (test_[\w, ]+) \|$", page, flags=re.M))
    assert set(rows) == set(cases)
    for module, tests in cases.items():
        names = [t.removeprefix("tests/").removesuffix(".py") for t in tests.split()]
        assert rows[module].split(", ") == names, module
