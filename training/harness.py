"""lm-evaluation-harness model ``blt``: BLT log-likelihoods on bytes, through the one scorer (``training.scoring``).

A request's text is UTF-8 bytes; context + continuation are patched together on the fly, as the model would
see them (the model's entropy model and patching rule, ``patch_on_the_fly``), after the document-start token;
only the continuation's bytes are scored. Sequences longer than one window keep the last ``seq_len + 1``
tokens when the continuation fits in them (left truncation, as lm-eval's HF model does), else they run across
windows by the training rule. ``generate_until`` decodes greedily by full recompute: every new byte re-patches
and re-reads the last window.

``--model blt --model_args model=URL[,seq_len=N,batch_size=B,entropy_model=URL,device=D]`` from lm-eval's own
command line once this module is imported, or ``blt eval MODEL --tasks ...``.
"""

from __future__ import annotations

import numpy as np
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from blt_model.tokens import BYTE_OFFSET

from .scoring import ByteSequence, patch_on_the_fly, prefix_sequence, score_sequences


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


@register_model("blt")
class BltLM(LM):
    def __init__(self, model: str | None = None, loaded=None, seq_len: int = 512, batch_size: int = 8,
                 max_gen_bytes: int = 256, entropy_model: str | None = None, device: str = "auto") -> None:
        """``loaded``: a ``LoadedModel`` (model, patcher, patching); else ``model`` is its URL."""
        super().__init__()
        if loaded is None:
            if model is None:
                raise ValueError("blt: give model=URL")
            from .evaluate import load

            loaded = load(model, entropy_model, device)
        loaded.model.eval()
        self.loaded = loaded
        self.seq_len, self.batch_size, self.max_gen_bytes = int(seq_len), int(batch_size), int(max_gen_bytes)

    # ---- sequences --------------------------------------------------------------------------------------
    def _sequences(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[ByteSequence]:
        """(context bytes, scored bytes) -> sequences patched on context + scored bytes together."""
        datas = [np.concatenate([c, s]) for c, s in pairs]
        lengths = patch_on_the_fly(self.loaded.patcher, self.loaded.patching, datas)
        out = []
        for (context, _), data, lens in zip(pairs, datas, lengths):
            seq = prefix_sequence(data, lens, len(context))
            cut = len(seq.tokens) - (self.seq_len + 1)
            if cut > 0 and cut < seq.first_target:
                seq = ByteSequence(seq.tokens[cut:], seq.starts[cut:], seq.first_target - cut)
            out.append(seq)
        return out

    def _score(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        return score_sequences(self.loaded.model, self._sequences(pairs), self.seq_len, self.batch_size)

    # ---- lm-eval API ------------------------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [(_bytes(r.args[0]), _bytes(r.args[1])) for r in requests]
        return [(-s.nats, bool(s.greedy)) for s in self._score(pairs)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        pairs = [(np.zeros(0, dtype=np.uint8), _bytes(r.args[0])) for r in requests]
        return [-s.nats for s in self._score(pairs)]

    @torch.no_grad()
    def _next_byte(self, data: np.ndarray) -> int:
        """Greedy next token after ``data`` (a byte, or EOS_ID - BYTE_OFFSET for end of document)."""
        [lengths] = patch_on_the_fly(self.loaded.patcher, self.loaded.patching, [data])
        seq = prefix_sequence(data, lengths)
        tokens, starts = seq.tokens[-self.seq_len :], seq.starts[-self.seq_len :].copy()
        starts[:2] = True
        first = np.flatnonzero(starts)
        patch_lengths = torch.from_numpy(np.diff(first, append=len(tokens)))[None]
        model = self.loaded.model
        device = next(model.parameters()).device
        logits = model(torch.from_numpy(tokens)[None].to(device), patch_lengths.to(device)).logits
        return int(logits[0, -1].argmax()) - BYTE_OFFSET

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_gen_bytes))
            data, generated = _bytes(context), bytearray()
            for _ in range(budget):
                value = self._next_byte(np.concatenate([data, np.frombuffer(bytes(generated), dtype=np.uint8)]))
                if value < 0:  # a special token: EOS ends the document
                    break
                generated.append(value)
                text = generated.decode("utf-8", errors="ignore")
                if any(stop in text for stop in until):
                    break
            text = generated.decode("utf-8", errors="replace")
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out




def run_tasks(lm: LM, tasks: list[str], include_path: str | None = None, num_fewshot: int | None = None,
              limit: float | None = None, log_samples: bool = False, builtin_tasks: bool = True) -> dict:
    """``lm_eval.simple_evaluate`` on ``lm``; ``include_path`` adds a folder of task YAMLs; without
    ``builtin_tasks`` only those are indexed (lm-eval's own index of thousands of YAMLs takes half a minute)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=builtin_tasks)
    return simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                           log_samples=log_samples)
