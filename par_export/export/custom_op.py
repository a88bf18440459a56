"""``par::TopKCluster``: PAR steps 5-6 as one ONNX node (``export --plugin``).

The node carries ``plugin_version``/``plugin_namespace`` so TensorRT's ONNX parser,
which falls back to a plugin named like an op it does not know, finds
``TopKCluster`` version 1 in namespace ``par`` in ``libpar_plugins.so``.
"""

from __future__ import annotations

import torch

from par_export.reduce.topk_cluster import DOMAIN, OP_TYPE, VERSION, topk_cluster

__all__ = ["DOMAIN", "OP_TYPE", "VERSION", "TopKClusterOp", "topk_cluster_node"]


class TopKClusterOp(torch.autograd.Function):
    """Eager: the reference :func:`topk_cluster`. Traced for ONNX: one ``par::TopKCluster`` node
    (with ``cluster_tokens`` as a 5th input where given)."""

    @staticmethod
    def forward(ctx, tokens, scores, relevance, num_kept, k_max, gamma, tau, router, cluster_tokens=None):
        return topk_cluster(tokens, scores, relevance, num_kept, k_max, gamma, tau, router,
                            cluster_tokens=cluster_tokens)

    @staticmethod
    def symbolic(g, tokens, scores, relevance, num_kept, k_max, gamma, tau, router, cluster_tokens=None):
        inputs = [tokens, scores, relevance, num_kept]
        if cluster_tokens is not None and not cluster_tokens.node().mustBeNone():
            inputs.append(cluster_tokens)
        merged, keep_index, assignment, kept = g.op(
            f"{DOMAIN}::{OP_TYPE}", *inputs, k_max_i=k_max, gamma_f=gamma, tau_f=tau,
            router_s=router, plugin_version_s=VERSION, plugin_namespace_s=DOMAIN, outputs=4,
        )
        batch, n = tokens.type().varyingSizes()[0], tokens.type().varyingSizes()[1]
        dim = tokens.type().varyingSizes()[2]
        merged.setType(tokens.type().with_sizes([batch, k_max, dim]))
        keep_index.setType(num_kept.type().with_dtype(torch.int64).with_sizes([batch, k_max]))
        assignment.setType(num_kept.type().with_dtype(torch.int64).with_sizes([batch, n]))
        kept.setType(num_kept.type().with_dtype(torch.int64).with_sizes([batch]))
        return merged, keep_index, assignment, kept


def topk_cluster_node(tokens, scores, relevance, num_kept, k_max, gamma=1.0, tau=1.0, router="merge", similarity=None,
                      cluster_tokens=None):
    """Drop-in for :func:`topk_cluster` (``PARReducer.topk_cluster``) that exports as the custom op.

    ``similarity`` is not an input of the op: it recomputes the similarities to the centers, from
    ``cluster_tokens`` (its optional 5th input) where given, else from ``tokens``.
    """
    return TopKClusterOp.apply(tokens, scores, relevance, num_kept.to(torch.int64), int(k_max), float(gamma),
                               float(tau), router, cluster_tokens)
