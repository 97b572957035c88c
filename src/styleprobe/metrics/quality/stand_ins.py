"""Tiny random stand-ins for the four quality scorers, written in their published file layouts.

Each is read back by the same loader as the real files, so every loader and scorer runs offline:

    imagereward/ImageReward.pt, med_config.json   THUDM/ImageReward's two files (a bare state dict; BLIP's med config)
    imagereward/bert-base-uncased/                 a word-piece vocabulary in bert-base-uncased's layout (vocab.txt)
    pickscore/model/                               yuvalkirstain/PickScore_v1's layout: a transformers CLIPModel folder
    pickscore/processor/                           laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor files (CLIP's
                                                   preprocessing; a byte-level BPE vocabulary without merges)
    hps/HPS_v2.1_compressed.pt, <config>.json      xswu/HPSv2's checkpoint ({"state_dict": ...} of an open_clip CLIP)
    aesthetic/sac+logos+ava1-l14-linearMSE.pth     the LAION aesthetic head's bare state dict, on the tiny open_clip
                                                   model's 24-d embeddings (metrics/tiny_scorers.py)

Input sizes and preprocessing are the real ones (224 px); only widths and depths are small. Their numbers check the
machinery and say nothing about image quality: the table names them "tiny random ..." (and on toy images too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from styleprobe.disk import build_once, default_cache_dir

if TYPE_CHECKING:
    import torch

VERSION = "tiny-quality-v1"
SEED = 20240603
TINY_HPS_NAME = "styleprobe-tiny-hps"
#: ViT-H-14's layout in miniature, with its GELU (HPS's model is open_clip ViT-H-14, not a QuickGELU one).
TINY_HPS_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HPS_FILE = "HPS_v2.1_compressed.pt"


def ensure_tiny_quality(cache_dir: Path | None = None) -> Path:
    """The folder of the tiny quality stand-ins, built first (atomically, a few seconds) if absent."""
    root = (cache_dir or default_cache_dir()) / VERSION
    return build_once(root, _build, {"version": VERSION, "seed": SEED})


def tiny_hps_model(cache_dir: Path | None = None) -> tuple[str, Path]:
    """(open_clip model name, HPS checkpoint) of the tiny HPS stand-in, its config registered with open_clip."""
    import open_clip

    root = ensure_tiny_quality(cache_dir) / "hps"
    if TINY_HPS_NAME not in open_clip.list_models():
        open_clip.add_model_config(root / f"{TINY_HPS_NAME}.json")
    return TINY_HPS_NAME, root / HPS_FILE


def word_piece_vocab() -> list[str]:
    """BERT's special tokens, then letters, digits and punctuation, each also as a '##' continuation: every lowercase
    English word tokenizes (letter by letter), as it would with bert-base-uncased's 30522 pieces."""
    import string

    pieces = list(string.ascii_lowercase + string.digits)
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces, *(f"##{p}" for p in pieces), *string.punctuation]


def byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level BPE vocabulary without merges: every byte's symbol, alone and word-final, and the two specials
    (the ids of <|startoftext|> and <|endoftext|> follow them, as in CLIP's vocabulary they come last)."""
    from open_clip.tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(f"{s}</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def _build(root: Path) -> None:
    _build_imagereward(root / "imagereward")
    _build_pickscore(root / "pickscore")
    _build_hps(root / "hps")
    _build_aesthetic(root / "aesthetic")


def _build_imagereward(folder: Path) -> None:
    import torch
    from transformers import BertTokenizer

    from styleprobe.metrics.quality.blip import (
        VIT_ARCHS,
        ImageRewardModel,
        TextConfig,
        med_config_dict,
        save_imagereward,
    )

    tokenizer_dir = folder / "bert-base-uncased"
    tokenizer_dir.mkdir(parents=True)
    vocab = word_piece_vocab()
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tokenizer_dir / "vocab.txt"), do_lower_case=True).save_pretrained(tokenizer_dir)
    text = TextConfig(vocab_size=len(vocab) + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, layer_norm_eps=1e-12, hidden_act="gelu",
                      encoder_width=VIT_ARCHS["tiny"].width)  # + [DEC] and [ENC], which BLIP's tokenizer adds
    (folder / "med_config.json").write_text(json.dumps(med_config_dict(text), indent=2))
    torch.manual_seed(SEED)
    model = ImageRewardModel(VIT_ARCHS["tiny"], text)
    _spread_head(model.mlp)
    save_imagereward(model, folder / "ImageReward.pt")


def _build_pickscore(folder: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    processor = folder / "processor"
    processor.mkdir(parents=True)
    vocab = byte_level_vocab()
    (processor / "vocab.json").write_text(json.dumps(vocab))
    (processor / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(processor / "vocab.json"), str(processor / "merges.txt")).save_pretrained(processor)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(processor)
    for name in ("tokenizer_config.json", "preprocessor_config.json"):  # as the laion repository's files name it
        settings = json.loads((processor / name).read_text())
        (processor / name).write_text(json.dumps({**settings, "processor_class": "CLIPProcessor"}, indent=2))
    start, end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu",
                     "bos_token_id": start, "eos_token_id": end, "pad_token_id": end},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 224, "patch_size": 32, "hidden_act": "gelu"},
        projection_dim=24,
    )
    torch.manual_seed(SEED + 1)
    CLIPModel(config).eval().save_pretrained(folder / "model")


def _build_hps(folder: Path) -> None:
    import logging

    import open_clip
    import torch

    folder.mkdir(parents=True)
    config = folder / f"{TINY_HPS_NAME}.json"
    config.write_text(json.dumps(TINY_HPS_CONFIG, indent=1))
    if TINY_HPS_NAME not in open_clip.list_models():
        open_clip.add_model_config(config)
    torch.manual_seed(SEED + 2)
    logging.disable(logging.WARNING)  # open_clip warns that a model built without weights is random: that is the point
    try:
        state = open_clip.create_model(TINY_HPS_NAME).state_dict()
    finally:
        logging.disable(logging.NOTSET)
    torch.save({"epoch": 1, "name": "tiny", "state_dict": state}, folder / HPS_FILE)  # HPS's checkpoint layout


def _build_aesthetic(folder: Path) -> None:
    import torch

    from styleprobe.metrics.quality.heads import RewardMLP
    from styleprobe.metrics.tiny_scorers import TINY_CLIP_CONFIG

    folder.mkdir(parents=True)
    torch.manual_seed(SEED + 3)
    head = RewardMLP(int(TINY_CLIP_CONFIG["embed_dim"]))
    _spread_head(head)
    torch.save(head.state_dict(), folder / AESTHETIC_FILE)


def _spread_head(head: torch.nn.Module) -> None:
    """Give a random head's last layer a bias and gain, so stand-in scores differ visibly between images (torch's
    default init makes a five-layer affine head's output nearly constant)."""
    import torch

    with torch.no_grad():
        last = head.layers[7]
        last.weight.mul_(50.0)
        last.bias.fill_(0.5)
