"""The toy world's trained models: the shipped weights have learned what they were trained for (held-out seeds)."""

from __future__ import annotations

import pytest
import torch

from styleprobe.models.toy import classifier, world
from styleprobe.models.toy.train import EVAL_SEED, records


def test_the_shipped_judge_tells_content_and_style_on_held_out_images():
    """Chance is 1/8 for each; the judge is what every later learned-ness check counts with."""
    judge = classifier.load_classifier()
    content, style = classifier.accuracy(judge, world.samples(512, EVAL_SEED + 1))
    assert content >= 0.95 and style >= 0.95, (content, style)
    record = records()["classifier"]
    assert record["held_out"]["content_accuracy"] >= 0.95 and record["seconds"] > 0


def test_classifier_training_is_reproducible():
    recipe = classifier.ClassifierTraining(steps=3, batch_size=8, train_images=64, seed=5)
    a, _ = classifier.train_classifier(recipe)
    b, _ = classifier.train_classifier(recipe)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_shipped_vae_keeps_content_and_style_through_a_round_trip():
    from styleprobe.models.toy import vae

    model = vae.load_vae()
    assert model.config.scaling_factor == records()["vae"]["scaling_factor"] and 0.2 < model.config.scaling_factor < 5
    images, contents, styles = world.batch(world.samples(256, EVAL_SEED + 2))
    x = torch.from_numpy(images)
    recon = vae.reconstruct(model, x)
    with torch.no_grad():
        latents = model.encode(x[:64]).latent_dist.mean
    assert latents.shape[1:] == (4, world.SIZE // 4, world.SIZE // 4)
    assert vae.psnr(recon, x) > 22
    content, style = classifier.load_classifier().predict(recon)
    assert (content == contents).mean() >= 0.95 and (style == styles).mean() >= 0.95


def test_vae_training_is_reproducible():
    from styleprobe.models.toy import vae

    recipe = vae.VAETraining(steps=2, batch_size=4, train_images=64, seed=3)
    a, ra = vae.train_vae(recipe)
    b, rb = vae.train_vae(recipe)
    assert ra["scaling_factor"] == rb["scaling_factor"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_clip_targets_count_every_image_a_caption_describes():
    """A content-only caption matches every image of that content, whatever its style, and nothing else."""
    import numpy as np

    from styleprobe.models.toy.clip import _captions, _matches

    contents, styles = np.array([0, 0, 1, 1]), np.array([2, 3, 2, 3])
    named_c, named_s = np.array([0, -1, 1, -1]), np.array([-1, 3, 2, -1])
    m = _matches(named_c, named_s, contents, styles).numpy()
    assert m.tolist() == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1]]
    texts, c, s = _captions(contents, styles, np.random.default_rng(0))
    for text, ci, si, cc, ss in zip(texts, c, s, contents, styles):
        assert (ci < 0 or ci == cc) and (si < 0 or si == ss) and (ci >= 0 or si >= 0)
        assert text == world.caption(world.CONTENTS[ci] if ci >= 0 else None, world.STYLES[si] if si >= 0 else None)


def test_every_training_stage_names_the_weight_files_it_writes():
    from styleprobe.models.toy.train import OUTPUTS, STAGES

    assert list(OUTPUTS) == list(STAGES)
    names = [n for files in OUTPUTS.values() for n in files]
    assert len(names) == len(set(names))


def test_the_caption_table_holds_every_partial_caption_once():
    from styleprobe.models.toy.unet import caption_table

    captions, index = caption_table()
    assert len(captions) == (len(world.CONTENTS) + 1) * (len(world.STYLES) + 1) - 1 == len(set(captions))
    assert sorted(index.values()) == list(range(1, len(captions) + 1))  # row 0 stays the unconditional (zeros)
    assert captions[index[(3, 1)] - 1] == "a star in neon outline style"
    assert captions[index[(3, -1)] - 1] == "a star" and captions[index[(-1, 1)] - 1] == "something in neon outline style"


def test_toy_unet_has_sdxl_module_names_and_fits_the_vae_and_text_encoders():
    from styleprobe.models.layers import LayerMap
    from styleprobe.models.toy import clip, unet, vae

    model = unet.build_unet()
    modules = {name for name, _ in model.named_modules()}
    assert {"down_blocks.2.attentions.1", "up_blocks.0.attentions.1", "mid_block.attentions.0"} <= modules
    assert unet.UNET_CONFIG["cross_attention_dim"] == 2 * clip.TEXT.hidden
    assert unet.UNET_CONFIG["sample_size"] * 4 == world.SIZE and len(vae.VAE_CONFIG["block_out_channels"]) == 3
    assert len(LayerMap.from_unet(model).layers) == 2 * 2 + 2 * 3 + 3 + 3 * 3 + 3 * 2  # 28 attn2 layers


