"""Train the toy world's models, stage by stage, with fixed seeds: `python -m styleprobe.models.toy.train`.

    python -m styleprobe.models.toy.train                      every stage whose weights are missing, into the package
    python -m styleprobe.models.toy.train --stages unet --force  one stage again (later stages build on it: retrain them too)
    python -m styleprobe.models.toy.train --out /tmp/toy       somewhere else; try it with STYLEPROBE_TOY_WEIGHTS=/tmp/toy styleprobe

Stages, in order (each reads what the earlier ones wrote): classifier (the judge), vae, clip (both text encoders
and the image encoder), unet, adapter (IP-Adapter on the frozen UNet), scorers (open_clip, CSD and DINO formats).
Each writes its `<name>.safetensors` atomically and its record (seconds on this machine, recipe, seed, final loss,
what it scored on held-out images) into `<out>/training.json`, so the shipped weights say how they were made.
The UNet stage, the long one, checkpoints into `<out>/.unet-checkpoint.pt` every 250 steps: run the same command
again after a kill and it resumes there, to the same weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styleprobe.models.toy.weights import FOLDER, records

log = logging.getLogger("styleprobe")

#: Held-out images for every stage's evaluation: seeds no training stage draws.
EVAL_SEED = 424242


def _classifier(out: Path) -> dict[str, Any]:
    from styleprobe.models.toy import classifier, world

    model, record = classifier.train_classifier()
    content, style = classifier.accuracy(model, world.samples(2048, EVAL_SEED))
    record["held_out"] = {"images": 2048, "content_accuracy": content, "style_accuracy": style}
    classifier.save_classifier(model, out / "classifier.safetensors", record)
    return record


def _vae(out: Path) -> dict[str, Any]:
    """The VAE; judged by reconstruction PSNR and by the judge recognising content and style after a round trip."""
    import torch

    from styleprobe.models.toy import classifier, vae, world

    model, record = vae.train_vae()
    held_out = world.samples(1024, EVAL_SEED)
    images, contents, styles = world.batch(held_out)
    x = torch.from_numpy(images)
    recon = vae.reconstruct(model, x)
    content, style = classifier.load_classifier(out / "classifier.safetensors").predict(recon)
    record["held_out"] = {"images": len(held_out), "psnr_db": round(vae.psnr(recon, x), 2),
                          "content_accuracy_after_round_trip": float((content == contents).mean()),
                          "style_accuracy_after_round_trip": float((style == styles).mean())}
    save_half(model, out / "vae.safetensors")
    return record


def _clip(out: Path) -> dict[str, Any]:
    """The text encoders and the image encoder; judged by zero-shot content and style on held-out images."""
    from styleprobe.models.toy import clip, world

    towers, record = clip.train_clip()
    record["held_out"] = {"images": 1024, **clip.zero_shot(towers, world.samples(1024, EVAL_SEED))}
    for name in ("text_encoder", "text_encoder_2", "image_encoder"):
        save_half(towers[name], out / f"{name}.safetensors")
    return record


def _unet(out: Path) -> dict[str, Any]:
    """The UNet, on the VAE and text encoders in `out`; judged by the judge on images generated from every caption."""
    from styleprobe.models.toy import classifier, unet

    checkpoint = out / ".unet-checkpoint.pt"  # about an hour of training: a killed run resumes from here
    model, pipe, record = unet.train_unet(out, checkpoint=checkpoint)
    judge = classifier.load_classifier(out / "classifier.safetensors")
    record["held_out"] = unet.text_to_image_accuracy(pipe, judge, seed=EVAL_SEED)
    save_half(model, out / "unet.safetensors")
    checkpoint.unlink(missing_ok=True)
    return record


def _adapter(out: Path) -> dict[str, Any]:
    """The IP-Adapter on the frozen UNet; judged by the style and content of images prompted by held-out references."""
    from safetensors.torch import save_file

    from styleprobe.disk import atomic_write
    from styleprobe.models.toy import adapter, classifier

    pipe, image_encoder, record = adapter.train_adapter(out)
    judge = classifier.load_classifier(out / "classifier.safetensors")
    record["held_out"] = adapter.image_prompt_accuracy(pipe, image_encoder, judge, seed=EVAL_SEED)
    state = {k: v.half() for k, v in adapter.export(pipe.unet).items()}
    atomic_write(out / "adapter.safetensors", lambda tmp: save_file(state, str(tmp)))
    return record


def _scorers(out: Path) -> dict[str, Any]:
    """The scoring models (open_clip CLIP, CSD, DINO-format); judged by pair AUCs and zero-shot accuracy."""
    from styleprobe.models.toy import scorers, world

    models, record = scorers.train_scorers()
    record["held_out"] = scorers.evaluate(models, world.samples(512, EVAL_SEED))
    for name, model in models.items():
        save_half(model, out / f"scorer_{name}.safetensors")
    return record


def save_half(module: Any, path: Path) -> None:
    """A module's weights as float16 safetensors (the shipped size), written atomically."""
    from safetensors.torch import save_file

    from styleprobe.disk import atomic_write

    state = {k: v.detach().half().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


#: stage -> its training function, in the order they build on one another.
STAGES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "classifier": _classifier, "vae": _vae, "clip": _clip, "unet": _unet, "adapter": _adapter, "scorers": _scorers,
}

#: stage -> the weight files (`<name>.safetensors`) it writes.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "classifier": ("classifier",), "vae": ("vae",), "clip": ("text_encoder", "text_encoder_2", "image_encoder"),
    "unet": ("unet",), "adapter": ("adapter",), "scorers": ("scorer_open_clip", "scorer_csd", "scorer_dino"),
}


def train(stages: list[str], out: Path = FOLDER, force: bool = False) -> dict[str, Any]:
    """Run the stages whose weights are missing (all named ones with `force`); returns every stage's record."""
    import torch

    from styleprobe.disk import atomic_write

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    done = records(out)
    for stage in stages:
        if not force and stage in done and all((out / f"{name}.safetensors").is_file() for name in OUTPUTS[stage]):
            log.info("%s: already trained (%s s); --force to train again", stage, done[stage].get("seconds"))
            continue
        log.info("%s: training", stage)
        done[stage] = {**STAGES[stage](out), "torch": torch.__version__, "threads": torch.get_num_threads()}
        text = json.dumps(done, indent=1, sort_keys=True)
        atomic_write(out / "training.json", lambda tmp: tmp.write_text(text + "\n"))
        log.info("%s: %s", stage, json.dumps({k: v for k, v in done[stage].items() if k != "recipe"}))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, from: " + ", ".join(STAGES))
    parser.add_argument("--out", type=Path, default=FOLDER, help="where the weights go (default: the package)")
    parser.add_argument("--force", action="store_true", help="train again even where weights exist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    train([s for s in args.stages.split(",") if s], args.out, args.force)


if __name__ == "__main__":
    main()
