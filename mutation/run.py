"""``make mutation``: a mutmut run, timed, then the report (``python -m mutation.run``).

Without mutant names this is a fresh full run (``mutants/`` is removed first, so no
result of an earlier run is reused); with names (fnmatch patterns such as
``'hal.drivers.bosch*'``) only those mutants are run again and the report covers what
has results. mutmut's own output goes to ``mutants/run.log``; the run is niced so a
shared machine stays usable, and property tests use the ``mutation`` hypothesis profile
(``tests/conftest.py``: 20 derandomized examples, no deadline). The exit status is the
report's: 1 when a module is below the target or mutants went unchecked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mutation import report

ROOT = report.ROOT


def main(argv: Sequence[str] | None = None) -> int:
    """Run mutmut, then write ``mutation/REPORT.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutmut's --max-children")
    parser.add_argument("mutants", nargs="*", help="only these mutants (fnmatch patterns)")
    args = parser.parse_args(argv)
    mutants_dir = ROOT / "mutants"
    if not args.mutants:
        shutil.rmtree(mutants_dir, ignore_errors=True)
    mutants_dir.mkdir(exist_ok=True)
    mutmut = Path(sys.executable).parent / "mutmut"
    command = [str(mutmut), "run", "--max-children", str(args.jobs), *args.mutants]
    started = time.monotonic()
    log = mutants_dir / "run.log"
    with log.open("wb") as out:
        status = subprocess.run(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_nice,
            env={**os.environ, "HYPOTHESIS_PROFILE": "mutation"},
            check=False,
        ).returncode
    if status != 0:
        sys.stdout.write(log.read_text(encoding="utf-8", errors="replace")[-3000:])
        print(f"\nmutmut exited {status} (whole output: {log})", file=sys.stderr)
        return status
    return report.main(["--seconds", f"{time.monotonic() - started:.0f}"])


def _nice() -> None:
    os.nice(10)


if __name__ == "__main__":
    raise SystemExit(main())
