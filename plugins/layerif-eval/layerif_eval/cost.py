"""What evaluation costs (``layerif study --plan``), from shapes and options alone.

Perplexity: a forward over every window (``max_windows`` of them, else the whole text at
``seqlen`` tokens). lm-eval: a forward per request, the requests of a task being its documents ×
answer choices of about the task's typical length (the table below: test or validation documents
of the lm-eval task, choices, tokens of context and choice; approximate). Generation, where a task
generates, is bound by memory bandwidth: every new token reads the weights once.
"""

from __future__ import annotations

from layerif_core.cost import Cost, pass_flops
from layerif_core.estimates import CHARS_PER_TOKEN, Workload, split_size

# lm-eval task: (documents scored, choices per document, tokens per request)
LM_EVAL_TASKS: dict[str, tuple[int, int, int]] = {
    "boolq": (3270, 2, 160), "rte": (277, 2, 80), "hellaswag": (10042, 4, 110),
    "winogrande": (1267, 2, 40), "arc_easy": (2376, 4, 50), "arc_challenge": (1172, 4, 55),
    "openbookqa": (500, 4, 35), "piqa": (1838, 2, 50), "mmlu": (14042, 4, 120),
    # the shipped tasks over layerif's bundled data (test split as their YAML sets it; tokens of
    # SmolLM2's tokenizer: arithmetic's prompt 26.5 and choice 2.9 on average)
    "layerif_arithmetic": (2000, 4, 30), "layerif_capitals": (100, 4, 19),
    "layerif_antonyms": (100, 4, 18),
}
DEFAULT_TASK = (1000, 4, 100)


def perplexity(opts, work: Workload) -> Cost:
    from layerif_core.config import DataSpec

    seqlen = opts.seqlen or min(2048, getattr(work.model.config, "max_position_embeddings", 2048))
    note = ""
    if opts.max_windows is not None:
        windows = opts.max_windows
    else:
        spec = DataSpec(source=opts.source, config_name=opts.config_name, split=opts.split,
                        limit=opts.limit, pack=True, max_length=seqlen, text=opts.text)
        windows, _, note = split_size(spec, work.config.seed)
    flops = pass_flops(work.model, windows, seqlen) / 2
    peak = work.weights() + work.activations(1, seqlen, backward=False)
    return Cost({"forward": flops}, peak_bytes=peak, note=note)


def lm_eval(opts, work: Workload) -> Cost:
    requests, tokens, unknown = 0.0, 0.0, []
    for task in opts.tasks:
        docs, choices, length = LM_EVAL_TASKS.get(task, DEFAULT_TASK)
        if task not in LM_EVAL_TASKS:
            unknown.append(task)
        if opts.limit is not None:
            docs = int(opts.limit * docs) if opts.limit < 1 else min(docs, int(opts.limit))
        requests += docs * choices
        tokens += docs * choices * length
    mean = max(1, int(tokens / max(requests, 1)))
    flops = pass_flops(work.model, int(requests), mean) / 2
    note = f"lm-eval sizes assumed for {', '.join(unknown)}" if unknown else ""
    batch = opts.batch_size or work.config.batch_size
    return Cost({"forward": flops}, peak_bytes=work.weights() + work.activations(batch, mean, False),
                note=note)


def generation(work: Workload, docs: int, prompt_chars: float, new_tokens: int) -> Cost:
    """Greedy generation: a forward over each prompt, then ``new_tokens`` weight reads per document."""
    prompt = int(prompt_chars / CHARS_PER_TOKEN) + 1
    return Cost({"prompt": pass_flops(work.model, docs, prompt) / 2},
                bytes_read=docs * new_tokens * work.weights(),
                peak_bytes=work.weights() + work.activations(1, prompt + new_tokens, False))


def paper_tasks(opts, work: Workload) -> Cost:
    """The authors' evaluation of a paper task: greedy generation over its test records, each prompt
    the Alpaca header (about 150 characters) and the task's instruction."""
    from layerif_core.tasks.paper import INSTRUCTION_CHARS, paper_task, split_examples

    name = paper_task(opts.task).name
    docs = split_examples(name, opts.split)
    docs = min(docs, opts.limit) if opts.limit is not None else docs
    return generation(work, docs, 150 + INSTRUCTION_CHARS[name], opts.max_new_tokens)
