"""PyTorch frontend (torch.export → qir): real models built here, checked against torch itself.

Every imported graph verifies, round-trips through the text form, and keeps its outputs through
the -O2 pipeline. Tolerances: float32 through different summation orders (numpy vs torch's
kernels): rtol 1e-4, atol 1e-5 on outputs of magnitude ~1 (atol 1e-4 for the transformer, whose
softmax and layer norms chain more reductions).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")  # torch's own pytree notice

torch = pytest.importorskip("torch", reason="the PyTorch frontend needs torch (pip install qir[torch])")
nn = torch.nn
F = torch.nn.functional

import qir.passes  # noqa: E402
from qir.errors import ModelLoadError, QirError, UnsupportedOpError  # noqa: E402
from qir.frontends.torch import load_torch  # noqa: E402
from qir.ir.interpreter import Interpreter  # noqa: E402
from qir.ir.parser import parse_graph  # noqa: E402
from qir.ir.printer import print_graph  # noqa: E402
from qir.ir.verifier import verify  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


# -- models ----------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, 2, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
            InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 4), InvertedResidual(12, 12, 1, 4),
            nn.Sequential(nn.Conv2d(12, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish()))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class TinyEncoder(nn.Module):
    """Token + learned position embeddings, two nn.TransformerEncoderLayers (MultiheadAttention,
    LayerNorm, GELU), a hand-written causal SDPA head, mean pooling."""

    def __init__(self, vocab=50, d=16, heads=2, layers=2, max_len=16):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 32, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.qkv = nn.Linear(d, 3 * d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 4)

    def forward(self, tokens):
        b, s = tokens.shape
        h = self.tok(tokens) + self.pos(torch.arange(s, device=tokens.device))
        h = self.encoder(h)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = self.norm(h + a.transpose(1, 2).reshape(b, s, -1))
        h = F.gelu(h, approximate="tanh")
        return F.log_softmax(self.head(h.mean(dim=1)), dim=-1)


class DynamicMLP(nn.Module):
    """Shape arithmetic on a dynamic batch: view(x.size(0), -1), reshape to (batch, 2, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 16)
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        y = F.silu(self.conv(x))
        y = self.fc(y.view(y.size(0), -1))
        y = y.reshape(y.shape[0], 2, 8)
        y = self.ln(y) * torch.sigmoid(y).clamp(0.1, 0.9)
        return torch.cat([y, torch.zeros_like(y)], dim=1).sum(dim=-1)


# -- helpers -------------------------------------------------------------------------------

def _seeded(cls, *args):
    torch.manual_seed(0)
    model = cls(*args).eval()
    with torch.no_grad():  # non-trivial batch norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def _torch_out(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    out = list(out.values()) if isinstance(out, dict) else out
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def _run(graph, inputs):
    return Interpreter(graph).run({v.name: x.numpy() for v, x in zip(graph.inputs, inputs)})


def _close(got, want, atol=ATOL):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=atol)


def _roundtrip(graph):
    weights: dict = {}
    text = print_graph(graph, weights)
    parsed = parse_graph(text, weights)
    assert print_graph(parsed, {}) == text
    verify(parsed)
    return parsed


def check_model(model, inputs, *, atol=ATOL, **kw):
    """Import, verify, compare with torch, text round trip, -O2 keeps outputs. Returns the graph."""
    graph = load_torch(model, inputs, **kw)
    verify(graph)
    want = _torch_out(model, inputs)
    _close(_run(graph, inputs), want, atol)
    _close(_run(_roundtrip(graph), inputs), want, atol)
    optimized = qir.passes.run(graph.copy(), opt_level=2)
    verify(optimized)
    _close(_run(optimized, inputs), want, atol)
    return graph


# -- models vs torch -----------------------------------------------------------------------

