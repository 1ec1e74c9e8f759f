"""Our LPIPS-VGG16 against a TorchScript archive built the way NVIDIA's ``vgg16.pt`` is.

The official projector calls ``vgg16(img, resize_images=False, return_lpips=True)`` on images in
[0, 255] and takes ``(f1 − f2).square().sum()`` of the returned features as the distance. The
archive below has the official module and tensor names (``layers.conv1…conv13``,
``layers.fc1…fc3``, ``lpips0…lpips4`` of shape ``[C, 1, 1]``) and that forward: the input /255
normalised with the ImageNet mean and std, VGG16's convolutions, and for ``return_lpips`` each of
the five ReLU taps divided by its channel norm (+1e−10), scaled by ``sqrt(lpips_c / (H·W))`` and
flattened, so that the squared difference sums to Σ_layers mean_hw Σ_c lpips_c·(f̂1 − f̂2)². Our
``VGG16Distance`` reads the archive as data (never running it) and must give the same distances.
"""

import math
from typing import List

import pytest
import torch
import torch.nn.functional as F

from gan_prior.perceptual import VGG16Distance

CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
         (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]  # fmt: skip


class _Layers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for i, (a, b) in enumerate(CONVS, 1):
            conv = torch.nn.Conv2d(a, b, 3, padding=1)
            torch.nn.init.normal_(conv.weight, std=math.sqrt(2 / (9 * a)))
            torch.nn.init.normal_(conv.bias, std=0.1)
            setattr(self, f"conv{i}", conv)
        # the classifier, unused by LPIPS (reduced sizes: only its names matter here)
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10)


class OfficialLikeVGG16(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _Layers()
        for i, c in enumerate((64, 128, 256, 512, 512)):
            self.register_buffer(f"lpips{i}", torch.rand(c, 1, 1) + 0.1)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1))

    def _lpips(self, i: int, x: torch.Tensor) -> torch.Tensor:
        w = self.lpips0
        if i == 1:
            w = self.lpips1
        elif i == 2:
            w = self.lpips2
        elif i == 3:
            w = self.lpips3
        elif i == 4:
            w = self.lpips4
        x = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
        x = x * (w / (x.shape[2] * x.shape[3])).sqrt()
        return x.flatten(1)

    def forward(
        self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False
    ) -> torch.Tensor:
        if resize_images:
            img = F.interpolate(img, size=(224, 224), mode="area")
        x = (img / 255 - self.mean) / self.std
        L = self.layers  # noqa: N806  (TorchScript: one call per named layer, as the archive's code)
        x = torch.relu(L.conv2(torch.relu(L.conv1(x))))
        taps: List[torch.Tensor] = [self._lpips(0, x)]
        x = torch.relu(L.conv4(torch.relu(L.conv3(F.max_pool2d(x, 2, 2)))))
        taps.append(self._lpips(1, x))
        x = torch.relu(L.conv7(torch.relu(L.conv6(torch.relu(L.conv5(F.max_pool2d(x, 2, 2)))))))
        taps.append(self._lpips(2, x))
        x = torch.relu(L.conv10(torch.relu(L.conv9(torch.relu(L.conv8(F.max_pool2d(x, 2, 2)))))))
        taps.append(self._lpips(3, x))
        x = torch.relu(L.conv13(torch.relu(L.conv12(torch.relu(L.conv11(F.max_pool2d(x, 2, 2)))))))
        taps.append(self._lpips(4, x))
        if return_lpips:
            return torch.cat(taps, 1)
        return x.flatten(1)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    torch.manual_seed(3)
    module = torch.jit.script(OfficialLikeVGG16().eval())
    path = str(tmp_path_factory.mktemp("vgg") / "vgg16.pt")
    torch.jit.save(module, path)
    return path, module


def test_distance_equals_the_official_forward_on_an_official_like_archive(archive):
    path, scripted = archive
    ours = VGG16Distance.load(path)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1  # our range [−1, 1]
    b = (a + 0.3 * torch.randn(2, 3, 64, 64, generator=gen)).clamp(-1, 1)
    with torch.no_grad():
        fa = scripted((a + 1) * 127.5, resize_images=False, return_lpips=True)  # the projector's call
        fb = scripted((b + 1) * 127.5, resize_images=False, return_lpips=True)
        official = (fa - fb).square().sum(1)
        got = ours(a, b)
    assert torch.allclose(got, official, rtol=1e-4), (got, official)
    # the channel weights are used (with weights 1 the distance would differ)
    plain = VGG16Distance.load(None)
    plain.features.load_state_dict(ours.features.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(a, b), official, rtol=1e-2)


def test_distance_equals_torch_fidelity_lpips_the_released_file_is_checked_against(archive, monkeypatch):
    """The archive's semantics above are our reading; torch-fidelity's LPIPS is a second, public one
    that its own test suite (``tests/tf1/lpips/test_lpips.py``) compares with the released
    ``vgg16.pt`` — ``vgg16(x, resize_images=False, return_lpips=True)`` on [0, 255] images — to
    1e-5. With the archive's weights put into torch-fidelity's network (its two downloads replaced
    by those tensors), its distance and ours must agree on 8-bit images. (torch-fidelity 0.3.0:
    0.4.0's wheel installs a top-level ``tests`` package that hides this one.)"""
    import torchvision
    from torch_fidelity import sample_similarity_lpips as tf_lpips

    path, scripted = archive
    vgg = torchvision.models.vgg16(weights=None)
    conv_index = [i for i, m in enumerate(vgg.features) if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for k, i in enumerate(conv_index, 1):
            vgg.features[i].weight.copy_(getattr(scripted.layers, f"conv{k}").weight)
            vgg.features[i].bias.copy_(getattr(scripted.layers, f"conv{k}").bias)
    lins = {f"lin{i}.model.1.weight": getattr(scripted, f"lpips{i}").reshape(1, -1, 1, 1) for i in range(5)}
    downloads = {tf_lpips.URL_VGG16_BASE: vgg.state_dict(), tf_lpips.URL_VGG16_LPIPS: lins}
    monkeypatch.setattr(tf_lpips, "load_state_dict_from_url", lambda url, *_, **__: downloads[url])
    reference = tf_lpips.SampleSimilarityLPIPS("lpips-vgg16")  # no resize: the projector's call

    gen = torch.Generator().manual_seed(1)
    u0 = torch.randint(0, 256, (2, 3, 64, 64), generator=gen, dtype=torch.uint8)
    u1 = (u0.float() + 60 * torch.randn(2, 3, 64, 64, generator=gen)).clamp(0, 255).to(torch.uint8)
    ours = VGG16Distance.load(path)
    with torch.no_grad():
        expected = reference(u0, u1)
        got = ours(u0.float() / 127.5 - 1, u1.float() / 127.5 - 1)
    assert expected.shape == got.shape == (2,)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got, expected)
