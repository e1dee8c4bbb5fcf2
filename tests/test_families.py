"""Every model family through the command line: SD1-style eps, SD2 v, SDXL, SD3 and Flux
(tiny models of the real diffusers classes, random weights)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from advdm.models import builtin
from advdm.models.checkpoints import load_model
from advdm.cli import main
from advdm.evaluation.measure import fixed_loss
from sample_images import smooth_image


@pytest.mark.parametrize("name", ["tiny-sd2v", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_cli_protect_raises_the_familys_loss_above_clean_and_noise(name, tmp_path, capsys):
    image = (smooth_image(64, 64, seed=2)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "art.png")
    args = ["--checkpoint", f"builtin:{name}"]
    assert main(["protect", str(tmp_path / "art.png"), "-o", str(tmp_path / "out"), "--epsilon", "8",
                 "--steps", "40", "--samples", "4", *args]) == 0
    capsys.readouterr()
    assert main(["measure", str(tmp_path / "art.png"), str(tmp_path / "out" / "art_protected.png"),
                 "--samples", "64", "--seed", "321", "--json", *args]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["loss_protected"] > m["loss_clean"]
    assert m["loss_protected"] - m["loss_clean"] > 2 * abs(m["loss_noise"] - m["loss_clean"])


CLIP_IDS = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)


def _clip_tokenizer(folder):
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges (tests only)."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _clip_text(with_projection=True, hidden=32):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                            vocab_size=514, projection_dim=hidden, max_position_embeddings=77, **CLIP_IDS)
    return CLIPTextModelWithProjection(config)


def _t5(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("a", -1.0), ("painting", -1.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                model_max_length=512)
    config = T5Config(vocab_size=8, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    return T5EncoderModel(config), tokenizer


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_pipeline_folders_load_offline(family, tmp_path, monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    torch.manual_seed(0)
    net, vae, _ = builtin.tiny_parts(f"tiny-{family}")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if family == "sd3":
        pipe = StableDiffusion3Pipeline(
            transformer=net, vae=vae, scheduler=scheduler,
            text_encoder=_clip_text(hidden=16), tokenizer=_clip_tokenizer(tmp_path / "t1"),
            text_encoder_2=_clip_text(hidden=16), tokenizer_2=_clip_tokenizer(tmp_path / "t2"),
            text_encoder_3=None, tokenizer_3=None,
        )
    else:
        from transformers import CLIPTextConfig, CLIPTextModel

        clip = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                            num_hidden_layers=2, vocab_size=514, max_position_embeddings=77, **CLIP_IDS))
        t5, t5_tok = _t5(tmp_path)
        pipe = FluxPipeline(transformer=net, vae=vae, scheduler=scheduler, text_encoder=clip,
                            tokenizer=_clip_tokenizer(tmp_path / "t1"), text_encoder_2=t5, tokenizer_2=t5_tok)
    pipe.save_pretrained(tmp_path / "pipe")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(str(tmp_path / "pipe"), torch.device("cpu"), torch.float32, prompt="a painting")
    assert model.prediction == "flow" and model.flow_shift == 3.0 and model.latent_channels == 16
    assert fixed_loss(model, smooth_image(32, 32), samples=2) > 0


def test_flow_timestep_distribution_follows_the_config():
    from advdm.attack.pgd import ProtectConfig, _for_attack
    from advdm.models.draws import Draws

    model = builtin.build("tiny-flux")
    def sigmas(**kw):
        return Draws(_for_attack(model, ProtectConfig(**kw)), 0).sigmas(4000)

    default, uniform, unshifted = sigmas(), sigmas(flow_timesteps="uniform"), sigmas(flow_timesteps="uniform", flow_shift=1.0)
    # logit-normal t concentrates in the middle; uniform t does not; shift 3 pushes sigma up
    assert default.std() < uniform.std()
    assert abs(float(unshifted.mean()) - 0.5) < 0.02
    assert float(uniform.mean()) > 0.65  # E[3t / (1 + 2t)] for uniform t is ~0.70
