"""Slot Attention (Locatello et al. 2020, "Object-Centric Learning with Slot Attention"), read top to
bottom in forward order.

Blocks, as in the paper:
  SoftPositionEmbed         App. E.1: a linear map of the 4-channel grid (y, x, 1-y, 1-x) added to features
  SlotAttention             Section 2.1, Algorithm 1: slots from a learned Gaussian, T rounds of attention
                            normalised over slots, weighted mean over inputs, GRU + residual MLP;
                            optionally the gradient flows through the last round only (`implicit_grad`,
                            Chang et al. 2022, "Object Representations as Fixed Points"); the Gaussian's
                            mean and spread then get no gradient and keep their initial values;
                            `update_norm="sum"` replaces the weighted mean of Eq. 2 (see UPDATE_NORMS)
  Encoder                   App. E.1: CNN, soft position embedding, flatten, LayerNorm, MLP
  SpatialBroadcastDecoder   App. E.1 (Watters et al. 2019): each slot broadcast on a grid, CNN to RGB + alpha;
                            with frame="slot" the grid is given in each slot's own reference frame
                            (`slot_frames`: the decoder half of Biza et al. 2023, "Invariant Slot Attention")
  SlotAttentionAutoEncoder  Section 2.2 "Object discovery": masks = softmax over slots, MSE reconstruction
  SlotAttentionSetPredictor Section 2.2 "Set prediction": encoder, slot attention, per-slot MLP head

The number of slots and of iterations are arguments of `forward`, so both can change at test time
(Section 4.1, "generalisation to more objects / more iterations"); None means the constructor's value, and
both must be >= 1 (zero rounds would leave no attention to return). Slots are exchangeable: nothing in
`SlotAttention` depends on a slot's index, which makes it permutation-equivariant in the slots given a
fixed initialisation (Section 2.1, "Permutation equivariance").

This module never imports torch.distributed; the loss for set prediction (Hungarian matching) lives with
the trainer in evaluation/downstream/slots.py.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F


def build_grid(height: int, width: int, device=None) -> torch.Tensor:
    """(1, H, W, 4) grid of (y, x, 1-y, 1-x) in [0, 1] (App. E.1, "position embedding")."""
    ys = torch.linspace(0.0, 1.0, height, device=device)
    xs = torch.linspace(0.0, 1.0, width, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    grid = torch.stack([gy, gx], dim=-1)  # (H, W, 2)
    return torch.cat([grid, 1.0 - grid], dim=-1).unsqueeze(0)  # (1, H, W, 4)


class SoftPositionEmbed(nn.Module):
    """Adds a learned projection of the 4-d position grid to channels-last features (App. E.1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H, W, C)
        grid = build_grid(x.shape[1], x.shape[2], x.device).to(x.dtype)  # (1, H, W, 4)
        return x + self.proj(grid)


# How a slot's update aggregates the inputs it attends to. "mean" is the paper's Eq. 2. "sum" takes the
# attention-weighted sum times K / N instead, a fixed scale (after Krimmel et al. 2024, "Attention
# normalization impacts cardinality generalization in slot attention"): the update then also says how much
# of the scene a slot won, so a slot left without an object stays small rather than becoming a copy of one.
UPDATE_NORMS = ("mean", "sum")