def test_resnet_style_cnn():
    model = _seeded(TinyResNet)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    graph = check_model(model, (x,))
    assert [v.name for v in graph.inputs] == ["x"] and [v.name for v in graph.outputs] == ["output"]
    ops = {n.op for n in graph.nodes}
    assert {"nn.conv", "nn.batch_normalization", "nn.max_pool", "nn.global_average_pool", "linalg.gemm"} <= ops
    # parameters and buffers are constants named by the state_dict
    assert "layer1.0.conv1.weight" in graph.constants and "layer2.0.bn1.running_var" in graph.constants
    # provenance names the user's layers
    assert any("layer2.0.downsample.0" in n.provenance for n in graph.nodes)


def test_mobilenet_v2_style_cnn():
    model = _seeded(TinyMobileNetV2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    graph = check_model(model, (x,))
    groups = [n.attrs["group"] for n in graph.nodes if n.op == "nn.conv"]
    assert 8 in groups and 48 in groups  # depthwise convs kept grouped
    assert any(n.op == "elementwise.clip" for n in graph.nodes)  # ReLU6
    assert any(n.op == "nn.hard_swish" for n in graph.nodes)


def test_transformer_encoder():
    model = _seeded(TinyEncoder)
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(3))
    graph = check_model(model, (tokens,), atol=1e-4)
    ops = {n.op for n in graph.nodes}
    assert {"nn.attention", "nn.layer_normalization", "nn.gelu", "tensor.gather", "nn.log_softmax"} <= ops


def test_transformer_dynamic_batch_and_sequence():
    model = _seeded(TinyEncoder)
    dims = {"tokens": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=16)}}
    graph = load_torch(model, (torch.randint(0, 50, (2, 7)),), dynamic_shapes=dims)
    assert graph.inputs[0].type.shape == ("batch", "seq") and graph.outputs[0].type.shape == ("batch", 4)
    optimized = qir.passes.run(graph.copy(), opt_level=2)
    for b, s in ((1, 3), (3, 9)):
        tokens = torch.randint(0, 50, (b, s), generator=torch.Generator().manual_seed(b))
        want = _torch_out(model, (tokens,))
        _close(_run(graph, (tokens,)), want, atol=1e-4)
        _close(_run(optimized, (tokens,)), want, atol=1e-4)


def test_dynamic_batch_two_sizes():
    model = _seeded(DynamicMLP)
    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    graph = check_model(model, (x,), dynamic_shapes={"x": {0: batch}})
    assert graph.inputs[0].type.shape == ("batch", 2, 4, 4)
    assert graph.outputs[0].type.shape == ("batch", 4)
    optimized = qir.passes.run(graph.copy(), opt_level=2)
    for n in (1, 5):
        x2 = torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(n))
        _close(_run(graph, (x2,)), _torch_out(model, (x2,)))
        _close(_run(optimized, (x2,)), _torch_out(model, (x2,)))


