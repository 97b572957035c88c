"""Record the IP-Adapter keys of one small plan per model preset (run with the styleprobe whose keys to pin).

    PYTHONPATH=<checkout>/src python tests/data/model_keys/make_keys.py

Each plan is made offline, with `metrics=[]`; the UNet configs of the Hub presets are the stored ones of tests/data,
the toy's is written beside the keys (so the test reads it instead of assembling the toy world).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("STYLEPROBE_CACHE", tempfile.mkdtemp(prefix="styleprobe-keys-"))

from hydra import compose, initialize_config_dir  # noqa: E402

from styleprobe.config import CONFIG_DIR  # noqa: E402
from styleprobe.models import loading, presets
from styleprobe.run.sweep import prepare  # noqa: E402

HERE = Path(__file__).parent
DATA = HERE.parent
SMALL = ["experiment=custom", "data=small", "method.ip_adapter.subtraction=[0.0,0.5]"]
#: preset -> the overrides of its plan (sd15 has no `style` preset: its UNet has no attention in up_blocks.0)
PLANS = {
    "toy": [*SMALL, "injection.patterns=[none,style]"],
    "tiny": [*SMALL, "injection.patterns=[none,style]"],
    "tiny_vit_h": [*SMALL, "injection.patterns=[none,style]"],
    "sdxl": [*SMALL, "injection.patterns=[none,style]"],
    "sdxl_vit_h": [*SMALL, "injection.patterns=[none,style]"],
    "sd15": [*SMALL, "injection.patterns=[none,all]"],
}
UNETS = {"sdxl": "sdxl_unet_config.json", "sdxl_vit_h": "sdxl_unet_config.json", "sd15": "sd15_unet_config.json"}


def main() -> None:
    real = loading.load_unet_config
    toy_unet = real(presets.ModelSpec.from_config({"name": "toy", "family": "sdxl", "base": "toy:stable-diffusion-xl-base",
                                                  "adapter": {"source": "toy:IP-Adapter", "subfolder": "sdxl_models",
                                                              "weight_name": "ip-adapter_sdxl.safetensors"}}))
    (HERE / "toy_unet_config.json").write_text(json.dumps(toy_unet, indent=1, sort_keys=True))

    def unet(spec):
        if spec.name in UNETS:
            return json.loads((DATA / UNETS[spec.name]).read_text())
        return toy_unet if spec.name == "toy" else real(spec)

    loading.load_unet_config = unet
    out = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(loading.__file__).parent).stdout.strip(), "plans": {}}
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name, overrides in PLANS.items():
            cfg = compose(config_name="config", overrides=[f"model={name}", f"results_root={tmp}", "metrics=[]", *overrides])
            items = prepare(cfg).items
            out["plans"][name] = {"overrides": overrides, "keys": sorted(it.key for it in items)}
    (HERE / "keys.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
