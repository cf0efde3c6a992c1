"""Tiny, randomly initialised diffusion pipelines (image and video) for demos and tests.

Nothing is downloaded: the UNet, VAE and CLIP text encoder are built from small configs with
a fixed seed, and the tokenizer's vocabulary is the 256 byte symbols of CLIP's byte-level BPE
(no merges), written here. The weights are random, so images look like noise; the pipeline is
otherwise real (``save_pretrained`` / ``from_pretrained``, real schedulers, real step callbacks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO_SEED = 0
DEMO_SAMPLE_SIZE = 8  # latent size; the VAE scales by 8 (as Stable Diffusion's), so 64 px


def _byte_symbols() -> list[str]:
    """CLIP's (GPT-2's) reversible byte → unicode table, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tokenizer(directory: Path) -> int:
    """Write a byte-level CLIP tokenizer (vocab.json, merges.txt); returns the vocab size."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(
        vocab_file=str(directory / "vocab.json"),
        merges_file=str(directory / "merges.txt"),
        model_max_length=77,
    )
    tokenizer.save_pretrained(str(directory))
    return len(vocab)


def _text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=DEMO_SAMPLE_SIZE * 8,
    )


def _image_pipeline(tokenizer: Any, vocab_size: int) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=DEMO_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        # Attention only at the coarsest level keeps 1024 px affordable on one CPU core.
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=_text_encoder(vocab_size),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _video_pipeline(tokenizer: Any, vocab_size: int) -> Any:
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    unet = UNet3DConditionModel(
        sample_size=DEMO_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
        up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    return TextToVideoSDPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=_text_encoder(vocab_size),
        tokenizer=tokenizer,
        scheduler=scheduler,
    )


DEMO_HINTS: dict[str, dict[str, int]] = {
    "image": {"default_steps": 4, "min_side": 64, "max_side": 1024},
    "video": {"default_steps": 4, "min_side": 64, "max_side": 256},
}


def make_demo_pipeline(directory: Path, kind: str = "image") -> Path:
    """Build the tiny pipeline (image: Stable Diffusion; video: TextToVideoSD) and save it."""
    import torch
    from transformers import CLIPTokenizer

    directory = Path(directory)
    tokenizer_dir = directory / "tokenizer"
    vocab_size = write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(DEMO_SEED)
    builders = {"image": _image_pipeline, "video": _video_pipeline}
    if kind not in builders:
        raise ValueError(f"demo kind is image or video, not {kind!r}")
    build = builders[kind]
    pipeline = build(tokenizer, vocab_size)
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    # Defaults the worker reads from the model directory (its config may override them).
    (directory / "render.json").write_text(json.dumps(DEMO_HINTS[kind], indent=2) + "\n")
    return directory
