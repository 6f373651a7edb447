"""Step time of a run from one measured layer plus the communication it needs (`mnemos plan --measured-layer`).

`bench/layer_175b.py` times one transformer layer at the run's TP-local shapes on one GPU (forward +
backward, with the recompute of activation checkpointing when the run uses it) and this rank's share of the
LM head. A step of the run is then, per GPU:

  compute   grad_accum x (n_layer x layer time + head time)
  TP        Megatron's f/g operators (Shoeybi et al. 2019, Section 3): per layer and micro-batch two
            all-reduces of the (b, s, h) activations in forward and two in backward, two more when the
            layer is recomputed; plus the embedding's forward all-reduce and the LM head input's backward
            all-reduce. A ring all-reduce sends 2 (t-1)/t of the message per GPU. Not overlapped (mnemos
            runs the TP collectives on the compute stream).
  DP        bf16 gradients and weights of this GPU's TP shard (P parameters) over dp ranks, (dp-1)/dp of
            the bytes per GPU for each reduce-scatter / all-gather (an all-reduce is both):
              ZeRO-0  one gradient all-reduce per step                       2 x 2P
              ZeRO-1  gradient reduce-scatter at the step + weight all-gather 2 x 2P
              ZeRO-2  DeepSpeed reduce-scatters at every micro-batch (stage_1_and_2.py reduces when
                      gradients are partitioned, not only at the accumulation boundary), + all-gather
                                                                              (grad_accum + 1) x 2P
              ZeRO-3  per micro-batch: weight all-gather in forward and in backward (once more for the
                      recompute) + gradient reduce-scatter                    grad_accum x (3 [+1]) x 2P
            DeepSpeed overlaps this with backward only partly, so two bounds are given: DP fully hidden
            behind compute (fast) and DP fully exposed (slow).
Times are bytes over the stated bus bandwidths (NCCL's "busbw": ring time = bytes x 2 (t-1)/t / busbw),
which are assumptions the user states, not measurements.
"""

from __future__ import annotations

import json
from pathlib import Path

GB = 1e9


class ProjectionError(ValueError):
    pass


