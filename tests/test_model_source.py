"""load_model: a training run (DCP checkpoint, hf/ export), an HF Blt directory, a bytelatent BLT, each with its
patcher and the patching rule the run trained with; the run's HF export patches in HF's forward as trained."""

from __future__ import annotations

import json

import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from blt_model.patching import PatchingParams, patch_lengths
from blt_model.tokens import bytes_to_tokens
from pipeline.dataset.manifest import Manifest
from pipeline.io.storage import join, read_bytes
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from training.blt_loop import run_training
from training.config import TrainConfig
from training.model_source import PATCHING_FILE, load_model

pytestmark = pytest.mark.timeout(300)

DOC = b"alpha beta gamma delta patch entropy byte latent transformer river stone 42"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step one-worker training run (in-process) on a tiny preprocessed dataset, threshold 2.0."""
    root_path = tmp_path_factory.mktemp("source")
    (root_path / "raw").mkdir()
    root = str(root_path)
    write_object(f"{root}/raw/s0.jsonl", jsonl_bytes(make_docs(1, 30)))
    save_tiny_entropy_model(f"{root}/em")
    run_preprocess(PreprocessConfig(inputs=f"{root}/raw/*.jsonl", output=f"{root}/ds", entropy_model=f"{root}/em",
                                    patching=PatchingParams(threshold=2.0, max_patch_length=6), use_ray=False))
    output = f"{root}/run"
    run_training(TrainConfig(dataset=f"{root}/ds", output=output, steps=2, seq_len=64, batch_size=2, log={"every": 1},
                             cluster={"num_workers": 1}, checkpoint={"every": 2}), use_ray=False)
    return root, output


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_run_records_its_rule_and_loads_from_checkpoint_and_export(run):
    root, output = run
    record = json.loads(read_bytes(join(output, PATCHING_FILE)))
    manifest = Manifest.load(f"{root}/ds")
    assert record["params"] == manifest.patch_sets[manifest.default_patch_set].params
    assert record["entropy_model"] == manifest.entropy_model["url"]
    from_ckpt = load_model(output)
    from_hf = load_model(join(output, "hf"))
    assert from_ckpt.source == "run-checkpoint" and from_ckpt.step == 2 and from_hf.source == "hf"
    expected = PatchingParams(threshold=2.0, max_patch_length=6)
    assert from_ckpt.patching == expected and from_hf.patching == expected
    a, b = _state(from_ckpt.model), _state(from_hf.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    em = _state(from_ckpt.patcher)
    assert all(torch.equal(em[k], v) for k, v in _state(from_hf.patcher).items())
    # `blt convert` of the run writes the same rule and patcher
    from jobs.convert import convert

    convert(output, f"{root}/converted")
    converted = load_model(f"{root}/converted")
    assert converted.patching == expected and torch.equal(converted.patcher.lm_head.weight,
                                                          from_ckpt.patcher.lm_head.weight)
    config = json.loads(read_bytes(f"{root}/converted/config.json"))
    assert config["patch_in_forward"] is True and config["patching_threshold"] == 2.0
    # --entropy-model overrides the one that comes with the model
    other = save_tiny_entropy_model(f"{root}/em2", seed=5)
    swapped = load_model(output, entropy_model=f"{root}/em2")
    assert torch.equal(swapped.patcher.lm_head.weight, other.lm_head.weight)


def test_hf_export_patches_in_forward_as_trained(run):
    """HF's forward on the export, patching itself, gives the loss our model gives with the run's patch rule."""
    pytest.importorskip("transformers")
    from transformers import BltForCausalLM

    _, output = run
    config = json.loads(read_bytes(join(output, "hf", "config.json")))
    assert config["patch_in_forward"] is True and config["patching_threshold"] == 2.0
    assert config["max_patch_length"] == 6 and config["blt_patching"]["hf_expressible"] is True
    hf = BltForCausalLM.from_pretrained(join(output, "hf")).eval()
    assert hf.model.patcher is not None
    loaded = load_model(output)
    tokens = bytes_to_tokens(DOC)[None]
    with torch.no_grad():
        ent = loaded.patcher.entropies(tokens)
        lengths = patch_lengths(loaded.patching, ent, include_next=True)
        assert (lengths[0] > 1).any()  # real patches, not one byte each
        theirs = hf(tokens, labels=tokens, use_cache=False).loss  # HF shifts labels itself
        ours_shifted = torch.nn.functional.cross_entropy(loaded.model(tokens, lengths).logits[0, :-1], tokens[0, 1:])
    torch.testing.assert_close(theirs, ours_shifted, atol=1e-4, rtol=0)


def test_not_a_model_is_one_clear_error(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="no BLT model found"):
        load_model(str(tmp_path))


def test_demo_sample_line_from_a_run(run):
    from jobs.generate import sample_line

    _, output = run
    line = sample_line(output, max_new_bytes=20)
    assert line.startswith("'The") and "\n" not in line and len(line) > len("'The '")


def test_rule_hf_cannot_express_is_recorded_and_still_used(tmp_path, caplog):
    """A space-patched model: HF's config says it does not patch in its forward; load_model still uses the rule."""
    from blt_model.blt import ByteLatentTransformer
    from blt_model.formats.hf import save_hf_checkpoint
    from blt_model.presets import blt_preset
    from training.export import hf_patching_config

    params = PatchingParams("space", None, max_patch_length=8)
    with caplog.at_level("WARNING"):
        fields = hf_patching_config(params, has_patcher=False)
    assert [r for r in caplog.records if "cannot express" in r.getMessage()]
    save_hf_checkpoint(ByteLatentTransformer(blt_preset("tiny")), tmp_path, None, fields)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["patch_in_forward"] is False and config["blt_patching"]["hf_expressible"] is False
    loaded = load_model(str(tmp_path))
    assert loaded.patching == params and loaded.patcher is None