def test_dynamic_sequence_with_symbolic_reshape():
    """Two dynamic dims in one reshape target: the shape is computed at run time."""
    class Heads(nn.Module):
        def forward(self, x):
            b, s, d = x.shape
            h = x.view(b, s, 2, d // 2).transpose(1, 2)  # (b, 2, s, d/2)
            h = h.reshape(b * 2, s, d // 2) * 2.0
            pos = torch.arange(s, dtype=torch.float32)
            return h + pos[None, :, None], torch.ones(b, s).sum(-1)

    model = Heads().eval()
    x = torch.randn(2, 5, 8)
    dims = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    graph = check_model(model, (x,), dynamic_shapes=dims)
    assert graph.inputs[0].type.shape == ("batch", "seq", 8)
    x2 = torch.randn(3, 4, 8)
    _close(_run(graph, (x2,)), _torch_out(model, (x2,)))


def test_elementwise_and_tensor_ops():
    class Ops(nn.Module):
        def forward(self, x, i):
            y = (x.pow(2) + 1).sqrt().rsqrt() - x.exp().neg() / 3
            y = torch.where(x > 0, y, -x).masked_fill(x < -1.0, 0.5)
            z = y.amax(dim=1, keepdim=True) + y.mean(dim=(0, 2), keepdim=True) + y.sum(-1, keepdim=True)
            a, b = torch.split(y, [2, 3], dim=1)
            w = torch.cat([b, a * 2], dim=1).permute(0, 2, 1).contiguous()[:, 1:3, ::2]
            s = torch.softmax(w, dim=-1) + F.hardsigmoid(w) + F.leaky_relu(w, 0.1) + torch.tanh(w)
            g = x.index_select(1, i).unsqueeze(0).squeeze(0).clamp(min=-0.5)
            q = x.to(torch.int64).float() + (x.abs() // 0.5)
            return z, s, g, q, x.max(dim=2).values, x.argmax(dim=-1), x.var(dim=1), x.t() if x.dim() == 2 else x[0].t()

    model = Ops().eval()
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(5))
    check_model(model, (x, torch.tensor([4, 0, 2])))


def test_linalg_and_creation_ops():
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.linspace(-1, 1, 30).reshape(5, 6), persistent=False)

        def forward(self, x, y):
            a = torch.bmm(x, y.transpose(1, 2)) + torch.matmul(x, self.table.t()).sum(-1, keepdim=True)
            b = torch.einsum("bij,bkj->bik", x, y) - torch.baddbmm(a, x, y.transpose(1, 2), beta=0.5, alpha=2.0)
            c = torch.sub(a, b, alpha=2) + torch.full((5, 5), 0.5) + torch.ones(5).cumsum(0)
            d = torch.stack([x, y], dim=1).flip(-1).expand(2, 2, 5, 6).repeat(1, 1, 1, 2)
            e = torch.tril(c, diagonal=-1) + torch.triu(c)
            m = (x > 0) & ~(y < 0.5) | (x.abs() > 1)
            f = torch.where(m.any(dim=-1, keepdim=True), x, torch.zeros_like(x)) * m.all(dim=-1, keepdim=True)
            return e, d, f, m, torch.arange(1, 10, 2)

    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    graph = check_model(Lin().eval(), (x, y))
    assert "table" in graph.constants  # a non-persistent buffer: a lifted constant


def test_more_cnn_ops():
    """Transposed, dilated and 1-D convolutions, average pooling (padding, ceil mode, adaptive to
    a divisor size), group norm, PReLU, ELU, softplus, constant padding."""

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
            self.dil = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2)
            self.gn = nn.GroupNorm(3, 6)
            self.prelu = nn.PReLU(6)
            self.conv1d = nn.Conv1d(6, 4, 3, padding=1)

        def forward(self, x):
            y = self.prelu(self.gn(self.dil(self.up(x))))  # (n, 6, 16, 16)
            y = F.avg_pool2d(y, 3, stride=2, ceil_mode=True) + F.avg_pool2d(y, 2, 2, padding=1, count_include_pad=False)[:, :, 1:, 1:]
            y = F.adaptive_avg_pool2d(F.elu(y), (4, 4)) + F.softplus(y[:, :, :4, :4])
            y = F.pad(y, (1, 0, 0, 2), value=0.25)
            z = F.max_pool1d(self.conv1d(y.flatten(2)), 2)
            return y, z

    model = _seeded(Mixed)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    graph = check_model(model, (x,))
    assert {"nn.conv_transpose", "nn.average_pool", "nn.group_normalization", "nn.prelu"} <= \
        {n.op for n in graph.nodes}


def test_resampling_and_misc_ops():
    class Resample(nn.Module):
        def forward(self, x):
            a = F.interpolate(x, scale_factor=2, mode="nearest")
            b = F.interpolate(x, size=(6, 10), mode="bilinear", align_corners=False)
            c = F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=True)
            d = F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2)
            values, indices = torch.topk(x.flatten(1), 3, dim=1)
            e = torch.remainder(x, 0.7) + torch.fmod(x, 0.7) + torch.log1p(x.abs()) + torch.expm1(x / 4)
            f = F.rms_norm(torch.roll(x, shifts=(1, -2), dims=(2, 3)), (3, 5)) + torch.roll(x, 4)
            return a, b, c, d, values, indices, e, f

    x = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(8))
    check_model(Resample().eval(), (x,))


