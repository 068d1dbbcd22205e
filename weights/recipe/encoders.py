"""Tokenizers built from the prompt vocabulary, and tiny seeded T5 / CLIP / DINOv2 encoders.

Nothing is downloaded: the tokenizers are WordLevel vocabularies made with the `tokenizers`
library, the encoders are the real transformers classes at a seeded random initialisation,
frozen. The experts and the router learn to read whatever these produce.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BitImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    Dinov2Config,
    Dinov2Model,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from .data import COLOURS, MOTIONS, SHAPES, SIZE
from .folder import CLIP, CLIP_TOKENIZER, DINOV2, T5, T5_TOKENIZER

TEXT_MAX_LENGTH = 12
WIDTH, DEPTH = 64, 2  # every encoder's hidden size and layer count (4 heads each)
TEXT_DIM = CLIP_DIM = DINO_DIM = WIDTH  # T5 states, pooled CLIP, pooled DINOv2


def vocabulary() -> list[str]:
    words = ["a", "an"] + list(COLOURS) + list(SHAPES)
    for motion in MOTIONS:
        words += [w for w in motion.split() if w not in words]
    return words


def _word_level(specials: list[str], unk: str) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(specials + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    return tok


def build_t5_tokenizer(max_length: int = TEXT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """T5 convention: <pad>=0, </s>=1, <unk>=2, and </s> appended."""
    tok = _word_level(["<pad>", "</s>", "<unk>"], "<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


def build_clip_tokenizer(max_length: int = TEXT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """CLIP convention: <|startoftext|> prompt <|endoftext|>, padded with <|endoftext|>.

    CLIPTextModel pools at the first `eos_token_id` position, so padding with eos is fine. The
    eos id is deliberately not 2 (transformers treats eos_token_id == 2 as a legacy config and
    pools at argmax(input_ids) instead).
    """
    tok = _word_level(["<|startoftext|>", "<|endoftext|>", "<|unk|>"], "<|unk|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|unk|>",
        model_max_length=max_length,
    )


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def build_t5(vocab_size: int, seed: int, width: int = WIDTH, depth: int = DEPTH) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size, d_model=width, d_kv=width // 4, d_ff=2 * width, num_layers=depth, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return _frozen(T5EncoderModel(config))


def build_clip(vocab_size: int, seed: int, max_length: int = TEXT_MAX_LENGTH, width: int = WIDTH,
               depth: int = DEPTH) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, projection_dim=width,
        num_hidden_layers=depth, num_attention_heads=4, max_position_embeddings=max_length,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return _frozen(CLIPTextModel(config))


def build_dinov2(seed: int, image_size: int = SIZE, width: int = WIDTH,
                 depth: int = DEPTH) -> tuple[Dinov2Model, BitImageProcessor]:
    config = Dinov2Config(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=4, mlp_ratio=2, image_size=image_size,
        patch_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = _frozen(Dinov2Model(config))
    processor = BitImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    )
    return model, processor


class Encoders:
    """The frozen conditioning stack, built from one seed (paris-mini's at the default size)."""

    def __init__(self, seed: int = 0, max_length: int = TEXT_MAX_LENGTH, width: int = WIDTH, depth: int = DEPTH):
        self.max_length = max_length
        self.t5_tokenizer = build_t5_tokenizer(max_length)
        self.clip_tokenizer = build_clip_tokenizer(max_length)
        self.t5 = build_t5(len(self.t5_tokenizer), seed, width, depth)
        self.clip = build_clip(len(self.clip_tokenizer), seed + 1, max_length, width, depth)
        self.dinov2, self.image_processor = build_dinov2(seed + 2, width=width, depth=depth)

    @classmethod
    def from_model(cls, model) -> "Encoders":
        """The frozen stack of a loaded model folder (`pipeline.loader.DDMModel`)."""
        enc = cls.__new__(cls)
        enc.max_length = model.manifest.components.t5.max_length
        enc.t5_tokenizer, enc.clip_tokenizer = model.t5_tokenizer, model.clip_tokenizer
        enc.t5, enc.clip = model.get("t5"), model.get("clip")
        enc.dinov2, enc.image_processor = model.get("dinov2"), model.image_processor
        return enc

    def save(self, out: Path) -> None:
        out = Path(out)
        self.t5.save_pretrained(out / T5)
        self.t5_tokenizer.save_pretrained(out / T5_TOKENIZER)
        self.clip.save_pretrained(out / CLIP)
        self.clip_tokenizer.save_pretrained(out / CLIP_TOKENIZER)
        self.dinov2.save_pretrained(out / DINOV2)
        self.image_processor.save_pretrained(out / DINOV2)

    # Same calls the inference pipeline makes, so training and inference condition identically.
    def text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from pipeline.encoders import encode_clip, encode_t5

        return (
            encode_t5(self.t5, self.t5_tokenizer, prompts, self.max_length),
            encode_clip(self.clip, self.clip_tokenizer, prompts, self.max_length),
        )

    def image(self, frames) -> torch.Tensor:
        """uint8 (N, H, W, 3) first frames -> pooled DINOv2 features (N, DINO_DIM)."""
        from PIL import Image

        from pipeline.encoders import encode_dinov2

        return encode_dinov2(self.dinov2, self.image_processor, [Image.fromarray(f) for f in frames])