def load_measured_layer(path: str | Path) -> dict:
    """The JSON written by bench/layer_175b.py; a clear error when it is missing or not that file."""
    p = Path(path)
    if not p.is_file():
        raise ProjectionError(f"--measured-layer={path}: no such file (write it with bench/layer_175b.py on the GPU)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ProjectionError(f"--measured-layer={path}: not JSON ({err})") from None
    for key in ("shape", "tp", "micro_batch", "seq_len", "timings"):
        if key not in data:
            raise ProjectionError(f"--measured-layer={path}: no '{key}' field (rule: the output of bench/layer_175b.py)")
    return data


def check_matches(measured: dict, shape: dict, tp: int, micro_batch: int, seq_len: int) -> None:
    """The layer was measured at the shapes this plan runs (else its time says nothing about the run)."""
    wanted = {"d_model": shape["d_model"], "n_head": shape["n_head"], "tp": tp, "micro_batch": micro_batch,
              "seq_len": seq_len}
    got = {"d_model": measured["shape"]["d_model"], "n_head": measured["shape"]["n_head"], "tp": measured["tp"],
           "micro_batch": measured["micro_batch"], "seq_len": measured["seq_len"]}
    for field, value in wanted.items():
        if got[field] != value:
            raise ProjectionError(f"--measured-layer was measured with {field}={got[field]} but the plan has "
                                  f"{field}={value} (rule: measure the layer at the run's shapes: "
                                  f"bench/layer_175b.py --tp {tp} --micro-batch {micro_batch} --seq-len {seq_len})")


def layer_ms(measured: dict, recompute: bool) -> tuple[float, str]:
    """Fastest measured forward + backward of one layer (eager or compiled), with recompute if asked."""
    base = "fwd_bwd_recompute" if recompute else "fwd_bwd"
    found = [(t["ms"], k) for k, t in measured["timings"].items()
             if k in (base, base + "_compiled") and "ms" in t]
    if not found:
        raise ProjectionError(f"--measured-layer has no '{base}' timing (rule: the output of bench/layer_175b.py)")
    return min(found)


def dp_volume_factor(zero: int, grad_accum: int, recompute: bool) -> float:
    """Collectives per step, each moving (dp-1)/dp of 2P bytes per GPU (see the module docstring)."""
    return {0: 2.0, 1: 2.0, 2: grad_accum + 1.0, 3: grad_accum * (3.0 + recompute)}[zero]


def project(measured: dict, *, n_layer: int, d_model: int, tp: int, dp: int, zero: int, micro_batch: int,
            seq_len: int, recompute: bool, params_per_gpu: int, grad_accum: int, tokens_per_step: int,
            model_flops_per_token: float, world: int, peak_tflops: float, tp_busbw_gbs: float,
            dp_busbw_gbs: float) -> dict:
    """Step time bounds and MFU from the measured layer; every term and byte count is in the result."""
    lay, lay_key = layer_ms(measured, recompute)
    head = measured["timings"].get("head_fwd_bwd", {}).get("ms", 0.0)
    compute = grad_accum * (n_layer * lay + head) / 1e3
    act_bytes = micro_batch * seq_len * d_model * 2  # bf16 (b, s, h)
    n_tp = (n_layer * (4 + 2 * recompute) + 2) if tp > 1 else 0
    tp_bytes = grad_accum * n_tp * act_bytes * 2 * (tp - 1) / tp
    tp_s = tp_bytes / (tp_busbw_gbs * GB)
    dp_bytes = dp_volume_factor(zero, grad_accum, recompute) * 2 * params_per_gpu * (dp - 1) / dp
    dp_s = dp_bytes / (dp_busbw_gbs * GB)
    fast = max(compute + tp_s, dp_s)
    slow = compute + tp_s + dp_s
    mfu = lambda step: tokens_per_step * model_flops_per_token / step / (world * peak_tflops * 1e12)  # noqa: E731
    return {
        "layer_ms": lay, "layer_timing": lay_key, "head_ms": head,
        "measured_on": measured.get("device_name", "?"),
        "compute_s": compute, "tp_allreduces_per_micro_batch": n_tp, "tp_bytes_per_gpu": tp_bytes,
        "tp_s": tp_s, "dp_bytes_per_gpu": dp_bytes, "dp_s": dp_s,
        "tp_busbw_gbs": tp_busbw_gbs, "dp_busbw_gbs": dp_busbw_gbs,
        "step_s_dp_hidden": fast, "step_s_dp_exposed": slow,
        "mfu_dp_hidden": mfu(fast), "mfu_dp_exposed": mfu(slow),
        "tokens_per_s_dp_hidden": tokens_per_step / fast, "tokens_per_s_dp_exposed": tokens_per_step / slow,
    }


def format_projection(p: dict, grad_accum: int, zero: int) -> list[tuple[str, str]]:
    """Rows for `mnemos plan`'s table."""
    return [
        ("measured layer", f"{p['layer_ms']:.3f} ms ({p['layer_timing']}, {p['measured_on']}), "
                           f"LM head share {p['head_ms']:.3f} ms"),
        ("compute", f"{p['compute_s']:8.2f} s  ({grad_accum} micro-batches x (layers + head))"),
        ("TP communication", f"{p['tp_s']:8.2f} s  ({p['tp_bytes_per_gpu'] / GB:.0f} GB per GPU per step: "
                             f"{p['tp_allreduces_per_micro_batch']} all-reduces per micro-batch at "
                             f"{p['tp_busbw_gbs']:.0f} GB/s busbw; not overlapped)"),
        ("DP communication", f"{p['dp_s']:8.2f} s  ({p['dp_bytes_per_gpu'] / GB:.0f} GB per GPU per step for "
                             f"ZeRO-{zero} at {p['dp_busbw_gbs']:.0f} GB/s busbw)"),
        ("step time (measured)", f"{p['step_s_dp_hidden']:8.2f} s with DP hidden behind compute .. "
                                 f"{p['step_s_dp_exposed']:.2f} s with DP exposed"),
        ("MFU (measured)", f"{100 * p['mfu_dp_hidden']:8.1f} % .. {100 * p['mfu_dp_exposed']:.1f} %"),
    ]
