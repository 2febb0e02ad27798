"""Crisp: structured attention sparsity as a regulariser for fine-tuning Transformer encoders.

    import crisp
    model = crisp.sparsify(model, pattern="topk", sparsity=0.8)

Where things live: the sparse attention (crisp.attention), model and data loading
(crisp.modeling, crisp.data), fine-tuning (crisp.train), FLOP accounting (crisp.flops), tables
and figures (crisp.tables, crisp.figures), and the command line the Snakemake rules call (crisp.cli).
"""

__version__ = "0.1.0"


def sparsify(model, pattern: str = "topk", sparsity: float = 0.8, **pattern_options):
    """Put structured sparsity into `model`'s attention (see crisp.attention.sparsify)."""
    from crisp.attention import sparsify as _sparsify

    return _sparsify(model, pattern=pattern, sparsity=sparsity, **pattern_options)
