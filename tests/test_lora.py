"""LoRA on a host's denoiser (advdm/mimic/lora.py) and the mimic's fine-tune (advdm/mimic/finetune.py),
on the builtin tiny model: the adapters train, only they get gradients, and on leaving -
also on an exception - the network is bit-identical, with its flags and no hooks left."""
import pytest
import torch

from advdm.evaluation.measure import DrawLosses
from advdm.mimic.finetune import FinetuneConfig, lora_finetuned, mimic_view
from advdm.mimic.lora import lora_adapters

from sample_images import smooth_image

pytestmark = pytest.mark.usefixtures("single_thread")


def snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            [p.requires_grad for p in net.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()],
            [m.training for m in net.modules()])


def assert_as_before(net, before):
    weights, flags, hooks, modes = before
    after = net.state_dict()
    assert weights.keys() == after.keys()
    assert all(torch.equal(weights[k], after[k]) for k in weights), "weights changed"
    assert [p.requires_grad for p in net.parameters()] == flags
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()] == hooks
    assert [m.training for m in net.modules()] == modes


def test_adapters_start_as_identity_train_alone_and_leave_the_network_bit_identical(tiny):
    net = tiny.denoiser_network
    net.conv_in.weight.requires_grad_(True)  # a host's own flag, to be restored as found
    before = snapshot(net)
    x, sigma = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1.0, 5.0])
    with torch.no_grad():
        plain = tiny.denoise(x, sigma)
    with lora_adapters(net, rank=4, convs=True, seed=0) as params:
        with torch.no_grad():
            assert torch.equal(tiny.denoise(x, sigma), plain)  # B = 0: no change until trained
        assert all(p.requires_grad for p in params)
        assert not any(p.requires_grad for p in net.parameters())
        tiny.denoise(x, sigma).pow(2).mean().backward()
        assert all(p.grad is not None for p in params[1::2])  # B gets gradient first (A's is zero while B = 0)
        assert all(p.grad is None for p in net.parameters())
        with torch.no_grad():
            for p in params[1::2]:
                p.add_(0.01)
            assert not torch.equal(tiny.denoise(x, sigma), plain)
    assert_as_before(net, before)
    with torch.no_grad():
        assert torch.equal(tiny.denoise(x, sigma), plain)
    net.conv_in.weight.requires_grad_(False)


def test_the_network_is_restored_on_an_exception_inside(tiny):
    net = tiny.denoiser_network
    before = snapshot(net)
    with pytest.raises(KeyboardInterrupt):
        with lora_finetuned(tiny, [smooth_image(32, 32)], FinetuneConfig(steps=2, lr=1e-2)):
            raise KeyboardInterrupt
    assert_as_before(net, before)


def test_a_fine_tune_lowers_the_loss_of_its_images_and_changes_no_weight(tiny):
    net = tiny.denoiser_network
    before = snapshot(net)
    images = [smooth_image(32, 32, seed=s) for s in range(2)]
    base = torch.cat([DrawLosses(tiny, x, 0).losses(32) for x in images]).mean()
    seen = []
    with lora_finetuned(tiny, images, FinetuneConfig(steps=15, lr=1e-2), seed=0,
                        progress=lambda done, total: seen.append((done, total))) as tuned:
        tuned_loss = torch.cat([DrawLosses(tuned, x, 0).losses(32) for x in images]).mean()
    assert tuned_loss < 0.9 * base
    assert seen[-1] == (15, 15) and len(seen) == 15
    assert_as_before(net, before)


def test_a_model_without_its_network_is_refused_with_a_reason(tiny):
    from dataclasses import replace

    with pytest.raises(ValueError, match="does not expose its denoiser network"):
        with lora_finetuned(replace(tiny, denoiser_network=None), [smooth_image(32, 32)], FinetuneConfig(steps=1)):
            pass


def test_large_images_are_fitted_to_the_training_area_like_a_fine_tuning_script(tiny):
    assert tuple(mimic_view(tiny, smooth_image(64, 256)).shape[-2:]) == (64, 256)  # 128 px: area within 128^2
    h, w = mimic_view(tiny, smooth_image(200, 400)).shape[-2:]
    assert h % 8 == 0 and w % 8 == 0 and abs(w / h - 2) < 0.2 and h * w <= 1.2 * 128 * 128
