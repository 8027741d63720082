"""`-p mmtok.testing` fails a run that skips a test for a reason not on the allow-list, so a
broken install (an `importorskip` of a missing package, absent data) cannot pass as skips."""

import textwrap

pytest_plugins = ["pytester"]

SUITE = """
    import pytest

    def test_runs():
        pass

    def test_needs_a_gpu():
        pytest.skip("needs a CUDA GPU (none here)")

    @pytest.mark.skipif(True, reason="no reference data")
    def test_marked():
        pass

    @pytest.mark.xfail(reason="known bug")
    def test_expected_failure():
        assert False
"""


def run(pytester, suite: str, ini: str = ""):
    pytester.makepyfile(test_suite=textwrap.dedent(suite))
    pytester.makeini(f"[pytest]\n{ini}")
    result = pytester.runpytest_inprocess("-p", "mmtok.testing", "-p", "no:cacheprovider")
    return result.ret, result.stdout.str()


def test_an_unexpected_skip_fails_the_run_and_an_allowed_one_does_not(pytester):
    code, out = run(pytester, SUITE)
    assert code == 1, out
    listed = out.split("unexpected skips (mmtok.testing)")[1]
    assert "test_suite.py::test_marked: no reference data" in listed
    assert "test_needs_a_gpu" not in listed  # on mmtok's allow-list; the xfail is no skip either
    assert "1 unexpected skip(s) fail the run" in listed
    code, out = run(pytester, SUITE, "mmtok_allowed_skips =\n    no reference data\n")  # the suite's own list
    assert code == 0 and "unexpected skips" not in out, out


def test_a_module_level_importorskip_fails_the_run(pytester):
    code, out = run(pytester, 'import pytest\nnp = pytest.importorskip("no_such_module_mmtok")\n\n'
                              'def test_x():\n    pass\n')
    assert code == 1, out
    assert "test_suite.py: could not import 'no_such_module_mmtok'" in out
