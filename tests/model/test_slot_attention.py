"""Slot Attention module (Locatello et al. 2020): permutation equivariance in the slots, inference-time
flexibility (slots / iterations), decoder mask normalisation, set-prediction head."""

import pytest
import torch

from model.slot_attention import (Encoder, SlotAttention, SlotAttentionAutoEncoder, SlotAttentionSetPredictor,
                                  SoftPositionEmbed, SpatialBroadcastDecoder, build_grid, slot_frames)

torch.set_num_threads(1)


@pytest.fixture(params=["mean", "sum"])
def sa(request):
    torch.manual_seed(0)
    return SlotAttention(num_slots=5, dim=16, iters=3, mlp_hidden=32, input_dim=12,
                         update_norm=request.param).double()


def test_permutation_equivariance_in_slots(sa):
    torch.manual_seed(1)
    x = torch.randn(3, 20, 12, dtype=torch.double)
    slots0 = torch.randn(3, 5, 16, dtype=torch.double)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, attn = sa(x, slots=slots0)
    out_p, attn_p = sa(x, slots=slots0[:, perm])
    torch.testing.assert_close(out_p, out[:, perm])
    torch.testing.assert_close(attn_p, attn[:, perm])


def test_invariant_to_input_order(sa):
    torch.manual_seed(2)
    x = torch.randn(2, 20, 12, dtype=torch.double)
    slots0 = torch.randn(2, 5, 16, dtype=torch.double)
    perm = torch.randperm(20)
    out, attn = sa(x, slots=slots0)
    out_p, attn_p = sa(x[:, perm], slots=slots0)
    torch.testing.assert_close(out_p, out)  # a set of inputs: the slots do not see their order
    torch.testing.assert_close(attn_p, attn[:, :, perm])


def test_attention_is_softmax_over_slots(sa):
    x = torch.randn(2, 20, 12, dtype=torch.double)
    _, attn = sa(x)
    assert attn.shape == (2, 5, 20)
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 20, dtype=torch.double), atol=1e-6, rtol=0)


def test_slots_and_iterations_change_at_inference(sa):
    x = torch.randn(2, 20, 12, dtype=torch.double)
    for k, t in [(5, 3), (8, 3), (2, 7)]:
        out, attn = sa(x, num_slots=k, iters=t)
        assert out.shape == (2, k, 16) and attn.shape == (2, k, 20)
    g1 = torch.Generator().manual_seed(0)
    g2 = torch.Generator().manual_seed(0)
    a3, _ = sa(x, iters=3, generator=g1)
    a6, _ = sa(x, iters=6, generator=g2)
    assert not torch.allclose(a3, a6)  # more iterations do run


def test_learned_gaussian_init_gets_gradients(sa):
    x = torch.randn(2, 20, 12, dtype=torch.double)
    out, _ = sa(x)
    out.sum().backward()
    assert sa.slots_mu.grad.abs().sum() > 0 and sa.slots_log_sigma.grad.abs().sum() > 0
    g = torch.Generator().manual_seed(3)
    s1 = sa.init_slots(4, 6, torch.Generator().manual_seed(3))
    s2 = sa.init_slots(4, 6, g)
    torch.testing.assert_close(s1, s2)  # seeded init is reproducible
    assert s1.shape == (4, 6, 16) and not torch.allclose(s1[:, 0], s1[:, 1])


def test_implicit_grad_backpropagates_through_the_last_iteration_only(sa):
    torch.manual_seed(4)
    x = torch.randn(2, 20, 12, dtype=torch.double, requires_grad=True)
    slots0 = torch.randn(2, 5, 16, dtype=torch.double)
    full, _ = sa(x, slots=slots0)
    (g_full,) = torch.autograd.grad(full.square().sum(), x)
    sa.implicit_grad = True
    out, _ = sa(x, slots=slots0)
    torch.testing.assert_close(out, full)  # the forward pass is unchanged
    (g_implicit,) = torch.autograd.grad(out.square().sum(), x)
    with torch.no_grad():
        fixed, _ = sa(x, slots=slots0, iters=2)  # the first T - 1 rounds, as constants
    (g_last,) = torch.autograd.grad(sa(x, slots=fixed, iters=1)[0].square().sum(), x)
    torch.testing.assert_close(g_implicit, g_last)
    assert not torch.allclose(g_implicit, g_full)
    sa(x)[0].sum().backward()
    assert sa.slots_mu.grad is None and sa.slots_log_sigma.grad is None  # the initialisation is not learnt


