#!/usr/bin/env bash
# Fill deploy/wheelhouse/ with every wheel the image needs (torch's CPU wheel included), for a build that never
# reaches a package index: `docker|podman build --build-arg WHEELHOUSE=1 .`. Run it on a machine with the same
# Python minor version and architecture as the image (the wheels are platform-specific).
#   TORCH_SPEC (default torch==2.13.0)  PYTHON (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
OUT=deploy/wheelhouse
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
# The same list the Dockerfile's dependency layer installs: both distributions' runtime dependencies and the
# server's postgres and lm extras.
"$PYTHON" - > "$requirements" <<'PY'
import tomllib
for path in ("clients/pyproject.toml", "pyproject.toml"):
    project = tomllib.load(open(path, "rb"))["project"]
    extras = project.get("optional-dependencies", {})
    for dep in project["dependencies"] + (extras["postgres"] + extras["lm"] if path == "pyproject.toml" else []):
        if not dep.startswith("chorus-client"):
            print(dep)
PY
echo "$TORCH_SPEC" >> "$requirements"
echo "setuptools>=77" >> "$requirements"
"$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$OUT" -r "$requirements"
echo "wheelhouse: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
