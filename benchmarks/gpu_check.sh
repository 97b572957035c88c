#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a bare GPU machine (no network): what the machine is and has goes to
# $OUT/machine.txt, the carried wheels of .whl/ (benchmarks/carry_wheels.sh) that it lacks are installed offline
# into a scratch folder, then the check runs with its log in $OUT/gpu_check.log. Arguments go to gpu_check.py.
#
#   OUT=/path/to/results benchmarks/gpu_check.sh               # the whole check (at most 8 minutes on an H100/H200)
#   benchmarks/gpu_check.sh --only p3_injection,p4_scoring     # some parts
#   benchmarks/gpu_check.sh --smoke --device cpu               # the script itself, tiny sizes
#
# PYTHON names the interpreter (default: python, else python3): the machine's own, with its CUDA torch.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.bench/gpu}"
PY=(${PYTHON:-$(command -v python || command -v python3)})
SCRATCH="${SCRATCH:-${TMPDIR:-/tmp}/styleprobe-gpu-check}"
mkdir -p "$OUT" "$SCRATCH/tmp"
export TMPDIR="$SCRATCH/tmp"
SITE="$SCRATCH/site"

{
    echo "== date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host $(hostname); $(nproc) CPUs"
    free -g 2>/dev/null | head -2
    df -h "$SCRATCH" 2>/dev/null | tail -1
    echo "== GPU"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
    echo "== python: ${PY[*]} ($("${PY[@]}" -V 2>&1))"
    "${PY[@]}" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1
    echo "== C compiler (triton, behind torch.compile, builds its launchers with it): $(command -v gcc cc | head -1)"
    echo "== installed distributions"
    "${PY[@]}" -c "import importlib.metadata as m; print(' '.join(sorted(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions())))" 2>&1
} > "$OUT/machine.txt"

# A carried wheel is installed when its distribution is missing or at another version; numpy and pillow only when
# missing (the machine's torch and torchvision were built against its own).
missing=()
if compgen -G ".whl/*.whl" > /dev/null; then
    for whl in .whl/*.whl; do
        base=$(basename "$whl"); name=${base%%-*}; version=$(echo "$base" | cut -d- -f2)
        have=$("${PY[@]}" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$name" 2>/dev/null)
        case "$name" in numpy|pillow|Pillow) [ -n "$have" ] && continue ;; esac
        [ "$have" = "$version" ] || missing+=("$whl")
    done
fi
echo "== carried wheels installed: ${#missing[@]} of $(ls .whl/*.whl 2>/dev/null | wc -l)" >> "$OUT/machine.txt"
if [ "${#missing[@]}" -gt 0 ]; then
    printf '  %s\n' "${missing[@]##*/}" >> "$OUT/machine.txt"
    if "${PY[@]}" -m pip --version > /dev/null 2>&1; then
        "${PY[@]}" -m pip install --quiet --no-index --no-deps --target "$SITE" "${missing[@]}" >> "$OUT/machine.txt" 2>&1 \
            || echo "pip install failed (see above)" >> "$OUT/machine.txt"
    else  # no pip there: a wheel is a zip of the installed files (none of these needs its scripts)
        echo "no pip: wheels unpacked with zipfile" >> "$OUT/machine.txt"
        for whl in "${missing[@]}"; do "${PY[@]}" -m zipfile -e "$whl" "$SITE" >> "$OUT/machine.txt" 2>&1; done
    fi
fi

export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export STYLEPROBE_CACHE="${STYLEPROBE_CACHE:-$SCRATCH/cache}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
"${PY[@]}" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