def test_adapter_export_is_h94_format_and_round_trips_through_diffusers_loader(tmp_path):
    """What the adapter stage trains (diffusers' own modules) is saved in h94's keys and loads back through
    `_load_ip_adapter_weights` to the same outputs."""
    from styleprobe.models.toy import adapter, unet

    torch.manual_seed(0)
    a, b = unet.build_unet().eval(), unet.build_unet().eval()
    b.load_state_dict(a.state_dict())
    state = adapter.initial_state(a, 32, torch.Generator().manual_seed(1))
    params = adapter.attach(a, state)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))  # "trained"
    exported = adapter.export(a)
    assert set(exported) == set(state) and any(not torch.equal(exported[k], state[k]) for k in state)
    assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in exported)
    adapter.attach(b, exported)
    x, t, text = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 77, 64)
    cond = {"text_embeds": torch.randn(2, 32), "time_ids": torch.zeros(2, 6), "image_embeds": [torch.randn(2, 1, 32)]}
    with torch.no_grad():
        assert torch.allclose(a(x, t, text, added_cond_kwargs=cond).sample, b(x, t, text, added_cond_kwargs=cond).sample)


def test_pair_auc_counts_same_label_pairs_above_different_label_pairs():
    import itertools

    import numpy as np

    from styleprobe.models.toy.scorers import pair_auc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 12)
    feats = torch.from_numpy(rng.normal(size=(12, 4)) + labels[:, None]).float()
    z = torch.nn.functional.normalize(feats, dim=-1)
    sims = (z @ z.T).numpy()
    pairs = list(itertools.combinations(range(12), 2))
    pos = [sims[i, j] for i, j in pairs if labels[i] == labels[j]]
    neg = [sims[i, j] for i, j in pairs if labels[i] != labels[j]]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert abs(pair_auc(feats, labels) - brute) < 1e-9


def test_scorer_training_inputs_are_the_scorers_own_preprocessing():
    """The toy scorers train on exactly what `Preprocess.tensors` makes of the PNGs a sweep writes."""
    from PIL import Image

    from styleprobe.metrics import preprocess
    from styleprobe.models.toy.scorers import scorer_pixels

    images, _, _ = world.batch(world.samples(4, 11))
    pils = [Image.fromarray(((im.transpose(1, 2, 0) + 1) * 127.5).round().clip(0, 255).astype("uint8")) for im in images]
    for pre in (preprocess.CLIP, preprocess.DINO):
        assert torch.allclose(scorer_pixels(pre, torch.from_numpy(images)), pre.tensors(pils), atol=1e-5)


def test_the_toy_preset_without_its_weights_says_how_to_make_them(tmp_path):
    from styleprobe.errors import ModelUnavailableError
    from styleprobe.models.toy.assemble import ensure_toy

    with pytest.raises(ModelUnavailableError, match=r"toy world's unet weights are not in .*python -m styleprobe.models.toy.train"):
        ensure_toy(tmp_path / "cache", folder=tmp_path)


@pytest.mark.slow
def test_toy_weights_assemble_into_the_real_layouts_and_run_a_scored_sweep(tmp_path, monkeypatch):
    """Untrained toy weights of every stage, in a folder: `model=toy` assembles them, loads them with from_pretrained
    and load_ip_adapter, generates, and scores with the toy scorers (open_clip, CSD and DINO formats), every row
    naming them."""
    from hydra import compose, initialize_config_dir

    from styleprobe.config import CONFIG_DIR
    from styleprobe.run.store import Store
    from styleprobe.run.sweep import run

    weights = _untrained_weights(tmp_path / "weights")
    monkeypatch.setenv("STYLEPROBE_TOY_WEIGHTS", str(weights))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"results_root={tmp_path / 'results'}", "model=toy", "data=small",
                                                       "injection=presets", "experiment=custom", "sampler.steps=2",
                                                       "analyze=false"])
    result = run(cfg)
    table = Store(cfg.results_dir).table()
    assert result.generated == len(table) == 4 * 2 * 2
    assert set(table.model) == {"toy"} and table.style_csd.notna().all() and table.ref_dinov2.notna().all()
    assert table.style_csd_model.str.startswith("toy-world").all() and table.text_clip_model.str.contains("toy").all()



