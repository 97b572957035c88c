#!/usr/bin/env bash
# Download, on a machine with the package index, the wheels a bare GPU machine needs to run benchmarks/gpu_check.py,
# for that machine's Python (default 3.12), into the git-ignored .whl/ at the repository root; then check that the
# wheels and the working tree fit the 64 MiB a lent machine is sent. torch and torchvision are left out (the GPU
# machine's own CUDA build is used), and so are torch's own dependencies (sympy, networkx, jinja2, ...).
#
#   benchmarks/carry_wheels.sh            # Python 3.12, the versions of constraints.txt
#   benchmarks/carry_wheels.sh 3.11       # another Python
#   BASE=1 benchmarks/carry_wheels.sh     # with numpy and pillow too (23 MiB: over the limit with the tree; only for
#                                         # a machine without torchvision, which needs both)
#
# The GPU machine installs them with benchmarks/gpu_check.sh (offline; only those it lacks).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
DEST="${DEST:-.whl}"
LIMIT_MIB="${LIMIT_MIB:-64}"
PIP="${PIP:-$( [ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip")}"

# The distributions gpu_check.py imports (found by running its smoke mode), torch and its dependencies excepted;
# hf-xet (4 MiB) is left out too: huggingface_hub needs it only to download, which the GPU machine cannot.
NEEDED=(diffusers transformers tokenizers huggingface_hub safetensors accelerate peft open_clip_torch timm ftfy
        wcwidth regex omegaconf hydra-core PyYAML tqdm packaging psutil filelock fsspec importlib_metadata zipp
        requests urllib3 idna certifi charset-normalizer httpx2 httpcore2 anyio h11 truststore typing_extensions)
BASE_PKGS=(numpy pillow)
[ "${BASE:-0}" = 1 ] && NEEDED+=("${BASE_PKGS[@]}")

pin() {  # name==version from constraints.txt (case- and -/_-insensitive), or the bare name
    local norm line
    norm=$(echo "$1" | tr 'A-Z_' 'a-z-')
    line=$(grep -v '^#' constraints.txt | awk -F'==' -v n="$norm" '{k=tolower($1); gsub("_","-",k); if (k==n) print $0}')
    echo "${line:-$1}"
}

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # only this run's wheels are counted and carried
grep -qx "/.whl/" .gitignore 2>/dev/null || echo "note: add /.whl/ to .gitignore (it must not be committed)" >&2
specs=()
for name in "${NEEDED[@]}"; do specs+=("$(pin "$name")"); done
$PIP download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${specs[@]}"
# antlr4-python3-runtime (omegaconf's parser) is published as an sdist only: built here into a pure-Python wheel,
# so that the GPU machine needs no build step
if ! ls "$DEST"/antlr4_python3_runtime-*.whl >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    $PIP download --quiet --no-deps --no-binary=:all: -d "$tmp" "$(pin antlr4-python3-runtime)"
    $PIP wheel --quiet --no-deps -w "$DEST" "$tmp"/antlr4*
    rm -rf "$tmp"
fi

echo "wheels in $DEST (Python $PYVER):"
ls -l "$DEST" | awk 'NR>1 {printf "  %8.2f MiB  %s\n", $5/1048576, $9}'
wheels=$(du -sb "$DEST" | cut -f1)
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total=$(( wheels + tree ))
printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of the %d MiB carried\n" \
    "$(echo "$wheels/1048576" | bc -l)" "$(echo "$tree/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $(( LIMIT_MIB * 1048576 )) ]; then
    echo "over the limit: leave out what the GPU machine has (gpu_check.sh lists what it found in machine.txt)" >&2
    exit 1
fi
