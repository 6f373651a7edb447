"""mnemos evaluation: few-shot harness (GPT-3 Section 2.4), task registry, contamination report.

Public entry points:
  evaluation.api.run_eval(adapter, tasks, shots, out_dir, contamination_index=None, limit=None, ...)
  evaluation.adapters.MnemosLM(model, tokenizer, batch_size, device)   # loglikelihood,
      loglikelihood_rolling, generate_until; DummyLM and ByteTokenizer for tests
  evaluation.registry.iter_eval_texts(tasks=None) -> (task, context + completion) of every eval example
  evaluation.synthetic: GPT-3 arithmetic and word-scramble generators, released-file loader
  evaluation.hf: GPT-2 export, accelerate big-model loading; evaluation.lm_eval_adapter: `lm_eval --model mnemos`
Downstream tasks (Hopfield layers, Slot Attention) live in evaluation.downstream.
"""
