"""Modern Hopfield layers (Ramsauer et al. 2020, "Hopfield Networks is All You Need").

Read top to bottom: the energy and update rule on raw patterns (paper Section 2), then the three layers of
Section 3 in the order they build on each other:

  Hopfield         state patterns R retrieve from stored patterns Y:  Z = softmax(beta R W_Q W_K^T Y^T) Y W_K W_V
  HopfieldPooling  the state patterns are learned (static queries):   Z = softmax(beta Q W_K^T Y^T) Y W_K W_V
  HopfieldLayer    the stored patterns are learned or fixed (a lookup memory, e.g. a training set as keys and
                   its labels as values):                             Z = softmax(beta R W_Q W_K^T Y^T) Y W_V

Notation: N stored patterns, S state patterns, h heads, d_k = hidden_size (association space, per head),
d_v = pattern_size (per head), B batch. The update in the association space is the paper's rule
xi_new = X softmax(beta X^T xi) (Eq. 3) with X = K^T, xi = q; `update_steps_max` applies it that many times
(Section 2: well-separated patterns are retrieved with one update; otherwise it may end in a metastable state)
before the final retrieval of the values; 0 (the default) is one softmax, i.e. attention.

Argument names follow the authors' `hflayers` package where the meaning is the same (input_size,
hidden_size, output_size, pattern_size, num_heads, scaling, update_steps_max, update_steps_eps,
normalize_*_pattern[_affine], *_as_static, pattern_projection_as_connected, batch_first, dropout,
stored_pattern_padding_mask, association_mask, quantity, ...). This is an independent implementation.

Masks use `nn.MultiheadAttention`'s conventions: boolean True = "may not attend"; a float mask is added to
the scaled scores; integer masks are refused (a 0/1 mask would otherwise be added, not mask). A row with
nothing left to attend to (a fully padded bag) gives NaN for that batch element, as in
`nn.MultiheadAttention`; the other elements are unaffected (their update steps too). Drop empty bags or give
them a dummy pattern. With update_steps_max=0, no normalisation and beta = 1/sqrt(d_k) the layer computes
exactly what `nn.MultiheadAttention` computes with the same weights (tests/model/test_hopfield_layers.py
checks this).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Section 2: energy and update on raw patterns. X: (..., d, N) stored patterns as columns, xi: (..., d).
# ----------------------------------------------------------------------------------------------------------

def hopfield_energy(X: Tensor, xi: Tensor, beta: float) -> Tensor:
    """E = -lse(beta, X^T xi) + 1/2 xi^T xi + beta^-1 log N + 1/2 M^2 (paper Eq. 2); X: (..., d, N), xi: (..., d)."""
    N = X.shape[-1]
    scores = torch.einsum("...dn,...d->...n", X, xi)  # X^T xi: (..., N)
    lse = torch.logsumexp(beta * scores, dim=-1) / beta  # lse(beta, z) = beta^-1 log sum exp(beta z)
    M = X.norm(dim=-2).amax(dim=-1)  # largest pattern norm
    return -lse + 0.5 * (xi * xi).sum(-1) + math.log(N) / beta + 0.5 * M**2


def hopfield_update(X: Tensor, xi: Tensor, beta: float) -> Tensor:
    """One step of the update rule xi_new = X softmax(beta X^T xi) (paper Eq. 3); X: (..., d, N), xi: (..., d)."""
    p = torch.softmax(beta * torch.einsum("...dn,...d->...n", X, xi), dim=-1)  # (..., N)
    return torch.einsum("...dn,...n->...d", X, p)  # (..., d)


def hopfield_retrieve(X: Tensor, xi: Tensor, beta: float, max_steps: int = 100, eps: float = 1e-6) -> Tensor:
    """Iterate Eq. 3 until ||xi_new - xi|| <= eps (global convergence, paper Theorem 2) or max_steps."""
    for _ in range(max_steps):
        new = hopfield_update(X, xi, beta)
        done = (new - xi).norm(dim=-1).max() <= eps
        xi = new
        if done:
            break
    return xi


# ----------------------------------------------------------------------------------------------------------
# Section 3: layers.
# ----------------------------------------------------------------------------------------------------------

_UNBOUNDED_STEPS = 10_000  # update_steps_max=None: "until converged", with this many updates at most


def _norm(size: int, enabled: bool, affine: bool) -> nn.Module:
    return nn.LayerNorm(size, elementwise_affine=affine) if enabled else nn.Identity()


def _check_positive_int(owner: str, name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name}={value!r} must be an int")
    if value < 1:
        raise ValueError(f"{owner}: {name}={value} must be >= 1")


def _check_patterns(owner: str, name: str, x, size: int, size_name: str, batch_first: bool, length: str = "N") -> None:
    """x must be a 3-D tensor (B, L, size) (batch_first) or (L, B, size)."""
    layout = f"(B, {length}, {size_name}={size})" if batch_first else f"({length}, B, {size_name}={size})"
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{owner}: {name} must be 3-D {layout}, got shape {tuple(x.shape)}")
    if x.shape[-1] != size:
        raise ValueError(f"{owner}: {name} has {x.shape[-1]} features, expected {layout}, got shape {tuple(x.shape)}")


def _additive(owner: str, name: str, mask: Tensor, dtype: torch.dtype, device) -> Tensor:
    """A mask as scores to add: bool True -> -inf (may not attend), float -> added as it is (MHA's rule)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(mask).__name__}")
    mask = mask.to(device)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(mask, float("-inf"))
    if mask.is_floating_point():
        return mask.to(dtype)
    # an integer 0/1 mask would be added to the scores, not mask anything: refuse it like nn.MultiheadAttention
    raise TypeError(f"{owner}: {name} has dtype {mask.dtype}; only bool (True = may not attend) and floating "
                    f"(added to the scores) masks are supported, e.g. pass mask.bool()")


class Hopfield(nn.Module):
    """The Hopfield layer: state patterns R retrieve from stored patterns Y (paper Section 3, "Hopfield").

    forward(input) takes either one tensor (self-association: R = Y = pattern projection) or a tuple
    (stored_pattern, state_pattern, pattern_projection). With batch_first=True (default) shapes are
    (B, N, *) for stored/projection and (B, S, *) for state; with batch_first=False, (N, B, *) / (S, B, *).

    Args (sizes are per pattern unless said otherwise):
      input_size: size of the raw patterns (default for the three *_size below).
      hidden_size: association-space size d_k per head (default input_size // num_heads).
      output_size: size of the result (default input_size); ignored with disable_out_projection.
      pattern_size: value size d_v per head (default hidden_size).
      num_heads: number of heads h.
      scaling: beta; a float, or one value per head (default 1/sqrt(d_k)).
      update_steps_max: number of updates of the state patterns in the association space (Eq. 3) before the
        retrieval, as in hflayers: 0 = one softmax, plain attention; N = N updates, N + 1 softmaxes. None or a
        negative value means "until converged" (at most 10^4 updates).
      update_steps_eps: a head stops updating early once its association matrix moves by no more than this
        (Frobenius norm over (S, N), largest over the batch), as in hflayers; 0 = never stop early.
      normalize_stored_pattern / normalize_state_pattern / normalize_pattern_projection (+ _affine):
        LayerNorm on the raw patterns before projection.
      normalize_hopfield_space (+ _affine): LayerNorm on the projected patterns (per head) in the association
        space.
      stored_pattern_as_static / state_pattern_as_static / pattern_projection_as_static: use the raw patterns
        without W_K / W_Q / W_V (their size must be num_heads * hidden_size, resp. num_heads * pattern_size).
      pattern_projection_as_connected: values are W_V applied to the projected stored patterns, Y W_K W_V,
        as written in the paper, instead of to the raw projection patterns.
      stored_pattern_size, state_pattern_size, pattern_projection_size: raw sizes when they differ.
      dropout: dropout on the association matrix.
      input_bias: biases on W_Q, W_K, W_V. disable_out_projection: return the heads concatenated.
    """

    def __init__(
        self,
        input_size: Optional[int] = None,
        hidden_size: Optional[int] = None,
        output_size: Optional[int] = None,
        pattern_size: Optional[int] = None,
        num_heads: int = 1,
        scaling: Optional[Union[float, Sequence[float], Tensor]] = None,
        update_steps_max: Optional[int] = 0,
        update_steps_eps: float = 1e-4,
        normalize_stored_pattern: bool = True,
        normalize_stored_pattern_affine: bool = True,
        normalize_state_pattern: bool = True,
        normalize_state_pattern_affine: bool = True,
        normalize_pattern_projection: bool = True,
        normalize_pattern_projection_affine: bool = True,
        normalize_hopfield_space: bool = False,
        normalize_hopfield_space_affine: bool = False,
        stored_pattern_as_static: bool = False,
        state_pattern_as_static: bool = False,
        pattern_projection_as_static: bool = False,
        pattern_projection_as_connected: bool = False,
        stored_pattern_size: Optional[int] = None,
        state_pattern_size: Optional[int] = None,
        pattern_projection_size: Optional[int] = None,
        batch_first: bool = True,
        dropout: float = 0.0,
        input_bias: bool = True,
        output_bias: bool = True,
        disable_out_projection: bool = False,
    ):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size),
                            ("pattern_size", pattern_size), ("num_heads", num_heads),
                            ("stored_pattern_size", stored_pattern_size), ("state_pattern_size", state_pattern_size),
                            ("pattern_projection_size", pattern_projection_size)):
            _check_positive_int("Hopfield", name, value)
        sizes = [s for s in (input_size, stored_pattern_size, state_pattern_size, pattern_projection_size)
                 if s is not None]
        if not sizes:
            raise ValueError("Hopfield: give input_size (or stored/state/pattern_projection sizes)")
        input_size = input_size or sizes[0]
        self.num_heads = h = num_heads
        if hidden_size is None and input_size % h:
            # as nn.MultiheadAttention and hflayers: the default head size splits input_size evenly
            raise ValueError(f"Hopfield: num_heads={h} does not divide input_size={input_size}; choose a divisor "
                             f"or give hidden_size (the association size per head) explicitly")
        self.hidden_size = d_k = hidden_size or input_size // h
        self.stored_pattern_size = stored_pattern_size or input_size
        self.state_pattern_size = state_pattern_size or input_size
        self.pattern_projection_size = pattern_projection_size or input_size
        if pattern_size is None and pattern_projection_as_static:
            if self.pattern_projection_size % h:
                raise ValueError(f"Hopfield: pattern_projection_as_static splits the pattern projection into "
                                 f"num_heads={h} heads, but its size {self.pattern_projection_size} is not divisible;"
                                 f" give pattern_size explicitly")
            pattern_size = self.pattern_projection_size // h  # static values are split into heads as they are
        self.pattern_size = d_v = pattern_size or d_k
        self.update_steps_max = update_steps_max
        self.update_steps_eps = update_steps_eps
        self.batch_first = batch_first
        self.pattern_projection_as_connected = pattern_projection_as_connected
        for name, static, size, need in (
            ("stored_pattern", stored_pattern_as_static, self.stored_pattern_size, h * d_k),
            ("state_pattern", state_pattern_as_static, self.state_pattern_size, h * d_k),
            ("pattern_projection", pattern_projection_as_static, self.pattern_projection_size, h * d_v),
        ):
            if static and size != need:
                raise ValueError(f"Hopfield: {name}_as_static needs {name} size {size} == num_heads * "
                                 f"{'hidden_size' if name != 'pattern_projection' else 'pattern_size'} = {need}")
        if pattern_projection_as_connected and stored_pattern_as_static and h * d_k != self.stored_pattern_size:
            raise ValueError("Hopfield: pattern_projection_as_connected with static stored patterns needs matching sizes")

        self.norm_stored = _norm(self.stored_pattern_size, normalize_stored_pattern, normalize_stored_pattern_affine)
        self.norm_state = _norm(self.state_pattern_size, normalize_state_pattern, normalize_state_pattern_affine)
        self.norm_projection = _norm(self.pattern_projection_size, normalize_pattern_projection,
                                     normalize_pattern_projection_affine)
        # W_Q, W_K, W_V of Section 3 (None where the pattern is static).
        self.q_proj = None if state_pattern_as_static else nn.Linear(self.state_pattern_size, h * d_k, bias=input_bias)
        self.k_proj = None if stored_pattern_as_static else nn.Linear(self.stored_pattern_size, h * d_k, bias=input_bias)
        v_in = h * d_k if pattern_projection_as_connected else self.pattern_projection_size
        self.v_proj = None if pattern_projection_as_static else nn.Linear(v_in, h * d_v, bias=input_bias)
        self.norm_hopfield_q = _norm(d_k, normalize_hopfield_space, normalize_hopfield_space_affine)
        self.norm_hopfield_k = _norm(d_k, normalize_hopfield_space, normalize_hopfield_space_affine)
        self.output_size = h * d_v if disable_out_projection else (output_size or input_size)
        self.out_proj = None if disable_out_projection else nn.Linear(h * d_v, self.output_size, bias=output_bias)
        self.dropout = nn.Dropout(dropout)

        beta = torch.full((h,), 1.0 / math.sqrt(d_k)) if scaling is None else torch.as_tensor(scaling, dtype=torch.float32)
        if beta.numel() not in (1, h):
            raise ValueError(f"Hopfield: scaling has {beta.numel()} values; give one beta or one per head "
                             f"(num_heads={h})")
        if not bool((beta > 0).all() & beta.isfinite().all()):
            raise ValueError(f"Hopfield: scaling={beta.tolist()} must be > 0 and finite (beta, the inverse temperature)")
        beta = beta.expand(h).clone() if beta.numel() == 1 else beta.reshape(h)
        self.register_buffer("scaling", beta)  # beta per head

    @property
    def update_steps_max(self) -> Optional[int]:
        return self._update_steps_max

    @update_steps_max.setter
    def update_steps_max(self, value: Optional[int]) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise TypeError(f"Hopfield: update_steps_max={value!r} must be an int (number of updates; 0 = "
                            f"attention) or None (until converged)")
        self._update_steps_max = None if value is None else int(value)

    @property
    def update_steps_eps(self) -> float:
        return self._update_steps_eps

    @update_steps_eps.setter
    def update_steps_eps(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"Hopfield: update_steps_eps={value!r} must be a number >= 0")
        self._update_steps_eps = float(value)

    # -- helpers --------------------------------------------------------------------------------------------

    def _split(self, input) -> tuple[Tensor, Tensor, Tensor]:
        """(stored, state, projection) from one tensor or a tuple, checked against the sizes and each other."""
        if isinstance(input, Tensor):
            _check_patterns("Hopfield", "input", input, self.stored_pattern_size, "input_size", self.batch_first)
            if not self.stored_pattern_size == self.state_pattern_size == self.pattern_projection_size:
                raise ValueError("Hopfield: a single input tensor needs stored_pattern_size == state_pattern_size == "
                                 "pattern_projection_size; pass (stored_pattern, state_pattern, pattern_projection)")
            return input, input, input
        if not isinstance(input, (tuple, list)) or len(input) != 3:
            raise ValueError("Hopfield: input is a tensor or a (stored_pattern, state_pattern, pattern_projection) tuple")
        stored, state, projection = input
        checks = [("stored_pattern", stored, self.stored_pattern_size, "N"),
                  ("state_pattern", state, self.state_pattern_size, "S")]
        if not self.pattern_projection_as_connected:  # connected: the values come from the stored patterns
            checks.append(("pattern_projection", projection, self.pattern_projection_size, "N"))
        for name, x, size, length in checks:
            _check_patterns("Hopfield", name, x, size, f"{name}_size", self.batch_first, length)
        b = 0 if self.batch_first else 1  # the batch dimension; 1 - b: the pattern dimension
        shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x, _, _ in checks)
        if len({x.shape[b] for _, x, _, _ in checks}) > 1:
            raise ValueError(f"Hopfield: batch sizes differ (dimension {b} with batch_first={self.batch_first}): "
                             f"{shapes}")
        if len(checks) == 3 and stored.shape[1 - b] != projection.shape[1 - b]:
            raise ValueError(f"Hopfield: stored_pattern and pattern_projection need the same number of patterns N "
                             f"(dimension {1 - b}): {shapes}")
        return stored, state, projection

    def _heads(self, x: Tensor, d: int) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, d).transpose(1, 2)  # (B, h, L, d)

    def _bias(self, B: int, S: int, N: int, stored_pattern_padding_mask: Optional[Tensor],
              association_mask: Optional[Tensor], dtype: torch.dtype, device) -> Optional[Tensor]:
        """Additive mask (B, h, S, N) or None, from MHA-style padding (B, N) and association masks."""
        bias = None
        if association_mask is not None:
            m = _additive(type(self).__name__, "association_mask", association_mask, dtype, device)
            if tuple(m.shape) not in ((S, N), (B * self.num_heads, S, N)):
                raise ValueError(f"Hopfield: association_mask must have shape (S, N) = {(S, N)} or (B * num_heads, "
                                 f"S, N) = {(B * self.num_heads, S, N)}, got {tuple(m.shape)}")
            if m.dim() == 3:  # (B * h, S, N), MultiheadAttention's layout
                m = m.view(B, self.num_heads, S, N)  # (B, h, S, N)
            bias = m
        if stored_pattern_padding_mask is not None:
            p = _additive(type(self).__name__, "stored_pattern_padding_mask", stored_pattern_padding_mask, dtype, device)
            if tuple(p.shape) != (B, N):
                raise ValueError(f"Hopfield: stored_pattern_padding_mask must have shape (B, N) = {(B, N)}, "
                                 f"got {tuple(p.shape)}")
            p = p.view(B, 1, 1, N)  # (B, 1, 1, N)
            bias = p if bias is None else bias + p
        return bias

    def _project(self, input):
        """Normalise and project the raw patterns; returns q (B,h,S,d_k), k (B,h,N,d_k), v (B,h,N,d_v)."""
        stored, state, projection = self._split(input)
        if not self.batch_first:
            stored, state, projection = (t.transpose(0, 1) for t in (stored, state, projection))  # (B, L, *)
        k_raw = self.norm_stored(stored)
        q_raw = self.norm_state(state)
        k = k_raw if self.k_proj is None else self.k_proj(k_raw)  # K = Y W_K: (B, N, h d_k)
        q = q_raw if self.q_proj is None else self.q_proj(q_raw)  # Q = R W_Q: (B, S, h d_k)
        v_raw = k if self.pattern_projection_as_connected else self.norm_projection(projection)
        v = v_raw if self.v_proj is None else self.v_proj(v_raw)  # V = Y W_K W_V (connected) or Y W_V: (B, N, h d_v)
        q = self.norm_hopfield_q(self._heads(q, self.hidden_size))  # (B, h, S, d_k)
        k = self.norm_hopfield_k(self._heads(k, self.hidden_size))  # (B, h, N, d_k)
        v = self._heads(v, self.pattern_size)  # (B, h, N, d_v)
        return q, k, v

    def _associate(self, q: Tensor, k: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The association matrix softmax(beta q k^T) after up to `update_steps_max` updates of q (hflayers'
        counting: step 0 is plain attention, each update step adds one more softmax)."""
        beta = self.scaling.to(q.dtype).view(1, -1, 1, 1)  # (1, h, 1, 1)

        def associate(q: Tensor) -> Tensor:
            scores = beta * q @ k.transpose(-2, -1)  # beta Q K^T: (B, h, S, N)
            return torch.softmax(scores if bias is None else scores + bias, dim=-1)  # (B, h, S, N)

        a = associate(q)  # step 0: one softmax, attention
        steps = self.update_steps_max
        steps = _UNBOUNDED_STEPS if steps is None or steps < 0 else steps
        active = torch.ones(q.shape[1], dtype=torch.bool, device=q.device)  # (h,)
        for _ in range(steps):
            q = a @ k  # Eq. 3, transposed: Q_new = softmax(beta Q K^T) K: (B, h, S, d_k)
            a_new = associate(q)  # (B, h, S, N)
            with torch.no_grad():  # per head: how far the association matrix moved (max over the batch)
                moved = (a_new - a).norm(dim=(-2, -1)).nan_to_num(0.0).amax(dim=0)  # (h,)
            a = torch.where(active.view(1, -1, 1, 1), a_new, a)  # heads that stopped keep their matrix
            active = active & (moved > self.update_steps_eps)
            if not bool(active.any()):
                break
        return a

    # -- forward --------------------------------------------------------------------------------------------

    def forward(self, input, stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None, return_association: bool = False):
        # input: Y (B, N, d_in) or (Y (B, N, d_y), R (B, S, d_r), P (B, N, d_p)) -> Z (B, S, output_size)
        q, k, v = self._project(input)
        B, h, S, N = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        bias = self._bias(B, S, N, stored_pattern_padding_mask, association_mask, q.dtype, q.device)
        a = self._associate(q, k, bias)  # softmax(beta R W_Q W_K^T Y^T): (B, h, S, N)
        z = self.dropout(a) @ v  # Z = softmax(beta R W_Q W_K^T Y^T) Y W_K W_V (Section 3, Hopfield): (B, h, S, d_v)
        z = z.transpose(1, 2).reshape(B, S, h * self.pattern_size)  # (B, S, h d_v)
        if self.out_proj is not None:
            z = self.out_proj(z)  # (B, S, output_size)
        if not self.batch_first:
            z = z.transpose(0, 1)  # (S, B, output_size)
        return (z, a) if return_association else z

    @torch.no_grad()
    def get_association_matrix(self, input, stored_pattern_padding_mask: Optional[Tensor] = None,
                               association_mask: Optional[Tensor] = None) -> Tensor:
        """The association matrix softmax(beta Q K^T) after the updates: (B, h, S, N)."""
        return self.forward(input, stored_pattern_padding_mask, association_mask, return_association=True)[1]


class HopfieldPooling(nn.Module):
    """Hopfield pooling (paper Section 3, "HopfieldPooling"): `quantity` learned state patterns Q query the
    input set Y: Z = softmax(beta Q W_K^T Y^T) Y W_K W_V. Input (B, N, input_size) (batch_first);
    output (B, quantity * output_size). Every other argument is passed to `Hopfield`."""

    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 num_heads: int = 1, quantity: int = 1, trainable: bool = True, batch_first: bool = True,
                 state_pattern_size: Optional[int] = None, **kwargs):
        super().__init__()
        _check_positive_int("HopfieldPooling", "quantity", quantity, allow_none=False)
        self.quantity = quantity
        self.batch_first = batch_first
        self.hopfield = Hopfield(input_size=input_size, hidden_size=hidden_size, output_size=output_size,
                                 num_heads=num_heads, batch_first=True,
                                 state_pattern_size=state_pattern_size or input_size, **kwargs)
        q = torch.empty(1, quantity, self.hopfield.state_pattern_size)
        nn.init.normal_(q, std=1.0 / math.sqrt(self.hopfield.state_pattern_size))
        self.pooling_weights = nn.Parameter(q, requires_grad=trainable)  # the static state patterns Q

    @property
    def output_size(self) -> int:
        return self.quantity * self.hopfield.output_size

    def forward(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None, return_association: bool = False):
        # input: Y (B, N, input_size) -> (B, quantity * output_size)
        _check_patterns("HopfieldPooling", "input", input, self.hopfield.stored_pattern_size, "input_size",
                        self.batch_first)
        if not self.batch_first:
            input = input.transpose(0, 1)  # (B, N, input_size)
        B = input.shape[0]
        state = self.pooling_weights.expand(B, -1, -1)  # Q: (B, quantity, state_size)
        z, a = self.hopfield((input, state, input), stored_pattern_padding_mask, association_mask,
                             return_association=True)  # (B, quantity, output_size)
        z = z.reshape(B, -1)  # (B, quantity * output_size)
        return (z, a) if return_association else z

    @torch.no_grad()
    def get_association_matrix(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                               association_mask: Optional[Tensor] = None) -> Tensor:
        """The association matrix after the updates: (B, h, quantity, N)."""
        return self.forward(input, stored_pattern_padding_mask, association_mask, return_association=True)[1]


class HopfieldLayer(nn.Module):
    """Hopfield layer with a memory (paper Section 3, "HopfieldLayer"): the input is the state pattern R; the
    stored patterns Y and their values are `quantity` learned vectors, or fixed tensors you pass in
    (e.g. a training set as `stored_pattern` and its one-hot labels as `pattern_projection`):
    Z = softmax(beta R W_Q W_K^T Y^T) Y W_V. Input (B, S, input_size) (batch_first); output (B, S, output_size).

      quantity: number of learned stored patterns (ignored when stored_pattern is given).
      trainable: whether the learned stored patterns (the lookup weights) are trained.
      lookup_weights_as_separated: learn separate value vectors (targets) instead of reusing the stored patterns.
      lookup_targets_as_trainable: whether those separate targets are trained. As in hflayers it applies to
        separate targets only; without them the values are the lookup weights, governed by `trainable`, so
        lookup_targets_as_trainable=False without lookup_weights_as_separated is refused, not ignored.
      stored_pattern (N, d_y), pattern_projection (N, d_p): fixed memories (buffers, not trained); they
        replace the learned ones, so lookup_weights_as_separated cannot be combined with them.

    forward(input, stored_pattern_padding_mask, association_mask): the padding mask (B, N) hides memory
    entries per batch element (e.g. a sample's own entry in a leave-one-out lookup), as in hflayers.
    """

    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 pattern_size: Optional[int] = None, num_heads: int = 1, quantity: int = 1,
                 lookup_weights_as_separated: bool = False, lookup_targets_as_trainable: bool = True,
                 stored_pattern: Optional[Tensor] = None, pattern_projection: Optional[Tensor] = None,
                 batch_first: bool = True, trainable: bool = True, **kwargs):
        super().__init__()
        self.batch_first = batch_first
        _check_positive_int("HopfieldLayer", "input_size", input_size, allow_none=False)
        if stored_pattern is None:
            _check_positive_int("HopfieldLayer", "quantity", quantity, allow_none=False)
            if not lookup_targets_as_trainable and not lookup_weights_as_separated:
                raise ValueError("HopfieldLayer: lookup_targets_as_trainable=False applies to separate targets "
                                 "only (lookup_weights_as_separated=True); without them the values are the "
                                 "lookup weights: freeze those with trainable=False")
        else:
            if lookup_weights_as_separated:
                raise ValueError("HopfieldLayer: lookup_weights_as_separated=True learns separate targets, but a "
                                 "fixed stored_pattern was given; pass its values as pattern_projection instead")
            for name, t in (("stored_pattern", stored_pattern), ("pattern_projection", pattern_projection)):
                if t is not None and (not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point()):
                    raise ValueError(f"HopfieldLayer: {name} must be a 2-D float tensor (N, features), got "
                                     f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}"
                                     f"{' of ' + str(t.dtype) if isinstance(t, Tensor) else ''}")
            if pattern_projection is not None and len(pattern_projection) != len(stored_pattern):
                raise ValueError(f"HopfieldLayer: pattern_projection has {len(pattern_projection)} rows, "
                                 f"stored_pattern {len(stored_pattern)}: one value per stored pattern")
        if stored_pattern is not None:
            self.register_buffer("stored", stored_pattern.detach().clone().unsqueeze(0))  # (1, N, d_y)
            proj = stored_pattern if pattern_projection is None else pattern_projection
            self.register_buffer("values", proj.detach().clone().unsqueeze(0))  # (1, N, d_p)
        else:
            w = torch.empty(1, quantity, input_size)
            nn.init.normal_(w, std=1.0 / math.sqrt(input_size))
            self.stored = nn.Parameter(w, requires_grad=trainable)  # learned Y
            if lookup_weights_as_separated:
                t = torch.empty(1, quantity, input_size)
                nn.init.normal_(t, std=1.0 / math.sqrt(input_size))
                self.values = nn.Parameter(t, requires_grad=lookup_targets_as_trainable)
            else:
                self.values = None  # values are the stored patterns themselves
        self.hopfield = Hopfield(input_size=input_size, hidden_size=hidden_size, output_size=output_size,
                                 pattern_size=pattern_size, num_heads=num_heads, batch_first=True,
                                 stored_pattern_size=self.stored.shape[-1], state_pattern_size=input_size,
                                 pattern_projection_size=(self.stored if self.values is None else self.values).shape[-1],
                                 **kwargs)

    def forward(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None, return_association: bool = False):
        # input: R (B, S, input_size) -> (B, S, output_size); stored_pattern_padding_mask (B, N)
        _check_patterns("HopfieldLayer", "input", input, self.hopfield.state_pattern_size, "input_size",
                        self.batch_first, length="S")
        if not self.batch_first:
            input = input.transpose(0, 1)  # (B, S, input_size)
        B = input.shape[0]
        stored = self.stored.expand(B, -1, -1)  # Y: (B, N, d_y)
        values = stored if self.values is None else self.values.expand(B, -1, -1)  # (B, N, d_p)
        out = self.hopfield((stored, input, values), stored_pattern_padding_mask, association_mask,
                            return_association=return_association)
        if not self.batch_first:
            out = (out[0].transpose(0, 1), out[1]) if return_association else out.transpose(0, 1)  # (S, B, *)
        return out

    @torch.no_grad()
    def get_association_matrix(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                               association_mask: Optional[Tensor] = None) -> Tensor:
        """The association matrix after the updates: (B, h, S, N)."""
        return self.forward(input, stored_pattern_padding_mask, association_mask, return_association=True)[1]