def test_attention_masks():
    """SDPA with a boolean mask on 3-D (one head) inputs and an additive float mask on 4-D ones."""

    class Masked(nn.Module):
        def forward(self, q, k, v, keep, bias):
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            b = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=bias,
                                               scale=0.3)
            return a, b

    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 5, 8, generator=g) for _ in range(3))
    keep = torch.rand(2, 5, 5, generator=g) > 0.3
    keep[:, :, 0] = True  # every query row attends somewhere (torch gives NaN otherwise)
    bias = torch.randn(1, 1, 5, 5, generator=g)
    check_model(Masked().eval(), (q, k, v, keep, bias))


def test_pt2_file_and_exported_program(tmp_path):
    model = _seeded(DynamicMLP)
    x = torch.randn(2, 2, 4, 4)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    path = tmp_path / "mlp.pt2"
    torch.export.save(ep, str(path))
    x3 = torch.randn(3, 2, 4, 4)
    for source in (ep, str(path)):
        graph = load_torch(source)
        verify(graph)
        batch = graph.inputs[0].type.shape[0]
        # a .pt2 file does not keep the Dim's name: torch's symbol name stands in (e.g. "s77")
        assert batch == "batch" if source is ep else isinstance(batch, str)
        for inputs in ((x,), (x3,)):
            _close(_run(graph, inputs), _torch_out(model, inputs))


def test_output_names_dtypes_and_passthrough():
    """Dict outputs keep their keys; an input returned as is goes through an identity; bool and
    float16 values keep torch's dtypes."""

    class Named(nn.Module):
        def forward(self, x, flag):
            return {"half": x.half() * 2, "mask": flag & (x > 0), "same": x}

    x, flag = torch.randn(3), torch.tensor([True, False, True])
    graph = check_model(Named().eval(), (x, flag))
    assert [v.name for v in graph.inputs] == ["x", "flag"]
    assert [(v.name, str(v.type)) for v in graph.outputs] == [("half", "f16[3]"), ("mask", "bool[3]"),
                                                              ("same", "f32[3]")]


# -- bad input -----------------------------------------------------------------------------

def test_unsupported_ops_are_listed_at_once():
    class Odd(nn.Module):
        def forward(self, x):
            y = torch.fft.rfft(x).abs()
            z = torch.special.bessel_j0(x) + torch.special.bessel_j0(2 * x)
            return y.sum() + z.sum() + torch.special.i0e(x).sum()

    with pytest.raises(UnsupportedOpError) as info:
        load_torch(Odd().eval(), (torch.randn(8),))
    message = str(info.value)
    assert "aten.special_bessel_j0 ×2" in message
    assert "aten.special_i0e ×1" in message
    assert "fft" in message  # rfft decomposes to _fft_r2c


def test_data_dependent_control_flow_is_a_clear_error():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1

    with pytest.raises(ModelLoadError) as info:
        load_torch(Branchy().eval(), (torch.randn(4),))
    message = str(info.value)
    assert "torch.export could not capture" in message and "torch.cond" in message


def test_higher_order_cond_is_listed_as_unsupported():
    class Cond(nn.Module):
        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: t - 1, (x,))

    with pytest.raises(UnsupportedOpError, match=r"higher_order\.cond ×1"):
        load_torch(Cond().eval(), (torch.randn(4),))


def test_bad_arguments():
    with pytest.raises(ModelLoadError, match="example_inputs"):
        load_torch(TinyResNet())
    with pytest.raises(ModelLoadError, match="no such file"):
        load_torch("/nonexistent/model.pt2")
    with pytest.raises(QirError, match="nn.Module"):
        load_torch(42)
