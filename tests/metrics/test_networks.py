"""Flax metric networks vs small torch references with the published key names, through the user's converter.

Each torch module below is written here (torchvision is not installed) with the parameter names of the published
weight files; it gets random weights (batch-norm statistics included), is saved with `torch.save`, converted with
`humandiff.metrics.convert.main` (the CLI users run, with `--allow-pickle`), loaded with `load_params`, and both
forward passes are compared. Tolerance: 1e-4 relative to the output's scale (float32 on both sides, deep nets).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from humandiff.metrics import convert, weights  # noqa: E402

RTOL = 1e-4


def _randomize(model: "nn.Module", seed: int) -> "nn.Module":
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
            if name.endswith("bn.weight") or ".bn" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def _convert(tmp_path, net: str, state_dicts: list[dict]) -> str:
    srcs = []
    for i, sd in enumerate(state_dicts):
        src = str(tmp_path / f"{net}_{i}.pth")
        torch.save(sd, src)
        srcs.append(src)
    out = str(tmp_path / weights.WEIGHT_FILES[net])
    convert.main(["--net", net, "--src", *srcs, "--out", out, "--allow-pickle"])
    return out


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
    print(f"max abs error / max |torch output| = {err:.2e}")  # shown with `pytest -s`; quoted in the report
    return err


# ----------------------------------------------------------------------------------------------------------- LPIPS
class TorchVGGFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)

    def taps(self, x):
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (3, 8, 15, 22, 29):
                out.append(x)
        return out


class TorchNetLin(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))


class TorchLPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.vgg = TorchVGGFeatures()
        for k, c in enumerate((64, 128, 256, 512, 512)):
            setattr(self, f"lin{k}", TorchNetLin(c))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x0, x1):
        f0 = self.vgg.taps((x0 - self.shift) / self.scale)
        f1 = self.vgg.taps((x1 - self.shift) / self.scale)
        total = 0
        for k, (a, b) in enumerate(zip(f0, f1)):
            a = a / (torch.sqrt(torch.sum(a**2, dim=1, keepdim=True)) + 1e-10)
            b = b / (torch.sqrt(torch.sum(b**2, dim=1, keepdim=True)) + 1e-10)
            total = total + getattr(self, f"lin{k}").model((a - b) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.reshape(-1)


def test_lpips_matches_torch(tmp_path):
    from humandiff.metrics.lpips import LPIPS, lpips_distance

    ref = _randomize(TorchLPIPS(), 0)
    with torch.no_grad():  # lpips heads are non-negative
        for k in range(5):
            w = getattr(ref, f"lin{k}").model[1].weight
            w.copy_(w.abs())
    vgg_sd = {k.replace("vgg.", ""): v for k, v in ref.state_dict().items() if k.startswith("vgg.")}
    lin_sd = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    path = _convert(tmp_path, "lpips", [vgg_sd, lin_sd])
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    module = LPIPS()
    params = weights.load_params(path, module, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)))
    for disco in (True, False):
        got = lpips_distance(module, params, a, b, disco_range=disco)
        ta = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0
        tb = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255.0
        if not disco:
            ta, tb = ta * 2 - 1, tb * 2 - 1
        with torch.no_grad():
            want = ref(ta, tb).numpy()
        assert _rel_err(got, want) <= RTOL, (disco, got, want)


# ------------------------------------------------------------------------------------------------------- Inception
class TBasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TInceptionA(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.branch1x1 = TBasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = TBasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = TBasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = TBasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = TBasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = TBasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = TBasicConv2d(cin, pool, kernel_size=1)

    def forward(self, x):
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class TInceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = TBasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = TBasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = TBasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = TBasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), bd, F.max_pool2d(x, 3, 2)], 1)


class TInceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = TBasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = TBasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = TBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = TBasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = TBasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = TBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = TBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = TBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = TBasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = TBasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for i in range(2, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), b7, bd, bp], 1)


class TInceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = TBasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = TBasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = TBasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = TBasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = TBasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = TBasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class TInceptionE(nn.Module):
    def __init__(self, cin, use_max):
        super().__init__()
        self.use_max = use_max
        self.branch1x1 = TBasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = TBasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = TBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = TBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = TBasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = TBasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = TBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = TBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = TBasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, 3, 1, 1) if self.use_max else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TFIDInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = TBasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = TBasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = TBasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = TBasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = TBasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = TInceptionA(192, 32), TInceptionA(256, 64), TInceptionA(288, 64)
        self.Mixed_6a = TInceptionB(288)
        self.Mixed_6b, self.Mixed_6c = TInceptionC(768, 128), TInceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = TInceptionC(768, 160), TInceptionC(768, 192)
        self.Mixed_7a = TInceptionD(768)
        self.Mixed_7b, self.Mixed_7c = TInceptionE(1280, False), TInceptionE(2048, True)
        self.fc = nn.Linear(2048, 1008)  # present in the published file, unused by FID

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{n}")(x)
        return x.mean(dim=(2, 3))


def test_inception_matches_torch(tmp_path):
    from humandiff.metrics.inception import InceptionV3FID

    ref = _randomize(TFIDInception(), 1)
    path = _convert(tmp_path, "inception", [ref.state_dict()])
    x = np.random.default_rng(1).uniform(-1, 1, (2, 79, 83, 3)).astype(np.float32)
    module = InceptionV3FID()
    params = weights.load_params(path, module, jnp.zeros((1, 79, 83, 3)))
    got = jax.jit(module.apply)(params, x)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert got.shape == (2, 2048)
    assert _rel_err(got, want) <= RTOL


# ------------------------------------------------------------------------------------------------------------- I3D
def _same_pad(x, kernel, stride):
    pads = []
    for dim in (4, 3, 2):  # F.pad order: w, h, t
        k, s, n = kernel[dim - 2], stride[dim - 2], x.shape[dim]
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class TUnit3D(nn.Module):
    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, bias=False, relu=True):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


def _tmax_same(x, kernel, stride):
    return F.max_pool3d(_same_pad(x, kernel, stride), kernel, stride)


class TInceptionModule(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.b0 = TUnit3D(cin, c[0])
        self.b1a, self.b1b = TUnit3D(cin, c[1]), TUnit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = TUnit3D(cin, c[3]), TUnit3D(c[3], c[4], (3, 3, 3))
        self.b3b = TUnit3D(cin, c[5])

    def forward(self, x):
        b3 = self.b3b(_tmax_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), b3], 1)


class TI3D(nn.Module):
    MIXED = [("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
             ("pool", (3, 3, 3), (2, 2, 2)),
             ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
             ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
             ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)), ("pool", (2, 2, 2), (2, 2, 2)),
             ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)), ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128))]

    def __init__(self):
        super().__init__()
        self.Conv3d_1a_7x7 = TUnit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = TUnit3D(64, 64)
        self.Conv3d_2c_3x3 = TUnit3D(64, 192, (3, 3, 3))
        for entry in self.MIXED:
            if entry[0] != "pool":
                setattr(self, entry[0], TInceptionModule(entry[1], entry[2]))
        self.logits = TUnit3D(1024, 400, bn=False, bias=True, relu=False)

    def forward(self, x):
        x = _tmax_same(self.Conv3d_1a_7x7(x), (1, 3, 3), (1, 2, 2))
        x = _tmax_same(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)), (1, 3, 3), (1, 2, 2))
        for entry in self.MIXED:
            x = _tmax_same(x, entry[1], entry[2]) if entry[0] == "pool" else getattr(self, entry[0])(x)
        x = F.avg_pool3d(x, (1, x.shape[3], x.shape[4]), stride=1)  # the published 7x7 window at 224 px
        return self.logits(x).squeeze(3).squeeze(3).mean(2)


def test_i3d_matches_torch(tmp_path):
    from humandiff.metrics.i3d import InceptionI3d

    ref = _randomize(TI3D(), 2)
    path = _convert(tmp_path, "i3d", [ref.state_dict()])
    x = np.random.default_rng(2).uniform(-1, 1, (2, 16, 40, 36, 3)).astype(np.float32)
    module = InceptionI3d()
    params = weights.load_params(path, module, jnp.zeros((1, 16, 40, 36, 3)))
    got = jax.jit(module.apply)(params, x)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).numpy()
    assert got.shape == (2, 400)
    assert _rel_err(got, want) <= RTOL


# ---------------------------------------------------------------------------------------------------- 3D ResNet-50
class TBottleneck(nn.Module):
    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv3d(cin, planes, 1, bias=False), nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3, self.bn3 = nn.Conv3d(planes, planes * 4, 1, bias=False), nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TResNet3D50(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=(3, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        cin = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            stride = 1 if i == 0 else 2
            down = nn.Sequential(nn.Conv3d(cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm3d(planes * 4))
            layers = [TBottleneck(cin, planes, stride, down)] + [TBottleneck(planes * 4, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = planes * 4
        self.fc = nn.Linear(2048, 400)  # in the published file; DisCo builds the net with last_fc=False

    def forward(self, x):
        x = F.max_pool3d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.avg_pool3d(x, x.shape[2:], stride=1).flatten(1)


def test_r3d50_matches_torch(tmp_path):
    from humandiff.metrics.r3d import ResNet3D50

    ref = _randomize(TResNet3D50(), 3)
    # The published file is {"state_dict": {"module.conv1.weight": ...}, "arch": ..., "epoch": ...}.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "arch": "resnet-50", "epoch": 1}
    path = _convert(tmp_path, "r3d50", [wrapped])
    x = np.random.default_rng(3).uniform(-100, 140, (1, 16, 28, 24, 3)).astype(np.float32)
    module = ResNet3D50()
    params = weights.load_params(path, module, jnp.zeros((1, 16, 28, 24, 3)))
    got = jax.jit(module.apply)(params, x)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).numpy()
    assert got.shape == (1, 2048)
    assert _rel_err(got, want) <= RTOL
