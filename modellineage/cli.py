"""``modellineage``: run the audits the way ``pytest audits/`` does, for users who do not know pytest.

Every argument goes to pytest unchanged (``--target``, ``--reference NAME=SOURCE``, ``--expect``,
``--audit PLAN``, ``--sample``, ``-m weights`` ...); the exit code is pytest's, which is the verdict:
0 every claim holds, 1 a claim fails, 2-4 the run could not reach a verdict. This is pytest itself,
started on the installed ``audits`` package, not a second implementation.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["main", "audits_dir"]


def audits_dir() -> Path:
    """The folder of the installed audit modules (``audits/``)."""
    import audits

    return Path(audits.__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Run ``pytest <audits dir> ARGS``; returns pytest's exit code."""
    import pytest

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-V"], ["--version"]):
        from modellineage import __version__

        print(f"modellineage {__version__} (pytest {pytest.__version__})")
        return 0
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip() + "\n\nThe audit options (pytest's full help follows with `pytest audits/ --help`):\n")
        return int(pytest.main([str(audits_dir()), "--help"]))
    return int(pytest.main([str(audits_dir()), *args]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
