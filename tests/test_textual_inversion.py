"""The textual-inversion mimic (advdm/mimic/textual_inversion.py) in the mimicry check:
on the test-bed, clean images passed as "protected" give a fraction whose interval contains
1, and the denoiser, the text encoder and the tokenizer are exactly as they were; the learned
word changes only its own lookups, and only while inside; a model without a text encoder,
a prompt without the word and a word of several tokens are refused by name. SDXL learns the word in both of its encoders;
in float16 and bfloat16 (the hosts' precision) the word learns as in float32."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from advdm.cli import main
from advdm.evaluation.mimicry import MimicryConfig, mimicry_check
from advdm.images import save_png
from advdm.mimic.finetune import FinetuneConfig
from advdm.mimic.textual_inversion import substituted
from advdm.models.checkpoints import load_model

from sample_images import smooth_image
from test_lora import assert_as_before, snapshot

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "testbed" / "model"
PROMPT = "a painting in style sks"  # how the test-bed was trained to read a style

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def testbed():
    return load_model(str(TESTBED), torch.device("cpu"), torch.float32, keep_text=True)


def held_out_style(seeds):
    sys.path.insert(0, str(ROOT / "testbed"))
    import styles

    return [x[None] for x in styles.batch(styles.HELD_OUT, seeds)]


def test_on_the_testbed_clean_as_protected_contains_one_and_everything_is_as_before(testbed):
    from transformers import CLIPTokenizer

    vocabulary = CLIPTokenizer.from_pretrained(TESTBED / "tokenizer").get_vocab()
    train, held = held_out_style(range(10000, 10002)), held_out_style([50000])
    (encoder,) = testbed.text.encoders
    before = snapshot(testbed.denoiser_network), snapshot(encoder)
    config = MimicryConfig(seeds=3, draws=16, finetune=FinetuneConfig(steps=10, batch=2), pictures=1,
                           picture_steps=4, mimic="textual-inversion", ti_prompt=PROMPT)
    m = mimicry_check(testbed, train, held, train, config)
    assert m["mimic"] == "textual-inversion" and m["ti_word"] == "sks"
    assert m["learned"], m  # the learned word does lower the held-out style's loss
    assert m["learned_fraction_low"] <= 1 <= m["learned_fraction_high"]
    assert m["picture_shift"] == 0 and m["grid"].shape[1] == 3
    assert_as_before(testbed.denoiser_network, before[0])
    assert_as_before(encoder, before[1])
    assert CLIPTokenizer.from_pretrained(TESTBED / "tokenizer").get_vocab() == vocabulary


def test_the_learned_word_changes_only_its_own_lookups_and_only_inside(testbed):
    route = testbed.text
    (table,) = route.embeddings
    (word,), (other,) = route.token_ids("sks"), route.token_ids("painting")
    ids = torch.tensor([[other, word, other]])
    plain = table(ids)
    vector = torch.full((table.embedding_dim,), 0.5)
    with substituted(route, "sks", [vector]):
        inside = table(ids)
    assert torch.equal(inside[0, 1], vector) and torch.equal(inside[0, [0, 2]], plain[0, [0, 2]])
    assert torch.equal(table(ids), plain)


def test_refused_by_name(testbed, tiny):
    x = smooth_image(32, 32)
    config = MimicryConfig(mimic="textual-inversion")
    with pytest.raises(ValueError, match=f"{tiny.name}: textual inversion needs the model's text encoder"):
        mimicry_check(tiny, [x], [x], [x], config)
    with pytest.raises(ValueError, match="does not contain the learned word 'sks'"):
        mimicry_check(testbed, [x], [x], [x], MimicryConfig(mimic="textual-inversion", ti_prompt="a painting"))
    with pytest.raises(ValueError, match="'sks zwx' is 2 tokens"):
        testbed.text.token_ids("sks zwx")


def test_cli_runs_it_and_names_the_mimic(tmp_path, capsys):
    a = tmp_path / "a.png"
    save_png(a, held_out_style([10000])[0])
    args = ["mimicry", "--train", str(a), "--protected", str(a), "--held-out", str(a), "--checkpoint", str(TESTBED),
            "--device", "cpu", "--mimic", "textual-inversion", "--ti-prompt", PROMPT, "--steps", "2", "--seeds", "1",
            "--draws", "4", "--pictures", "1", "--picture-steps", "2", "--json", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["mimic"] == "textual-inversion" and m["ti_prompt"] == PROMPT and Path(m["grid"]).is_file()
    assert main(args[:-2] + ["--ti-word", "zwx", "--output-dir", str(tmp_path / "b")]) == 2
    assert "does not contain the learned word 'zwx'" in capsys.readouterr().err


def save_tiny_sdxl(folder):
    """A tiny SDXL diffusers folder with both CLIP encoders and their (byte-level) tokenizers:
    context 16 + 16 = the tiny UNet's 32, the second encoder's pooled projection 32."""
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from advdm.models import builtin
    from test_families import CLIP_IDS, _clip_tokenizer

    unet, vae, _ = builtin.tiny_parts("tiny-sdxl")
    torch.manual_seed(1)
    shape = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=514,
                 max_position_embeddings=77, **CLIP_IDS)
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet, text_encoder=CLIPTextModel(CLIPTextConfig(**shape)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=32, **shape)),
        tokenizer=_clip_tokenizer(folder / "t1"), tokenizer_2=_clip_tokenizer(folder / "t2"),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def test_sdxl_learns_the_word_in_both_encoders_and_leaves_them_as_they_were(tmp_path, monkeypatch):
    from advdm.mimic.finetune import train
    from advdm.mimic.textual_inversion import initial_vectors

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_tiny_sdxl(tmp_path)
    model = load_model(str(folder), torch.device("cpu"), torch.float32, keep_text=True)
    route = model.text
    assert len(route.embeddings) == len(route.encoders) == 2
    before = [snapshot(net) for net in (model.denoiser_network, *route.encoders)]
    prompt = "a painting in style x"  # the byte-level tokenizer has single-letter words only
    vectors = initial_vectors(route, "y")
    start = [v.detach().clone() for v in vectors]
    images = [smooth_image(32, 32, seed=s) for s in range(2)]
    with substituted(route, "x", vectors):
        train(model, vectors, images, FinetuneConfig(steps=3, lr=1e-2), 0, conditioned=lambda: route.prompted(prompt))
    assert len(vectors) == 2 and all(not torch.equal(v.detach(), s) for v, s in zip(vectors, start))  # both encoders' words learn

    config = MimicryConfig(seeds=1, draws=4, finetune=FinetuneConfig(steps=2, batch=2), pictures=1, picture_steps=2,
                           mimic="textual-inversion", ti_prompt=prompt, ti_word="x", ti_init="y")
    m = mimicry_check(model, images, images, images, config)
    assert m["mimic"] == "textual-inversion" and m["grid"].shape[1] == 3
    for net, snap in zip((model.denoiser_network, *route.encoders), before):
        assert_as_before(net, snap)


def _ti_drop(model, images, steps=8, lr=5e-2):
    """How much textual inversion lowers its images' loss over fixed draws, as a fraction of the
    loss with the word at its initial vector."""
    from advdm.evaluation.measure import DrawLosses
    from advdm.mimic.textual_inversion import initial_vectors, textual_inversion

    def loss(m):
        return torch.cat([DrawLosses(m, x, 0).losses(16) for x in images]).mean()

    with substituted(model.text, "sks", initial_vectors(model.text, "painting")), torch.no_grad():
        base = loss(model.text.prompted(PROMPT))
    with textual_inversion(model, images, FinetuneConfig(steps=steps, lr=lr, batch=2), PROMPT) as tuned:
        after = loss(tuned)
    return ((base - after) / base).item()


def test_textual_inversion_in_float16_and_bfloat16_learns_as_in_float32():
    """The host's own precision: denoiser and text encoder in half precision (as ComfyUI and the
    web UIs load them), the learned vector in float32 through the loss-scaled loop."""
    images = held_out_style(range(10000, 10002))
    drops = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model = load_model(str(TESTBED), torch.device("cpu"), dtype, keep_text=True)
        (encoder,) = model.text.encoders
        encoder.to(dtype)
        before = snapshot(encoder)
        drops[dtype] = _ti_drop(model, images)
        assert_as_before(encoder, before)
    assert drops[torch.float32] > 0.02, drops
    for dtype in (torch.float16, torch.bfloat16):
        assert drops[dtype] == pytest.approx(drops[torch.float32], rel=0.15), drops


@pytest.mark.skipif(not os.environ.get("ADVDM_SD15_CHECKPOINT"), reason="set ADVDM_SD15_CHECKPOINT to a full-size SD1.5 single file")
def test_a_full_size_sd15_single_file_runs_it_from_the_cli_and_in_process_leaves_it_as_it_was(tmp_path, capsys,
                                                                                                  monkeypatch):
    """The real SD1.5 architecture (random weights do): the single file's CLIP, the default word
    and prompt known without tokenizer files; everything tiny so that a CPU runs it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = os.environ["ADVDM_SD15_CHECKPOINT"]
    a = tmp_path / "a.png"
    save_png(a, smooth_image(64, 64))
    assert main(["mimicry", "--train", str(a), "--protected", str(a), "--checkpoint", checkpoint, "--device", "cpu",
                 "--mimic", "textual-inversion", "--steps", "1", "--seeds", "1", "--draws", "2", "--pictures", "1",
                 "--picture-steps", "1", "--json", "--output-dir", str(tmp_path)]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["mimic"] == "textual-inversion" and m["ti_prompt"] == "a painting in the style of sks"

    model = load_model(checkpoint, torch.device("cpu"), torch.float32, keep_text=True)
    (encoder,) = model.text.encoders
    before = snapshot(model.denoiser_network), snapshot(encoder)
    x = smooth_image(64, 64)
    config = MimicryConfig(seeds=1, draws=2, finetune=FinetuneConfig(steps=1, batch=1), pictures=0,
                           mimic="textual-inversion")
    assert mimicry_check(model, [x], [x], [x], config)["mimic"] == "textual-inversion"
    assert_as_before(model.denoiser_network, before[0])
    assert_as_before(encoder, before[1])
