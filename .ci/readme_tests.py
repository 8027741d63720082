"""Keep the README's test count current: ``--check`` (what .ci/run does after the tests) fails
when the README's "N tests" differs from what pytest collects; ``--write`` rewrites it.

    python .ci/readme_tests.py --check
    python .ci/readme_tests.py --write
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"(what `\.ci/run` runs; )(\d+)( tests)")


def collected() -> int:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    found = re.search(r"(\d+) tests? collected", out)
    if found is None:
        sys.exit(f"cannot read the number of tests from pytest --collect-only:\n{out[-500:]}")
    return int(found.group(1))


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    match = PATTERN.search(text)
    if match is None:
        sys.exit("README.md has no \"what `.ci/run` runs; N tests\" line")
    n, said = collected(), int(match.group(2))
    if "--write" in sys.argv:
        readme.write_text(PATTERN.sub(rf"\g<1>{n}\g<3>", text, count=1))
        print(f"README.md: {said} -> {n} tests")
        return 0
    if n != said:
        print(f"README.md says {said} tests, pytest collects {n}: run python .ci/readme_tests.py --write",
              file=sys.stderr)
        return 1
    print(f"README.md test count is current ({n} tests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
