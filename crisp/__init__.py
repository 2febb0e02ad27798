"""Crisp: structured attention sparsity as a regulariser for fine-tuning Transformer encoders.

    import crisp
    model = crisp.sparsify(model, pattern="topk", sparsity=0.8)

Where things live: the sparse attention (crisp.attention), model and data loading
(crisp.modeling, crisp.data; local data files are read and checked in crisp.tabular), the synthetic
reviews (crisp.synthetic), fine-tuning (crisp.train) and its resume checkpoints (crisp.checkpoints),
FLOP accounting (crisp.flops), tables and figures (crisp.tables, crisp.figures), and the command line
the Snakemake rules call (crisp.cli).
"""

__version__ = "0.1.0"


def sparsify(model, *args, **kwargs):
    """Put structured sparsity into `model`'s attention: crisp.attention.sparsify, imported on
    first use so that `import crisp` (and `crisp --help`) stays fast."""
    from crisp.attention import sparsify as _sparsify

    return _sparsify(model, *args, **kwargs)
