"""Loading models offline: diffusers folders, single files, and clear refusals."""
import json
import os

import pytest
import torch

from advdm.models import builtin
from advdm.models.checkpoints import CONFIGS, CheckpointError, detect_family, load_model
from advdm.evaluation.measure import fixed_loss
from sample_images import smooth_image


def save_tiny_pipeline(folder, prediction_type="epsilon", hidden=32):
    """A tiny SD1-style diffusers folder without tokenizer files (like a converted single file)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    unet, vae, _ = builtin.tiny_parts("tiny")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                            max_position_embeddings=77, vocab_size=49408)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


def test_diffusers_folder_loads_offline_with_the_default_prompt(tiny_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(str(tiny_folder), torch.device("cpu"), torch.float32)
    assert model.prediction == "eps"
    assert fixed_loss(model, smooth_image(), samples=2) > 0


def test_prompt_changes_the_conditioning(tiny_folder):
    cpu = torch.device("cpu")
    a = fixed_loss(load_model(str(tiny_folder), cpu, torch.float32, prompt="a painting"), smooth_image(), samples=4)
    b = fixed_loss(load_model(str(tiny_folder), cpu, torch.float32, prompt=""), smooth_image(), samples=4)
    assert a != b


def test_unknown_prompt_without_tokenizer_is_refused_clearly(tiny_folder):
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_model(str(tiny_folder), torch.device("cpu"), torch.float32, prompt="an oil portrait")


def test_v_prediction_is_read_from_the_scheduler(tmp_path):
    folder = save_tiny_pipeline(tmp_path, prediction_type="v_prediction")
    assert load_model(str(folder), torch.device("cpu"), torch.float32).prediction == "v"


def test_family_detection_from_keys():
    assert detect_family({"cond_stage_model.transformer.text_model.final_layer_norm.weight": 0}) == "sd1"
    assert detect_family({"cond_stage_model.model.ln_final.weight": 0}) == "sd2"
    assert detect_family({"conditioner.embedders.1.model.ln_final.weight": 0}) == "sdxl"
    with pytest.raises(CheckpointError, match="recognise"):
        detect_family({"foo": 0})


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_corrupt_files_are_refused_with_their_name(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_model(str(path), torch.device("cpu"), torch.float32)


def test_missing_checkpoint_and_unknown_builtin():
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model("/nonexistent/model.safetensors", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="unknown builtin"):
        load_model("builtin:huge", torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_files_find_their_component_configs(family):
    """A single file carries weights only: its UNet, VAE, text encoders and schedule come from the
    configs shipped beside the loader (a core regrouping once left them behind and every single
    file failed with a hub-download error)."""
    from diffusers import UNet2DConditionModel

    parts = ["unet", "vae", "text_encoder", "scheduler"] + (["text_encoder_2"] if family == "sdxl" else [])
    for part in parts:
        assert any((CONFIGS / family / part).glob("*config.json")), f"{family}/{part}"
    UNet2DConditionModel.load_config(str(CONFIGS / family), subfolder="unet", local_files_only=True)


@pytest.mark.skipif(not os.environ.get("ADVDM_SD15_CHECKPOINT"), reason="set ADVDM_SD15_CHECKPOINT to a full-size SD1.5 single file")
def test_single_file_sd15_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(os.environ["ADVDM_SD15_CHECKPOINT"], torch.device("cpu"), torch.float32)
    assert model.prediction == "eps" and model.pixel_multiple == 8
    assert fixed_loss(model, smooth_image(64, 64), samples=1) > 0
