"""lm-eval's log-likelihoods with each context computed once for all its continuations.

A multiple-choice task asks for ``log p(continuation | context)`` of every choice of a question:
lm-eval's ``HFLM`` runs the model over ``context + choice`` once per choice, and computes the
vocabulary logits of every position. :class:`SharedContextHFLM` gives the same numbers with less work:

1. the contexts of a batch of questions, left-padded, in one forward pass that keeps the attention
   cache and the logits of the last position only (they predict every choice's first token);
2. the continuations of all their choices but the last token in a second pass over that cache, each
   row the cache of its question (``Cache.reorder_cache`` with repeated indices), positions and
   attention mask continuing the context's.

The log-probability of continuation token t is read from the logits that predict it, in the
dtype ``HFLM`` uses (its ``softmax_dtype``, else the logits'), and ``is_greedy`` is whether every
token is the argmax, as ``HFLM`` computes them. On four choices of a 20-token
question with 2-token answers the model sees 27 tokens instead of 80, and the vocabulary projection
runs on 8 positions instead of 80. Requests whose context appears once (rolling perplexity windows,
a task of one continuation per prompt), or whose context and continuation need truncating to the
model's length, and non-causal models go through ``HFLM`` unchanged.
``tests/plugins/test_lm_eval_shared_context.py`` checks the numbers against ``HFLM``'s.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

Request = tuple[tuple[str, str], list[int], list[int]]


class SharedContextHFLM(HFLM):
    """``HFLM`` whose ``_loglikelihood_tokens`` computes a shared context once (module docstring)."""

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (_, context, _) in enumerate(requests):
            groups[tuple(context)].append(i)
        shared = [(ctx, idx) for ctx, idx in groups.items()
                  if len(idx) > 1 and all(len(ctx) + len(requests[i][2]) <= self.max_length for i in idx)]
        if self.backend != "causal" or not shared:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        done = {i for _, idx in shared for i in idx}
        rest = [i for i in range(len(requests)) if i not in done]
        if rest:
            for i, answer in zip(rest, super()._loglikelihood_tokens(
                    [requests[i] for i in rest], disable_tqdm, override_bs), strict=True):
                out[i] = answer
        shared.sort(key=lambda g: -len(g[0]))  # longest first, as HFLM orders its batches
        size = self.batch_size if isinstance(self.batch_size, int) and self.batch_size > 0 else 8
        bar = tqdm(total=len(done), disable=disable_tqdm or self.rank != 0,
                   desc="Running loglikelihood requests (shared contexts)")
        for start in range(0, len(shared), size):
            batch = shared[start:start + size]
            for i, answer in self._score_batch(batch, requests):
                out[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(sum(len(idx) for _, idx in batch))
        bar.close()
        return out  # type: ignore[return-value]

    def _cache_arg(self) -> str:
        """The forward argument that takes an attention cache: ``cache`` (transformers 5 models), or
        ``past_key_values`` (models and wrappers that still name it so)."""
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @torch.no_grad()
    def _score_batch(self, batch: list[tuple[tuple[int, ...], list[int]]], requests: list[Request]
                     ) -> list[tuple[int, tuple[float, bool]]]:
        """``(request index, (log-likelihood, is_greedy))`` of every request of the batch's contexts."""
        device = self.device
        width = max(len(ctx) for ctx, _ in batch)
        ids = torch.full((len(batch), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ctx, _) in enumerate(batch):  # left padding: every context ends at the last column
            ids[row, width - len(ctx):] = torch.tensor(ctx)
            mask[row, width - len(ctx):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        first = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1)
        first_logp = F.log_softmax(first.logits[:, -1], dim=-1, dtype=self.softmax_dtype)  # [B, V]
        # the continuations, one row per request, each over its context's cache
        rows = [(g, i) for g, (_, idx) in enumerate(batch) for i in idx]
        conts = [requests[i][2] for _, i in rows]
        longest = max(len(c) for c in conts) - 1
        results: list[tuple[int, tuple[float, bool]]] = []
        later_logp = None
        if longest > 0:
            cache = first.past_key_values
            owner = torch.tensor([g for g, _ in rows], device=device)
            cache.reorder_cache(owner)
            step = torch.full((len(rows), longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            step_mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for r, cont in enumerate(conts):  # right padding after each continuation
                step[r, : len(cont) - 1] = torch.tensor(cont[:-1])
                step_mask[r, : len(cont) - 1] = 1
            step, step_mask = step.to(device), step_mask.to(device)
            full_mask = torch.cat([mask[owner], step_mask], dim=1)
            step_pos = mask[owner].sum(1, keepdim=True) + torch.arange(longest, device=device)[None, :]
            later = self.model(input_ids=step, attention_mask=full_mask, position_ids=step_pos,
                               use_cache=True, **{self._cache_arg(): cache})
            later_logp = F.log_softmax(later.logits, dim=-1, dtype=self.softmax_dtype)  # [R, T, V]
        for r, ((g, i), cont) in enumerate(zip(rows, conts, strict=True)):
            logp = first_logp[g][None, :]
            if len(cont) > 1:
                logp = torch.cat([logp, later_logp[r, : len(cont) - 1]], dim=0)  # [len(cont), V]
            target = torch.tensor(cont, device=logp.device)
            total = float(logp.gather(1, target[:, None]).sum())
            greedy = bool((logp.argmax(dim=-1) == target).all())
            results.append((i, (total, greedy)))
        return results
