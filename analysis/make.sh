#!/usr/bin/env bash
# Regenerate the committed toy-world analyses from scratch (no download; on 2 CPU cores the times are in README.md):
#   analysis/toy/layer_probe/   the default run (`styleprobe`): which attention modules carry style in the toy world
#   analysis/toy/benchmark/     `styleprobe experiment=benchmark`: the methods ranked in the toy world
#   analysis/toy/time_probe/    `styleprobe experiment=time_probe`: when, along the denoising steps, each module carries style
#   analysis/toy/layer_search/  `styleprobe experiment=layer_search`: the smallest set of modules that keeps the style
# Usage: bash analysis/make.sh [RESULTS_ROOT]   (from anywhere; uses `styleprobe` on PATH, else the README's .venv;
# results go to RESULTS_ROOT, which a rerun resumes from, or else to a temporary folder that is removed afterwards).
# These are findings about the toy world, not about SDXL.
set -euo pipefail
cd "$(dirname "$0")/.."
styleprobe="$(command -v styleprobe || echo .venv/bin/styleprobe)"
if [ $# -ge 1 ]; then
  mkdir -p "$1"
  results="$(cd "$1" && pwd)"
else
  results="$(mktemp -d)"
  trap 'rm -rf "$results"' EXIT
fi
for experiment in layer_probe benchmark time_probe layer_search; do
  start=$SECONDS
  "$styleprobe" experiment="$experiment" results_root="$results" analyze=false
  rm -rf "analysis/toy/$experiment"
  "$styleprobe" analyze results_dir="$results/toy/$experiment" out_dir="analysis/toy/$experiment"
  # the report names its results folder: the default one, where the same command run by hand puts it
  sed -i "s#$results/#results/#g" "analysis/toy/$experiment/report.md"
  echo "analysis/toy/$experiment: $((SECONDS - start)) s"
done
