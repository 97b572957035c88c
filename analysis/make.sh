#!/usr/bin/env bash
# Regenerate the committed toy-world analyses from scratch (no download; on 2 CPU cores the times are in README.md):
#   analysis/toy/layer_probe/   the default run (`styleprobe`): which attention modules carry style in the toy world
#   analysis/toy/benchmark/     `styleprobe experiment=benchmark`: the methods ranked in the toy world
#   analysis/toy/time_probe/    `styleprobe experiment=time_probe`: when, along the denoising steps, each module carries style
#   analysis/toy/layer_search/  `styleprobe experiment=layer_search`: the smallest set of modules that keeps the style
#   analysis/toy/layer_probe_vsp/            the layer probe of Visual Style Prompting (`method=visual_style_prompting`)
#   analysis/toy/layer_probe_style_aligned/  the layer probe of StyleAligned (`method=style_aligned`)
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
# each line: the folder's name, then the overrides that make it
runs=(
  "layer_probe experiment=layer_probe"
  "benchmark experiment=benchmark"
  "time_probe experiment=time_probe"
  "layer_search experiment=layer_search"
  "layer_probe_vsp experiment=layer_probe method=visual_style_prompting name=layer_probe_vsp"
  "layer_probe_style_aligned experiment=layer_probe method=style_aligned name=layer_probe_style_aligned"
)
for run in "${runs[@]}"; do
  read -r folder overrides <<< "$run"
  start=$SECONDS
  # shellcheck disable=SC2086  # the overrides are words
  "$styleprobe" $overrides results_root="$results" analyze=false
  rm -rf "analysis/toy/$folder"
  "$styleprobe" analyze results_dir="$results/toy/$folder" out_dir="analysis/toy/$folder"
  # the report names its results folder: the default one, where the same command run by hand puts it
  sed -i "s#$results/#results/#g" "analysis/toy/$folder/report.md"
  echo "analysis/toy/$folder: $((SECONDS - start)) s"
done
