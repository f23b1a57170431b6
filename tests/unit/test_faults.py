import os
import subprocess
import sys

import pytest

from py3fs import faults
from py3fs.errors import InjectedFault


def test_point_is_silent_unless_enabled() -> None:
    faults.fault_point("unit.nothing")


def test_delaying_names_points_with_a_delay_armed() -> None:
    assert not faults.delaying("t.slow", "t.fail")
    with faults.enabled("t.fail", "error"):
        assert not faults.delaying("t.slow", "t.fail")
        with faults.enabled("t.slow", "delay:0.01"):
            assert faults.delaying("t.slow", "t.fail")
            assert not faults.delaying("t.fail")
    assert not faults.delaying("t.slow")


def test_error_fires_on_nth_hit_once() -> None:
    with faults.enabled("unit.err", "error@2"):
        faults.fault_point("unit.err")
        with pytest.raises(InjectedFault, match=r"unit\.err"):
            faults.fault_point("unit.err")
        faults.fault_point("unit.err")
    faults.fault_point("unit.err")


@pytest.mark.parametrize("bad", ["x", "x=explode", "x=crash@0", "=crash"])
def test_bad_specs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        faults.parse(bad)


def test_crash_from_env_kills_the_process() -> None:
    code = "from py3fs.faults import fault_point; fault_point('a'); print('alive')"
    env = dict(os.environ, PY3FS_FAULTS=faults.env_value(a="crash"))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert proc.returncode == -9
    assert "alive" not in proc.stdout
