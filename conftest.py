"""Root conftest: deliberately holds no hooks.

The audit plugin (``audits/plugin.py``: options, plan, lazy model fixtures, evidence, report) is registered
as the ``pytest11`` entry point ``audits.plugin`` in pyproject.toml, so pytest loads it before it reads the
command line for test paths and before it imports any conftest.py. Loading it from here
(``pytest_plugins``) would be too late: pytest would take ``--target DIR`` for a test path and import
``DIR/conftest.py`` — code from the model folder under audit — before the option was known.

With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, or a stale install without the entry point, the plugin is not
loaded; this file then stops the run (exit 4) before any other conftest.py is imported, and says to
pass ``-p audits.plugin`` or to reinstall (``pip install -e .``). The plugin stays dormant unless the run
points into ``audits/`` or passes an audit option.
"""

import sys

if "audits.plugin" not in sys.modules:
    raise ImportError(
        "the modellineage audit plugin is not loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD is set, or this checkout "
        "is not installed with its pytest11 entry point): pass `-p audits.plugin`, or run "
        "`pip install -e .` in the checkout. Loading it later would let pytest import conftest.py files "
        "from the model folders named on the command line."
    )
