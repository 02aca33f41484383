#!/usr/bin/env python3
"""Fails when a dependency between Eddy's crates points the wrong way.

Allowed: eddy-proto <- eddy-sdk <- {eddy-jobmanager, eddy-taskmanager};
eddy-tests drives the built binaries and may use only eddy-sdk and eddy-proto.
"""
import json
import subprocess
import sys

ALLOWED = {
    "eddy-proto": set(),
    "eddy-sdk": {"eddy-proto"},
    "eddy-jobmanager": {"eddy-proto", "eddy-sdk"},
    "eddy-taskmanager": {"eddy-proto", "eddy-sdk"},
    "eddy-tests": {"eddy-proto", "eddy-sdk"},
}

meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"]))
bad = []
for pkg in meta["packages"]:
    name = pkg["name"]
    if name not in ALLOWED:
        bad.append(f"{name}: unknown workspace crate (add it to scripts/check-deps.py)")
        continue
    for dep in pkg["dependencies"]:
        dep_name = dep["name"]
        if dep_name.startswith("eddy-") and dep_name not in ALLOWED[name]:
            bad.append(f"{name} must not depend on {dep_name} ({dep['kind'] or 'normal'} dependency)")
if bad:
    print("dependency direction check failed:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print("dependency direction: ok")
