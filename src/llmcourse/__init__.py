"""llmcourse: the small library behind the course on large language models.

One idea per module, in the order the book reads them:

- foundations: ``data`` (the Shakespeare corpus), ``corpora`` (the plays split once and tokenized
  for the course's models), ``tokenization`` (characters, words, BPE),
  ``ngram`` (an n-gram language model), ``device`` (device, dtype, seeds);
- attention and the Transformer: ``attention`` (scaled dot-product and multi-head attention,
  masks), ``transformer`` (blocks, the GPT and the BERT-style encoder), ``llama`` (a modern
  decoder: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention), ``converters``
  (other libraries' weights in these models: GPT-2, and SmolLM2 from its GGUF file);
- pre-training: ``objectives`` (the losses), ``batches`` (what they read), ``training`` (the one
  training loop, also used for fine-tuning);
- fine-tuning: ``tasks`` (tasks from the corpus, baselines, their metrics), ``classifier`` (a
  pretrained encoder with a head), ``freezing`` (what trains), ``adapters`` (prompt tuning,
  prefix tuning, LoRA), ``profiling`` (memory of a training step), ``strategies`` (six
  strategies compared); post-training a real LLM: ``sft`` (instruction tuning), ``dpo``
  (preference tuning), ``post_training`` (the runs on SmolLM2);
- applications: ``generation`` (decoding rules and beam search), ``chat`` (chat templates,
  and which tokens a model learns from), ``dialogue`` (a conversation kept to fit the
  context, replies streamed), ``icl`` (few-shot prompts and reading the answer),
  ``retrieval`` (embedding search with MiniLM), ``rag`` (answers from retrieved passages,
  with citations, scored), ``metrics`` (perplexity, distinct-n, classification scores; BLEU
  and ROUGE, written in ``bleu`` and ``rouge``), ``judge`` (a model as judge, and its
  position bias), ``quantization`` (GGUF block formats by hand);
- around them: ``models`` (the models available offline, and the course's own, cached),
  ``recipes`` (how the course's own small models are trained), ``plots``
  (figures and tables), ``grading`` (auto-grading of the exercises in a sandbox), ``classroom``
  (a class on one machine: JupyterHub, nbgrader's exchange, the grader), ``book`` (building the
  book offline) and ``cli`` (the ``llmcourse`` command).
"""

__version__ = "0.1.0"
