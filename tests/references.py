"""Handwritten reference networks, in plain PyTorch, with their originals' ``state_dict`` key names.

torchvision and timm cannot be installed here, so these are written from their sources: the
recipes of ``composer/conf/model/`` must load these weights strictly and give the same outputs. Sizes are
arguments where that is cheap, so tests can build small versions.

- ``resnet18()``: torchvision's ResNet-18 (11,689,512 parameters).
- ``vit_tiny()``: timm's ``vit_tiny_patch16_224`` (5,717,416 parameters).
- ``gpt2()``: nanoGPT's GPT with ``nn.Linear`` projections, GPT-2 small by default (124,439,808
  parameters counted once: ``lm_head.weight`` is ``transformer.wte.weight``).
- ``UNet``, ``LSTMClassifier``, ``Siamese``: small networks of the shapes section 7.8 names.
- ``convnext()``: torchvision's ConvNeXt (``convnext_tiny`` by default: 28,589,128 parameters),
  stochastic depth left out (the identity in eval mode and at probability 0).
- ``architecture(name, fields)``, ``architecture_inputs(name, fields)``: the references of section
  7.12 (``transformers``' Llama, Mixtral and BERT, torchvision's ConvNeXt, ``nn.Transformer``) built
  from their own config fields, as the recipes of the same name take them in ``vars``, and inputs
  by the reference's argument names; ``SMALL``: small sizes for each, for fast tests.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# --- torchvision ResNet-18 -----------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: conv-bn-relu-conv-bn, plus the shortcut, then relu."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet with BasicBlocks; ``layers=(2, 2, 2, 2)`` is ResNet-18."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes)


# --- timm vit_tiny_patch16_224 -------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """timm.layers.PatchEmbed: a strided conv, then (B, C, H, W) -> (B, H*W, C)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """timm.models.vision_transformer.Attention (fused): qkv Linear, SDPA, proj Linear."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """timm.layers.Mlp: fc1, GELU (exact), fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """timm.models.vision_transformer.Block, without layer scale or drop path (identities in vit_tiny)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    """timm's VisionTransformer with a class token, learned positions and the token pool."""

    def __init__(
        self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 192, depth: int = 12, num_heads: int = 3,
        num_classes: int = 1000,
    ) -> None:  # fmt: skip
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny(**kwargs: int) -> VisionTransformer:
    return VisionTransformer(**kwargs)


# --- nanoGPT GPT-2 -------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """nanoGPT's CausalSelfAttention (flash path): c_attn, split, SDPA causal, c_proj."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout = self.dropout if self.training else 0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPTMLP(nn.Module):
    """nanoGPT's MLP: c_fc, GELU (tanh approximation, as GPT-2), c_proj, dropout."""

    def __init__(self, n_embd: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPTBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = GPTMLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """nanoGPT's GPT; ``lm_head.weight`` is tied to ``transformer.wte.weight``."""

    def __init__(
        self, vocab_size: int = 50257, block_size: int = 1024, n_layer: int = 12, n_head: int = 12, n_embd: int = 768,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                drop=nn.Dropout(dropout),
                h=nn.ModuleList([GPTBlock(n_embd, n_head, dropout) for _ in range(n_layer)]),
                ln_f=nn.LayerNorm(n_embd),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # as nanoGPT ties them

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def gpt2(**kwargs: float) -> GPT:
    return GPT(**kwargs)  # type: ignore[arg-type]


# --- small networks ------------------------------------------------------------------------------


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU, children 0..5."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class UNet(nn.Module):
    """Two down stages, a bottleneck, two up stages concatenating the skips; output H x W of the input."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.enc1 = double_conv(in_channels, c1)
        self.pool = nn.MaxPool2d(2)
        self.enc2 = double_conv(c1, c2)
        self.bottleneck = double_conv(c2, c3)
        self.up2 = nn.ConvTranspose2d(c3, c2, kernel_size=2, stride=2)
        self.dec2 = double_conv(2 * c2, c2)
        self.up1 = nn.ConvTranspose2d(c2, c1, kernel_size=2, stride=2)
        self.dec1 = double_conv(2 * c1, c1)
        self.head = nn.Conv2d(c1, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


class LSTMClassifier(nn.Module):
    """Embedding -> 2-layer LSTM (batch first) -> the last layer's final hidden state -> Linear."""

    def __init__(
        self, vocab_size: int = 1000, embed_dim: int = 64, hidden_size: int = 128, num_classes: int = 5
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embedding(tokens))
        return self.fc(h[-1])


class Siamese(nn.Module):
    """One encoder run on two inputs; ``abs(a - b)`` -> Linear: a similarity logit."""

    def __init__(self, in_features: int = 32, hidden: int = 64, embed: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, embed))
        self.head = nn.Linear(embed, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.abs(self.encoder(a) - self.encoder(b)))


# --- torchvision ConvNeXt ------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: a LayerNorm over channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    """torchvision.models.convnext.CNBlock: depthwise 7x7, channels-last LayerNorm, Linear MLP, layer scale."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(input)
        result += input
        return result


class ConvNeXt(nn.Module):
    """torchvision.models.convnext.ConvNeXt: a 4x4 patchify stem (conv + LayerNorm2d), stages of CNBlocks
    with a LayerNorm2d + 2x2 stride-2 conv between them, then pool, LayerNorm2d, flatten, Linear."""

    def __init__(
        self, dims: tuple[int, ...] = (96, 192, 384, 768), depths: tuple[int, ...] = (3, 3, 9, 3),
        num_classes: int = 1000, layer_scale: float = 1e-6,
    ) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, dims[0], kernel_size=4, stride=4, padding=0, bias=True), LayerNorm2d(dims[0], eps=1e-6)
            )
        ]
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            layers.append(nn.Sequential(*[CNBlock(dim, layer_scale) for _ in range(depth)]))
            if i + 1 < len(dims):
                layers.append(
                    nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[i + 1], kernel_size=2, stride=2))
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes)
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext(**kwargs) -> ConvNeXt:
    return ConvNeXt(**kwargs)


