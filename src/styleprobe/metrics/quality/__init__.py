"""Quality scores of an output: human-preference models and the LAION aesthetic predictor (role "quality").

    scorer kind           module        score
    quality_imagereward  imagereward   ImageReward v1.0 of (image, prompt): BLIP + reward head, standardised
    quality_pickscore    pickscore     PickScore v1 of (image, prompt): 100 x cos of a preference-tuned CLIP-H
    quality_hps          hps           HPS v2.1 of (image, prompt): cos of a preference-tuned open_clip ViT-H/14
    quality_aesthetic    aesthetic     LAION aesthetic predictor v2 of the image: MLP on CLIP ViT-L/14 (1-10 scale)

Each follows its reference code's preprocessing and scoring rule (cited in its module), reads its published files
safely (`metrics/safe_load.py`), and has a tiny stand-in in the same file layout (`stand_ins.py`).
"""
