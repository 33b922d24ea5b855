"""The whole official YAML test suite through `mycelium validate`: every input ends in one
line of success or error per problem, never a traceback, and no message shows Python
internals. The inputs are vendored in tests/data/yaml-test-suite (see its README)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser, main
from agent.errors import MyceliumError

DATA = Path(__file__).parent / "data" / "yaml-test-suite" / "cases.json"
CASES = json.loads(DATA.read_text(encoding="utf-8"))
# What a message must never contain: Python's view of the data instead of the user's.
INTERNALS = re.compile(r"ordereddict|TaggedScalar|Commented(Map|Seq|KeySeq)|ScalarFloat|"
                       r"object at 0x|Traceback|<class |\(\('|:  \S")


PARSER = build_parser()  # built once: main() builds it per call, 0.1 s each


def validate(path: Path) -> int:
    """`mycelium validate PATH` as main() runs it, without rebuilding the parser."""
    args = PARSER.parse_args(["validate", str(path)])
    try:
        return args.func(args)
    except MyceliumError as e:
        print(f"mycelium validate: error: {e}", file=sys.stderr)
        return 1


def test_suite_is_complete():
    assert len(CASES) == 402 and sum(c["fail"] for c in CASES) == 94


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_validate_ends_in_one_line_per_problem(case: dict, tmp_path: Path, capsys):
    f = tmp_path / "n.yaml"
    f.write_text(case["yaml"], encoding="utf-8")
    code = validate(f)  # any other exception fails the test: it would be a traceback
    out, err = capsys.readouterr()
    assert code in (0, 1)
    if code == 0:
        assert out == f"{f}: ok" + out.split(": ok", 1)[1] and out.count("\n") == 1, out
    else:
        assert out == "" and err, (out, err)
    line_start = re.compile(rf"(mycelium validate: error: )?{re.escape(str(f))}(:\d+:\d+)?: \S")
    for line in err.splitlines():
        assert line_start.match(line), line
        assert not INTERNALS.search(line), line
    if case["fail"]:
        assert code == 1


def test_the_two_inputs_that_crashed(tmp_path: Path, capsys):
    by_id = {c["id"]: c["yaml"] for c in CASES}
    f = tmp_path / "n.yaml"
    f.write_text(by_id["4FJ6"])  # [ [ a, [ [[b,c]]: d, e]]: 23 ]: a list as a key
    assert main(["validate", str(f)]) == 1
    assert "a list used as a key" in capsys.readouterr().err
    f.write_text(by_id["P94K"])  # key:    # Comment / # lines / value / blank lines
    assert main(["validate", str(f)]) == 1
    assert "unknown key 'key' at the top level" in capsys.readouterr().err