@pytest.mark.parametrize("norm", ["mean", "sum"])
def test_update_aggregates_the_attended_inputs(norm):
    """The GRU's input is the attention-weighted mean of the values (Eq. 2) or, with update_norm="sum", the
    weighted sum times K / N, so a slot that wins little of the scene gets a small update."""
    torch.manual_seed(3)
    sa = SlotAttention(num_slots=4, dim=8, iters=1, mlp_hidden=16, input_dim=6, update_norm=norm).double()
    x = torch.randn(2, 30, 6, dtype=torch.double)
    seen = []
    sa.gru.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    _, attn = sa(x, slots=torch.randn(2, 4, 8, dtype=torch.double))  # attn: (B, K, N), eps included
    v = sa.to_v(sa.norm_inputs(x))  # (B, N, D)
    weighted = torch.einsum("bkn,bnd->bkd", attn, v)
    expected = weighted / attn.sum(-1, keepdim=True) if norm == "mean" else weighted * 4 / 30  # K / N
    torch.testing.assert_close(seen[0].reshape(2, 4, 8), expected)
    with pytest.raises(ValueError, match="update_norm='max'"):
        SlotAttention(num_slots=4, dim=8, update_norm="max")


def test_position_grid_and_embedding():
    g = build_grid(3, 5)
    assert g.shape == (1, 3, 5, 4)
    torch.testing.assert_close(g[0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(g[0, 2, 4], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    emb = SoftPositionEmbed(8)
    x = torch.zeros(2, 3, 5, 8)
    y = emb(x)
    assert y.shape == x.shape and not torch.allclose(y[:, 0, 0], y[:, 2, 4])


@pytest.mark.parametrize("broadcast", [None, (9, 9)])
def test_decoder_shapes_and_slot_equivariance(broadcast):
    torch.manual_seed(0)
    dec = SpatialBroadcastDecoder(slot_dim=8, hidden=8, layers=3, kernel=3, image_size=(35, 35),
                                  broadcast_size=broadcast).double()
    slots = torch.randn(2, 4, 8, dtype=torch.double)
    rgb, alpha = dec(slots)
    assert rgb.shape == (2, 4, 3, 35, 35) and alpha.shape == (2, 4, 1, 35, 35)
    perm = torch.tensor([2, 0, 3, 1])
    rgb_p, alpha_p = dec(slots[:, perm])
    torch.testing.assert_close(rgb_p, rgb[:, perm])
    torch.testing.assert_close(alpha_p, alpha[:, perm])


def test_autoencoder_masks_are_softmax_over_slots():
    torch.manual_seed(0)
    m = SlotAttentionAutoEncoder(image_size=(35, 35), num_slots=4, slot_dim=16, mlp_hidden=32, enc_hidden=8,
                                 enc_layers=2, enc_kernel=3, dec_hidden=8, dec_layers=3, dec_kernel=3,
                                 broadcast_size=(9, 9))
    x = torch.rand(2, 3, 35, 35) * 2 - 1
    out = m(x, num_slots=6, iters=2)
    assert out["recon"].shape == (2, 3, 35, 35) and out["masks"].shape == (2, 6, 35, 35)
    torch.testing.assert_close(out["masks"].sum(1), torch.ones(2, 35, 35))
    torch.testing.assert_close(out["recon"], (out["masks"][:, :, None] * out["rgb"]).sum(1))
    torch.nn.functional.mse_loss(out["recon"], x).backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("size,stride,expect", [(35, 1, 35), (35, 2, 18), (64, 2, 32), (14, 1, 14)])
def test_attention_maps_match_the_encoder_grid(size, stride, expect):
    m = SlotAttentionAutoEncoder(image_size=(size, size), num_slots=3, slot_dim=8, mlp_hidden=8, enc_hidden=4,
                                 enc_layers=2, enc_kernel=3, enc_stride=stride, dec_hidden=4, dec_layers=2,
                                 dec_kernel=3, broadcast_size=(8, 8))
    out = m(torch.rand(2, 3, size, size))
    assert out["attn_maps"].shape == (2, 3, expect, expect)
    torch.testing.assert_close(out["attn_maps"].flatten(2), out["attn"])  # row-major, as the encoder flattens


def test_set_predictor_outputs_one_vector_per_slot():
    m = SlotAttentionSetPredictor(out_dim=11, num_slots=5, slot_dim=16, mlp_hidden=32, enc_hidden=8,
                                  enc_layers=2, enc_kernel=3, enc_stride=2)
    out = m(torch.rand(3, 3, 64, 64), num_slots=7)
    assert out["pred"].shape == (3, 7, 11)
    assert out["attn"].shape == (3, 7, 32 * 32)  # strided encoder: 32 x 32 input tokens
    assert (out["pred"] >= 0).all() and (out["pred"] <= 1).all()


def test_zero_slots_or_iterations_are_refused_not_replaced(sa):
    # `iters or self.iters` used to turn iters=0 into the default silently; zero rounds leave no attention
    x = torch.randn(2, 20, 12, dtype=torch.double)
    with pytest.raises(ValueError, match="iters=0 must be >= 1"):
        sa(x, iters=0)
    with pytest.raises(ValueError, match="num_slots=0 must be >= 1"):
        sa(x, num_slots=0)
    with pytest.raises(ValueError, match="iters=0 must be >= 1"):
        SlotAttention(num_slots=3, dim=8, iters=0)
    with pytest.raises(ValueError, match="num_slots=-1 must be >= 1"):
        SlotAttention(num_slots=-1, dim=8)
    with pytest.raises(TypeError, match="iters=2.5 must be an int"):
        sa(x, iters=2.5)
    out, attn = sa(x, num_slots=1, iters=1)
    assert out.shape == (2, 1, 16) and attn.shape == (2, 1, 20)


def test_input_and_slot_shapes_are_checked(sa):
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, N, input_dim=12\), got \(20, 12\)"):
        sa(torch.randn(20, 12, dtype=torch.double))
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, N, input_dim=12\), got \(2, 20, 16\)"):
        sa(torch.randn(2, 20, 16, dtype=torch.double))
    x = torch.randn(2, 20, 12, dtype=torch.double)
    with pytest.raises(ValueError, match=r"slots must have shape \(B=2, K, dim=16\), got \(2, 5, 8\)"):
        sa(x, slots=torch.randn(2, 5, 8, dtype=torch.double))
    with pytest.raises(ValueError, match="num_slots=4 but the given slots have K=5"):
        sa(x, num_slots=4, slots=torch.randn(2, 5, 16, dtype=torch.double))


def test_noise_drawn_outside_starts_the_same_slots(sa):
    """A trainer draws the slots' noise itself (sample_noise) so that a compiled model holds no generator:
    the slots are the same as from the generator inside."""
    x = torch.randn(2, 20, 12, dtype=torch.double)
    inside, _ = sa(x, num_slots=7, generator=torch.Generator().manual_seed(3))
    noise = sa.sample_noise(2, 7, generator=torch.Generator().manual_seed(3))
    outside, _ = sa(x, num_slots=7, noise=noise)
    torch.testing.assert_close(outside, inside, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"noise must have shape \(B=2, K=5, dim=16\), got \(2, 7, 16\)"):
        sa(x, noise=noise)
    with pytest.raises(ValueError, match="pass it without slots and without a generator"):
        sa(x, num_slots=7, noise=noise, generator=torch.Generator())


def test_autoencoder_with_outside_noise_compiles_to_one_graph():
    torch.manual_seed(0)
    model = SlotAttentionAutoEncoder(image_size=(12, 12), num_slots=3, iters=2, slot_dim=16, enc_hidden=8,
                                     enc_layers=2, enc_kernel=3, dec_hidden=8, dec_layers=2, dec_kernel=3,
                                     mlp_hidden=16)
    noise = model.slot_attention.sample_noise(2, generator=torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 12, 12), noise=noise)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_autoencoder_refuses_an_image_of_another_size():
    m = SlotAttentionAutoEncoder(image_size=(35, 35), num_slots=2, slot_dim=8, mlp_hidden=8, enc_hidden=4,
                                 enc_layers=2, enc_kernel=3, dec_hidden=4, dec_layers=2, dec_kernel=3)
    with pytest.raises(ValueError, match=r"image is \(40, 40\) \(H, W\) but the model was built for image_size=\(35, 35\)"):
        m(torch.rand(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"image must have shape \(B, 3, H, W\), got \(3, 35, 35\)"):
        m(torch.rand(3, 35, 35))


@pytest.mark.parametrize("image,broadcast", [((32, 64), (8, 8)), ((64, 32), (8, 8)), ((20, 35), (5, 9)),
                                             ((32, 64), (8, 16))])
def test_decoder_supports_non_square_images(image, broadcast):
    # upsampling steps were counted from the height only: (32, 64) from (8, 8) failed with a reshape error
    torch.manual_seed(0)
    dec = SpatialBroadcastDecoder(slot_dim=8, hidden=4, layers=4, kernel=3, image_size=image,
                                  broadcast_size=broadcast)
    rgb, alpha = dec(torch.randn(2, 3, 8))
    assert rgb.shape == (2, 3, 3, *image) and alpha.shape == (2, 3, 1, *image)
    h, w = dec.output_grid()
    assert h >= image[0] and w >= image[1]
    m = SlotAttentionAutoEncoder(image_size=image, num_slots=2, slot_dim=8, mlp_hidden=8, enc_hidden=4,
                                 enc_layers=2, enc_kernel=3, dec_hidden=4, dec_layers=3, dec_kernel=3,
                                 broadcast_size=broadcast)
    out = m(torch.rand(1, 3, *image))
    assert out["recon"].shape == (1, 3, *image)


def test_decoder_refuses_sizes_it_cannot_draw():
    with pytest.raises(ValueError, match=r"broadcast_size=\(8,\) must be \(height, width\)"):
        SpatialBroadcastDecoder(slot_dim=8, image_size=(32, 32), broadcast_size=(8,))
    with pytest.raises(ValueError, match=r"kernel=4 .* smaller than image_size=\(32, 32\)"):
        SpatialBroadcastDecoder(slot_dim=8, kernel=4, layers=4, image_size=(32, 32), broadcast_size=(8, 8))


@pytest.mark.parametrize("kernel,spreads", [(1, False), (3, True)])
def test_kernel_one_decoder_draws_each_pixel_from_its_own_position_only(kernel, spreads):
    # the `pixel` preset's decoder: a change at one broadcast position may only change that pixel's output
    torch.manual_seed(0)
    dec = SpatialBroadcastDecoder(slot_dim=8, hidden=6, layers=3, kernel=kernel, image_size=(7, 7))
    slots = torch.randn(2, 3, 8)
    base_rgb, base_alpha = dec(slots)
    poke = torch.zeros(1, 7, 7, 8)
    poke[0, 2, 3] = 5.0  # (B*K, h, w, D) before the permute to channels-first
    handle = dec.pos.register_forward_hook(lambda mod, inp, out: out + poke)
    rgb, alpha = dec(slots)
    handle.remove()
    changed = ((rgb - base_rgb).abs().sum(2) + (alpha - base_alpha).abs().sum(2)) > 0  # (B, K, H, W)
    assert changed[..., 2, 3].all()
    others = changed.clone()
    others[..., 2, 3] = False
    assert others.any() == spreads


def test_kernel_one_decoder_refuses_to_upsample():
    with pytest.raises(ValueError, match=r"kernel=1 needs broadcast_size=image_size \(\(32, 32\)\), got \(8, 8\)"):
        SpatialBroadcastDecoder(slot_dim=8, kernel=1, layers=4, image_size=(32, 32), broadcast_size=(8, 8))


def test_slot_frames_are_the_attention_weighted_centre_and_spread():
    positions = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # (y, x) of 4 inputs
    attn = torch.tensor([[[1.0, 1.0, 0.0, 0.0],  # the top row, evenly: centre (0, 0.5), spread (0, 0.5)
                          [0.0, 0.0, 0.0, 2.0],  # one input: centre (1, 1), spread 0, held at min_scale
                          [3.0, 1.0, 0.0, 0.0]]])  # x = 0 with 3/4, 1 with 1/4: mean 0.25, std sqrt(3)/4
    centre, scale = slot_frames(attn, positions, min_scale=0.01)
    assert torch.allclose(centre, torch.tensor([[[0.0, 0.5], [1.0, 1.0], [0.0, 0.25]]]))
    assert torch.allclose(scale, torch.tensor([[[0.01, 0.5], [0.01, 0.01], [0.01, 3 ** 0.5 / 4]]]))


@pytest.mark.parametrize("stride,size", [(1, 9), (2, 64), (2, 35)])
def test_encoder_feature_positions_are_in_the_decoders_coordinates(stride, size):
    enc = Encoder(3, hidden=4, layers=1, kernel=3, out_dim=4, stride=stride)
    positions = enc.feature_positions(size, size)
    h, w = enc.feature_size(size, size)
    assert positions.shape == (h * w, 2)
    # feature (i, j) sits over pixel (i * stride, j * stride); the decoder's grid puts pixel p at p / (size - 1)
    i, j = h - 1, 2
    assert torch.allclose(positions[i * w + j], torch.tensor([i * stride, j * stride]) / (size - 1))
    if stride == 1:  # then it is the encoder's own position grid
        assert torch.allclose(positions, build_grid(size, size)[0, ..., :2].reshape(-1, 2))


def test_slot_frame_decoder_moves_the_drawing_with_the_slot_centre():
    # in its own frame a slot is drawn the same wherever it is: moving the centre by 2 pixels moves every
    # output pixel by 2 (the `frames` preset's decoder, per-pixel so that nothing leaks from the border)
    torch.manual_seed(0)
    size = 9
    dec = SpatialBroadcastDecoder(slot_dim=8, hidden=6, layers=3, kernel=1, image_size=(size, size),
                                  frame="slot").double()
    slots = torch.randn(2, 3, 8, dtype=torch.float64)
    centre = torch.rand(2, 3, 2, dtype=torch.float64)
    scale = 0.1 + torch.rand(2, 3, 2, dtype=torch.float64)
    rgb, alpha = dec(slots, (centre, scale))
    shift = torch.tensor([2.0, -1.0], dtype=torch.float64)  # (down, left) in pixels
    moved_rgb, moved_alpha = dec(slots, (centre + shift / (size - 1), scale))
    assert torch.allclose(moved_rgb[..., 2:, :-1], rgb[..., :-2, 1:])
    assert torch.allclose(moved_alpha[..., 2:, :-1], alpha[..., :-2, 1:])
    # the image-frame decoder draws a slot at one place, whatever it is told
    assert not torch.allclose(moved_rgb, rgb)


def test_slot_frame_decoder_needs_frames_and_a_known_frame():
    with pytest.raises(ValueError, match=r"frame='polar': expected one of \('image', 'slot'\)"):
        SpatialBroadcastDecoder(slot_dim=8, kernel=1, image_size=(9, 9), frame="polar")
    dec = SpatialBroadcastDecoder(slot_dim=8, hidden=4, layers=2, kernel=1, image_size=(9, 9), frame="slot")
    with pytest.raises(ValueError, match=r"needs frames=\(centre, scale\)"):
        dec(torch.randn(1, 2, 8))


def test_slot_frame_autoencoder_learns_and_stays_equivariant_in_the_slots():
    torch.manual_seed(0)
    model = SlotAttentionAutoEncoder(image_size=(12, 12), num_slots=3, iters=2, slot_dim=16, enc_hidden=8,
                                     enc_layers=2, enc_kernel=3, enc_stride=2, dec_hidden=8, dec_layers=3,
                                     dec_kernel=1, mlp_hidden=16, dec_frame="slot").double()
    image = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    noise = model.slot_attention.sample_noise(2).double()
    out = model(image, noise=noise)
    out["recon"].square().mean().backward()
    assert model.decoder.pos.weight.grad.abs().sum() > 0  # the embedding of the slot-frame grid learns
    perm = torch.tensor([2, 0, 1])
    permuted = model(image, noise=noise[:, perm])
    assert torch.allclose(permuted["masks"], out["masks"][:, perm])
    assert torch.allclose(permuted["recon"], out["recon"])