# --- section 7.12: references built from their own config fields --------------------------------

SMALL: dict[str, dict] = {
    "llama": {
        "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    "mixtral": {
        "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
    },
    "bert": {
        "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 96, "max_position_embeddings": 32, "type_vocab_size": 2,
    },
    "convnext": {"dims": [8, 16, 32, 64], "depths": [1, 1, 2, 1], "num_classes": 10},
    "seq2seq": {
        "d_model": 32, "nhead": 4, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 64,
        "dropout": 0.0,
    },
}  # fmt: skip
TRANSFORMERS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
                "bert": ("BertConfig", "BertModel")}  # fmt: skip


def architecture(name: str, fields: dict) -> nn.Module:
    """The reference of recipe ``name`` built from ``fields`` (its config's own names), in eval mode;
    transformers' models with SDPA attention."""
    if name in TRANSFORMERS:
        import transformers  # noqa: PLC0415 (seconds to import: only who needs it pays)

        config, model = (getattr(transformers, n) for n in TRANSFORMERS[name])
        return model(config(**fields, attn_implementation="sdpa")).eval()
    if name == "convnext":
        return ConvNeXt(tuple(fields["dims"]), tuple(fields["depths"]), fields.get("num_classes", 1000)).eval()
    if name == "seq2seq":
        return nn.Transformer(**fields, batch_first=True).eval()
    raise KeyError(name)


def architecture_inputs(name: str, fields: dict, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    """Inputs by the reference's argument names: token ids (BERT: with a padded second sequence
    and two token types), images, or a source and a target sequence."""
    g = torch.Generator().manual_seed(1)
    if name in TRANSFORMERS:
        ids = torch.randint(0, fields["vocab_size"], (batch, length), generator=g)
        if name != "bert":
            return {"input_ids": ids}
        attention_mask = torch.ones_like(ids)
        attention_mask[-1, length * 2 // 3 :] = 0
        token_type_ids = torch.zeros_like(ids)
        token_type_ids[:, length // 2 :] = 1
        return {"input_ids": ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    if name == "convnext":
        return {"x": torch.randn(batch, 3, 32, 32, generator=g)}
    if name == "seq2seq":
        d = fields["d_model"]
        return {
            "src": torch.randn(batch, length, d, generator=g),
            "tgt": torch.randn(batch, length - 2, d, generator=g),
        }
    raise KeyError(name)


def architecture_output(name: str, reference: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference's first output (logits, last_hidden_state, ...); ``nn.Transformer`` is given
    the causal target mask its documentation asks for, and the hint that it is causal."""
    if name == "seq2seq":
        causal = nn.Transformer.generate_square_subsequent_mask(inputs["tgt"].size(1))
        return reference(inputs["src"], inputs["tgt"], tgt_mask=causal, tgt_is_causal=True)
    out = reference(**inputs) if name != "convnext" else reference(inputs["x"])
    return out if isinstance(out, torch.Tensor) else out[0]


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once (a tied tensor once), as ``named_parameters`` lists them."""
    return sum(p.numel() for p in model.parameters())
