"""lm-evaluation-harness model ``blt``: BLT log-likelihoods on bytes, through the one scorer (``training.scoring``).

A request's text is UTF-8 bytes; context + continuation are patched together on the fly, as the model would
see them (the model's entropy model and patching rule, ``patch_on_the_fly``), after the document-start token;
only the continuation's bytes are scored. Sequences longer than one window keep the last ``seq_len + 1``
tokens when the continuation fits in them (left truncation, as lm-eval's HF model does), else they run across
windows by the training rule. ``generate_until`` decodes greedily with the incremental generator
(``blt_model.generate``, which reads the prompt from its first byte, with no document-start token).

``--model blt --model_args model=URL[,seq_len=N,batch_size=B,entropy_model=URL,device=D]`` from lm-eval's own
command line once this module is imported, or ``blt eval MODEL --tasks ...``.
"""

from __future__ import annotations

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from blt_model.generate import generate

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

    def generate_until(self, requests) -> list[str]:
        """Greedy continuations from the incremental generator (``blt_model.generate``: exact, O(1) per byte),
        cut at the first stop string; requests with the same byte budget run as one batch."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            context, kwargs = request.args
            if not context:
                raise ValueError("blt: generate_until needs a non-empty context")
            groups.setdefault(int(kwargs.get("max_gen_toks", self.max_gen_bytes)), []).append(i)
        loaded = self.loaded
        for budget, members in groups.items():
            prompts = [requests[i].args[0].encode("utf-8") for i in members]
            results = generate(loaded.model, loaded.patcher, prompts, loaded.patching, max_new_bytes=budget,
                               greedy=True)
            for i, result in zip(members, results):
                until = requests[i].args[1].get("until") or []
                text = result.new_bytes.decode("utf-8", errors="replace")
                for stop in [until] if isinstance(until, str) else until:
                    text = text.split(stop)[0]
                out[i] = text
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
