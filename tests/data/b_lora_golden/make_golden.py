#!/usr/bin/env python
"""Make the B-LoRA golden files: yardenfren1996/B-LoRA's own training script and inference path, run on styleprobe's tiny model.

    git clone https://github.com/yardenfren1996/B-LoRA /tmp/B-LoRA   # then: git -C /tmp/B-LoRA checkout e08380d
    python3.11 -m venv /tmp/blora-venv                                 # the original's training needs diffusers 0.25
    /tmp/blora-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/blora-venv/bin/pip install diffusers==0.25.0 huggingface-hub==0.24.7 transformers==4.44.2 \\
        tokenizers==0.19.1 accelerate==1.15.0 ftfy==6.1.1 Pillow==9.4.0 python-slugify==7.0.0 \\
        tensorboard==2.21.0 safetensors==0.8.0 numpy==2.4.6
    STYLEPROBE_CACHE=$(mktemp -d) .venv/bin/python tests/data/b_lora_golden/make_golden.py \\
        --original /tmp/B-LoRA --train-python /tmp/blora-venv/bin/python

The original is yardenfren1996/B-LoRA at commit e08380dfd3a5e337f74d76bcc1155bfd2c5c0d3d
(`train_dreambooth_b-lora_sdxl.py`, `inference.py`, `blora_utils.py`). Nothing of it is kept in styleprobe:
this script reads the checkout, runs it (scratch files in --work, default /tmp/blora-golden-work), and writes
next to itself:
  original_ref0/pytorch_lora_weights.safetensors   B-LoRA trained by the original script on builtin:shapes[0]
  original_ref1/pytorch_lora_weights.safetensors   the same on builtin:shapes[1]
  golden.safetensors                               final latents of inference.py's path (cases below)
  golden.json                                      versions, commit, training args and losses, cases, checks

Training: `train_dreambooth_b-lora_sdxl.py` runs UNCHANGED (no patch; PATCHES below is empty) in its own venv
(/tmp/blora-venv, the pins above: diffusers 0.25.0 as the README says, huggingface-hub 0.24.7 from its
requirements.txt, a transformers 4.x that works with that hub; PyTorch 2.14.1 is the build on this machine's
disk; the README's Pillow / ftfy / python-slugify pins; tensorboard because `--report_to` defaults to it, and
the losses are read back from its event files, as float32). It is started as
`<train-python> train_dreambooth_b-lora_sdxl.py <args>` (one process, which is what `accelerate launch` does
with no config) with CUDA_VISIBLE_DEVICES="" (CPU), HF_HOME=<work>/hf-home, HF_HUB_DISABLE_TELEMETRY=1.
HF_HUB_OFFLINE is NOT set: diffusers 0.25's `load_lora_weights(output_dir)` at the end of the script refuses
to guess the weight file in offline mode; every path is local, so nothing is fetched. The arguments are the
README's recipe except: --resolution=64 (the tiny model's size), --rank=4, --learning_rate=1e-3 (not 5e-5, so
that 6 steps move the weights visibly), --max_train_steps=6, --checkpointing_steps=1000 (no checkpoint),
--mixed_precision=no and no --use_8bit_adam (CPU, float32); --instance_prompt="A [v]" as in the paper;
--gradient_checkpointing is kept. Each instance dir holds one PNG: the reference resized to 64 x 64 (bicubic).

The model the training reads is a copy of the tiny model (<work>/tiny-sdxl), because transformers 4.44 cannot
read two things that transformers 5 wrote (file changes only, no weight changes; `_check` below proves it):
  1. tokenizer/, tokenizer_2/: vocab.json and merges.txt are added, taken verbatim from the `model` section
     of tokenizer.json (the script loads the slow `CLIPTokenizer`, use_fast=False, which needs them);
  2. text_encoder/model.safetensors: every key gets the prefix "text_model." (transformers 5 saves
     CLIPTextModel without it; transformers 4.44 would silently initialise a random encoder).
Before training, `_check` (run by the training venv) loads every component as the script does and asserts
that each state dict equals the copied file exactly, and this script asserts that the slow tokenizers' ids and
the script's `encode_prompt` for "A [v]" equal styleprobe's pipeline (diffusers 0.42.1, transformers 5) exactly.
Two training runs on one reference, and two runs of this script (one with a fresh STYLEPROBE_CACHE), gave
bit-identical LoRA files and latents (seed 0, CPU).

Inference: inference.py's path, run in styleprobe's venv (diffusers 0.42.1 with peft), with `blora_utils`
imported from the checkout: `pipeline.lora_state_dict(<dir>)` -> `filter_lora(sd, BLOCKS[...])` ->
`scale_lora(sd, alpha)` -> `{**content, **style}` -> `pipeline.load_lora_into_unet(res_lora, None,
pipeline.unet)` (the original's positional call still works in 0.42.1) -> `pipeline(prompt, ...)`. Note that
`scale_lora` multiplies both the down and the up matrices by alpha, so the weight delta scales by alpha**2.
A fresh pipeline is loaded for every case; the loaded LoRA weights are checked against the scaled tensors.
Choices of this script, not changes to the original: the tiny model's folder (not the copy), float32 on the
CPU, its own scheduler (EulerDiscreteScheduler); per seed one call with batch 1 and
`latents=torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))`,
`num_inference_steps=4, guidance_scale=5.0, height=64, width=64, output_type="latent"`, no negative prompt.

Cases (each `<case>/latents`, shape (2, 4, 8, 8), one row per seed 10, 11):
  base                no LoRA, prompt "a cat sitting on a chair in [v] style"
  style               style B-LoRA of ref0, alpha 1.0, the same prompt
  style_half          style B-LoRA of ref0, alpha 0.5, the same prompt
  base_content_style  no LoRA, prompt "A [v] in [v] style"
  content_style       content B-LoRA of ref1 (alpha 1.0) + style B-LoRA of ref0 (alpha 1.0), the same prompt
The base cases let a test check that each LoRA changes the latents (by more than 1e-3, asserted here).

Cross-check (recorded in golden.json, not stored): the same cases run again in the training venv with
diffusers 0.25.0 (no peft, the original's own LoRA layers) on the model copy; golden.json records the largest
difference from the golden latents.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

COMMIT = "e08380dfd3a5e337f74d76bcc1155bfd2c5c0d3d"
TRAIN_SCRIPT = "train_dreambooth_b-lora_sdxl.py"
PATCHES: list[tuple[str, str]] = []  # the training script runs unchanged; inference.py's path is re-typed below
SIZE = 64
INSTANCE_PROMPT = "A [v]"
TRAIN_ARGS = [
    f"--instance_prompt={INSTANCE_PROMPT}",
    f"--resolution={SIZE}",
    "--rank=4",
    "--train_batch_size=1",
    "--learning_rate=1e-3",
    "--lr_scheduler=constant",
    "--lr_warmup_steps=0",
    "--max_train_steps=6",
    "--checkpointing_steps=1000",
    "--seed=0",
    "--gradient_checkpointing",
    "--mixed_precision=no",
]
REFS = [0, 1]  # builtin:shapes indices, trained into original_ref<i>/
SEEDS = [10, 11]
STEPS, GUIDANCE = 4, 5.0
STYLE_PROMPT = "a cat sitting on a chair in [v] style"
CONTENT_STYLE_PROMPT = "A [v] in [v] style"
CASES = {  # name: (prompt, content (ref, alpha) or None, style (ref, alpha) or None)
    "base": (STYLE_PROMPT, None, None),
    "style": (STYLE_PROMPT, None, (0, 1.0)),
    "style_half": (STYLE_PROMPT, None, (0, 0.5)),
    "base_content_style": (CONTENT_STYLE_PROMPT, None, None),
    "content_style": (CONTENT_STYLE_PROMPT, (1, 1.0), (0, 1.0)),
}
BASES = {"style": "base", "style_half": "base", "content_style": "base_content_style"}  # same prompt, no LoRA
TRAIN_VENV_PACKAGES = ["torch", "torchvision", "diffusers", "transformers", "tokenizers", "huggingface-hub", "accelerate",
                       "safetensors", "numpy", "Pillow", "ftfy", "python-slugify", "tensorboard"]
PROJECT_PACKAGES = ["torch", "diffusers", "peft", "transformers", "tokenizers", "safetensors", "numpy"]
HERE = Path(__file__).resolve().parent
LORA_FILE = "pytorch_lora_weights.safetensors"


def versions(names: list[str]) -> dict[str, str]:
    from importlib.metadata import version

    return {n: version(n) for n in names}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- run by the training venv (diffusers 0.25)

def load_train_module(original: Path):
    """The training script as a module (its `main` only runs under __main__), for its own helpers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_blora", original / TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_copy(original: Path, model: Path, out: Path) -> None:
    """Load the copy as the training script does; assert exact weights; save ids and embeddings of the prompt."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    train = load_train_module(original)
    tokenizers = [AutoTokenizer.from_pretrained(model, subfolder=s, use_fast=False) for s in ("tokenizer", "tokenizer_2")]
    encoders = [train.import_model_class_from_model_name_or_path(str(model), None, s).from_pretrained(model, subfolder=s)
                for s in ("text_encoder", "text_encoder_2")]
    components = {"text_encoder": (encoders[0], "model.safetensors"), "text_encoder_2": (encoders[1], "model.safetensors"),
                  "unet": (UNet2DConditionModel.from_pretrained(model, subfolder="unet"), "diffusion_pytorch_model.safetensors"),
                  "vae": (AutoencoderKL.from_pretrained(model, subfolder="vae"), "diffusion_pytorch_model.safetensors")}
    for name, (module, filename) in components.items():
        saved, loaded = load_file(str(model / name / filename)), module.state_dict()
        extra = {k for k in set(loaded) - set(saved) if not k.endswith("position_ids")}  # a buffer, not a weight
        if extra or set(saved) - set(loaded) or any(not torch.equal(loaded[k], saved[k]) for k in saved):
            raise SystemExit(f"{name} does not load exactly under diffusers 0.25 / transformers 4")
    with torch.no_grad():
        embeds, pooled = train.encode_prompt(encoders, tokenizers, INSTANCE_PROMPT)
    ids = [train.tokenize_prompt(t, INSTANCE_PROMPT) for t in tokenizers]
    save_file({"ids_1": ids[0], "ids_2": ids[1], "prompt_embeds": embeds.contiguous(), "pooled": pooled.contiguous()},
              str(out), metadata={"versions": json.dumps(versions(TRAIN_VENV_PACKAGES)),
                                  "tokenizers": json.dumps([type(t).__name__ for t in tokenizers])})


def read_losses(logdir: Path, out: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    rows = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("loss", "lr")}
    out.write_text(json.dumps(rows))


def infer_025(original: Path, model: Path, work: Path, out: Path) -> None:
    """The cases once more with diffusers 0.25.0 (no peft): the cross-check."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    blora_utils = import_blora_utils(original)
    loras = {i: work / f"train_ref{i}" for i in REFS}
    tensors = {f"{case}/latents": run_case(StableDiffusionXLPipeline, str(model), blora_utils, loras, *spec)[0]
               for case, spec in CASES.items()}
    save_file(tensors, str(out))


