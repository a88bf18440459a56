"""``visionzip``: VisionZip as its authors' code computes it.

Follows ``CLIPVisionTower_VisionZip.forward`` in ``visionzip/clip_encoder.py`` of
dvlab-research/VisionZip @ 3151f6d (with ``CLIPAttention_forward`` in ``visionzip/utils.py``,
which records the layer's keys averaged over heads as its ``metric``). On the feature layer
(LLaVA-1.5: the penultimate):

1. dominant: the CLS token and the ``d - 1`` patches with the most CLS attention (summed over
   heads in the code; the mean here ranks the same), in token order;
2. contextual: of the ``M`` remaining tokens (token order, CLS excluded), every
   ``max(1, M // c)``-th from the first is a target (``c`` of them); each other remaining token
   goes to the target whose L2-normalized key is most similar to its own (first on ties), and
   a contextual token is ``target + mean(tokens merged into it)`` (the target itself when none);
3. rows: the dominant tokens, then the contextual tokens in target order.

K = ``d + c`` rows with ``d = round(54 K / 64)``: 54 + 10 at K = 64, 108 + 20 at 128 and
162 + 30 at 192, the paper's settings. The CLS token is one of the rows, so ``keep_index``
gives it index N; ``keep_index`` follows the rows' order, not ascending.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from par_export.errors import ParExportError
from par_export.reduce.baselines.visionzip import dominant_count
from par_export.reduce.output import ReductionOutput
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register_authors


@register_authors
class VisionZipReducer(TokenReducer):
    name = "visionzip"
    description = "VisionZip as its authors' code: CLS + dominant tokens, key-similarity contextual merges"
    needs_attn = True
    dynamic_tokens = False
    takes_token_mask = False
    tower_inputs = ("cls_token", "keys")

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask, tower=None):
        if not isinstance(budget, int):
            raise ParExportError("visionzip keeps a fixed K (its dominant:contextual split): pass an int budget")
        b, n, d = visual_tokens.shape
        dominant = int(dominant_count(torch.tensor(budget)))  # CLS included
        contextual = budget - dominant
        hidden = torch.cat([tower["cls_token"].unsqueeze(1).to(visual_tokens.dtype), visual_tokens], dim=1)
        metric = tower["keys"]  # [B, 1 + N, Dk]
        top = attn.float().topk(dominant - 1, dim=1).indices + 1  # patches by CLS attention
        chosen = torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)
        rest = torch.ones(b, n + 1, dtype=torch.bool, device=hidden.device).scatter_(1, chosen, False)
        dominant_index = (~rest).nonzero()[:, 1].view(b, dominant)  # token order, CLS (0) first
        rest_index = rest.nonzero()[:, 1].view(b, n + 1 - dominant)
        rows = [torch.gather(hidden, 1, dominant_index.unsqueeze(-1).expand(-1, -1, d))]
        kept_index = [dominant_index]
        assignment = torch.full((b, n + 1), -1, dtype=torch.int64, device=hidden.device)
        assignment.scatter_(1, dominant_index, torch.arange(dominant, device=hidden.device).expand(b, -1))
        if contextual > 0:
            m = rest_index.shape[1]
            step = max(1, m // contextual)
            targets = torch.arange(0, m, step, device=hidden.device)[:contextual]
            is_target = torch.zeros(m, dtype=torch.bool, device=hidden.device)
            is_target[targets] = True
            keys = F.normalize(torch.gather(metric, 1, rest_index.unsqueeze(-1).expand(-1, -1, metric.shape[-1])),
                               dim=-1)
            values = torch.gather(hidden, 1, rest_index.unsqueeze(-1).expand(-1, -1, d))
            nearest = (keys[:, ~is_target] @ keys[:, targets].transpose(1, 2)).argmax(dim=-1)  # [B, M - c]
            one_hot = F.one_hot(nearest, targets.numel()).to(values.dtype)  # [B, M - c, c]
            counts = one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
            merged = one_hot.transpose(1, 2) @ values[:, ~is_target] / counts
            rows.append(values[:, targets] + merged)
            target_index = rest_index[:, targets]
            kept_index.append(target_index)
            assignment.scatter_(1, target_index, dominant + torch.arange(contextual, device=hidden.device).expand(b, -1))
            assignment.scatter_(1, rest_index[:, ~is_target], dominant + nearest)
        tokens = torch.cat(rows, dim=1)
        # token indices as the rows come: patches 0..N-1 (the tower's 1..N), the CLS token as N
        keep_index = torch.cat(kept_index, dim=1) - 1
        keep_index = torch.where(keep_index < 0, torch.full_like(keep_index, n), keep_index)
        return ReductionOutput(
            tokens=tokens, keep_index=keep_index, assignment=assignment[:, 1:],
            valid=torch.ones(b, budget, dtype=torch.bool, device=hidden.device),
            num_kept=torch.full((b,), budget, dtype=torch.int64, device=hidden.device), scores=attn.float())