def test_generate_prompts_each_image_by_its_own_reference(tmp_path):
    """The held-out image-prompt check batches different references: each image must see only its own (diffusers'
    pipeline alone would repeat the whole batch's embeddings into every sample)."""
    from safetensors.torch import load_file

    from styleprobe.models.toy import adapter
    from styleprobe.models.toy.pipeline import build_pipeline, generate
    from styleprobe.models.toy.unet import build_unet

    folder = _untrained_weights(tmp_path / "weights")
    pipe = build_pipeline(folder, build_unet().eval())
    adapter.attach(pipe.unet, {k: v.float() for k, v in load_file(str(folder / "adapter.safetensors")).items()})
    embeds = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 3
    captions, seeds = ["a star", "a star"], [5, 5]
    together = generate(pipe, captions, seeds, steps=2, image_embeds=embeds)
    alone = torch.cat([generate(pipe, captions[i : i + 1], seeds[i : i + 1], steps=2, image_embeds=embeds[i : i + 1])
                       for i in range(2)])
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the references do steer the images
    assert torch.allclose(together, alone, atol=1e-4)

def _untrained_weights(weights):
    """A weights folder of every stage, untrained (the shipped VAE and its record aside), as the training writes it."""
    import shutil

    from safetensors.torch import save_file

    from styleprobe.models.toy import adapter, clip, scorers, unet
    from styleprobe.models.toy.train import save_half
    from styleprobe.models.toy.weights import FOLDER

    weights.mkdir()
    for name in ("vae.safetensors", "training.json", "classifier.safetensors"):
        shutil.copy(FOLDER / name, weights / name)
    torch.manual_seed(0)
    towers = clip.build()
    for name in ("text_encoder", "text_encoder_2", "image_encoder"):
        save_half(towers[name], weights / f"{name}.safetensors")
    model = unet.build_unet()
    save_half(model, weights / "unet.safetensors")
    adapter.attach(model, adapter.initial_state(model, clip.EMBED_DIM, torch.Generator().manual_seed(0)))
    save_file({k: v.half() for k, v in adapter.export(model).items()}, str(weights / "adapter.safetensors"))
    for name, build in (("open_clip", scorers.build_open_clip), ("csd", scorers.build_csd), ("dino", scorers.build_dino)):
        save_half(build(), weights / f"scorer_{name}.safetensors")
    return weights



@pytest.mark.slow
def test_a_killed_unet_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Killed after a checkpoint and run again, the UNet stage ends with the weights and losses of an uninterrupted
    run: the checkpoint holds every random stream and optimizer state."""
    from styleprobe.models.toy import unet

    folder = _untrained_weights(tmp_path / "weights")
    recipe = unet.UNetTraining(steps=4, batch_size=4, train_images=32)
    whole, _, whole_record = unet.train_unet(folder, recipe)
    checkpoint = tmp_path / "unet-checkpoint.pt"
    real_optimise = unet.optimise

    def killed_at_step_4(*args, **kwargs):
        if args[4] == 4:
            raise KeyboardInterrupt  # the kill, after the checkpoint of step 2 and the update of step 3
        real_optimise(*args, **kwargs)

    monkeypatch.setattr(unet, "optimise", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        unet.train_unet(folder, recipe, checkpoint=checkpoint, checkpoint_every=2)
    assert torch.load(checkpoint, weights_only=True)["step"] == 2
    monkeypatch.setattr(unet, "optimise", real_optimise)
    resumed, _, resumed_record = unet.train_unet(folder, recipe, checkpoint=checkpoint, checkpoint_every=2)
    assert resumed_record["final_loss"] == whole_record["final_loss"]
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ValueError, match="another UNet recipe"):
        unet.train_unet(folder, unet.UNetTraining(steps=5, batch_size=4, train_images=32), checkpoint=checkpoint)

@pytest.mark.slow
def test_unet_and_adapter_training_are_reproducible(tmp_path):
    """A seed and a recipe determine the trained UNet and adapter (a few steps, twice each)."""
    from styleprobe.models.toy import adapter, unet

    folder = _untrained_weights(tmp_path / "weights")
    recipe = unet.UNetTraining(steps=2, batch_size=4, train_images=32)
    (a, _, ra), (b, _, rb) = unet.train_unet(folder, recipe), unet.train_unet(folder, recipe)
    assert ra["final_loss"] == rb["final_loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    recipe = adapter.AdapterTraining(steps=2, batch_size=4, train_images=32)
    first, second = adapter.train_adapter(folder, recipe)[0], adapter.train_adapter(folder, recipe)[0]
    x, y = adapter.export(first.unet), adapter.export(second.unet)
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert any(not torch.equal(x[k], v) for k, v in adapter.initial_state(first.unet, 32, torch.Generator()).items()
               if k.endswith("to_v_ip.weight"))  # it moved from the to_v copy it starts as
