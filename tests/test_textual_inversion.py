"""The textual-inversion mimic (advdm/mimic/textual_inversion.py) in the mimicry check:
on the test-bed, clean images passed as "protected" give a fraction whose interval contains
1, and the denoiser, the text encoder and the tokenizer are exactly as they were; the learned
word changes only its own lookups, and only while inside; a model without a text encoder,
a prompt without the word and a word of several tokens are refused by name."""
import json
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