# ---------------------------------------------------------------- inference.py's path (either venv)

def import_blora_utils(original: Path):
    sys.path.insert(0, str(original))
    return importlib.import_module("blora_utils")


def noise(seed: int):
    import torch

    return torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(seed))


def run_case(pipeline_cls, model: str, blora_utils, loras: dict, prompt: str, content, style):
    """inference.py, line for line, on a fresh pipeline; returns (latents, the merged state dict)."""
    import torch

    pipeline = pipeline_cls.from_pretrained(model, torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    BLOCKS, filter_lora, scale_lora = blora_utils.BLOCKS, blora_utils.filter_lora, blora_utils.scale_lora
    if content is not None:
        content_B_LoRA_sd, _ = pipeline.lora_state_dict(str(loras[content[0]]))
        content_B_LoRA = filter_lora(content_B_LoRA_sd, BLOCKS['content'])
        content_B_LoRA = scale_lora(content_B_LoRA, content[1])
    else:
        content_B_LoRA = {}
    if style is not None:
        style_B_LoRA_sd, _ = pipeline.lora_state_dict(str(loras[style[0]]))
        style_B_LoRA = filter_lora(style_B_LoRA_sd, BLOCKS['style'])
        style_B_LoRA = scale_lora(style_B_LoRA, style[1])
    else:
        style_B_LoRA = {}
    res_lora = {**content_B_LoRA, **style_B_LoRA}
    if res_lora:  # inference.py always calls it; with nothing to load the base case skips it
        pipeline.load_lora_into_unet(res_lora, None, pipeline.unet)
    rows = []
    for seed in SEEDS:
        with torch.no_grad():
            rows.append(pipeline(prompt, latents=noise(seed), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                                 height=SIZE, width=SIZE, output_type="latent").images)
    return torch.cat(rows).contiguous().float(), res_lora, pipeline


def check_loaded(unet, res_lora: dict) -> list[str]:
    """The peft adapter in the UNet holds exactly the filtered, scaled tensors, at scaling 1."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    (adapter,) = unet.peft_config  # one adapter, named by diffusers ("default_0")
    peft_sd = get_peft_model_state_dict(unet, adapter_name=adapter)
    expected = {k.removeprefix("unet.").replace(".lora.down.weight", ".lora_A.weight").replace(".lora.up.weight", ".lora_B.weight"): v
                for k, v in res_lora.items()}
    if set(peft_sd) != set(expected) or any(not torch.equal(peft_sd[k], expected[k]) for k in expected):
        raise SystemExit("the LoRA in the UNet is not the filtered, scaled state dict")
    scalings = {s for m in unet.modules() if isinstance(m, LoraLayer) for s in m.scaling.values()}
    if scalings != {1.0}:
        raise SystemExit(f"unexpected LoRA scaling {scalings}")
    return list(peft_sd)


# ---------------------------------------------------------------- run by styleprobe's venv

def prepare_model(source: Path, dest: Path) -> None:
    """Copy the tiny model with the two file-format fixes the docstring lists."""
    from safetensors.torch import load_file, save_file

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    for sub in ("tokenizer", "tokenizer_2"):
        bpe = json.loads((dest / sub / "tokenizer.json").read_text())["model"]
        (dest / sub / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False))
        merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
        (dest / sub / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    path = dest / "text_encoder" / "model.safetensors"
    weights = load_file(str(path))
    if not any(k.startswith("text_model.") for k in weights):
        save_file({f"text_model.{k}": v for k, v in weights.items()}, str(path), metadata={"format": "pt"})


def compare_encoding(model: Path, checked: Path) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    ref = load_file(str(checked))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    for tokenizer, key in ((pipe.tokenizer, "ids_1"), (pipe.tokenizer_2, "ids_2")):
        ids = tokenizer(INSTANCE_PROMPT, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        if not torch.equal(ids, ref[key]):
            raise SystemExit(f"the slow tokenizer's {key} differ from styleprobe's")
    embeds, _, pooled, _ = pipe.encode_prompt(INSTANCE_PROMPT, do_classifier_free_guidance=False)
    if not (torch.equal(embeds, ref["prompt_embeds"]) and torch.equal(pooled, ref["pooled"])):
        raise SystemExit("the training script's text embeddings differ from styleprobe's")


def train(original: Path, python: str, model: Path, work: Path, index: int) -> dict:
    from PIL import Image

    from styleprobe.data.style_sets import load_style_set

    reference = load_style_set("builtin:shapes")[index]
    instance = work / f"instance_ref{index}"
    output = work / f"train_ref{index}"
    for d in (instance, output):
        if d.exists():
            shutil.rmtree(d)
    instance.mkdir(parents=True)
    reference.load().convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(instance / f"ref{index}.png")
    args = [f"--pretrained_model_name_or_path={model}", f"--instance_data_dir={instance}", f"--output_dir={output}",
            *TRAIN_ARGS]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(work / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    log = work / f"train_ref{index}.log"
    with log.open("w") as f:
        done = subprocess.run([python, str(original / TRAIN_SCRIPT), *args], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode:
        raise SystemExit(f"training on ref{index} failed, see {log}")
    losses = work / f"losses_ref{index}.json"
    subprocess.run([python, __file__, "_losses", str(output / "logs" / "dreambooth-lora-sd-xl"), str(losses)], check=True, env=env)
    dest = HERE / f"original_ref{index}"
    dest.mkdir(exist_ok=True)
    shutil.copyfile(output / LORA_FILE, dest / LORA_FILE)
    return {"reference": f"builtin:shapes[{index}]", "style": reference.style, "content": reference.content,
            "args": [a.replace(str(work), "<work>") for a in args], "sha256": sha256(dest / LORA_FILE),
            **json.loads(losses.read_text())}


def key_report(path: Path) -> dict:
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = f.keys()
        shapes = {k: list(f.get_slice(k).get_shape()) for k in names}
    converted, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path.parent))
    return {"count": len(shapes), "shapes": shapes, "lora_state_dict_0.42.1_keys_unchanged": list(converted) == list(shapes),
            "lora_state_dict_0.42.1_network_alphas": alphas}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="a checkout of yardenfren1996/B-LoRA")
    parser.add_argument("--train-python", default="/tmp/blora-venv/bin/python", help="the diffusers 0.25 venv's python")
    parser.add_argument("--work", type=Path, default=Path("/tmp/blora-golden-work"))
    args = parser.parse_args()
    head = subprocess.run(["git", "-C", str(args.original), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    if head != COMMIT:
        raise SystemExit(f"{args.original} is at {head or 'no git commit'}, not {COMMIT}")
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file, save_file

    from styleprobe.models.tiny import ensure_tiny

    args.work.mkdir(parents=True, exist_ok=True)
    tiny = ensure_tiny() / "stable-diffusion-xl-base"
    model = args.work / "tiny-sdxl"
    prepare_model(tiny, model)
    env = {**os.environ, "HF_HOME": str(args.work / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "CUDA_VISIBLE_DEVICES": ""}
    checked = args.work / "train_env_check.safetensors"
    subprocess.run([args.train_python, __file__, "_check", str(args.original), str(model), str(checked)], check=True, env=env)
    compare_encoding(tiny, checked)
    from safetensors import safe_open

    with safe_open(str(checked), "pt") as f:
        check_meta = f.metadata()
    training = {f"ref{i}": train(args.original, args.train_python, model, args.work, i) for i in REFS}
    for name, run in training.items():
        print(f"{name} losses: {[round(v, 4) for _, v in run['loss']]}")

    blora_utils = import_blora_utils(args.original)
    loras = {i: HERE / f"original_ref{i}" for i in REFS}
    tensors, loaded = {}, {}
    for case, (prompt, content, style) in CASES.items():
        latents, res_lora, pipe = run_case(StableDiffusionXLPipeline, str(tiny), blora_utils, loras, prompt, content, style)
        loaded[case] = check_loaded(pipe.unet, res_lora) if res_lora else []
        tensors[f"{case}/latents"] = latents
    diffs = {f"{case} - {base}": float((tensors[f"{case}/latents"] - tensors[f"{base}/latents"]).abs().max())
             for case, base in BASES.items()}
    for pair, d in diffs.items():
        print(f"max |{pair}| = {d:.6f}")
    if min(diffs.values()) < 1e-3:
        raise SystemExit("a LoRA changes the latents by less than 1e-3: train longer or at a higher rate")

    cross = args.work / "latents_diffusers025.safetensors"
    subprocess.run([args.train_python, __file__, "_infer025", str(args.original), str(model), str(args.work), str(cross)],
                   check=True, env=env)
    other = load_file(str(cross))
    cross_diff = {k: float((other[k] - tensors[k]).abs().max()) for k in tensors}
    print(f"max |diffusers 0.25 - 0.42.1| per case: {cross_diff}")

    cases = {case: {"prompt": p, "content": None if c is None else {"lora": f"original_ref{c[0]}", "alpha": c[1]},
                    "style": None if s is None else {"lora": f"original_ref{s[0]}", "alpha": s[1]},
                    "lora_tensors_loaded": len(loaded[case])}
             for case, (p, c, s) in CASES.items()}
    meta = {
        "original": f"yardenfren1996/B-LoRA@{COMMIT}", "patches": json.dumps(PATCHES), "cases": json.dumps(list(CASES)),
        "prompts": json.dumps({c: v[0] for c, v in CASES.items()}),
        "alphas": json.dumps({c: {"content": v[1] and v[1][1], "style": v[2] and v[2][1]} for c, v in CASES.items()}),
        "loras": json.dumps({c: {"content": v[1] and f"original_ref{v[1][0]}", "style": v[2] and f"original_ref{v[2][0]}"}
                             for c, v in CASES.items()}),
        "bases": json.dumps(BASES), "seeds": json.dumps(SEEDS), "num_inference_steps": str(STEPS), "guidance_scale": str(GUIDANCE), "size": str(SIZE),
        "scheduler": type(StableDiffusionXLPipeline.from_pretrained(str(tiny)).scheduler).__name__,
    }
    save_file(tensors, str(HERE / "golden.safetensors"), metadata=meta)
    report = {
        "original": {"repo": "yardenfren1996/B-LoRA", "commit": COMMIT, "patches": PATCHES},
        "tiny_model_unet_sha256": sha256(tiny / "unet" / "diffusion_pytorch_model.safetensors"),
        "train_venv": json.loads(check_meta["versions"]), "train_tokenizers": json.loads(check_meta["tokenizers"]),
        "project_venv": versions(PROJECT_PACKAGES),
        "training": training,
        "lora_keys": {**key_report(HERE / "original_ref0" / LORA_FILE),
                      "peft_keys_in_unet_after_load_lora_into_unet_style_case": loaded["style"]},
        "inference": {"seeds": SEEDS, "num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "height": SIZE, "width": SIZE,
                      "scheduler": meta["scheduler"], "cases": cases},
        "max_abs_diff_from_base": diffs, "bases": BASES,
        "max_abs_diff_diffusers025_vs_golden": cross_diff,
    }
    (HERE / "golden.json").write_text(json.dumps(report, indent=1) + "\n")
    for k, v in tensors.items():
        print(f"{k}: {tuple(v.shape)} mean {v.mean():+.4f} std {v.std():.4f}")
    print(f"wrote {HERE}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_check":  # internal: the training venv checks the model copy
        check_copy(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_losses":  # internal: the training venv reads tensorboard's events
        read_losses(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_infer025":  # internal: the cross-check under diffusers 0.25
        infer_025(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        sys.exit(main())