def _check_count(name: str, value) -> None:
    """num_slots, iters and sizes are integers >= 1 (zero iterations would leave no attention to return)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")


class SlotAttention(nn.Module):
    """Algorithm 1 of the paper. `dim` is the slot size D; inputs have `input_dim` features."""

    def __init__(self, num_slots: int, dim: int, iters: int = 3, mlp_hidden: int = 128,
                 input_dim: int | None = None, eps: float = 1e-8, implicit_grad: bool = False,
                 update_norm: str = "mean"):
        super().__init__()
        if update_norm not in UPDATE_NORMS:
            raise ValueError(f"update_norm={update_norm!r}: expected one of {UPDATE_NORMS}")
        for name, value in (("num_slots", num_slots), ("dim", dim), ("iters", iters), ("mlp_hidden", mlp_hidden)):
            _check_count(name, value)
        if input_dim is not None:
            _check_count("input_dim", input_dim)
        self.num_slots = num_slots
        self.update_norm = update_norm
        self.iters = iters
        # Treat the slots as a fixed point of the update and backpropagate through the last round only (the
        # first-order approximation of implicit differentiation): cheaper, more stable training, and the
        # slots keep improving when run for more rounds at test time. The starting slots only feed the
        # rounds without gradient, so mu and sigma stay at their initialisation. Passing the last round's
        # gradient straight through to them (as BO-QSA does for its queries) measured no better on the CI
        # recipe: decoder FG-ARI 0.734 / 0.844 / 0.866 for seeds 0 / 1 / 2, against 0.836 / 0.807 / 0.806.
        self.implicit_grad = implicit_grad
        self.dim = dim
        self.eps = eps
        self.scale = dim ** -0.5  # 1/sqrt(D) in Eq. 1
        self.input_dim = input_dim = input_dim or dim
        # Slots are sampled from N(mu, diag(sigma^2)) with learned mu, sigma shared by all slots (Section 2.1).
        self.slots_mu = nn.Parameter(torch.zeros(1, 1, dim))
        self.slots_log_sigma = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.xavier_uniform_(self.slots_mu)
        nn.init.xavier_uniform_(self.slots_log_sigma)
        self.norm_inputs = nn.LayerNorm(input_dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(input_dim, dim, bias=False)
        self.to_v = nn.Linear(input_dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, dim))

    def sample_noise(self, batch: int, num_slots: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """The standard normal draw `init_slots` scales, (B, K, D). Drawn outside a compiled model and passed
        in as `noise`, it keeps the generator out of the graph (torch.compile breaks the graph there)."""
        K = self.num_slots if num_slots is None else num_slots
        return torch.randn(batch, K, self.dim, generator=generator,
                           device=self.slots_mu.device if generator is None else generator.device)

    def init_slots(self, batch: int, num_slots: int, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = self.sample_noise(batch, num_slots, generator)
        elif noise.shape != (batch, num_slots, self.dim):
            raise ValueError(f"SlotAttention: noise must have shape (B={batch}, K={num_slots}, dim={self.dim}), "
                             f"got {tuple(noise.shape)}")
        return self.slots_mu + self.slots_log_sigma.exp() * noise.to(self.slots_mu.device)  # (B, K, D)

    def forward(self, inputs: torch.Tensor, num_slots: int | None = None, iters: int | None = None,
                slots: torch.Tensor | None = None, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None):
        # inputs: (B, N, D_in); slots (optional initial slots): (B, K, D); noise (optional draw that the
        # initial slots scale, from sample_noise): (B, K, D)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3 or inputs.shape[-1] != self.input_dim:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"SlotAttention: inputs must have shape (B, N, input_dim={self.input_dim}), got {got}")
        B = inputs.shape[0]
        if num_slots is not None:  # `is None`, not `or`: num_slots=0 / iters=0 are refused, not replaced
            _check_count("num_slots", num_slots)
        if iters is not None:
            _check_count("iters", iters)
        if slots is not None:
            if slots.dim() != 3 or slots.shape[0] != B or slots.shape[2] != self.dim:
                raise ValueError(f"SlotAttention: slots must have shape (B={B}, K, dim={self.dim}), "
                                 f"got {tuple(slots.shape)}")
            if num_slots is not None and num_slots != slots.shape[1]:
                raise ValueError(f"SlotAttention: num_slots={num_slots} but the given slots have "
                                 f"K={slots.shape[1]}; pass one or the other")
        if noise is not None and (slots is not None or generator is not None):
            raise ValueError("SlotAttention: noise replaces the slots' random draw; pass it without slots and "
                             "without a generator")
        K = num_slots if num_slots is not None else (slots.shape[1] if slots is not None else self.num_slots)
        T = iters if iters is not None else self.iters
        if slots is None:
            slots = self.init_slots(B, K, generator, noise)  # (B, K, D)
        inputs = self.norm_inputs(inputs)  # Algorithm 1, line 2
        k = self.to_k(inputs)  # (B, N, D)
        v = self.to_v(inputs)  # (B, N, D)
        attn = None
        track = torch.is_grad_enabled()
        for t in range(T):
            if self.implicit_grad and t == T - 1:
                slots = slots.detach()  # rounds before the last one carry no gradient
            with torch.set_grad_enabled(track and (t == T - 1 or not self.implicit_grad)):
                slots, attn = self._round(slots, k, v)
        return slots, attn.transpose(1, 2)  # (B, K, D), (B, K, N) attention of the last iteration

    def _round(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """One iteration of Algorithm 1 (lines 4-9); returns the new slots and the (B, N, K) attention."""
        B, K, _ = slots.shape
        slots_prev = slots
        q = self.to_q(self.norm_slots(slots))  # (B, K, D)
        logits = torch.einsum("bnd,bkd->bnk", k, q) * self.scale  # (B, N, K), Eq. 1
        attn = logits.softmax(dim=-1) + self.eps  # softmax over slots: slots compete for inputs (Eq. 1)
        if self.update_norm == "mean":
            weights = attn / attn.sum(dim=1, keepdim=True)  # weighted mean over inputs (Eq. 2)
        else:  # weighted sum, scaled so that a fair share (N / K inputs) weighs 1: a slot that wins few
            weights = attn * (K / attn.shape[1])  # inputs gets a small update instead of a full copy
        updates = torch.einsum("bnk,bnd->bkd", weights, v)  # (B, K, D), Eq. 2
        slots = self.gru(updates.reshape(B * K, -1), slots_prev.reshape(B * K, -1))  # (B*K, D)
        slots = slots.reshape(B, K, -1)  # (B, K, D)
        slots = slots + self.mlp(self.norm_mlp(slots))  # residual MLP (Algorithm 1, line 9)
        return slots, attn


def conv_stack(channels: list[int], kernel: int, final_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))
        if final_act or i < len(channels) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """CNN -> soft position embedding -> flatten -> LayerNorm -> MLP (App. E.1, Table 3).

    `stride` > 1 on the first layer shrinks the feature map (a CPU-sized variant; the paper uses 1)."""

    def __init__(self, in_channels: int = 3, hidden: int = 64, layers: int = 4, kernel: int = 5,
                 out_dim: int = 64, stride: int = 1):
        super().__init__()
        self.first = nn.Conv2d(in_channels, hidden, kernel, stride=stride, padding=kernel // 2)
        self.cnn = conv_stack([hidden] * layers, kernel, final_act=True)
        self.pos = SoftPositionEmbed(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the feature map for an image of (height, width); only the first layer strides."""
        k, s, p = self.first.kernel_size[0], self.first.stride[0], self.first.padding[0]
        return (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1

    def feature_positions(self, height: int, width: int, device=None) -> torch.Tensor:
        """(N, 2): each feature's (y, x) in the image's [0, 1] coordinates (pixel / (size - 1), as
        `build_grid` spans the image), in the order `forward` flattens them. Feature i sits over pixel
        i * stride, the centre of its first convolution's window."""
        stride = self.first.stride[0]
        h, w = self.feature_size(height, width)
        ys = torch.arange(h, device=device) * stride / max(height - 1, 1)
        xs = torch.arange(w, device=device) * stride / max(width - 1, 1)
        return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (B, 3, H, W)
        x = self.cnn(F.relu(self.first(image)))  # (B, C, H', W')
        x = self.pos(x.permute(0, 2, 3, 1))  # (B, H', W', C)
        x = x.flatten(1, 2)  # (B, N = H' W', C)
        return self.mlp(self.norm(x))  # (B, N, out_dim)


def slot_frames(attn: torch.Tensor, positions: torch.Tensor, min_scale: float = 0.01):
    """Each slot's reference frame from its attention: the attention-weighted mean of the inputs' (y, x)
    positions and their weighted standard deviation per axis (Biza et al. 2023, Sec. 3).
    attn: (B, K, N), positions: (N, 2); returns centre (B, K, 2) and scale (B, K, 2), scale >= min_scale
    so that a slot that wins a single input still gets a finite frame."""
    weights = attn / attn.sum(dim=-1, keepdim=True)  # (B, K, N)
    centre = weights @ positions  # (B, K, 2)
    spread = positions[None, None] - centre[:, :, None]  # (B, K, N, 2)
    variance = (weights[..., None] * spread.square()).sum(dim=2)  # (B, K, 2)
    return centre, variance.clamp_min(min_scale ** 2).sqrt()


# Where the decoder's broadcast grid is measured from. "image": absolute (y, x, 1-y, 1-x), the paper's.
# "slot": (position - slot centre) / slot scale, the slot's own frame: a slot then only has to say what its
# object looks like around its centre, and where the object is comes from the attention, exactly.
DECODER_FRAMES = ("image", "slot")


def _doublings(start: int, target: int) -> int:
    """How many times `start` must double to reach `target`."""
    n = 0
    while start < target:
        start, n = start * 2, n + 1
    return n


class SpatialBroadcastDecoder(nn.Module):
    """Each slot is tiled on an (h0, w0) grid, given the position embedding and decoded by a CNN into
    4 channels: RGB and an alpha logit (App. E.1, Watters et al. 2019). With h0 < image height the grid is
    upsampled by stride-2 transposed convolutions (the paper's CLEVR decoder) and cropped to the image; for a
    non-square image the axis that needs fewer doublings keeps stride 1 in the extra steps. With
    frame="slot", `forward` takes each slot's (centre, scale) and the grid is expressed in that frame."""

    def __init__(self, slot_dim: int = 64, hidden: int = 32, layers: int = 4, kernel: int = 5,
                 image_size: tuple[int, int] = (35, 35), broadcast_size: tuple[int, int] | None = None,
                 frame: str = "image"):
        super().__init__()
        if frame not in DECODER_FRAMES:
            raise ValueError(f"SpatialBroadcastDecoder: frame={frame!r}: expected one of {DECODER_FRAMES}")
        self.frame = frame
        self.image_size = tuple(image_size)
        self.broadcast_size = tuple(broadcast_size or image_size)
        for name, size in (("image_size", self.image_size), ("broadcast_size", self.broadcast_size)):
            if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in size):
                raise ValueError(f"SpatialBroadcastDecoder: {name}={size} must be (height, width), integers >= 1")
        # stride-2 upsamplings per axis until the grid covers the image; a non-square image may need more along
        # one axis: those steps then upsample that axis only (stride 1 along the other)
        n_up_hw = [_doublings(b, i) for b, i in zip(self.broadcast_size, self.image_size)]
        n_up = max(n_up_hw)
        if kernel == 1 and n_up:
            raise ValueError(f"SpatialBroadcastDecoder: kernel=1 needs broadcast_size=image_size ({self.image_size}), "
                             f"got {self.broadcast_size}: a 1x1 transposed convolution leaves gaps when upsampling")
        # a slot's frame gives (y, x) only: the image frame's 1-y, 1-x add nothing a bias cannot
        self.pos = SoftPositionEmbed(slot_dim) if frame == "image" else nn.Linear(2, slot_dim)
        ups: list[nn.Module] = []
        cin = slot_dim
        for step in range(n_up):
            sh, sw = (2 if step < n else 1 for n in n_up_hw)
            stride, out_pad = (2, 1) if sh == sw else ((sh, sw), (sh - 1, sw - 1))
            ups += [nn.ConvTranspose2d(cin, hidden, kernel, stride=stride, padding=kernel // 2,
                                       output_padding=out_pad), nn.ReLU()]
            cin = hidden
        self.up = nn.Sequential(*ups)
        self.cnn = conv_stack([cin] + [hidden] * max(layers - n_up - 1, 0), kernel, final_act=True)
        out_kernel = min(kernel, 3)  # kernel 1: a per-pixel MLP decoder, no spatial context at all
        self.out = nn.Conv2d(hidden if (layers - n_up - 1 > 0 or n_up) else cin, 4, out_kernel,
                             padding=out_kernel // 2)
        out_size = self.output_grid()
        if out_size[0] < self.image_size[0] or out_size[1] < self.image_size[1]:
            raise ValueError(f"SpatialBroadcastDecoder: kernel={kernel} with broadcast_size={self.broadcast_size} "
                             f"decodes a {out_size} grid, smaller than image_size={self.image_size}; use an odd "
                             f"kernel")

    def output_grid(self) -> tuple[int, int]:
        """(H'', W'') the convolutions produce from the broadcast grid, before cropping to the image."""
        size = list(self.broadcast_size)
        for m in [*self.up, *self.cnn, self.out]:
            for ax in (0, 1):
                if isinstance(m, nn.ConvTranspose2d):
                    size[ax] = ((size[ax] - 1) * m.stride[ax] - 2 * m.padding[ax] + m.kernel_size[ax]
                                + m.output_padding[ax])
                elif isinstance(m, nn.Conv2d):
                    size[ax] = (size[ax] + 2 * m.padding[ax] - m.kernel_size[ax]) // m.stride[ax] + 1
        return size[0], size[1]

    def forward(self, slots: torch.Tensor, frames: tuple[torch.Tensor, torch.Tensor] | None = None):
        # slots: (B, K, D); frames (frame="slot" only): centre and scale, (B, K, 2) each, from slot_frames
        B, K, D = slots.shape
        h0, w0 = self.broadcast_size
        x = slots.reshape(B * K, 1, 1, D).expand(B * K, h0, w0, D)  # (B*K, h0, w0, D), spatial broadcast
        if self.frame == "image":
            x = self.pos(x)
        else:
            if frames is None:
                raise ValueError("SpatialBroadcastDecoder(frame='slot') needs frames=(centre, scale), (B, K, 2) each")
            centre, scale = (f.reshape(B * K, 1, 1, 2).to(x.dtype) for f in frames)
            grid = build_grid(h0, w0, x.device)[..., :2].to(x.dtype)  # (1, h0, w0, 2): (y, x) in [0, 1]
            x = x + self.pos((grid - centre) / scale)  # (B*K, h0, w0, D)
        x = x.permute(0, 3, 1, 2)  # (B*K, D, h0, w0)
        x = self.cnn(self.up(x))  # (B*K, hidden, H'', W'')
        x = self.out(x)[:, :, : self.image_size[0], : self.image_size[1]]  # (B*K, 4, H, W)
        x = x.reshape(B, K, 4, *self.image_size)  # (B, K, 4, H, W)
        return x[:, :, :3], x[:, :, 3:]  # rgb (B, K, 3, H, W), alpha logits (B, K, 1, H, W)


def _check_image(image: torch.Tensor, size: tuple[int, int] | None = None) -> None:
    """image: (B, 3, H, W); the autoencoder decodes a fixed (H, W), so it must match its image_size."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must have shape (B, 3, H, W), got {got}")
    if size is not None and tuple(image.shape[2:]) != tuple(size):
        raise ValueError(f"image is {tuple(image.shape[2:])} (H, W) but the model was built for "
                         f"image_size={tuple(size)}: its decoder only draws that size")


class SlotAttentionAutoEncoder(nn.Module):
    """Object discovery (Section 2.2): encode, group into slots, decode each slot; the alpha logits are
    normalised by a softmax over slots into masks and the image is the mask-weighted sum of per-slot RGB."""

    def __init__(self, image_size: tuple[int, int] = (35, 35), num_slots: int = 4, iters: int = 3,
                 slot_dim: int = 64, enc_hidden: int = 64, enc_layers: int = 4, enc_kernel: int = 5,
                 enc_stride: int = 1, dec_hidden: int = 32, dec_layers: int = 4, dec_kernel: int = 5,
                 broadcast_size: tuple[int, int] | None = None, mlp_hidden: int = 128,
                 implicit_grad: bool = False, update_norm: str = "mean", dec_frame: str = "image"):
        super().__init__()
        self.encoder = Encoder(3, enc_hidden, enc_layers, enc_kernel, slot_dim, enc_stride)
        self.slot_attention = SlotAttention(num_slots, slot_dim, iters, mlp_hidden, implicit_grad=implicit_grad,
                                            update_norm=update_norm)
        self.decoder = SpatialBroadcastDecoder(slot_dim, dec_hidden, dec_layers, dec_kernel, image_size,
                                               broadcast_size, dec_frame)

    def forward(self, image: torch.Tensor, num_slots: int | None = None, iters: int | None = None,
                generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # image: (B, 3, H, W) in [-1, 1]
        _check_image(image, self.decoder.image_size)
        feats = self.encoder(image)  # (B, N, D)
        slots, attn = self.slot_attention(feats, num_slots, iters, generator=generator, noise=noise)
        # slots: (B, K, D), attn: (B, K, N)
        feature_hw = self.encoder.feature_size(*image.shape[2:])
        frames = None
        if self.decoder.frame == "slot":
            positions = self.encoder.feature_positions(*image.shape[2:], image.device).to(attn.dtype)
            frames = slot_frames(attn, positions)
        rgb, alpha = self.decoder(slots, frames)  # (B, K, 3, H, W), (B, K, 1, H, W)
        masks = alpha.softmax(dim=1)  # softmax over slots (Section 2.2)
        recon = (masks * rgb).sum(dim=1)  # (B, 3, H, W)
        attn_maps = attn.reshape(*attn.shape[:2], *feature_hw)  # (B, K, H', W')
        return {"recon": recon, "rgb": rgb, "masks": masks.squeeze(2), "slots": slots, "attn": attn,
                "attn_maps": attn_maps}


class SlotAttentionSetPredictor(nn.Module):
    """Set prediction (Section 2.2): encoder, slot attention, and a shared MLP applied to each slot that
    outputs one object's property vector (coordinates, one-hot attributes, "is real" flag), in [0, 1]."""

    def __init__(self, out_dim: int, num_slots: int = 4, iters: int = 3, slot_dim: int = 64,
                 enc_hidden: int = 64, enc_layers: int = 4, enc_kernel: int = 5, enc_stride: int = 1,
                 mlp_hidden: int = 128, implicit_grad: bool = False, update_norm: str = "mean"):
        super().__init__()
        self.encoder = Encoder(3, enc_hidden, enc_layers, enc_kernel, slot_dim, enc_stride)
        self.slot_attention = SlotAttention(num_slots, slot_dim, iters, mlp_hidden, implicit_grad=implicit_grad,
                                            update_norm=update_norm)
        self.head = nn.Sequential(nn.Linear(slot_dim, slot_dim), nn.ReLU(), nn.Linear(slot_dim, out_dim))

    def forward(self, image: torch.Tensor, num_slots: int | None = None, iters: int | None = None,
                generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # image: (B, 3, H, W) in [-1, 1]
        _check_image(image)
        feats = self.encoder(image)  # (B, N, D)
        slots, attn = self.slot_attention(feats, num_slots, iters, generator=generator, noise=noise)  # (B, K, D)
        return {"pred": torch.sigmoid(self.head(slots)), "slots": slots, "attn": attn}  # pred: (B, K, out_dim)