def test_bytelatent_and_hf_directories(tmp_path):
    """An HF-made Blt directory (rule from HF's own fields) and the same model in bytelatent's layout load to the
    same weights, patcher and rule."""
    pytest.importorskip("transformers")
    from hf_reference import bytelatent_compatible, random_hf_config, random_hf_model

    from jobs.convert import convert

    random_hf_model(bytelatent_compatible(random_hf_config(1)), 1).save_pretrained(tmp_path / "hf")
    convert(str(tmp_path / "hf"), str(tmp_path / "bl"))
    loaded = [load_model(str(tmp_path / d)) for d in ("hf", "bl")]
    assert [m.source for m in loaded] == ["hf", "bytelatent"]
    for m in loaded:
        assert m.patching.mode == "entropy" and m.patching.threshold == pytest.approx(1.5)
    a, b = _state(loaded[0].model), _state(loaded[1].model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded[0].patcher.lm_head.weight, loaded[1].patcher.lm_head.weight)


def test_checkpoint_samples_are_greedy_generations_of_its_weights(run):
    """Training writes samples/step-N.json at each checkpoint: the greedy continuation generate() gives for the
    checkpoint's weights, patcher and rule."""
    from blt_model.generate import generate
    from training.config import SampleConfig

    _, output = run
    cfg = SampleConfig()
    data = json.loads(read_bytes(join(output, "samples", "step-00000002.json")))
    assert data["step"] == 2 and [s["prompt"] for s in data["samples"]] == cfg.prompts
    loaded = load_model(output)
    assert loaded.step == 2
    results = generate(loaded.model, loaded.patcher, [p.encode() for p in cfg.prompts], loaded.patching,
                       cfg.max_new_bytes, greedy=True)
    for sample, result in zip(data["samples"], results, strict=True):
        assert len(result.new_bytes) == cfg.max_new_bytes
        assert sample["text"] == result.new_bytes.decode("utf-8", errors="replace")
        assert sum(sample["patch_lengths"]) == len((sample["prompt"] + sample["text"]).encode())
        if sample["text"].encode() == result.new_bytes:  # valid UTF-8: the model's own patches
            assert sample["patch_lengths"] == result.patch_lengths


def test_sample_patches_follow_the_text_when_bytes_are_not_utf8():
    from blt_model.generate import GenerationResult
    from training.samples import as_text_sample

    # raw patches a | b\xc3 | \xa9x | \xff ; text "ab" + "éx\ufffd" (é is \xc3\xa9, \ufffd is 3 bytes)
    result = GenerationResult(b"ab", b"\xc3\xa9x\xff", [1, 2, 2, 1], 0.0)
    sample = as_text_sample("ab", result)
    assert sample.text == "éx\ufffd"
    assert sample.patch_lengths == [1, 1, 3, 3]  # the patch that started inside é starts at é
