"""``blt eval`` against the training loop and HF on a briefly trained tiny BLT; prints a table.

Trains a tiny BLT on a preprocessed dataset (default: the demo's, ``blt demo`` first) with a document-level
validation split, then compares: the run's own final ``val_bits_per_byte``; ``blt eval RUN --dataset DS
--validation-fraction F`` (in one process and on Ray); the former packed-window validation (documents end to
end, each window's mean loss, last partial window dropped) for reference; and the lm-eval ``blt`` model's
log-likelihoods against sums of HF ``BltForCausalLM`` logits from the run's HF export (same weights, HF's
patcher and threshold).

    python bench/eval.py [--dataset out/demo/dataset] [--steps 150] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.eval import EvalConfig, run_eval  # noqa: E402
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader  # noqa: E402
from pipeline.stream.mixing import StreamConfig  # noqa: E402
from training.blt_loop import run_training  # noqa: E402
from training.config import ClusterConfig, LogConfig, TrainConfig  # noqa: E402
from training.config import EvalConfig as TrainEvalConfig  # noqa: E402
from training.evaluate import load  # noqa: E402
from training.harness import BltLM  # noqa: E402
from training.metrics import read_metrics  # noqa: E402
from training.scoring import DOC_START, as_stored  # noqa: E402

TASKS = Path(__file__).resolve().parent.parent / "tests" / "data" / "eval_tasks"


class _Request:
    def __init__(self, *args) -> None:
        self.args = args


@torch.no_grad()
def packed_validation(model, dataset: str, seq_len: int, fraction: float) -> float:
    """Bits/byte the way the training loop computed it before: packed windows of the held-out documents."""
    loader = PatchedWindowLoader(LoaderConfig(dataset, None, seq_len, 4, stream=StreamConfig(
        shuffle=False, validation_fraction=fraction)))
    nats, count = 0.0, 0
    for batch in loader.validation():
        loss = model(batch.tokens, batch.patch_lengths, batch.labels).loss
        nats += float(loss) * batch.labels.numel()
        count += batch.labels.numel()
    return nats / count / math.log(2)


@torch.no_grad()
def hf_loglikelihood(hf, context: str, continuation: str) -> float:
    """Sum of HF log-probabilities of the continuation's bytes; HF's patcher and threshold rule on
    context + continuation (scores rounded as stored), after the document-start token."""
    from transformers.models.blt.modeling_blt import BltPatcher

    data = (context + continuation).encode()
    ids = torch.tensor(list(data))[None] + 4
    entropies = hf.model.patcher(ids, patch_size=4, threshold=1.0)[0]
    lengths = BltPatcher.patch_lengths_from_entropies(as_stored(entropies), ids.shape[1], patch_size=4,
                                                      threshold=hf.config.patching_threshold)[0]
    lengths = lengths[lengths > 0]
    tokens = torch.cat([torch.tensor([DOC_START]), ids[0]])
    patches = torch.cat([torch.tensor([1]), lengths])
    logits = hf(tokens[None], patch_lengths=patches[None], use_cache=False).logits[0, :-1].double()
    logp = logits.log_softmax(-1)[torch.arange(len(tokens) - 1), tokens[1:]]
    return float(logp[len(context.encode()):].sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="out/demo/dataset")
    parser.add_argument("--workdir", default="out/bench_eval")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    args = parser.parse_args()
    run = str(Path(args.workdir) / f"run-{int(time.time())}")
    started = time.perf_counter()
    run_training(TrainConfig(dataset=args.dataset, output=run, steps=args.steps, seq_len=args.seq_len, batch_size=4,
                             log=LogConfig(every=max(1, args.steps // 5)),
                             eval=TrainEvalConfig(every=args.steps, batches=1 << 20,
                                                  validation_fraction=args.validation_fraction),
                             cluster=ClusterConfig(num_workers=1)), use_ray=False)
    trained = time.perf_counter() - started
    final = read_metrics(run)[-1]
    rows = [(f"training loop val_bits_per_byte (step {final['step']})", final["val_bits_per_byte"])]
    for use_ray in (False, True):
        started = time.perf_counter()
        report = run_eval(EvalConfig(model=run, dataset=[args.dataset], validation_fraction=args.validation_fraction,
                                     output="unused"), use_ray=use_ray)
        overall = report["bits_per_byte"]["overall"]
        rows.append((f"blt eval ({'Ray' if use_ray else 'in process'}, {time.perf_counter() - started:.1f}s)",
                     overall["bits_per_byte"]))
    loaded = load(run)
    rows.append(("packed windows (former validation), for reference",
                 packed_validation(loaded.model, args.dataset, args.seq_len, args.validation_fraction)))

    from transformers import BltForCausalLM

    hf = BltForCausalLM.from_pretrained(str(Path(run) / "hf")).eval()
    requests = []
    for line in (TASKS / "mc.jsonl").read_text().splitlines():
        doc = json.loads(line)
        context = f"Question: {doc['question']}\nAnswer:"
        requests += [_Request(context, " " + choice) for choice in doc["choices"]]
    for line in (TASKS / "gen.jsonl").read_text().splitlines():
        doc = json.loads(line)
        requests.append(_Request(doc["prompt"], doc["answer"]))
    lm = BltLM(loaded=loaded, seq_len=args.seq_len)
    ours = [ll for ll, _ in lm.loglikelihood(requests)]
    reference = [hf_loglikelihood(hf, *r.args) for r in requests]
    diff = max(abs(a - b) for a, b in zip(ours, reference))

    width = max(len(r[0]) for r in rows)
    print(f"tiny BLT, {args.steps} steps on {args.dataset} ({trained:.0f}s), seq_len {args.seq_len}, "
          f"{overall['documents']} held-out documents, {overall['bytes']} bytes, "
          f"{overall['bytes_per_patch']:.2f} bytes/patch")
    print(f"{'figure'.ljust(width)}  bits/byte")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value:.6f}")
    print(f"{'|blt eval - training loop|'.ljust(width)}  {abs(rows[1][1] - rows[0][1]):.2e}")
    print(f"harness loglikelihood vs HF BltForCausalLM logits: max |diff| {diff:.2e} nats over {len(requests)} "
          f"requests (mean |ll| {sum(abs(x) for x in reference) / len(reference):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
