"""Samples as a run trains: at each checkpoint, greedy continuations of a few fixed prompts, written by rank 0 to
``samples/step-N.json`` (``training.run_dashboard.write_samples``) for the run dashboard.

They come from ``blt_model.generate`` (incremental decoding, the patcher and rule the run trains with), so the
text is exactly what ``blt generate --greedy`` prints for the checkpoint's weights; a few prompts of 48 bytes cost
well under a second for the small presets, little next to writing the checkpoint.
"""

from __future__ import annotations

import codecs

import torch

from blt_model import ByteLatentTransformer, EntropyModel
from blt_model.generate import GenerationResult, check_incremental, generate
from blt_model.patching import PatchingParams
from pipeline.io.logs import get_logger

from .config import SampleConfig
from .model_source import RunPatching
from .run_dashboard import Sample, write_samples

log = get_logger(__name__)


def as_text_sample(prompt: str, result: GenerationResult) -> Sample:
    """The generation as text, its patches re-cut to the text's UTF-8 bytes: an invalid byte is shown as U+FFFD
    (3 bytes), and a patch that starts inside a character starts at that character."""
    data = result.prompt + result.new_bytes
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pieces, ends, size = [], [], 0  # ends[i]: UTF-8 size of the text decoded once byte i is in
    for i in range(len(data)):
        piece = decoder.decode(data[i : i + 1])
        pieces.append(piece)
        size += len(piece.encode())
        ends.append(size)
    tail = decoder.decode(b"", final=True)
    pieces.append(tail)
    size += len(tail.encode())
    raw_starts, at = [], 0
    for length in result.patch_lengths:
        raw_starts.append(at)
        at += length
    cuts = sorted({0, *(ends[p - 1] for p in raw_starts if p > 0)} | {size})
    lengths = [b - a for a, b in zip(cuts, cuts[1:]) if b > a]
    text = "".join(pieces)
    return Sample(prompt, text[len(prompt):], lengths)


class CheckpointSampler:
    """Writes a run's samples at each checkpoint; model-agnostic callers only say when (``write(step)``)."""

    def __init__(self, cfg: SampleConfig, output: str, run: RunPatching | None, device: torch.device) -> None:
        self.cfg, self.output, self.run, self.device = cfg, output, run, device
        self.patcher: EntropyModel | None = None
        self.ready = False
        self.off = not cfg.enabled

    def _prepare(self) -> PatchingParams | None:
        """The run's rule and its patcher (loaded once), or None (with one log line) when samples cannot be made."""
        if self.run is None:
            log.warning("no samples: this run has no single recorded patching rule (e.g. a mix of datasets)")
            return None
        try:
            check_incremental(self.run.params)
        except ValueError as exc:
            log.warning("no samples: %s", exc)
            return None
        if not self.ready and self.run.params.needs_entropies:
            if not self.run.entropy_model:
                log.warning("no samples: the run's patch set names no entropy model")
                return None
            self.patcher = self.run.load_patcher().to(self.device).eval()
        self.ready = True
        return self.run.params

    def write(self, step: int, model: ByteLatentTransformer) -> str | None:
        """Greedy continuations of the prompts by ``model`` (unsharded, on this rank) -> samples/step-N.json."""
        if self.off:
            return None
        params = self._prepare()
        if params is None:
            self.off = True  # said once; no further attempts
            return None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                results = generate(model, self.patcher, [p.encode() for p in self.cfg.prompts], params,
                                   self.cfg.max_new_bytes, greedy=True)
        finally:
            model.train(was_training)
        return write_samples(self.output, step,
                             [as_text_sample(p, r) for p, r in zip(self.cfg.prompts, results)])
