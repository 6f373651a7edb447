"""A mnemos checkpoint as an lm-evaluation-harness model (`lm_eval --model mnemos`).

    lm_eval --model mnemos --model_args checkpoint=RUN_DIR,batch_size=16 --tasks lambada_openai
    # or from Python: lm_eval.simple_evaluate(model=MnemosHarnessLM(model=gpt, tokenizer=tok), tasks=[...])

Importing this module registers the name "mnemos" with lm_eval's model registry. The requests are
answered by `evaluation.adapters.MnemosLM`, so both harnesses run the same scoring code.
Needs the optional dependency `lm_eval` (lm-evaluation-harness >= 0.4).
"""

from __future__ import annotations

from typing import Any

try:
    from lm_eval.api.model import LM as _HarnessLM
    from lm_eval.api.registry import register_model
except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("evaluation.lm_eval_adapter needs lm-evaluation-harness: pip install lm_eval") from err

from evaluation.adapters import MnemosLM

_GEN_KEYS = {"until", "max_gen_toks", "num_beams", "length_penalty", "method"}


@register_model("mnemos")
class MnemosHarnessLM(_HarnessLM):
    """lm_eval model over a mnemos GPT: pass `checkpoint=DIR` (loaded with launcher.inference.load_for_eval)
    or a ready `model` and `tokenizer`."""

    def __init__(self, checkpoint: str | None = None, model: Any = None, tokenizer: Any = None,
                 batch_size: int | str = 16, device: str = "cpu", max_length: int | None = None, **_: Any):
        super().__init__()
        if model is None:
            if checkpoint is None:
                raise ValueError("mnemos lm_eval model: give checkpoint=DIR or model= and tokenizer=")
            from launcher.inference import load_for_eval
            model, tokenizer, _cfg = load_for_eval(checkpoint, device=device)
        bs = batch_size if batch_size == "auto" else int(batch_size)
        self.inner = MnemosLM(model, tokenizer, batch_size=bs, device=device,
                              max_length=int(max_length) if max_length else None)

    @property
    def tokenizer_name(self) -> str:  # lm_eval's chat-template cache key
        return "mnemos"

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.inner.loglikelihood([tuple(r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.inner.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests, disable_tqdm: bool = False):
        reqs = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1] or {})
            if kwargs.get("do_sample"):
                raise ValueError("mnemos lm_eval model: sampling is not supported (greedy or beam search only)")
            reqs.append((context, {k: v for k, v in kwargs.items() if k in _GEN_KEYS}))
        return self.inner.generate_until(reqs)
