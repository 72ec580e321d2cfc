"""Root conftest: loads the audit plugin (options, plan, lazy model fixtures, evidence, report).

The plugin stays dormant unless the run points into audits/ or passes an audit option.
"""

pytest_plugins = ("audits.plugin",)
